"""Reading and writing the tables geolocus exchanges, locating benchmark data, and
the stage-1 to stage-2 contract (:class:`Neighbours`)."""

from geolocus.data.neighbours import Neighbours
from geolocus.data.tables import read_coords, read_neighbours, write_coords

__all__ = ["Neighbours", "read_coords", "read_neighbours", "write_coords"]
