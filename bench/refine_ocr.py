"""Does the text in the query photo help stage 2? ``best`` with and without OCR evidence.

5-fold photographer-grouped cross-validation (``grouped_folds(ids, 5)``;
``--salt`` draws another partition) on the queries of a neighbours file, each
fold predicted by a ``best`` fitted on the other four (its sharpness and L2
chosen by inner grouped CV inside those four, as registered). Rows:

- ``best`` without text (the registered model, neighbours only);
- ``best`` with all text features, then with one evidence group at a time
  (scripts, distinctive letters, language, named countries, named places);
- the same restricted to the queries whose photo has text.

It also prints how often OCR found text, and for each kind of evidence how
often it is present and how often the truth agrees with it (diagnostics over
all queries; nothing is fitted on them).

The OCR results come from ``--cache`` (``geolocus.ocr.OCRCache``, by file
hash); photos not read yet are read now unless ``--read-only``.

    .venv/bin/python bench/refine_ocr.py --images ../shared/data/im2gps3k/images \\
        --neighbours ../shared/data/im2gps3k/g3_neighbours.csv \\
        --labels ../shared/data/im2gps3k/labels.csv [--salt dev] [--read-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from geolocus.data import read_coords, read_neighbours
from geolocus.data.im2gps3k import photographer
from geolocus.eval import score_errors
from geolocus.eval.crossval import cross_val_predict
from geolocus.eval.folds import grouped_folds
from geolocus.geo import THRESHOLDS_KM, haversine_km
from geolocus.ocr.collection import photo_evidence
from geolocus.refine import BestRefiner

#: Evidence groups: the TextEvidence fields each one keeps.
GROUPS = {
    "script": ("script_countries",),
    "letters": ("letter_countries",),
    "language": ("language", "language_countries"),
    "country names": ("named_countries",),
    "place names": ("places",),
}
_EMPTY = {
    "script_countries": None,
    "letter_countries": None,
    "language": None,
    "language_countries": None,
    "named_countries": frozenset(),
    "places": (),
}


def only(evidence: list, fields: tuple[str, ...]) -> list:
    """The evidence with every group but ``fields`` emptied."""
    drop = {k: v for k, v in _EMPTY.items() if k not in fields}
    return [None if e is None else dataclasses.replace(e, **drop) for e in evidence]


def discrimination(nb, evidence: list, truth: np.ndarray) -> None:
    """How often each text feature differs between a query's candidates (only then can a
    re-ranker use it), and how often a named place is right where no candidate is."""
    from geolocus.refine.text import text_feature_names, text_features

    xt = text_features(nb.near, evidence)
    varies = (xt.max(axis=1) > xt.min(axis=1)).sum(axis=0)
    print(
        "queries whose candidates differ in a text feature: "
        + ", ".join(f"{n} {int(v)}" for n, v in zip(text_feature_names(), varies, strict=True))
        + f"; any {int((xt.max(axis=1) > xt.min(axis=1)).any(axis=1).sum())}"
    )
    d_near = haversine_km(nb.near[..., 0], nb.near[..., 1], truth[:, None, 0], truth[:, None, 1])
    missed = 0
    for i, e in enumerate(evidence):
        if e is None or not e.places:
            continue
        ps = e.places
        d = haversine_km(truth[i, 0], truth[i, 1], [p.lat for p in ps], [p.lon for p in ps])
        missed += bool(np.any(d <= 25) and d_near[i].min() > 25)
    print(f"queries with a named place within 25 km of the truth but no candidate there: {missed}")


def headroom(nb, evidence: list, truth: np.ndarray, pred: np.ndarray) -> None:
    """On the queries where a text feature differs between candidates: how many ``best``
    (without text) gets right, the best candidate in hindsight, and the candidate with the
    most text evidence (ties by retrieval rank)."""
    from geolocus.refine.text import text_features

    xt = text_features(nb.near, evidence)
    disc = (xt.max(axis=1) > xt.min(axis=1)).any(axis=1)
    d_near = haversine_km(nb.near[..., 0], nb.near[..., 1], truth[:, None, 0], truth[:, None, 1])
    err = haversine_km(pred[:, 0], pred[:, 1], truth[:, 0], truth[:, 1])
    greedy = np.argmax(xt[disc].sum(-1) - 1e-3 * np.arange(nb.k), axis=1)
    d_greedy = d_near[disc][np.arange(int(disc.sum())), greedy]
    print(f"on the {int(disc.sum())} queries where text features differ between candidates:")
    for t in THRESHOLDS_KM:
        now, best_c = int((err[disc] <= t).sum()), int((d_near[disc].min(1) <= t).sum())
        print(
            f"  {t:g} km: best right {now}, best candidate in hindsight {best_c} "
            f"(+{100 * (best_c - now) / len(err):.2f} points at most), "
            f"most text evidence {int((d_greedy <= t).sum())}"
        )


def diagnostics(evidence: list, truth: np.ndarray) -> None:
    from geolocus.places import country_code_of

    n = len(evidence)
    known = [e for e in evidence if e is not None]
    print(f"queries: {n}; OCR done: {len(known)}")
    has = np.array([e is not None and e.has_text for e in evidence])
    print(f"photos with text (a line with a letter): {has.sum()} ({100 * has.mean():.1f} %)")
    cc = np.asarray(country_code_of(truth[:, 0], truth[:, 1]))
    for name, attr in [
        ("script", "script_countries"),
        ("letters", "letter_countries"),
        ("language", "language_countries"),
        ("country names", "named_countries"),
    ]:
        sets = [getattr(e, attr) if e is not None else None for e in evidence]
        idx = [i for i, s in enumerate(sets) if s]
        agree = np.mean([cc[i] in sets[i] for i in idx]) if idx else float("nan")
        print(
            f"  {name:14s}: present {len(idx):4d} ({100 * len(idx) / n:4.1f} %), "
            f"true country in it {100 * agree:5.1f} %"
        )
    idx = [i for i, e in enumerate(evidence) if e is not None and e.places]
    hit = np.zeros((len(idx), 3))
    for j, i in enumerate(idx):
        ps = evidence[i].places
        d = haversine_km(truth[i, 0], truth[i, 1], [p.lat for p in ps], [p.lon for p in ps])
        hit[j] = [np.any(d <= t) for t in (25, 200, 750)]
    share = " / ".join(f"{100 * v:.0f}" for v in hit.mean(0)) if idx else "-"
    print(
        f"  place names   : present {len(idx):4d} ({100 * len(idx) / n:4.1f} %), "
        f"a named place within 25/200/750 km of the truth: {share} %"
    )


def ocr_timing(cache: str, ids: list[str], images: str) -> None:
    """Seconds per photo that the OCR took when it was cached (as recorded then)."""
    import json
    from pathlib import Path

    from geolocus.ocr import create_backend, file_hash

    tag = create_backend("rapidocr").tag
    secs, lines = [], []
    for i in ids:
        digest = file_hash(Path(images) / i)
        f = Path(cache, tag, digest[:2], f"{digest}.json")
        if f.is_file():
            rec = json.loads(f.read_text(encoding="utf-8"))
            secs.append(rec["seconds"])
            lines.append(len(rec["boxes"]))
    if secs:
        print(
            f"OCR ({tag}) of {len(secs)} photos: {np.mean(secs):.2f} s a photo on average, "
            f"median {np.median(secs):.2f} s (2 threads, on the shared machine); "
            f"{np.mean(lines):.2f} lines a photo"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--neighbours", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--cache", default="cache/ocr")
    ap.add_argument("--read-only", action="store_true", help="use only photos already read")
    ap.add_argument("--salt", default="geolocus")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--no-groups", action="store_true", help="skip the one-group-at-a-time rows")
    ap.add_argument("--show", type=int, default=0, help="print the evidence of N photos with text")
    args = ap.parse_args()

    nb = read_neighbours(args.neighbours)
    lab = read_coords(args.labels, "labels").set_index("IMG_ID")
    truth = lab.loc[list(nb.ids), ["LAT", "LON"]].to_numpy()
    t0 = time.perf_counter()
    evidence = photo_evidence(list(nb.ids), args.images, args.cache, read_only=args.read_only)
    print(f"evidence of {len(evidence)} photos in {time.perf_counter() - t0:.0f} s")
    ocr_timing(args.cache, list(nb.ids), args.images)
    diagnostics(evidence, truth)
    discrimination(nb, evidence, truth)
    shown = 0
    for i, e in enumerate(evidence):
        if shown >= args.show:
            break
        if e is not None and e.has_text and (e.places or e.script_countries or e.language):
            print(f"    {nb.ids[i][:24]}  {e.summary()}  | {' | '.join(e.lines)[:80]}")
            shown += 1

    fold = grouped_folds(nb.ids, args.folds, group=photographer, salt=args.salt)
    has = np.array([e is not None and e.has_text for e in evidence])
    rows = [("best, no text", None, False)]
    rows.append(("best + text (all)", evidence, True))
    if not args.no_groups:
        rows += [(f"best + {g} only", only(evidence, f), True) for g, f in GROUPS.items()]
    header = "| variant | " + " | ".join(f"{t:g} km" for t in THRESHOLDS_KM) + " | mean | s |"
    sep = "|---" * (len(THRESHOLDS_KM) + 3) + "|"
    table, table_text, base = (
        [header, sep],
        [header.replace("variant", "variant (photos with text)"), sep],
        None,
    )
    for name, ev, text in rows:
        t0 = time.perf_counter()
        nbx = nb.with_evidence(ev)
        pred = cross_val_predict(lambda text=text: BestRefiner(text=text), nbx, truth, fold)
        d = haversine_km(pred[:, 0], pred[:, 1], truth[:, 0], truth[:, 1])
        acc = score_errors(d).acc
        acc_t = score_errors(d[has]).acc if has.any() else dict.fromkeys(acc, float("nan"))
        vals = [acc[str(t)] for t in THRESHOLDS_KM]
        vt = [acc_t[str(t)] for t in THRESHOLDS_KM]
        s = time.perf_counter() - t0
        table.append(
            f"| {name} | "
            + " | ".join(f"{v:.2f}" for v in vals)
            + f" | {np.mean(vals):.2f} | {s:.0f} |"
        )
        table_text.append(
            f"| {name} | " + " | ".join(f"{v:.2f}" for v in vt) + f" | {np.mean(vt):.2f} | |"
        )
        if base is None:
            base = vals
            headroom(nb, evidence, truth, pred)
        else:
            print(
                f"{name}: gain "
                + " / ".join(f"{v - b:+.2f}" for v, b in zip(vals, base, strict=True)),
                flush=True,
            )
    print(f"\n{len(nb)} queries, {args.folds}-fold photographer-grouped CV (salt {args.salt!r}):\n")
    print("\n".join(table))
    print(f"\nthe same predictions on the {int(has.sum())} queries whose photo has text:\n")
    print("\n".join(table_text))


if __name__ == "__main__":
    main()
