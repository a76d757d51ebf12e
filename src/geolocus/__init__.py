"""geolocus: where on Earth was this photo taken?"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so that `import geolocus` stays light (no torch, faiss or pandas)
    if name == "Geolocator":
        from geolocus.pipeline import Geolocator

        return Geolocator
    raise AttributeError(f"module 'geolocus' has no attribute {name!r}")


__all__ = ["Geolocator", "__version__"]
