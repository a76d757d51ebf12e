"""The retrieval database of geotagged photo embeddings (FAISS + Parquet + manifest)."""

from geolocus.index.database import Database, Manifest

__all__ = ["Database", "Manifest"]
