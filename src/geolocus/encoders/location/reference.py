"""geoclip's own ``LocationEncoder``, loaded for conformance checks without its package.

``geoclip/__init__.py`` imports the image encoder, hence transformers and
torchvision, which are not installed offline. The location encoder needs
neither: its three files (``location_encoder.py``, ``misc.py``, ``rff/``) are
loaded by file path into a synthetic package whose ``__init__`` never runs.
Only tests and benchmarks use this; geolocus's encoder is
:class:`~geolocus.encoders.location.geoclip.GeoCLIPLocationEncoder`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
import warnings
from pathlib import Path

from geolocus.errors import ModelUnavailableError

_PKG = "_geolocus_geoclip_reference"


def _load(name: str, path: Path, is_pkg: bool = False):
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if is_pkg else None
    )
    if spec is None or spec.loader is None:
        raise ModelUnavailableError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def geoclip_reference_class() -> type:
    """geoclip 1.3.0's ``LocationEncoder`` class (its ``__init__`` loads its weights)."""
    done = sys.modules.get(f"{_PKG}.model.location_encoder")
    if done is not None:
        return done.LocationEncoder
    try:
        dist = importlib.metadata.distribution("geoclip")
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailableError(
            "the geoclip wheel is not installed: pip install --no-deps geoclip==1.3.0"
        ) from None
    root = Path(str(dist.locate_file("geoclip")))
    if not (root / "model" / "location_encoder.py").exists():
        raise ModelUnavailableError(f"{root} lacks model/location_encoder.py")
    for name, path in ((_PKG, root), (f"{_PKG}.model", root / "model")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]  # a package whose __init__.py is never executed
        sys.modules[name] = pkg
    with warnings.catch_warnings():  # geoclip's rff uses the deprecated torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        _load(f"{_PKG}.model.misc", root / "model" / "misc.py")
        _load(f"{_PKG}.model.rff", root / "model" / "rff" / "__init__.py", is_pkg=True)
        mod = _load(f"{_PKG}.model.location_encoder", root / "model" / "location_encoder.py")
    return mod.LocationEncoder
