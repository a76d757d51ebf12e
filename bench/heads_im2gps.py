"""The heads of bench/simworld.py on IM2GPS3k EfficientNet-Lite0 features, photographer-grouped
3-fold cross-validation as in docs/stage1.md.

For each fold f of ``grouped_folds(ids, 3, group=photographer)`` (bench/stage1_cv.py's
:func:`load_data`, which also reads the cached feature store) every head of
:data:`simworld.HEADS` is trained on the other two folds exactly as in the simulated world
(:func:`simworld.fit_predict`: created by model type, ``prepare``, :func:`geolocus.train.fit`,
``gps_candidates(k=1)``) — here with real patch tokens for DualGeo and without TransGeoCLIP's
text view, as in the simulation — for the same number of epochs over the ~2,000 training
photos, each head's learning rate from its config; nothing is tuned, so no test fold is
looked at before scoring. Baselines: ``prior`` (the most frequent equal-area cell of the
training folds) and ``nearest`` (the backbone's cosine nearest neighbour among them). Each
head takes the ``[model]`` fields of its ``configs/<type>.toml`` (sized for ~2,000 photos:
e.g. the cell heads' 5–40 photos a cell), where the simulated world keeps the model's
defaults (sized for millions: 50–1,000).

    .venv/bin/python bench/heads_im2gps.py --json bench/results/heads-im2gps3k.json

Each finished (head, fold) is kept in ``--runs`` (keyed by its settings): a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import simworld as sw
import stage1_cv as s1


def fold_rows(d, f: int) -> tuple[np.ndarray, np.ndarray]:
    return np.flatnonzero(d.folds != f), np.flatnonzero(d.folds == f)


def training_set(d, rows: np.ndarray):
    from geolocus.train.data import TrainingSet

    return TrainingSet(
        ids=[d.ids[i] for i in rows],
        gps=d.gps[rows],
        embeddings=d.emb[rows],
        tokens=d.tokens[rows],
        backbone=d.backbone,
    )


def scored_rows(d, name: str, every: int) -> np.ndarray:
    """Whether each photo is scored for head ``name``: all, or every ``every``-th photo of
    each test fold for the slow heads (:data:`simworld.SLOW_HEADS`)."""
    keep = np.ones(len(d.ids), dtype=bool)
    if name in sw.SLOW_HEADS and every > 1:
        keep[:] = False
        for f in range(3):
            keep[np.flatnonzero(d.folds == f)[::every]] = True
    return keep


def run_head_cv(name: str, d, budget: sw.Budget, args) -> dict:
    """Head ``name`` trained and scored on each fold; each fold cached in ``args.runs``."""
    pred = np.full((len(d.ids), 2), np.nan)
    ll = np.full(len(d.ids), np.nan)
    train_s, params, info = [], [], []
    keep = scored_rows(d, name, args.slow_every)
    for f in range(3):
        train, test = fold_rows(d, f)
        test = test[keep[test]]
        key = sw.row_key(
            name,
            sw.HEADS[name],
            f,
            len(d.ids),
            d.backbone,
            budget,
            sw.config_train_settings(sw.HEADS[name][0]),
        )
        key += f"-every{args.slow_every}" if name in sw.SLOW_HEADS else ""
        fields = sw.config_model_fields(sw.HEADS[name][0])
        key += f"-cfg{sw.row_key(fields)}" if fields else ""

        def one(train=train, test=test, f=f, fields=fields) -> dict:
            p, lik, t, n, rec = sw.fit_predict(
                name,
                training_set(d, train),
                d.emb[test],
                d.gps[test],
                budget,
                d.tokens[test],
                progress=not args.no_progress,
                config=fields,
            )
            return {
                "pred": p.tolist(),
                "ll": None if lik is None else lik.tolist(),
                "train_s": t,
                "params": n,
                "info": {"fold": f, **rec},
            }

        done = sw.cached(Path(args.runs) / f"{name}-fold{f}-{key}.json", one)
        pred[test] = done["pred"]
        if done["ll"] is not None:
            ll[test] = done["ll"]
        train_s.append(done["train_s"])
        params.append(done["params"])
        info.append(done["info"])
        sw.log(f"{name} fold {f}: {done['train_s']:.0f} s (load {os.getloadavg()[0]:.1f})")
    nll = None if np.isnan(ll[keep]).all() else -float(np.mean(ll[keep]))
    row = sw.score(pred[keep], d.gps[keep], nll, float(np.mean(train_s)), int(np.mean(params)))
    return {**row, "_info": {"folds": info, "test_photos": int(keep.sum())}}


def baselines(d, cell_km: float, keep: np.ndarray | None = None) -> dict:
    pred_prior = np.empty((len(d.ids), 2))
    pred_nn = np.empty((len(d.ids), 2))
    t_prior = t_nn = 0.0
    e = s1.l2n(d.emb)
    for f in range(3):
        train, test = fold_rows(d, f)
        t0 = time.perf_counter()
        answer, _ = sw.prior_answer(d.gps[train], cell_km)
        pred_prior[test] = answer
        t1 = time.perf_counter()
        idx, _ = s1.knn(e[test], e[train], 1)
        pred_nn[test] = d.gps[train][idx[:, 0]]
        t_prior, t_nn = t_prior + t1 - t0, t_nn + time.perf_counter() - t1
    k = np.ones(len(d.ids), dtype=bool) if keep is None else keep
    return {
        "prior": sw.score(pred_prior[k], d.gps[k], None, t_prior / 3, 0),
        "nearest": sw.score(pred_nn[k], d.gps[k], None, t_nn / 3, 0),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--features", help="feature-store folder (default: --cache glob)")
    ap.add_argument("--cache", default="cache/features")
    ap.add_argument("--data", help="folder with labels.csv and images/ (default: ../shared)")
    ap.add_argument("--heads", default=",".join(sw.HEADS), help="comma-separated")
    ap.add_argument("--epochs", type=int, default=10, help="epochs over the training folds")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior-cell-km", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="cache/heads_im2gps_runs")
    ap.add_argument(
        "--slow-every",
        type=int,
        default=5,
        help="the slow heads answer every n-th photo of each test fold",
    )
    ap.add_argument("--json", help="write the table here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    heads = sw.parse_heads(args.heads)
    if args.epochs < 1 or args.batch_size < 1:
        sys.exit("heads_im2gps: error: --epochs and --batch-size must be at least 1")
    import torch

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    args.models = []  # what stage1_cv.load_data reads: no text view wanted
    d = s1.load_data(args)
    budget = sw.Budget(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    present, missing = sw.available_heads(heads)
    rows = {name: run_head_cv(name, d, budget, args) for name in present}
    heads_t, info = sw.split_table(rows)
    base = baselines(d, args.prior_cell_km)
    slow = [n for n in rows if n in sw.SLOW_HEADS]
    subset = {}
    if slow and args.slow_every > 1:
        keep = scored_rows(d, slow[0], args.slow_every)
        subset = {
            "heads": slow,
            "test_photos": int(keep.sum()),
            "baselines": baselines(d, args.prior_cell_km, keep),
        }
    out = {
        "heads": heads_t,
        "baselines": base,
        "protocol": {
            "data": "IM2GPS3k, 2,997 photos",
            "features": f"{d.backbone} (cached feature store; DualGeo: its patch tokens)",
            "folds": "grouped_folds(ids, 3, group=photographer); all photos scored once",
            "budget": budget.describe() + " over the ~2,000 photos of the training folds",
            "train_s": "mean per fold, prepare included",
            "params": "trainable parameters (mean over the folds)",
            "prior_cell_km": args.prior_cell_km,
        },
        "nll_unit": sw.NLL_UNIT,
        "slow_heads_subset": subset,
        "training": info,
        "missing_heads": missing,
        "commit": sw.git_commit(),
        "machine": sw.machine(args.threads),
        "total_s": round(time.perf_counter() - t_all, 1),
    }
    notes = {
        n: f" ({i['test_photos']} photos: every {args.slow_every}th of each fold)"
        for n, i in info.items()
        if i["test_photos"] < len(d.ids)
    }
    print(sw.markdown(heads_t, base, notes))
    if subset:
        print(sw.markdown({}, subset["baselines"], {b: " (same photos)" for b in sw.BASELINES}))
    if missing:
        print(f"not registered (yet): {', '.join(missing)}")
    if args.json:
        sw.write_text_atomic(args.json, json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
