"""Training run configs: a small TOML file per model, with command-line overrides.

```toml
[model]                      # type + the model's config fields
type = "dualgeo"
backbone = "efficientnet-lite0"

[data]                       # a labels CSV (IMG_ID,LAT,LON) and its photos or features
labels = "../shared/data/im2gps3k/labels.csv"
images = "../shared/data/im2gps3k/images"   # or: features = "<feature-store folder>"
cache = "cache/features"     # where extracted features are kept (memory-mapped)
folds = 3                    # optional: leave out one photographer-grouped fold
holdout = 2

[train]                      # geolocus.train.TrainConfig fields
epochs = 10
lr = 3e-5

[output]
path = "runs/dualgeo.safetensors"   # checkpoint: runs/dualgeo.ckpt.safetensors
```

Relative paths are relative to the current directory. ``embed_dim`` and
``token_dim`` default to the backbone's, read from its features.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from geolocus.errors import InputError
from geolocus.train.loop import TrainConfig

SECTIONS = ("model", "data", "train", "output")
#: The [train] keys: TrainConfig's fields (``extra`` is for code, not configs).
TRAIN_KEYS = {f.name for f in fields(TrainConfig)} - {"extra"}
DATA_KEYS = {"labels", "images", "features", "cache", "folds", "holdout"}
OUTPUT_KEYS = {"path", "checkpoint"}


def parse_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-4``, ``true``, ``"x"``, ``[1, 2]``); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``section.key=value`` (or ``key=value`` when one section has that key)."""
    cfg = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        if "." in key:
            section, name = key.split(".", 1)
        else:
            owners = [s for s in SECTIONS if key in cfg.get(s, {})]
            if len(owners) == 1:
                section = owners[0]
            elif not owners and key in TRAIN_KEYS:
                section = "train"
            else:
                where = " or ".join(f"{s}.{key}" for s in owners) or f"SECTION.{key}"
                raise InputError(f"--set {key}: say which, e.g. {where}")
            name = key
        if section not in SECTIONS:
            raise InputError(f"--set {key}: unknown section {section!r} ({', '.join(SECTIONS)})")
        cfg.setdefault(section, {})[name] = parse_value(value)
    return cfg


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> dict:
    """Read and check a run config (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config not found: {p}")
    try:
        cfg = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid TOML: {e}") from None
    cfg = apply_overrides(cfg, overrides or [])
    check_config(cfg, str(p))
    return cfg


def check_config(cfg: dict, where: str = "config") -> None:
    extra = sorted(set(cfg) - set(SECTIONS))
    if extra:
        raise InputError(f"{where}: unknown section(s) {', '.join(extra)}")
    model = cfg.get("model", {})
    if "type" not in model:
        raise InputError(f"{where}: [model] needs a type (geoclip, dualgeo, transgeoclip)")
    data = cfg.get("data", {})
    bad = sorted(set(data) - DATA_KEYS)
    if bad:
        raise InputError(f"{where}: unknown [data] key(s) {', '.join(bad)}")
    if "labels" not in data:
        raise InputError(f"{where}: [data] needs labels (a CSV with IMG_ID,LAT,LON)")
    if "images" not in data and "features" not in data:
        raise InputError(f"{where}: [data] needs images (a folder) or features (a store)")
    bad = sorted(set(cfg.get("train", {})) - TRAIN_KEYS)
    if bad:
        known = ", ".join(sorted(TRAIN_KEYS))
        raise InputError(f"{where}: unknown [train] key(s) {', '.join(bad)}; known: {known}")
    out = cfg.get("output", {})
    bad = sorted(set(out) - OUTPUT_KEYS)
    if bad:
        raise InputError(f"{where}: unknown [output] key(s) {', '.join(bad)}")
    if "path" not in out:
        raise InputError(f"{where}: [output] needs path (where the model file goes)")


def checkpoint_path(cfg: dict) -> Path:
    out = cfg["output"]
    if "checkpoint" in out:
        return Path(out["checkpoint"])
    p = Path(out["path"])
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.name
    return p.with_name(f"{stem}.ckpt.safetensors")
