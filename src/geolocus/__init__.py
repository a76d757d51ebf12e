"""geolocus: where on Earth was this photo taken?"""

__version__ = "0.1.0"


_LAZY = ("Geolocator", "GallerySettings", "LMMSettings", "PlaceSettings", "RetrievalSettings")


def __getattr__(name: str) -> object:
    # lazy, so that `import geolocus` stays light (no torch, faiss or pandas)
    if name in _LAZY:
        from geolocus import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'geolocus' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
