"""The one geolocus model-file format: safetensors plus three metadata entries.

Every trained model (GeoCLIP, DualGeo, TransGeoCLIP) and every training
checkpoint is a safetensors file whose metadata holds

- ``geolocus.format`` = :data:`FORMAT`,
- ``geolocus.model`` — the model type (a name :func:`geolocus.models.list_models` knows),
- ``geolocus.config`` — the model's config as JSON (enough to rebuild it).

A checkpoint adds the optimizer's tensors under the :data:`OPTIM_PREFIX` prefix
and, as JSON metadata, ``geolocus.train`` (the training settings),
``geolocus.optimizer``, ``geolocus.scheduler`` and ``geolocus.progress``; the
model's own tensors are stored under the same names as in a plain model file,
so :func:`geolocus.models.load_model` opens a checkpoint too. safetensors
stores only tensors and strings, so unlike a pickle a model file cannot run
code when it is opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from geolocus.errors import InputError
from geolocus.files import _FILE_MODE, atomic_path

FORMAT = "geolocus-model-1"
META_FORMAT = "geolocus.format"
META_MODEL = "geolocus.model"
META_CONFIG = "geolocus.config"
#: Tensors of a checkpoint's optimizer state (never a model parameter name).
OPTIM_PREFIX = "__optim__."
#: Files written before the common format (GeoCLIP only); still readable.
_LEGACY = {"geolocus-geoclip-1": ("geoclip", "geolocus.geoclip.config")}


def _unalias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory: give each its own contiguous copy."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        if v.numel() and v.data_ptr() in seen:
            v = v.clone()
        seen.add(v.data_ptr())
        out[k] = v
    return out


def write_model_file(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    model_type: str,
    config: dict,
    extra_meta: dict[str, str] | None = None,
) -> None:
    """Write ``tensors`` with the format's metadata, atomically."""
    from safetensors.torch import save_file

    meta = {META_FORMAT: FORMAT, META_MODEL: model_type, META_CONFIG: json.dumps(config)}
    meta.update(extra_meta or {})
    with atomic_path(path) as tmp:
        save_file(_unalias(tensors), str(tmp), metadata=meta)
        os.chmod(tmp, _FILE_MODE)  # safetensors replaces the file with a private (0600) one


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a geolocus model file, normalised to the current keys.

    Raises :class:`InputError` (one line) for a missing file, a file that is
    not safetensors, or a safetensors file that is not a geolocus model.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise InputError(f"model file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{p} is not a safetensors file: {str(e).splitlines()[0]}") from None
    fmt = meta.get(META_FORMAT)
    if fmt in _LEGACY:
        model_type, key = _LEGACY[fmt]
        meta[META_MODEL], meta[META_CONFIG] = model_type, meta.get(key, "{}")
    elif fmt != FORMAT or META_CONFIG not in meta:
        raise InputError(f"{p} is not a geolocus model file (no {META_CONFIG} metadata)")
    meta.setdefault(META_MODEL, "module")
    return meta


def read_model_file(
    path: str | os.PathLike[str], map_location: str = "cpu", optimizer: bool = False
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)``; the optimizer's tensors only with ``optimizer=True``."""
    from safetensors import safe_open

    meta = read_metadata(path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=map_location) as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if optimizer or not k.startswith(OPTIM_PREFIX):
                    tensors[k] = f.get_tensor(k)
    except Exception as e:
        raise InputError(f"{path}: unreadable tensors: {str(e).splitlines()[0]}") from None
    return meta, tensors


def model_type_of(path: str | os.PathLike[str]) -> str:
    """The ``geolocus.model`` entry of a file, without reading its tensors."""
    return read_metadata(path)[META_MODEL]
