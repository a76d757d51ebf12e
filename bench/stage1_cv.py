"""Stage-1 models on IM2GPS3k: photographer-grouped 3-fold cross-validation.

For each outer fold f of ``grouped_folds(ids, 3)`` every model is trained on
the other two folds and predicts fold f

  (a) image → GPS: the most probable of GeoCLIP's 100K gallery coordinates
      (for models with a GPS embedding space: GeoCLIP's head, DualGeo's fused
      view, TransGeoCLIP's image view), and
  (b) image → image: the position of the nearest training photo in the
      model's retrieval embedding (``embed_image``), and
  (c) (b)'s 20 nearest neighbours re-ranked by the stage-2 ``dualgeo`` and
      ``kde`` refiners (default parameters: nothing fitted),

against the backbone's plain nearest neighbour (cosine over its embeddings)
on the same folds.

Tuning never sees fold f: inside the two training folds a photographer-grouped
quarter (``grouped_folds(train_ids, 4, salt="stage1-dev") == 0``) is held out
as a dev slice; each learning rate of ``--lrs`` is trained on the other
three quarters for up to ``--max-epochs`` epochs, scoring the dev slice after
every epoch by the mean accuracy over the five thresholds of (a) (over a fixed
10K subset of the gallery) and (b) (against the fitting photos), averaged. The
best (lr, epochs) is then retrained on both training folds and scored on fold f.

    .venv/bin/python bench/stage1_cv.py                       # everything (hours on 2 cores)
    .venv/bin/python bench/stage1_cv.py --models geoclip --folds 0 --max-epochs 5   # a pilot

Each finished (model, fold) is written to ``--runs`` (keyed by the settings), so an
interrupted run resumes at the first unfinished fold.

Features come from the cached feature store of ``--backbone`` (built by
bench/backbones.py or ``geolocus train``); nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geolocus.data.im2gps3k import im2gps3k_dir, photographer
from geolocus.data.tables import read_coords
from geolocus.encoders.image import DEFAULT_ENCODER
from geolocus.eval import results_table, score_errors
from geolocus.eval.folds import grouped_folds
from geolocus.geo import THRESHOLDS_KM, haversine_km

K = 20  # neighbours for the refiners
GALLERY_DEV = 10_000  # gallery subset used for tuning
LABELS = {
    "gps": "image→GPS (100K gallery)",
    "nn": "image→image NN",
    "nn+dualgeo": "NN top-20 + dualgeo",
    "nn+kde": "NN top-20 + kde",
}

VARIANTS: dict[str, tuple[str, dict]] = {
    "geoclip": ("geoclip", {}),
    "dualgeo": ("dualgeo", {}),
    "dualgeo-noseg": ("dualgeo", {"use_seg": False}),
    "transgeoclip": ("transgeoclip", {}),
    "transgeoclip-notext": ("transgeoclip", {"use_text": False}),
    "transgeoclip-geoclip-loc": (
        "transgeoclip",
        {
            "location_encoder": "geoclip",
            "pretrained_location": True,
            "train_location_encoder": False,
            "queue_size": 4096,
        },
    ),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def crit(errors: np.ndarray) -> float:
    """Selection criterion: mean accuracy (fraction) over the standard thresholds."""
    return float(np.mean([np.mean(errors <= t) for t in THRESHOLDS_KM]))


def err_km(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return haversine_km(pred[:, 0], pred[:, 1], truth[:, 0], truth[:, 1])


def knn(q: np.ndarray, db: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the k nearest rows of ``db`` (inputs unit-norm)."""
    sim = q @ db.T
    k = min(k, db.shape[0])
    idx = np.argpartition(-sim, kth=k - 1, axis=1)[:, :k]
    s = np.take_along_axis(sim, idx, 1)
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(s, order, 1)


def refined(method: str, near: np.ndarray, scores: np.ndarray) -> np.ndarray:
    from geolocus.data import Neighbours
    from geolocus.refine import create_refiner

    nb = Neighbours(
        ids=np.arange(len(near)), near=near, far=np.zeros((len(near), 0, 2)), near_scores=scores
    )
    return create_refiner(method).predict(nb)


@dataclass
class Data:
    ids: list[str]
    gps: np.ndarray  # (N, 2)
    emb: np.ndarray  # (N, D) float32
    tokens: np.ndarray  # (N, T, C) float16
    text: np.ndarray | None  # (N, 384)
    backbone: str
    folds: np.ndarray


@dataclass
class Outcome:
    """Per-photo errors (km) of each prediction mode, and what was chosen per fold."""

    errors: dict[str, np.ndarray] = field(default_factory=dict)
    chosen: list[dict] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)


def load_data(args) -> Data:
    data_dir = im2gps3k_dir(args.data)
    lab = read_coords(data_dir / "labels.csv", "labels")
    if args.features:
        root = args.features
    else:
        found = sorted(glob.glob(str(Path(args.cache) / f"{args.backbone}-im2gps3k-*")))
        if not found:
            sys.exit(
                f"no cached {args.backbone} features under {args.cache}: run bench/backbones.py"
            )
        root = found[0]
    from geolocus.encoders.features import FeatureStore

    store = FeatureStore.open(root)
    if store.tokens is None:
        sys.exit(f"{root} has no tokens (DualGeo needs them)")
    ids = [str(i) for i in lab["IMG_ID"]]
    rows = store.rows(ids)
    t0 = time.perf_counter()
    emb = np.asarray(store.embeddings[rows], np.float32)
    tokens = np.asarray(store.tokens[rows])
    log(f"features of {len(ids)} photos from {root} ({time.perf_counter() - t0:.0f} s)")
    gps = lab[["LAT", "LON"]].to_numpy(np.float64)
    text = None
    if any(VARIANTS[v][0] == "transgeoclip" for v in args.models):
        from geolocus.train.data import place_text_embeddings

        text = place_text_embeddings(gps)
    return Data(
        ids,
        gps,
        emb,
        tokens,
        text,
        store.meta["encoder"],
        grouped_folds(ids, 3, group=photographer),
    )


class Galleries:
    """GeoCLIP's 100K gallery (pretrained encoder: encoded once, cached on disk) and a
    fixed 10K subset of its coordinates for tuning."""

    def __init__(self) -> None:
        from geolocus.models.gallery import GPSGallery

        self.full = GPSGallery.geoclip()
        rng = np.random.default_rng(0)
        self.dev_rows = np.sort(rng.choice(len(self.full), GALLERY_DEV, replace=False))

    def for_model(self, model, dev: bool):
        from geolocus.models.gallery import GPSGallery

        fp = model.location_fingerprint()
        if fp == self.full.encoder_fingerprint:
            if not dev:
                return self.full
            r = self.dev_rows
            return GPSGallery(
                self.full.coords[r], self.full.embeddings[r], self.full.logit_scale, fp
            )
        coords = self.full.coords[self.dev_rows] if dev else self.full.coords
        return model.gallery(coords, cache=False, progress=False)


def embed(model, d: Data, rows: np.ndarray, bs: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(rows), bs):
        r = rows[i : i + bs]
        tok = torch.from_numpy(d.tokens[r].astype(np.float32)) if model.needs_tokens else None
        out.append(model.embed_image(torch.from_numpy(d.emb[r]), tok).numpy())
    return np.concatenate(out)


def gallery_top1(model, d: Data, rows: np.ndarray, gallery, bs: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(rows), bs):
        r = rows[i : i + bs]
        tok = d.tokens[r].astype(np.float32) if model.needs_tokens else None
        coords, _ = model.search_gallery(d.emb[r], tok, gallery, k=1)
        out.append(coords[:, 0])
    return np.concatenate(out)


def train_model(
    variant: str, d: Data, rows: np.ndarray, lr: float, epochs: int, args, on_epoch=None
):
    from geolocus.models import create_model
    from geolocus.train import TrainConfig, fit, seed_everything
    from geolocus.train.data import TrainingSet

    mtype, extra = VARIANTS[variant]
    cfg = {"backbone": d.backbone, "embed_dim": d.emb.shape[1], **extra}
    if mtype == "dualgeo":
        cfg["token_dim"] = d.tokens.shape[2]
    seed_everything(args.seed)
    model = create_model(mtype, **cfg)
    ts = TrainingSet(
        ids=[d.ids[i] for i in rows],
        gps=d.gps[rows],
        embeddings=d.emb[rows],
        tokens=d.tokens[rows] if model.needs_tokens else None,
        text=d.text[rows] if model.needs_text else None,
        backbone=d.backbone,
    )
    model.prepare(ts)
    tc = TrainConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=lr,
        seed=args.seed,
        weight_decay=args.weight_decay,
    )
    cb = None if on_epoch is None else (lambda epoch, record: on_epoch(model, epoch, record))
    res = fit(model, ts.batches(tc.batch_size, seed=args.seed), tc, progress=False, on_epoch=cb)
    return model.eval(), res


def tune(variant: str, d: Data, train_rows: np.ndarray, gal: Galleries, args) -> dict:
    """Best (lr, epochs) on a photographer-grouped dev quarter of the training folds."""
    inner = grouped_folds([d.ids[i] for i in train_rows], 4, group=photographer, salt="stage1-dev")
    fit_rows, dev_rows = train_rows[inner != 0], train_rows[inner == 0]
    curves = {}
    ab = {}
    for lr in args.lrs:
        curve: list[float] = []
        parts_ab: list[tuple[float, float]] = []

        def score(model, epoch: int, record: dict, curve=curve, parts_ab=parts_ab) -> None:
            model.eval()
            with torch.no_grad():
                q, db = embed(model, d, dev_rows), embed(model, d, fit_rows)
                idx, _ = knn(q, db, 1)
                cb = crit(err_km(d.gps[fit_rows][idx[:, 0]], d.gps[dev_rows]))
                g = gal.for_model(model, dev=True)
                ca = crit(err_km(gallery_top1(model, d, dev_rows, g), d.gps[dev_rows]))
            record.update(dev_a=ca, dev_b=cb)
            curve.append(0.5 * (ca + cb))
            parts_ab.append((round(ca, 4), round(cb, 4)))

        train_model(variant, d, fit_rows, lr, args.max_epochs, args, on_epoch=score)
        curves[lr], ab[lr] = curve, parts_ab
        log(f"  lr {lr:g}: dev (a, b) " + " ".join(f"{a:.3f},{b:.3f}" for a, b in parts_ab))
    lr, ep = max(
        ((lr, e) for lr, c in curves.items() for e in range(len(c))),
        key=lambda t: (curves[t[0]][t[1]], -t[1]),
    )
    return {"lr": lr, "epochs": ep + 1, "dev": curves[lr][ep], "curves": ab}


def evaluate(model, d: Data, test: np.ndarray, train: np.ndarray, gal: Galleries, out: dict):
    """Errors of (a), (b) and (c) for the test rows."""
    truth = d.gps[test]
    if hasattr(model, "search_gallery"):
        pred = gallery_top1(model, d, test, gal.for_model(model, dev=False))
        out.setdefault("gps", []).append((test, err_km(pred, truth)))
    q, db = embed(model, d, test), embed(model, d, train)
    idx, sim = knn(q, db, K)
    near = d.gps[train][idx]
    out.setdefault("nn", []).append((test, err_km(near[:, 0], truth)))
    for m in ("dualgeo", "kde"):
        out.setdefault(f"nn+{m}", []).append((test, err_km(refined(m, near, sim), truth)))


def collect(parts: dict, n: int) -> dict[str, np.ndarray]:
    res = {}
    for mode, chunks in parts.items():
        e = np.full(n, np.nan)
        for rows, errs in chunks:
            e[rows] = errs
        res[mode] = e
    return res


def baseline(d: Data, folds_to_run: list[int]) -> dict[str, np.ndarray]:
    parts: dict = {}
    e = l2n(d.emb)
    for f in folds_to_run:
        test, train = np.flatnonzero(d.folds == f), np.flatnonzero(d.folds != f)
        idx, sim = knn(e[test], e[train], K)
        near = d.gps[train][idx]
        parts.setdefault("nn", []).append((test, err_km(near[:, 0], d.gps[test])))
        for m in ("dualgeo", "kde"):
            parts.setdefault(f"nn+{m}", []).append(
                (test, err_km(refined(m, near, sim), d.gps[test]))
            )
    return collect(parts, len(d.ids))


TUNING_ARGS = ("lrs", "max_epochs", "batch_size", "weight_decay", "seed")


def fold_key(args, d: Data, variant: str, fold: int) -> str:
    """What a finished fold's figures depend on: a changed setting reruns it."""
    import hashlib

    what = {
        "variant": variant,
        "extra": VARIANTS[variant][1],
        "fold": fold,
        "backbone": d.backbone,
        "n": len(d.ids),
        **{k: getattr(args, k) for k in TUNING_ARGS},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _fold_file(args, d: Data, variant: str, fold: int) -> Path:
    return Path(args.runs) / f"{variant}-fold{fold}-{fold_key(args, d, variant, fold)}.json"


def load_fold(args, d: Data, variant: str, fold: int) -> dict | None:
    p = _fold_file(args, d, variant, fold)
    return json.loads(p.read_text()) if p.exists() else None


def save_fold(args, d: Data, variant: str, fold: int, done: dict) -> None:
    from geolocus.files import write_text_atomic

    write_text_atomic(_fold_file(args, d, variant, fold), json.dumps(done, default=float))


def run_fold(variant: str, f: int, d: Data, gal: Galleries, args) -> dict:
    """Tune on the training folds' dev quarter, retrain, score fold ``f``."""
    test, train = np.flatnonzero(d.folds == f), np.flatnonzero(d.folds != f)
    t0 = time.perf_counter()
    best = tune(variant, d, train, gal, args)
    log(
        f"{variant} fold {f}: lr {best['lr']:g}, {best['epochs']} epochs "
        f"(dev {best['dev']:.3f}; tuning {time.perf_counter() - t0:.0f} s)"
    )
    model, res = train_model(variant, d, train, best["lr"], best["epochs"], args)
    parts: dict = {}
    evaluate(model, d, test, train, gal, parts)
    curves = {str(k): v for k, v in best.pop("curves").items()}
    return {
        "errors": {mode: chunks[0][1].tolist() for mode, chunks in parts.items()},
        "epoch_s": [h["seconds"] for h in res.history],
        "chosen": {"fold": f, **best, "curves": curves},
    }


def paired_table(rows_out: list[tuple[str, dict]], mask: np.ndarray, n_boot: int = 2000) -> str:
    """Each model's modes minus the backbone's plain NN, per threshold, in points, with a
    95 % paired bootstrap interval over photos (the same resampled photos for both)."""
    base = rows_out[0][1]["nn"][mask]
    hits = lambda e: np.stack([e <= t for t in THRESHOLDS_KM], 1).astype(float)  # noqa: E731
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(base), (n_boot, len(base)))
    head = " | ".join(f"{t:g} km" for t in THRESHOLDS_KM)
    lines = [
        f"| minus backbone NN (points, 95 % paired bootstrap) | {head} | mean of five |",
        "|---" * (len(THRESHOLDS_KM) + 2) + "|",
    ]
    for name, errs in rows_out[1:]:
        for mode, e in errs.items():
            diff = hits(e[mask]) - hits(base)
            boot = np.stack([diff[i].mean(0) for i in idx]) * 100  # (n_boot, 5)
            lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
            mlo, mhi = np.percentile(boot.mean(1), [2.5, 97.5])
            cells = [
                f"{100 * d:+.2f} [{a:+.2f}, {b:+.2f}]"
                for d, a, b in zip(diff.mean(0), lo, hi, strict=True)
            ]
            mean = f"{100 * diff.mean():+.2f} [{mlo:+.2f}, {mhi:+.2f}]"
            lines.append(f"| {name}: {LABELS[mode]} | {' | '.join(cells)} | {mean} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default=DEFAULT_ENCODER)
    ap.add_argument("--features", help="feature-store folder (default: --cache glob)")
    ap.add_argument("--cache", default="cache/features")
    ap.add_argument("--data", help="folder with labels.csv and images/ (default: ../shared)")
    ap.add_argument("--models", default="geoclip,dualgeo,transgeoclip")
    ap.add_argument("--folds", default="0,1,2")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--weight-decay", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument(
        "--runs",
        default="cache/stage1_runs",
        help="finished folds are kept here; a rerun with the same settings reads them",
    )
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.lrs = [float(x) for x in args.lrs.split(",")]
    bad = [m for m in args.models if m not in VARIANTS]
    if bad:
        sys.exit(f"unknown model variant(s) {bad}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    d = load_data(args)
    folds_to_run = [int(f) for f in args.folds.split(",")]
    mask = np.isin(d.folds, folds_to_run)
    log(f"folds {folds_to_run}: {int(mask.sum())} test photos; load {os.getloadavg()[0]:.1f}")
    gal = Galleries()
    rows_out = [(f"{d.backbone} nearest neighbour", baseline(d, folds_to_run))]
    summary: dict = {"args": {k: v for k, v in vars(args).items()}, "models": {}}
    for variant in args.models:
        parts: dict = {}
        oc = Outcome()
        for f in folds_to_run:
            done = load_fold(args, d, variant, f)
            if done is None:
                done = run_fold(variant, f, d, gal, args)
                save_fold(args, d, variant, f, done)
            else:
                log(f"{variant} fold {f}: done before, read from {args.runs}")
            test = np.flatnonzero(d.folds == f)
            for mode, errs in done["errors"].items():
                parts.setdefault(mode, []).append((test, np.asarray(errs, float)))
            oc.epoch_s += done["epoch_s"]
            oc.chosen.append(done["chosen"])
        oc.errors = collect(parts, len(d.ids))
        rows_out.append((variant, oc.errors))
        summary["models"][variant] = {
            "chosen": oc.chosen,
            "epoch_s_mean": float(np.mean(oc.epoch_s)) if oc.epoch_s else None,
            "train_photos": int((d.folds != folds_to_run[0]).sum()),
        }
        log(f"{variant}: {np.mean(oc.epoch_s):.1f} s per epoch (load {os.getloadavg()[0]:.1f})")

    table = []
    for name, errs in rows_out:
        for mode, e in errs.items():
            label = LABELS[mode]
            sc = score_errors(e[mask])
            table.append((f"{name}: {label}", sc))
            summary.setdefault("scores", {})[f"{name}|{mode}"] = sc.to_json()
    print(results_table(table, markdown=True))
    print()
    print(paired_table(rows_out, mask))
    for v, s in summary["models"].items():
        chosen = ", ".join(f"f{c['fold']}: lr {c['lr']:g} x{c['epochs']}" for c in s["chosen"])
        print(f"- {v}: {s['epoch_s_mean']:.1f} s/epoch on ~{s['train_photos']} photos; {chosen}")
    print(f"total {time.perf_counter() - t_all:.0f} s; load average {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
