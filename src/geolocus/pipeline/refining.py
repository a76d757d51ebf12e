"""Stage 2 on tables of retrieved neighbours: get a refiner (fitted, loaded or as is),
apply it to a neighbours CSV, and cross-validate refiners on one.

What ``geolocus refine`` and ``geolocus benchmark refine`` run; the commands only
parse, call and print. With photos (``images``), the text read in each one is
attached to its neighbours as evidence (OCR, cached by file hash) for the
refiners that use it, and a multimodal model can take the last step
(:func:`refine_with_lmm`: the one-prompt chooser, G3 or DualGeo).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geolocus.data import Neighbours, read_coords, read_neighbours
from geolocus.data.im2gps3k import photographer
from geolocus.errors import InputError, ServiceError
from geolocus.eval import published_results, score_errors
from geolocus.eval.crossval import cross_val_predict
from geolocus.eval.folds import grouped_folds
from geolocus.geo import haversine_km
from geolocus.ocr.collection import photo_evidence, query_photos
from geolocus.refine import REFINERS, Refiner, create_refiner

if TYPE_CHECKING:
    from geolocus.models.embedder import Embedder
    from geolocus.pipeline.geolocator import LMMSettings

PathLike = str | os.PathLike[str]


@dataclass
class OCRSettings:
    """Where photo text is cached and which engine reads it."""

    cache: PathLike = "cache/ocr"
    backend: str = "rapidocr"


def with_photo_text(nb: Neighbours, images: PathLike, ocr: OCRSettings | None = None) -> Neighbours:
    """``nb`` with the text evidence of each query's photo (named by its IMG_ID in ``images``)."""

    ocr = ocr or OCRSettings()
    return nb.with_evidence(photo_evidence(list(nb.ids), images, ocr.cache, backend=ocr.backend))


def labelled_neighbours(
    neighbours: PathLike, labels: PathLike, drop_unlabelled: bool = False
) -> tuple[Neighbours, np.ndarray, int]:
    """The neighbours CSV, the true positions of its queries from ``labels``, and how many
    queries had no label (an error unless ``drop_unlabelled``: they are left out)."""
    nb = read_neighbours(neighbours)
    lab = read_coords(labels, "labels").set_index("IMG_ID")
    have = np.isin(nb.ids, lab.index)
    n_missing = int((~have).sum())
    if n_missing and not drop_unlabelled:
        raise InputError(
            f"{n_missing} queries of {neighbours} have no row in {labels}, "
            f"first {nb.ids[~have][0]!r}"
        )
    if n_missing:
        nb = nb.subset(have)
    return nb, lab.loc[list(nb.ids), ["LAT", "LON"]].to_numpy(), n_missing


def objectives_of(method: str) -> tuple[str, ...]:
    """The training objectives refiner ``method`` can be fitted to (its default first;
    empty where there is no choice)."""
    return tuple(getattr(REFINERS.get(method), "objectives", ()))


def check_objective(method: str, objective: str | None) -> None:
    """Fail in one line unless ``method`` can be fitted to ``objective`` (``None``: its
    default, always fine)."""
    if objective is None:
        return
    choices = objectives_of(method)
    if not choices:
        having = [m for m in REFINERS.names() if objectives_of(m)]
        raise InputError(
            f"method {method!r} has no training objective to choose: --objective is for "
            + ", ".join(having)
        )
    if objective not in choices:
        raise InputError(
            f"unknown objective {objective!r} for method {method!r}; choose one of: "
            + ", ".join(choices)
        )


def new_refiner(method: str, objective: str | None = None) -> Refiner:
    """A new refiner ``method``, fitted to ``objective`` where it has a choice of training
    objectives (``None``: its default); a method or objective that does not exist, or an
    objective for a method without any, is a one-line error."""
    check_objective(method, objective)
    return (
        create_refiner(method) if objective is None else create_refiner(method, objective=objective)
    )


def stage2_choice(method: str, objective: str | None = None) -> Refiner | str:
    """What a geolocator is given as its refiner, checked now (before any model loads):
    the name, which it fits by leave-one-out and caches by name, or, with ``objective``,
    a new refiner fitted to that objective (fitted the same way, cached apart)."""
    chosen = new_refiner(method, objective)
    return method if objective is None else chosen


def get_refiner(
    method: str,
    *,
    fit: PathLike | None = None,
    labels: PathLike | None = None,
    refiner_file: PathLike | None = None,
    fit_images: PathLike | None = None,
    ocr: OCRSettings | None = None,
    objective: str | None = None,
) -> Refiner:
    """The refiner ``method``: read from ``refiner_file`` (saved by :meth:`Refiner.save`),
    fitted on the ``fit`` neighbours CSV with their ``labels`` (and the text of their
    photos in ``fit_images``), or as constructed when it needs no fitting. ``objective``:
    what a method with a choice of training objectives (``best``) is fitted to; with a
    ``refiner_file`` it must be the one the file was fitted with."""
    refiner = new_refiner(method, objective)
    if fit_images is not None and not refiner.can_read_text:
        raise InputError(f"method {method!r} reads no photo text: --images is not used by it")
    if (fit is None) != (labels is None):
        raise InputError("--fit and --labels go together")
    if refiner_file is not None and fit is not None:
        raise InputError("give either --refiner-file or --fit/--labels, not both")
    if refiner_file is not None:
        if not refiner.learns:
            raise InputError(f"method {method!r} learns nothing: it has no refiner file")
        loaded = type(refiner).load(refiner_file)
        saved = getattr(loaded, "objective", None)
        if objective is not None and saved != objective:
            raise InputError(
                f"refiner file {refiner_file} was fitted with objective {saved!r}, "
                f"not {objective!r}: fit again with --fit/--labels"
            )
        return loaded
    if fit is not None and labels is not None:
        fit_nb, truth, _ = labelled_neighbours(fit, labels)
        if fit_images is not None:
            fit_nb = with_photo_text(fit_nb, fit_images, ocr)
        return refiner.fit(fit_nb, truth)
    if refiner.requires_fit:
        raise InputError(
            f"method {method!r} learns from data: give --fit and --labels (or --refiner-file)"
        )
    return refiner


@dataclass
class Refined:
    """What :func:`refine_table` produced: the queries, their positions and notes for the user."""

    neighbours: Neighbours
    positions: np.ndarray
    notes: list[str] = field(default_factory=list)


def refine_table(
    refiner: Refiner,
    neighbours: PathLike,
    images: PathLike | None = None,
    ocr: OCRSettings | None = None,
) -> Refined:
    """Each query's position in the neighbours CSV, chosen by ``refiner`` (with the text
    of the photos in ``images`` where the refiner reads text)."""
    nb = read_neighbours(neighbours)
    notes = []
    if images is not None and refiner.reads_text:
        nb = with_photo_text(nb, images, ocr)
    elif images is not None:
        notes.append("this refiner was fitted without photos: --images is not used")
    elif refiner.reads_text:
        notes.append(
            "this refiner reads photo text but no --images were given: "
            "every query is ranked as a photo without text"
        )
    return Refined(nb, refiner.predict(nb), notes)


@dataclass
class LMMRefined:
    """What :func:`refine_with_lmm` produced: every query's position, how many the model
    answered now, how many came from the journal of an earlier run, how many kept the
    refiner's answer after a failure (``fallback``), and notes for the user."""

    positions: np.ndarray
    asked: int = 0
    reused: int = 0
    kept: int = 0
    notes: list[str] = field(default_factory=list)


def _journal_key(lmm: LMMSettings) -> str:
    """What an answer depends on: the model's name and the procedure (not the server's
    address: the same model served again elsewhere goes on where it stopped)."""
    return f"{getattr(lmm.client, 'model', type(lmm.client).__name__)}|{lmm.procedure.describe()}"


def _read_journal(path: Path, key: str) -> dict[str, tuple[float, float]]:
    """The answers of an earlier run with the same server, model and procedure (a line cut
    short by an interruption, or of another setting, is ignored)."""
    done: dict[str, tuple[float, float]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return done
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the LMM journal {path}: {e}") from None
    for line in lines:
        try:
            row = json.loads(line)
            if row["key"] == key:
                done[str(row["id"])] = (float(row["lat"]), float(row["lon"]))
        except (ValueError, KeyError, TypeError):
            continue
    return done


def refine_with_lmm(
    nb: Neighbours,
    positions: np.ndarray,
    images: PathLike,
    lmm: LMMSettings,
    *,
    verifier: Embedder | None = None,
    journal: PathLike | None = None,
    progress: bool = False,
    warn: Callable[[str], None] | None = None,
) -> LMMRefined:
    """A multimodal model's answer for each query of a neighbours table, from its photo in
    ``images`` (named by IMG_ID) and its neighbours, as ``lmm.procedure`` says: ``choose``
    (the model picks among the near neighbours), ``dualgeo`` (the near neighbours
    re-ranked by their cluster, samples merged) or ``g3`` (diversification, then
    verification under ``verifier``'s location head: it embeds the photo; the candidates
    are the near neighbours, the verifier's gallery places, and what the model generated).

    ``positions`` (the refiner's answers) stand where the model fails with
    ``lmm.fallback``. Each answer is appended to ``journal`` as it comes (JSON lines): a
    run interrupted or failed goes on where it stopped when started again."""
    from geolocus.data.images import load_image
    from geolocus.refine.lmm import Candidate
    from geolocus.refine.procedures import CHOOSE, G3, GALLERY, RETRIEVED, run_dualgeo, run_g3

    proc = lmm.procedure
    if proc.name == G3 and (verifier is None or not getattr(verifier, "has_location_head", False)):
        raise InputError(
            "G3's geo-verification needs a model with a location head to embed the photos: "
            "give --lmm-verifier geoclip or a GeoCLIP, DualGeo or TransGeoCLIP model file"
        )
    paths = query_photos([str(i) for i in nb.ids], images)  # all there before any request
    out = np.array(positions, dtype=float).reshape(len(nb), 2)
    key = _journal_key(lmm)
    jpath = None if journal is None else Path(journal)
    done = {} if jpath is None else _read_journal(jpath, key)
    result = LMMRefined(out)
    say = warn or (lambda m: print(f"geolocus: warning: {m}", file=sys.stderr))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(nb), desc=f"asking ({proc.name})", unit="photo")
    failed = False
    try:
        if jpath is not None:
            jpath.parent.mkdir(parents=True, exist_ok=True)
        fh = None if jpath is None else open(jpath, "a", encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise InputError(f"cannot write the LMM journal {jpath}: {e.strerror or e}") from None
    try:
        for i, qid in enumerate(map(str, nb.ids)):
            if bar is not None:
                bar.update(1)
            if qid in done:
                out[i] = done[qid]
                result.reused += 1
                continue
            if failed:
                result.kept += 1
                continue
            image = load_image(paths[i])
            near = [Candidate(float(a), float(b)) for a, b in nb.near[i]]
            far = [Candidate(float(a), float(b)) for a, b in nb.far[i]]
            client: Any = lmm.client
            try:
                if proc.name == CHOOSE:
                    ans = client.ask(image, near, far)
                    lat, lon = ans.lat, ans.lon
                elif proc.name == G3:
                    v: Any = verifier
                    feats = v.features([image])
                    tok = v.backbone_tokens(feats)
                    pool: list[tuple[np.ndarray, str]] = [(nb.near[i], RETRIEVED)]
                    gps = v.gps_candidates(feats.embedding, tok, 10) if v.has_gps else None
                    if gps is not None:
                        pool.append((gps[0][0], GALLERY))
                    q = v.location_queries(feats.embedding, tok)[0]
                    g3 = run_g3(client, image, near, far, pool, v.location_embeddings, q, proc)
                    lat, lon = g3.verified.lat, g3.verified.lon
                else:
                    dg = run_dualgeo(client, image, near, far, proc)
                    lat, lon = dg.lat, dg.lon
            except ServiceError as e:
                if not lmm.fallback:
                    where = f"; {result.asked} answers are kept in {jpath}" if jpath else ""
                    raise ServiceError(f"{e}{where}") from None
                say(f"{e}; keeping the refiner's answer for this and the remaining queries")
                result.notes.append(f"lmm failed at {qid}: {e}")
                failed = True
                result.kept += 1
                continue
            out[i] = (lat, lon)
            result.asked += 1
            if fh is not None:
                row = {"key": key, "id": qid, "lat": float(lat), "lon": float(lon)}
                fh.write(json.dumps(row) + "\n")
                fh.flush()
    finally:
        if fh is not None:
            fh.close()
        if bar is not None:
            bar.close()
    return result


def cross_validate_refiners(
    nb: Neighbours,
    truth: np.ndarray,
    methods: Sequence[str],
    folds: int = 5,
    oracle: bool = True,
    compare: bool = True,
    progress: Any | None = None,
    objectives: Sequence[str] | None = None,
) -> list[tuple[str, Any]]:
    """Rows of :func:`geolocus.eval.results_table`: each refiner's photographer-grouped
    ``folds``-fold cross-validated scores, then the oracle (best of the K neighbours) and
    the published systems on IM2GPS3k. ``progress(label)`` is called as each finishes.

    ``objectives``: the methods that have a choice of training objectives (``best``) get
    one row per objective named here (labelled ``best (georanker objective)`` but for the
    default one); the others one row as usual. Naming objectives when no method has any
    is an error."""
    runs = refiner_runs(methods, objectives)
    if len(nb) < folds:
        raise InputError(f"need at least {folds} labelled queries for {folds}-fold CV")
    fold = grouped_folds(nb.ids, folds, group=photographer)
    rows: list[tuple[str, Any]] = []
    for m, objective in runs:
        pred = cross_val_predict(partial(new_refiner, m, objective), nb, truth, fold)
        d = haversine_km(pred[:, 0], pred[:, 1], truth[:, 0], truth[:, 1])
        label = f"{m} + photo text" if nb.evidence is not None and m == "best" else m
        if objective is not None and objective != objectives_of(m)[0]:
            label += f" ({objective} objective)"
        rows.append((label, score_errors(d)))
        if progress is not None:
            progress(label)
    if oracle:
        d = haversine_km(nb.near[..., 0], nb.near[..., 1], truth[:, None, 0], truth[:, None, 1])
        rows.append((f"oracle (best of {nb.k})", score_errors(d.min(axis=1))))
    if compare:
        rows += [(r.system, r) for r in published_results("im2gps3k")]
    return rows


def refiner_runs(
    methods: Sequence[str], objectives: Sequence[str] | None
) -> list[tuple[str, str | None]]:
    """``(method, objective)`` for each row of :func:`cross_validate_refiners`, all checked
    before any fitting."""
    for m in methods:
        REFINERS.get(m)  # fail early on an unknown name
    if not objectives:
        return [(m, None) for m in methods]
    having = [m for m in methods if objectives_of(m)]
    if methods and not having:
        check_objective(methods[0], objectives[0])  # the one-line error: none has any
    runs: list[tuple[str, str | None]] = []
    for m in methods:
        for o in objectives if m in having else [None]:
            check_objective(m, o)
            runs.append((m, o))
    return runs
