"""Errors a user can act on.

Every failure caused by input (a bad file, a bad coordinate, a model that is
not installed) raises a subclass of :class:`GeolocusError`; the CLI prints
its message on one line and exits with status 2, without a traceback.
"""

from __future__ import annotations


class GeolocusError(Exception):
    """Base class: the message is meant for the user, on one line."""


class InputError(GeolocusError, ValueError):
    """A file, table or argument that cannot be used as given."""


class InvalidCoordinatesError(InputError):
    """Latitude/longitude outside [-90, 90] x [-180, 180], or not finite."""


class ImageError(InputError):
    """A photo that cannot be read safely (missing, corrupt, too large, not an image)."""


class NotFittedError(InputError):
    """An estimator (a stage-2 refiner) used before ``fit`` or loading what it learned."""


class ModelUnavailableError(GeolocusError):
    """A model or its weights are not installed on this machine."""


class ServiceError(GeolocusError):
    """A remote service (e.g. a multimodal model server) failed or is unreachable."""


class DatabaseBusyError(GeolocusError):
    """Another process is writing the database (it holds the database's lock)."""
