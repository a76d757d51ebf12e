"""bench/simworld.py at a tiny size: the generated world, its table, and its scoring."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geolocus.geo import THRESHOLDS_KM, from_unit, to_unit
from geolocus.models import MODELS
from geolocus.models.base import GeoModel, ModelConfig

BENCH = Path(__file__).resolve().parents[1] / "bench" / "simworld.py"
ROW_KEYS = {"acc", "median_km", "nll", "train_s", "params"}
ACC_KEYS = {str(t) for t in THRESHOLDS_KM}


@pytest.fixture(scope="module")
def sw():
    spec = importlib.util.spec_from_file_location("simworld", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["simworld"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("simworld", None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("simworld")


TINY = ["--n-train", "2000", "--n-test", "200", "--n-dev", "200", "--no-progress"]


def run(sw, workdir: Path, out: Path, *extra: str) -> dict:
    sw.main([*TINY, "--workdir", str(workdir), "--json", str(out), *extra])
    return json.loads(out.read_text())


@dataclass
class UnitVectorConfig(ModelConfig):
    backbone: str = "simworld"
    embed_dim: int = 512


class UnitVectorHead(GeoModel):
    """A minimal head of the contract: regress the unit vector of the position."""

    model_type = "simworld-test"
    config_class = UnitVectorConfig

    def __init__(self, config: UnitVectorConfig | None = None) -> None:
        super().__init__()
        self.config = config or UnitVectorConfig()
        self.lin = nn.Linear(self.config.embed_dim, 3)
        self.prepared = 0

    def prepare(self, data) -> None:
        self.prepared = len(data)

    def loss(self, batch):
        target = torch.as_tensor(to_unit(batch["gps"][:, 0].numpy(), batch["gps"][:, 1].numpy()))
        return {"loss": ((self.lin(batch["image_emb"]) - target.float()) ** 2).mean()}

    @torch.no_grad()
    def gps_candidates(self, embedding, tokens=None, k: int = 5):
        v = self.lin(self._as_input(embedding)).numpy().astype(np.float64)
        lat, lon = from_unit(v / np.linalg.norm(v, axis=1, keepdims=True))
        coords = np.stack([lat, lon], 1)[:, None, :].repeat(k, 1)
        return coords, np.full((len(v), k), 1.0 / k)


def test_a_head_answering_the_truth_scores_100(sw):
    truth = np.array([[48.85, 2.35], [-33.87, 151.21], [40.71, -74.0]])
    row = sw.score(truth, truth, None, 1.5, 7)
    assert set(row) == ROW_KEYS and set(row["acc"]) == ACC_KEYS
    assert all(v == 100.0 for v in row["acc"].values()) and row["median_km"] == 0.0
    off = truth + np.array([0.0, 1.0])  # ~74–93 km east: misses 1 and 25 km, within 200
    row = sw.score(off, truth)
    assert row["acc"]["1"] == row["acc"]["25"] == 0.0 and row["acc"]["200"] == 100.0


def test_the_table_has_its_shape_and_the_world_is_reused(sw, workdir, tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS._entries, "simworld-test", UnitVectorHead)
    monkeypatch.setitem(sw.HEADS, "unit", ("simworld-test", {}))
    monkeypatch.setitem(sw.HEADS, "ghost", ("no-such-model-type", {}))
    out = run(
        sw,
        workdir,
        tmp_path / "a.json",
        "--noise",
        "0.05",
        "--heads",
        "unit,ghost",
        "--samples",
        "4000",
        "--epochs",
        "2",
    )
    assert set(out["baselines"]) == {"prior", "nearest"}
    for row in [*out["baselines"].values(), *out["heads"].values()]:
        assert set(row) == ROW_KEYS and set(row["acc"]) == ACC_KEYS
    assert out["heads"]["unit"]["nll"] is None and out["heads"]["unit"]["params"] == 512 * 3 + 3
    assert out["training"]["unit"]["samples_seen"] == 4000
    assert out["simulation"]["noise"]["sigma"] == 0.05 and out["commit"]
    assert out["missing_heads"] == ["ghost"] and set(out["heads"]) == {"unit"}
    world = Path(out["simulation"]["world"])
    feats = np.load(world / "feat-train-s0.05.npy", mmap_mode="r")
    assert isinstance(feats, np.memmap) and feats.shape == (2000, 512)
    assert not list(world.glob("*.partial*")) and not list(world.glob("*.tmp"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in world.glob("*.npy")}
    again = run(
        sw,
        workdir,
        tmp_path / "b.json",
        "--noise",
        "0.05",
        "--heads",
        "unit",
        "--samples",
        "4000",
        "--epochs",
        "2",
    )
    assert {p.name: p.stat().st_mtime_ns for p in world.glob("*.npy")} == mtimes
    assert again["heads"]["unit"] == out["heads"]["unit"]


def test_nearest_neighbour_is_far_better_without_noise(sw, workdir, tmp_path):
    clean = run(sw, workdir, tmp_path / "c.json", "--noise", "0", "--heads", "none")
    noisy = run(sw, workdir, tmp_path / "n.json", "--noise", "6", "--heads", "none")
    a0, a6 = clean["baselines"]["nearest"]["acc"], noisy["baselines"]["nearest"]["acc"]
    assert a0["200"] >= 60.0 and a0["200"] >= a6["200"] + 40.0
    assert clean["baselines"]["nearest"]["median_km"] < noisy["baselines"]["nearest"]["median_km"]
    assert clean["baselines"]["prior"] == noisy["baselines"]["prior"]  # no features used


def test_the_noise_is_calibrated_on_the_dev_draw(sw, workdir):
    world = sw.make_world(workdir, 2000, 200, 200)
    cal = sw.calibrate(world, 35.0)
    tried = {float(s): a for s, a in cal["tried"].items()}
    assert cal["sigma"] in tried and cal["dev_acc_25km"] == tried[cal["sigma"]]
    assert abs(cal["dev_acc_25km"] - 35.0) == min(abs(a - 35.0) for a in tried.values())
    levels = sorted(tried)
    assert tried[levels[0]] > tried[levels[-1]]  # more noise, less accurate


def test_bad_options_fail_in_one_line(sw, workdir, capsys):
    with pytest.raises(SystemExit) as e:
        sw.main([*TINY, "--workdir", str(workdir), "--heads", "nosuch"])
    assert "simworld: error: unknown head(s) nosuch" in str(e.value)
    with pytest.raises(SystemExit) as e:
        sw.main([*TINY, "--workdir", str(workdir), "--samples", "0"])
    assert "must be positive" in str(e.value)
