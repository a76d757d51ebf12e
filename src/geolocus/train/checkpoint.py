"""Checkpoints in safetensors: model weights, optimizer and scheduler state, and config.

safetensors stores only tensors and a string-to-string metadata map, so the
non-tensor parts (the model's config, optimizer hyper-parameters, epoch,
step, RNG seeds) are stored as JSON in the metadata. Unlike a pickle, a
checkpoint cannot execute code when loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geolocus.errors import InputError
from geolocus.files import atomic_path


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, st in state["state"].items():
        plain["state"][str(idx)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v.detach().clone().contiguous()
            else:
                plain["state"][str(idx)][k] = v
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": plain["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    config: dict,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    progress: dict | None = None,
) -> None:
    """Write a checkpoint atomically (a crash leaves the previous one intact)."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    meta: dict[str, str] = {"config": json.dumps(config), "format": "geolocus-checkpoint-1"}
    if optimizer is not None:
        opt_t, opt_plain = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_t)
        meta["optimizer"] = json.dumps(opt_plain)
    if scheduler is not None:
        meta["scheduler"] = json.dumps(scheduler.state_dict())
    meta["progress"] = json.dumps(progress or {})
    # safetensors refuses tensors sharing memory: clone any aliases
    seen: dict[int, str] = {}
    for k, v in list(tensors.items()):
        ptr = v.data_ptr()
        if ptr in seen and v.numel() > 0:
            tensors[k] = v.clone()
        seen[ptr] = k
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def read_config(path: str | os.PathLike[str]) -> dict:
    """The model config stored in a checkpoint, without loading its tensors."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{p} is not a safetensors checkpoint: {e}") from None
    if "config" not in meta:
        raise InputError(f"{p} is not a geolocus checkpoint (no config in its metadata)")
    return json.loads(meta["config"])


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    strict: bool = True,
) -> dict:
    """Restore a checkpoint into ``model`` (and optimizer/scheduler); returns its progress."""
    p = Path(path)
    read_config(p)  # validates the file
    tensors = load_file(str(p))
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd, strict=strict)
    except RuntimeError as e:
        raise InputError(
            f"checkpoint {p} does not fit this model: {str(e).splitlines()[0]}"
        ) from None
    if optimizer is not None and "optimizer" in meta:
        opt_t = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_t, json.loads(meta["optimizer"])))
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(json.loads(meta["scheduler"]))
    return json.loads(meta.get("progress", "{}"))
