"""One training run from a config: data, model, loop, checkpoint, final model file."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from geolocus.errors import InputError
from geolocus.models import model_class
from geolocus.train.checkpoint import read_config
from geolocus.train.config import checkpoint_path
from geolocus.train.data import load_training_set
from geolocus.train.loop import TrainConfig, fit, seed_everything


@dataclass
class RunSummary:
    model_path: Path | None  # None when interrupted (the checkpoint holds the progress)
    checkpoint: Path
    epochs_done: int
    interrupted: bool
    history: list[dict[str, float]]
    n_photos: int


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_from_config(
    cfg: dict,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = _stderr,
) -> RunSummary:
    """Train the model ``cfg`` describes (see :mod:`geolocus.train.config`).

    Writes a checkpoint after every epoch; on success also the final model
    file (weights only, with the run config as ``geolocus.train`` metadata).
    ``resume`` continues from the checkpoint if there is one (its model config
    must match).
    """

    train = TrainConfig(**cfg.get("train", {}))
    seed_everything(train.seed)
    model_cfg = dict(cfg["model"])
    cls = model_class(model_cfg.pop("type"))
    conf: Any = cls.config_class.from_dict(model_cfg)  # the model's own config class
    data_cfg = cfg["data"]
    text = conf.text_encoder if getattr(conf, "use_text", False) else None
    data = load_training_set(
        backbone=conf.backbone,
        labels=data_cfg["labels"],
        images=data_cfg.get("images"),
        features=data_cfg.get("features"),
        cache=data_cfg.get("cache", "cache/features"),
        tokens=cls.needs_tokens,
        text=text,
        folds=int(data_cfg.get("folds", 0)),
        holdout=data_cfg.get("holdout"),
        progress=progress,
    )
    names = {f.name for f in fields(conf)}
    if "embed_dim" in names and "embed_dim" not in model_cfg:
        conf.embed_dim = int(data.embeddings.shape[1])
    if "token_dim" in names and "token_dim" not in model_cfg and data.tokens is not None:
        conf.token_dim = int(data.tokens.shape[2])
    if log:
        log(f"{len(data)} training photos, {conf.backbone} features")
    ckpt = checkpoint_path(cfg)
    stored = read_config(ckpt) if resume and ckpt.exists() else None
    if stored is not None:  # sizes `prepare` fitted to the data (n_cells) come back from it
        for name in cls.fitted_fields:
            if name in stored and name not in model_cfg:
                setattr(conf, name, stored[name])
    seed_everything(train.seed)
    model = cls(conf)
    if stored is not None:
        if stored != conf.to_dict():
            diff = sorted(k for k in set(stored) | set(conf.to_dict())
                          if stored.get(k) != conf.to_dict().get(k))  # fmt: skip
            raise InputError(
                f"{ckpt} was trained with another model config (differs in {', '.join(diff)}); "
                "train afresh without --resume or restore those values"
            )
    else:  # a resumed run gets its fitted parts (the codebook) back from the checkpoint
        model.prepare(data)
    res = fit(
        model,
        data.batches(train.batch_size, seed=train.seed),
        train,
        checkpoint=ckpt,
        resume=resume,
        steps_per_epoch=data.steps(train.batch_size),
        log=log,
        progress=progress,
    )
    out: Path | None = None
    if not res.interrupted:
        out = Path(cfg["output"]["path"])
        model.save(out, extra_meta={"geolocus.train": json.dumps(cfg, default=str)})
    return RunSummary(out, ckpt, res.epochs_done, res.interrupted, res.history, len(data))
