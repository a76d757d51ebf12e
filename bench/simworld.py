"""A simulated world in which to compare the trainable heads at the scale they were made for.

IM2GPS3k gives ~2,000 training photos of weak offline features; the papers train on
4–5 M. Here every head is trained the same way on a simulated world instead:

- **positions**: drawn (uniformly, with replacement) from GeoCLIP's 100K gallery — the
  MP16 photo distribution — each moved by Gaussian jitter of ``--jitter-km`` (per axis,
  north and east) so no two photos share a position; train, dev and test are separate
  draws from that one distribution (so a test photo usually has training photos
  within a few km: dense coverage, as MP16 has around its popular places);
- **a photo's features**: GeoCLIP's pretrained location encoder at its position
  (unit 512-d, its MLPs run in bfloat16 for speed unless ``--fp32``: cosine to the
  float32 encoding ≥ 0.9999), plus isotropic Gaussian noise of norm ≈ σ
  (``σ · N(0, I/512)``), through a fixed random rotation (an orthogonal matrix from
  the seed): ``x = R (e(p) + σ z)``;
- **σ is calibrated on a dev draw** (never on the test draw): the level at which
  cosine nearest-neighbour retrieval of the dev photos from the training set is right
  within 25 km for ``--target-25km`` % of them (default 35, the middle of GeoCLIP's
  published 30–40 %), found by bisection on log σ, every level tried recorded;
- **heads**: every registered model type of :data:`HEADS` is created by name
  (:func:`geolocus.models.create_model`, its config's defaults — sized for millions of
  photos — plus the few fields of :data:`HEADS`), fitted (``prepare(TrainingSet)``),
  trained by :func:`geolocus.train.fit` with the same budget (by default the same number
  of training samples, ``--samples`` in ``--epochs`` epochs of fresh random rows, batch
  ``--batch-size``; or ``--budget-s`` seconds of wall-clock; each head's learning rate and
  weight decay from its ``configs/<type>.toml``) and answers through
  ``gps_candidates(features, k=1)``; baselines ``prior`` (always the most frequent cell's
  mean position: an equal-area grid of ``--prior-cell-km`` cells) and ``nearest``
  (FAISS exact cosine nearest neighbour in the training set).

Everything generated is kept in ``--workdir`` (memory-mappable .npy, written
atomically, the long location encoding resumable in blocks), and each finished head's
figures too, keyed by what they depend on: a rerun reuses them.

    .venv/bin/python bench/simworld.py --json bench/results/simworld-1m.json
    .venv/bin/python bench/simworld.py --n-train 100000 --heads geoclip,planet --json out.json

A simulation: the features are a noisy rotation of GeoCLIP's own location embedding,
so it measures how well each head turns features that *determine* the position up to
noise into an answer — not how well it copes with what real photos carry (scene
content, ambiguity, duplicates, the gap between training and test photos).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geolocus.files import atomic_path, write_text_atomic
from geolocus.geo import THRESHOLDS_KM, haversine_km, spherical_mean

FORMAT = "simworld-1"
DIM = 512  # GeoCLIP's location space
EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE = np.pi * EARTH_RADIUS_KM / 180.0
ROOT = Path(__file__).resolve().parents[1]

#: Table name -> (model type, config fields beyond backbone/embed_dim). DualGeo has no
#: patch tokens here: each photo is one patch (its feature as a 1x1 token grid), so its
#: codebook's "segmentation" is a k-means class of the whole feature. TransGeoCLIP has no
#: place sentences here: its image↔GPS view alone (``use_text=False``, the paper's
#: ablation), with its own location encoder trained from scratch.
HEADS: dict[str, tuple[str, dict[str, Any]]] = {
    "geoclip": ("geoclip", {}),
    "dualgeo": ("dualgeo", {}),
    "transgeoclip": ("transgeoclip", {"use_text": False}),
    "planet": ("planet", {}),
    "hybrid": ("hybrid", {}),
    "pigeon": ("pigeon", {}),
    "plonk": ("plonk", {"samples": 16, "steps": 16}),
}
#: Heads whose answers cost too much to score every test photo on these CPUs: scored on the
#: first ``--slow-test`` test photos (PLONK: every answer is 16 samples × 16 Euler steps
#: with the exact divergence, ~0.6 s a photo on one loaded core; its config's 64 × 32 would
#: be ~4 s), the baselines beside them on the same photos.
SLOW_HEADS = ("plonk",)
BASELINES = ("prior", "nearest")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(total: int, desc: str, initial: int = 0):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit="row", leave=False, dynamic_ncols=True
    )


# ----------------------------------------------------------------------------- the world


def jitter(coords: np.ndarray, km: float, rng: np.random.Generator) -> np.ndarray:
    """``coords`` moved by Gaussian offsets of ``km`` (per axis: north, east), latitudes
    clipped to ±90, longitudes wrapped to [-180, 180)."""
    c = np.asarray(coords, dtype=np.float64)
    d = rng.normal(0.0, km, (len(c), 2)) / KM_PER_DEGREE
    lat = np.clip(c[:, 0] + d[:, 0], -90.0, 90.0)
    coslat = np.maximum(np.cos(np.radians(lat)), 1e-3)
    lon = (c[:, 1] + d[:, 1] / coslat + 180.0) % 360.0 - 180.0
    return np.stack([lat, lon], 1)


def rotation(seed: int, dim: int = DIM) -> np.ndarray:
    """A fixed random orthogonal ``(dim, dim)`` matrix (QR of a seeded Gaussian matrix)."""
    q, r = np.linalg.qr(np.random.default_rng([seed, 7]).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def location_encoder(fp32: bool = False):
    """GeoCLIP's pretrained location encoder (from the geoclip wheel's weights); its MLPs
    in bfloat16 unless ``fp32`` (the Fourier features stay float32: their phases need it)."""
    import torch

    from geolocus.encoders.location.geoclip import GeoCLIPLocationEncoder

    enc = GeoCLIPLocationEncoder.from_pretrained().eval()
    if not fp32:
        for m in enc.modules():
            if isinstance(m, torch.nn.Linear):
                m.to(torch.bfloat16)
    return enc


def encode_resumable(path: Path, coords: np.ndarray, enc, block: int = 65_536) -> np.ndarray:
    """Unit location embeddings of ``coords`` in ``path`` (.npy, memory-mapped), encoded
    block by block into ``path.partial.npy``; an interrupted run continues at the first
    unfinished block; the file appears under its name only when complete."""
    from geolocus.models.gallery import encode_locations

    n = len(coords)
    if path.exists():
        mm = np.load(path, mmap_mode="r")
        if mm.shape == (n, DIM):
            return mm
    part = path.with_name(path.stem + ".partial.npy")
    done_file = path.with_name(path.stem + ".done")
    done = 0
    if part.exists() and done_file.exists():
        done = int(done_file.read_text() or 0)
        out = np.load(part, mmap_mode="r+")
        if out.shape != (n, DIM):
            done = 0
    if done == 0:
        out = np.lib.format.open_memmap(part, mode="w+", dtype=np.float32, shape=(n, DIM))
    bar = _progress(n, f"encoding {path.stem}", done)
    for i in range(done, n, block):
        j = min(n, i + block)
        encode_locations(enc, coords[i:j], batch_size=1024, progress=False, out=out[i:j])
        out.flush()
        write_text_atomic(done_file, str(j))
        bar.update(j - i)
    bar.close()
    del out
    os.replace(part, path)
    done_file.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def noise_block(seed: int, split: str, block: int, rows: int) -> np.ndarray:
    """The first ``rows`` rows of the standard noise ``z ~ N(0, I/DIM)`` of block ``block`` of
    ``split``: the same numbers whenever asked for (calibration and the written features
    agree; a shorter request is a prefix of a longer one)."""
    tag = {"train": 0, "test": 1, "dev": 2}[split]
    rng = np.random.default_rng([seed, tag, block])
    return rng.standard_normal((rows, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM))


BLOCK = 65_536  # rows per noise block


def noisy(loc: np.ndarray, sigma: float, seed: int, split: str, i: int, j: int) -> np.ndarray:
    """Rows ``i:j`` (``i`` a multiple of BLOCK) of ``loc + σ z`` (before the rotation)."""
    out = []
    for b0 in range(i, j, BLOCK):
        b1 = min(j, b0 + BLOCK)
        z = noise_block(seed, split, b0 // BLOCK, b1 - b0)
        out.append(np.asarray(loc[b0:b1], dtype=np.float32) + np.float32(sigma) * z)
    return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class World:
    """One generated world: positions, clean encodings, and (after :meth:`features`) the
    noisy rotated features of a noise level."""

    root: Path
    seed: int
    gps: dict[str, np.ndarray]  # split -> (n, 2)
    loc: dict[str, np.ndarray]  # split -> (n, DIM) unit, memory-mapped

    def features(self, split: str, sigma: float) -> np.ndarray:
        """``R (e + σ z)`` of ``split`` as a float32 memory-mapped .npy (written once)."""
        path = self.root / f"feat-{split}-s{sigma:.6g}.npy"
        n = len(self.gps[split])
        if path.exists():
            mm = np.load(path, mmap_mode="r")
            if mm.shape == (n, DIM):
                return mm
        rot_t = rotation(self.seed).T
        with atomic_path(path) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, DIM))
            bar = _progress(n, f"features {split} σ={sigma:g}")
            for i in range(0, n, BLOCK):
                j = min(n, i + BLOCK)
                mm[i:j] = noisy(self.loc[split], sigma, self.seed, split, i, j) @ rot_t
                bar.update(j - i)
            bar.close()
            mm.flush()
            del mm
        return np.load(path, mmap_mode="r")


def world_key(n_train: int, n_test: int, n_dev: int, seed: int, jitter_km: float, fp32: bool):
    what = [FORMAT, n_train, n_test, n_dev, seed, jitter_km, "fp32" if fp32 else "bf16"]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]


def make_world(
    workdir: str | os.PathLike[str],
    n_train: int,
    n_test: int,
    n_dev: int = 1000,
    seed: int = 0,
    jitter_km: float = 3.0,
    fp32: bool = False,
) -> World:
    """Generate (or reopen) the world of these settings under ``workdir``."""
    from geolocus.models.gallery import load_geoclip_coords

    key = world_key(n_train, n_test, n_dev, seed, jitter_km, fp32)
    root = Path(workdir) / f"world-{n_train}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    gallery = load_geoclip_coords()
    gps, loc = {}, {}
    enc = None
    for split, n in (("train", n_train), ("test", n_test), ("dev", n_dev)):
        p = root / f"gps-{split}.npy"
        if not p.exists():
            rng = np.random.default_rng([seed, {"train": 10, "test": 11, "dev": 12}[split]])
            pos = jitter(gallery[rng.integers(0, len(gallery), n)], jitter_km, rng)
            with atomic_path(p) as tmp, open(tmp, "wb") as fh:
                np.save(fh, pos)
        gps[split] = np.load(p)
        lp = root / f"loc-{split}.npy"
        if not (lp.exists() and np.load(lp, mmap_mode="r").shape == (n, DIM)):
            enc = enc or location_encoder(fp32)
            t0 = time.perf_counter()
            loc[split] = encode_resumable(lp, gps[split], enc)
            log(f"encoded {n} {split} positions in {time.perf_counter() - t0:.0f} s")
        else:
            loc[split] = np.load(lp, mmap_mode="r")
    return World(root, seed, gps, loc)


# ----------------------------------------------------------------------------- calibration


def dev_nearest(world: World, sigmas: np.ndarray) -> np.ndarray:
    """For each noise level of ``sigmas``, the row of each dev photo's cosine nearest neighbour
    among the training rows, ``(len(sigmas), n_dev)``.

    One pass over the training set serves every level: with unit encodings ``e``, standard
    noise ``z`` and a query ``q ∝ e_q + σ z_q``, the cosine to row i is proportional (per
    query) to ``(e_q·e_i + σ (z_q·e_i + e_q·z_i) + σ² z_q·z_i) / ‖e_i + σ z_i‖``, so two
    matrix products per block give the ranking at every σ (the rotation changes no cosine).
    """
    import torch

    n_dev, n = len(world.gps["dev"]), len(world.gps["train"])
    e_q = torch.from_numpy(np.array(world.loc["dev"], dtype=np.float32))
    z_q = torch.from_numpy(noisy(world.loc["dev"], 1.0, world.seed, "dev", 0, n_dev)) - e_q
    q = torch.cat([e_q, z_q])
    s = torch.as_tensor(np.asarray(sigmas, dtype=np.float32))
    best = torch.full((len(s), n_dev), -torch.inf)
    arg = torch.zeros((len(s), n_dev), dtype=torch.long)
    bar = _progress(n, f"nearest neighbours of the dev draw at {len(s)} noise levels")
    sub = 8192  # rows per product: the (n_dev, sub) matrices stay small
    buf = torch.empty((n_dev, sub))
    for i in range(0, n, BLOCK):
        j = min(n, i + BLOCK)
        zb = noise_block(world.seed, "train", i // BLOCK, j - i)
        for i0 in range(i, j, sub):
            i1 = min(j, i0 + sub)
            e = torch.from_numpy(np.array(world.loc["train"][i0:i1], dtype=np.float32))
            z = torch.from_numpy(zb[i0 - i : i1 - i])
            pe, pz = q @ e.T, q @ z.T  # (2 n_dev, rows)
            a, cross, d = pe[:n_dev], pe[n_dev:] + pz[:n_dev], pz[n_dev:]
            ee, ez, zz = (e * e).sum(1), (e * z).sum(1), (z * z).sum(1)
            sim = buf[:, : i1 - i0]
            for g, sg in enumerate(s.tolist()):
                torch.add(a, cross, alpha=sg, out=sim)
                sim.add_(d, alpha=sg * sg).div_(torch.sqrt(ee + 2 * sg * ez + sg * sg * zz))
                m, k = sim.max(dim=1)
                better = m > best[g]
                best[g] = torch.where(better, m, best[g])
                arg[g] = torch.where(better, k + i0, arg[g])
        bar.update(j - i)
    bar.close()
    return arg.numpy()


#: Noise levels of the calibration's first pass (30 % apart); the second pass tries 12
#: levels evenly between the two that bracket the target.
SIGMA_COARSE = np.round(np.geomspace(0.5, 8.0, 12), 4)


def dev_accuracy(world: World, sigmas: np.ndarray) -> dict[float, float]:
    """σ -> % of the dev draw whose nearest training row (at that σ) lies within 25 km."""
    t = world.gps["dev"]
    acc = {}
    for s, rows in zip(sigmas, dev_nearest(world, sigmas), strict=True):
        g = world.gps["train"][rows]
        acc[float(s)] = float(100 * np.mean(haversine_km(g[:, 0], g[:, 1], t[:, 0], t[:, 1]) <= 25))
    return acc


def calibrate(world: World, target: float | None, sigma: float | None = None) -> dict:
    """The noise level: ``sigma`` as given (``target`` None), else the σ whose dev
    nearest-neighbour accuracy at 25 km is nearest ``target`` % — a coarse pass over
    :data:`SIGMA_COARSE`, then 12 levels evenly between the two that bracket the target;
    every level's accuracy is kept. Cached in the world folder."""
    path = world.root / f"noise-{row_key(target, sigma, SIGMA_COARSE.tolist())}.json"
    if path.exists():
        return json.loads(path.read_text())
    if target is None:
        assert sigma is not None
        acc = dev_accuracy(world, np.array([sigma]))
    else:
        acc = dev_accuracy(world, SIGMA_COARSE)
        above = [s for s, a in acc.items() if a >= target]  # accuracy falls as σ grows
        below = [s for s, a in acc.items() if a < target]
        if above and below:
            lo, hi = max(above), min(below)
            acc.update(dev_accuracy(world, np.round(np.linspace(lo, hi, 14)[1:-1], 4)))
        sigma = min(acc, key=lambda s: abs(acc[s] - target))
    out = {
        "sigma": sigma,
        "dev_acc_25km": acc[sigma],
        "target_25km": target,
        "n_dev": len(world.gps["dev"]),
        "tried": {f"{s:g}": round(v, 2) for s, v in sorted(acc.items())},
    }
    write_text_atomic(path, json.dumps(out, indent=1))
    return out


# ----------------------------------------------------------------------------- scoring


def score(
    pred: np.ndarray,
    truth: np.ndarray,
    nll: float | None = None,
    train_s: float = 0.0,
    params: int = 0,
) -> dict:
    """One row of the table: ``acc`` (% within each threshold, keys "1" … "2500"),
    ``median_km``, ``nll`` (None for a head without a likelihood), ``train_s``, ``params``."""
    from geolocus.eval import score_errors

    e = haversine_km(pred[:, 0], pred[:, 1], truth[:, 0], truth[:, 1])
    sc = score_errors(e)
    return {
        "acc": {str(t): round(sc.acc[str(t)], 2) for t in THRESHOLDS_KM},
        "median_km": round(sc.median_km, 1),
        "nll": None if nll is None else round(float(nll), 4),
        "train_s": round(float(train_s), 1),
        "params": int(params),
    }


# ----------------------------------------------------------------------------- baselines


def equal_area_cells(gps: np.ndarray, cell_km: float) -> np.ndarray:
    """Cell id of each (lat, lon) in an equal-area grid of cells of about ``cell_km`` ×
    ``cell_km``: latitude bands of equal area (edges equally spaced in sin lat), each cut
    into equal longitude sectors, so every cell has the same area."""
    n_bands = max(1, round(np.pi * EARTH_RADIUS_KM / cell_km))
    per_band = max(1, round(4 * np.pi * EARTH_RADIUS_KM**2 / cell_km**2 / n_bands))
    s = np.sin(np.radians(np.asarray(gps[:, 0], dtype=np.float64)))
    band = np.clip(((s + 1.0) / 2.0 * n_bands).astype(np.int64), 0, n_bands - 1)
    sector = np.clip(((gps[:, 1] + 180.0) / 360.0 * per_band).astype(np.int64), 0, per_band - 1)
    return band * per_band + sector


def prior_answer(train_gps: np.ndarray, cell_km: float) -> tuple[np.ndarray, int]:
    """The mean position of the training photos of the grid's most frequent cell, and the
    number of cells with photos."""
    cells = equal_area_cells(train_gps, cell_km)
    ids, counts = np.unique(cells, return_counts=True)
    top = ids[np.argmax(counts)]
    lat, lon = spherical_mean(*train_gps[cells == top].T)
    return np.array([float(lat), float(lon)]), len(ids)


def run_prior(train_gps: np.ndarray, test_gps: np.ndarray, cell_km: float) -> dict:
    t0 = time.perf_counter()
    answer, n_cells = prior_answer(train_gps, cell_km)
    dt = time.perf_counter() - t0
    row = score(np.repeat(answer[None], len(test_gps), 0), test_gps, None, dt, 0)
    return {**row, "_info": {"answer": answer.tolist(), "cells": n_cells, "cell_km": cell_km}}


def run_nearest(
    train: np.ndarray, train_gps: np.ndarray, test: np.ndarray, test_gps: np.ndarray
) -> dict:
    """FAISS exact inner product over L2-normalised rows (cosine), all training rows."""
    import faiss

    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(train.shape[1])
    for i in range(0, len(train), BLOCK):
        index.add(l2n(np.asarray(train[i : i + BLOCK], dtype=np.float32)))
    build = time.perf_counter() - t0
    nn = np.empty(len(test), dtype=np.int64)
    bar = _progress(len(test), "nearest neighbour")
    for i in range(0, len(test), 2048):
        _, idx = index.search(l2n(np.asarray(test[i : i + 2048], dtype=np.float32)), 1)
        nn[i : i + len(idx)] = idx[:, 0]
        bar.update(len(idx))
    bar.close()
    row = score(train_gps[nn], test_gps, None, build, 0)
    return {**row, "_info": {"index": "IndexFlatIP (exact, cosine)"}}


# ----------------------------------------------------------------------------- heads


def available_heads(names: list[str]) -> tuple[list[str], list[str]]:
    """``names`` split into those whose model type is registered and those not (yet)."""
    from geolocus.models import list_models

    known = set(list_models())
    present = [n for n in names if HEADS[n][0] in known]
    return present, [n for n in names if n not in present]


def config_train_settings(model_type: str) -> dict:
    """``lr`` and ``weight_decay`` of ``configs/<type>.toml`` (1e-3 / 1e-6 without one)."""
    p = ROOT / "configs" / f"{model_type}.toml"
    train = tomllib.loads(p.read_text()).get("train", {}) if p.exists() else {}
    return {
        "lr": float(train.get("lr", 1e-3)),
        "weight_decay": float(train.get("weight_decay", 1e-6)),
        "config": str(p.relative_to(ROOT)) if p.exists() else None,
    }


@dataclass(frozen=True)
class Budget:
    """The same training budget for every head, in ``epochs`` epochs of batches of
    ``batch_size``: ``samples`` training samples in all (each epoch a fresh random
    ``samples // epochs`` rows, none twice), or, with ``seconds``, as many batches as fit in
    ``seconds / epochs`` of wall-clock per epoch (at most one pass over the training set
    an epoch). Fitting (``prepare``: cells, prototypes) is outside the budget."""

    samples: int | None = None
    seconds: float | None = None
    epochs: int = 4
    batch_size: int = 256
    seed: int = 0

    def per_epoch(self, n: int) -> int:
        """Rows drawn per epoch (the most, under a time budget)."""
        if self.samples is None:
            return n
        return min(n, max(1, self.samples // self.epochs))

    def describe(self) -> str:
        if self.seconds:
            what = f"{self.seconds:g} s of training in "
        elif self.samples:
            what = f"{self.samples} samples in "
        else:
            what = ""
        return f"{what}{self.epochs} epochs, batch {self.batch_size}"


def budget_batches(ts, budget: Budget, seen: list[int]) -> Callable[[int], Iterator[dict]]:
    """``epoch -> batches`` for :func:`geolocus.train.fit` under ``budget``: each epoch a
    seeded random permutation of the training rows, cut by the budget; the samples drawn
    are added to ``seen[0]``."""
    from geolocus.train.loop import minibatches

    n, m = len(ts), budget.per_epoch(len(ts))

    def gen(epoch: int) -> Iterator[dict]:
        rows = np.random.default_rng([budget.seed, 99, epoch]).permutation(n)[:m]
        t0 = time.perf_counter()
        for b in minibatches(m, budget.batch_size, epoch, budget.seed):
            if budget.seconds and time.perf_counter() - t0 > budget.seconds / budget.epochs:
                return
            seen[0] += len(b)
            yield ts.batch(rows[b])

    return gen


def tokens_of(model, emb: np.ndarray, tokens: np.ndarray | None) -> np.ndarray | None:
    """The patch tokens a model needs: the given ones, else each feature as a 1x1 grid."""
    if not model.needs_tokens:
        return None
    return tokens if tokens is not None else emb[:, None, :]


def config_model_fields(model_type: str) -> dict[str, Any]:
    """The ``[model]`` fields of ``configs/<type>.toml`` that differ from the model's
    defaults (what sizes it for ~2,000 photos), without type, backbone and dimensions."""
    from dataclasses import fields

    from geolocus.models import model_class

    p = ROOT / "configs" / f"{model_type}.toml"
    if not p.exists():
        return {}
    given = tomllib.loads(p.read_text()).get("model", {})
    defaults = {f.name: f for f in fields(model_class(model_type).config_class)}
    skip = {"type", "backbone", "embed_dim", "token_dim"}
    out = {}
    for k, v in given.items():
        f = defaults.get(k)
        if k in skip or f is None:
            continue
        if f.default is not MISSING and f.default == v:
            continue
        out[k] = v
    return out


def train_head(name: str, ts, budget: Budget, progress: bool = True, config: dict | None = None):
    """Create head ``name`` by its model type (with ``config``'s fields, then
    :data:`HEADS`'), ``prepare`` it on ``ts``, train it with :func:`geolocus.train.fit`
    under ``budget``; returns (model in eval mode, seconds, training record)."""
    from dataclasses import fields, replace

    from geolocus.models import create_model, model_class
    from geolocus.train import TrainConfig, fit, seed_everything

    mtype, extra = HEADS[name]
    cls = model_class(mtype)
    if cls.needs_tokens and ts.tokens is None:  # no patches here: each feature a 1x1 grid
        ts = replace(ts, tokens=ts.embeddings[:, None, :])
    names = {f.name for f in fields(cls.config_class)}
    cfg: dict[str, Any] = {"backbone": ts.backbone, **(config or {}), **extra}
    if "embed_dim" in names:
        cfg["embed_dim"] = int(ts.embeddings.shape[1])
    if "token_dim" in names and ts.tokens is not None:
        cfg["token_dim"] = int(ts.tokens.shape[2])
    seed_everything(budget.seed)
    model = create_model(mtype, **cfg)
    opt = config_train_settings(mtype)
    tc = TrainConfig(
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        lr=opt["lr"],
        weight_decay=opt["weight_decay"],
        seed=budget.seed,
    )
    t0 = time.perf_counter()
    model.prepare(ts)
    prep_s = time.perf_counter() - t0
    steps = None if budget.seconds else -(-budget.per_epoch(len(ts)) // budget.batch_size)
    seen = [0]
    res = fit(model, budget_batches(ts, budget, seen), tc, steps_per_epoch=steps, progress=progress)
    train_s = time.perf_counter() - t0
    record = {
        "type": mtype,
        "config": {k: v for k, v in cfg.items() if k != "backbone"},
        "lr": tc.lr,
        "weight_decay": tc.weight_decay,
        "lr_from": opt["config"],
        "samples_seen": seen[0],
        "epochs_of_training_set": round(seen[0] / len(ts), 3),
        "budget": budget.describe(),
        "prepare_s": round(prep_s, 1),
        "loss_per_epoch": [round(h["loss"], 4) for h in res.history],
    }
    return model.eval(), train_s, record


def trainable_params(model) -> int:
    """Parameters the training updates (a frozen pretrained location encoder is not
    counted; fitted buffers — cells, prototypes — are not parameters)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def predict_top1(
    model, emb: np.ndarray, tokens: np.ndarray | None = None, batch: int = 512
) -> np.ndarray:
    """Each row's most probable answer, ``(n, 2)``, through ``gps_candidates(k=1)``."""
    out = np.empty((len(emb), 2))
    for i in range(0, len(emb), batch):
        x = np.asarray(emb[i : i + batch], dtype=np.float32)
        tok = tokens_of(
            model, x, None if tokens is None else np.asarray(tokens[i : i + batch], np.float32)
        )
        coords, _ = model.gps_candidates(x, tok, k=1)
        out[i : i + len(x)] = coords[:, 0]
    return out


#: What the NLL column is: a head's ``nll(embedding, gps)`` (PLONK's), per photo.
NLL_UNIT = "nats per steradian of the unit sphere (uniform over the Earth: log 4π ≈ 2.53)"


def log_likelihoods(model, emb: np.ndarray, gps: np.ndarray, batch: int = 256):
    """Each row's log-likelihood of its true position where the head has a density on the
    sphere (a method ``nll(embedding, gps) -> (B,)``, in :data:`NLL_UNIT`), else None."""
    if not hasattr(model, "nll"):
        return None
    out = []
    for i in range(0, len(emb), batch):
        x = np.asarray(emb[i : i + batch], dtype=np.float32)
        nll = model.nll(x, np.asarray(gps[i : i + batch], dtype=np.float64))
        out.append(-np.asarray(nll, dtype=np.float64).reshape(-1))
    return np.concatenate(out)


def fit_predict(
    name: str,
    ts,
    test_emb,
    test_gps,
    budget: Budget,
    test_tokens=None,
    progress: bool = True,
    config: dict | None = None,
):
    """Train head ``name`` on ``ts`` (``config``: model fields, see :func:`train_head`); its
    top answer and (if it has one) log-likelihood for each test row, its training seconds,
    trainable parameters and training record."""
    model, train_s, record = train_head(name, ts, budget, progress, config)
    t0 = time.perf_counter()
    pred = predict_top1(model, test_emb, test_tokens)
    record["predict_s"] = round(time.perf_counter() - t0, 1)
    ll = log_likelihoods(model, test_emb, test_gps)
    return pred, ll, train_s, trainable_params(model), record


def run_head(
    name: str, ts, test_emb, test_gps, budget: Budget, test_tokens=None, progress: bool = True
) -> dict:
    """Train head ``name`` on ``ts`` and score it on the test rows (a table row plus
    ``_info``: how it was trained and how long it took to answer)."""
    pred, ll, train_s, params, record = fit_predict(
        name, ts, test_emb, test_gps, budget, test_tokens, progress
    )
    nll = None if ll is None else -float(np.mean(ll))
    record["test_photos"] = len(test_gps)
    return {**score(pred, test_gps, nll, train_s, params), "_info": record}


# ----------------------------------------------------------------------------- the bench


def cached(path: Path, fn: Callable[[], dict]) -> dict:
    """``fn()``'s result, kept in ``path`` (JSON, atomic): computed once per key."""
    if path.exists():
        return json.loads(path.read_text())
    out = fn()
    write_text_atomic(path, json.dumps(out, indent=1))
    return out


def row_key(*what: Any) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def machine(threads: int) -> dict:
    """The threads used, the CPUs and the load at the end: the figures depend on them."""
    return {
        "threads": threads,
        "cpus": os.cpu_count(),
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "bench"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def split_table(rows: dict[str, dict]) -> tuple[dict, dict]:
    """Rows without their ``_info``, and the ``_info`` apart."""
    clean = {k: {f: v for f, v in r.items() if f != "_info"} for k, r in rows.items()}
    return clean, {k: r.get("_info", {}) for k, r in rows.items()}


def markdown(heads: dict, baselines: dict, notes: dict[str, str] | None = None) -> str:
    """The table as markdown (accuracy %, median km, NLL, training seconds, parameters);
    ``notes``: text added after a row's name."""
    th = " | ".join(f"{t:g} km" for t in THRESHOLDS_KM)
    lines = [f"| head | {th} | median km | NLL | train s | params |", "|---" * 10 + "|"]
    for kind, rows in (("baseline", baselines), ("head", heads)):
        for name, r in rows.items():
            acc = " | ".join(f"{r['acc'][str(t)]:.1f}" for t in THRESHOLDS_KM)
            nll = "–" if r["nll"] is None else f"{r['nll']:.2f}"
            label = f"{name} ({kind})" if kind == "baseline" else name
            label += (notes or {}).get(name, "")
            lines.append(
                f"| {label} | {acc} | {r['median_km']:.0f} | {nll} | {r['train_s']:.0f} | "
                f"{r['params']:,} |"
            )
    return "\n".join(lines)


def parse_heads(spec: str) -> list[str]:
    names = [h for h in spec.split(",") if h and h != "none"]
    bad = [h for h in names if h not in HEADS]
    if bad:
        sys.exit(f"simworld: error: unknown head(s) {', '.join(bad)}; known: {', '.join(HEADS)}")
    return names


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=1_000_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--n-dev", type=int, default=1_000, help="dev draw for the noise level")
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--workdir", default="cache/simworld")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jitter-km", type=float, default=3.0)
    ap.add_argument("--noise", default="auto", help="σ, or 'auto': calibrated on the dev draw")
    ap.add_argument("--target-25km", type=float, default=35.0)
    ap.add_argument("--heads", default=",".join(HEADS), help="comma-separated; 'none'")
    ap.add_argument(
        "--samples", type=int, default=51_200, help="the budget: training samples per head"
    )
    ap.add_argument(
        "--budget-s", type=float, help="the budget as seconds of training per head (wall-clock)"
    )
    ap.add_argument(
        "--slow-test",
        type=int,
        default=500,
        help=f"test photos scoring the slow heads ({', '.join(SLOW_HEADS)})",
    )
    ap.add_argument(
        "--skip-baselines",
        action="store_true",
        help="only the heads (e.g. beside a run computing the baselines); they are left out",
    )
    ap.add_argument("--epochs", type=int, default=4, help="the budget in this many epochs")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--prior-cell-km", type=float, default=300.0)
    ap.add_argument("--fp32", action="store_true", help="location encoder in float32 (slower)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    heads = parse_heads(args.heads)
    if args.samples < 1 or (args.budget_s is not None and args.budget_s <= 0):
        sys.exit("simworld: error: the budget (--samples, --budget-s) must be positive")
    for flag in ("n_train", "n_test", "n_dev", "epochs", "batch_size"):
        if getattr(args, flag) < 1:
            sys.exit(f"simworld: error: --{flag.replace('_', '-')} must be at least 1")
    import torch

    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    t_all = time.perf_counter()
    world = make_world(
        args.workdir, args.n_train, args.n_test, args.n_dev, args.seed, args.jitter_km, args.fp32
    )
    if args.noise == "auto":
        cal = calibrate(world, args.target_25km)
    else:
        cal = calibrate(world, None, float(args.noise))
    sigma = float(cal["sigma"])
    log(f"noise σ = {sigma:g}: dev nearest-neighbour {cal['dev_acc_25km']:.1f} % within 25 km")
    train, test = world.features("train", sigma), world.features("test", sigma)
    train_gps, test_gps = world.gps["train"], world.gps["test"]
    runs = world.root / "rows"
    runs.mkdir(exist_ok=True)

    baselines = (
        {}
        if args.skip_baselines
        else {
            "prior": cached(
                runs / f"prior-{row_key(args.prior_cell_km)}.json",
                lambda: run_prior(train_gps, test_gps, args.prior_cell_km),
            ),
            "nearest": cached(
                runs / f"nearest-{row_key(sigma)}.json",
                lambda: run_nearest(train, train_gps, test, test_gps),
            ),
        }
    )
    from geolocus.train.data import TrainingSet

    ts = TrainingSet(
        ids=[str(i) for i in range(len(train_gps))],
        gps=train_gps,
        embeddings=train,
        backbone="simworld",
    )
    budget = Budget(
        None if args.budget_s else args.samples,
        args.budget_s,
        args.epochs,
        args.batch_size,
        args.seed,
    )
    present, missing = available_heads(heads)
    rows: dict[str, dict] = {}
    for name in present:
        limit = args.slow_test if name in SLOW_HEADS else len(test)
        key = row_key(name, HEADS[name], sigma, budget, config_train_settings(HEADS[name][0]))
        key += "" if limit == len(test) else f"-test{limit}"
        log(
            f"{name}: training on {len(ts)} photos ({budget.describe()}; "
            f"load {os.getloadavg()[0]:.1f})"
        )
        rows[name] = cached(
            runs / f"{name}-{key}.json",
            lambda name=name, limit=limit: run_head(
                name, ts, test[:limit], test_gps[:limit], budget, progress=not args.no_progress
            ),
        )
        r = rows[name]
        log(f"{name}: {r['acc']} in {r['train_s']:.0f} s")
    heads_t, heads_info = split_table(rows)
    base_t, base_info = split_table(baselines)
    subset = {}
    if (
        any(n in SLOW_HEADS for n in rows)
        and not args.skip_baselines
        and args.slow_test < len(test)
    ):
        k = args.slow_test
        subset = {
            "test_photos": k,
            "heads": [n for n in rows if n in SLOW_HEADS],
            "baselines": split_table(
                {
                    "prior": cached(
                        runs / f"prior-{row_key(args.prior_cell_km, k)}.json",
                        lambda: run_prior(train_gps, test_gps[:k], args.prior_cell_km),
                    ),
                    "nearest": cached(
                        runs / f"nearest-{row_key(sigma, k)}.json",
                        lambda: run_nearest(train, train_gps, test[:k], test_gps[:k]),
                    ),
                }
            )[0],
        }
    precision = "float32" if args.fp32 else "bfloat16"
    out = {
        "heads": heads_t,
        "baselines": base_t,
        "simulation": {
            "n_train": args.n_train,
            "n_test": args.n_test,
            "n_dev": args.n_dev,
            "seed": args.seed,
            "jitter_km": args.jitter_km,
            "noise": cal,
            "location_encoder": f"geoclip pretrained, MLPs in {precision}",
            "features": "R (e(p) + sigma z), z ~ N(0, I/512), R a seeded random rotation",
            "world": str(world.root),
        },
        "budget": {
            "kind": "samples" if budget.samples else "wall-clock seconds of training",
            "samples": budget.samples,
            "seconds": budget.seconds,
            "epochs": budget.epochs,
            "batch_size": budget.batch_size,
            "note": "fitting (prepare) and answering are outside the budget; train_s "
            "includes prepare",
        },
        "nll_unit": NLL_UNIT,
        "slow_heads_subset": subset,
        "training": heads_info,
        "baseline_info": base_info,
        "missing_heads": missing,
        "commit": git_commit(),
        "machine": machine(args.threads),
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    notes = {
        n: f" (first {i['test_photos']} test photos)"
        for n, i in heads_info.items()
        if i.get("test_photos", len(test)) < len(test)
    }
    print(markdown(heads_t, base_t, notes))
    if subset:
        print(markdown({}, subset["baselines"], {b: f" (first {k})" for b in BASELINES}))
    if missing:
        print(f"not registered (yet): {', '.join(missing)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
