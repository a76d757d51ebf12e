"""The web service: a JSON API and an upload page over one geolocator."""

from geolocus.server.app import make_server

__all__ = ["make_server"]
