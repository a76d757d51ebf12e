"""Reading and writing the tables geolocus exchanges, and locating benchmark data."""

from geolocus.data.tables import read_coords, read_neighbours, write_coords

__all__ = ["read_coords", "read_neighbours", "write_coords"]
