"""Training checkpoints in the common model-file format (:mod:`geolocus.modelfile`).

A checkpoint is a model file — the model's tensors under their own names,
``geolocus.model`` and ``geolocus.config`` in the metadata, so
:func:`geolocus.models.load_model` opens it — plus the optimizer's tensors
(prefixed ``__optim__.``) and, as JSON metadata, ``geolocus.train`` (training
settings), ``geolocus.optimizer`` (its non-tensor state), ``geolocus.scheduler``
and ``geolocus.progress`` (epoch, history). Unlike a pickle, a checkpoint cannot
execute code when loaded.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from geolocus.errors import InputError
from geolocus.modelfile import (
    META_CONFIG,
    OPTIM_PREFIX,
    read_metadata,
    read_model_file,
    write_model_file,
)

META_TRAIN = "geolocus.train"
META_OPTIMIZER = "geolocus.optimizer"
META_SCHEDULER = "geolocus.scheduler"
META_PROGRESS = "geolocus.progress"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, st in state["state"].items():
        plain["state"][str(idx)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{OPTIM_PREFIX}{idx}.{k}"] = v.detach().clone()
            else:
                plain["state"][str(idx)][k] = v
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, v in tensors.items():
        idx, name = key[len(OPTIM_PREFIX) :].split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": plain["param_groups"]}


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    saved = getattr(model, "saved_state", None)
    return saved() if callable(saved) else dict(model.state_dict())


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    config: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    progress: dict | None = None,
    train_config: dict | None = None,
) -> None:
    """Write a checkpoint atomically (a crash leaves the previous one intact).

    ``config`` is the model's config (default: ``model.config_dict()`` for
    geolocus models); ``train_config`` the training settings.
    """
    if config is None:
        has = hasattr(model, "config_dict")
        config = model.config_dict() if has else {}  # type: ignore[operator]
    tensors = _model_tensors(model)
    meta: dict[str, str] = {META_PROGRESS: json.dumps(progress or {})}
    if train_config is not None:
        meta[META_TRAIN] = json.dumps(train_config)
    if optimizer is not None:
        opt_t, opt_plain = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_t)
        meta[META_OPTIMIZER] = json.dumps(opt_plain)
    if scheduler is not None:
        meta[META_SCHEDULER] = json.dumps(scheduler.state_dict())
    model_type = getattr(model, "model_type", "") or "module"
    write_model_file(path, tensors, model_type, config, meta)


def read_config(path: str | os.PathLike[str]) -> dict:
    """The model config stored in a checkpoint, without loading its tensors."""
    return json.loads(read_metadata(path)[META_CONFIG])


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    strict: bool = True,
) -> dict:
    """Restore a checkpoint into ``model`` (and optimizer/scheduler); returns its progress."""
    meta, tensors = read_model_file(path, optimizer=True)
    model_sd = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    restore = getattr(model, "restore_state", None)
    if callable(restore):
        restore(model_sd, str(path))
    else:
        try:
            model.load_state_dict(model_sd, strict=strict)
        except RuntimeError as e:
            raise InputError(
                f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}"
            ) from None
    if optimizer is not None and META_OPTIMIZER in meta:
        opt_t = {k: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}
        optimizer.load_state_dict(_unflatten_optimizer(opt_t, json.loads(meta[META_OPTIMIZER])))
    if scheduler is not None and META_SCHEDULER in meta:
        scheduler.load_state_dict(json.loads(meta[META_SCHEDULER]))
    return json.loads(meta.get(META_PROGRESS, "{}"))
