"""Stage 2 on tables of retrieved neighbours: get a refiner (fitted, loaded or as is),
apply it to a neighbours CSV, and cross-validate refiners on one.

What ``geolocus refine`` and ``geolocus benchmark refine`` run; the commands only
parse, call and print. With photos (``images``), the text read in each one is
attached to its neighbours as evidence (OCR, cached by file hash) for the
refiners that use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from geolocus.data import Neighbours, read_coords, read_neighbours
from geolocus.data.im2gps3k import photographer
from geolocus.errors import InputError
from geolocus.eval import published_results, score_errors
from geolocus.eval.crossval import cross_val_predict
from geolocus.eval.folds import grouped_folds
from geolocus.geo import haversine_km
from geolocus.ocr.collection import photo_evidence
from geolocus.refine import REFINERS, Refiner, create_refiner

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


def get_refiner(
    method: str,
    *,
    fit: PathLike | None = None,
    labels: PathLike | None = None,
    refiner_file: PathLike | None = None,
    fit_images: PathLike | None = None,
    ocr: OCRSettings | None = None,
) -> Refiner:
    """The refiner ``method``: read from ``refiner_file`` (saved by :meth:`Refiner.save`),
    fitted on the ``fit`` neighbours CSV with their ``labels`` (and the text of their
    photos in ``fit_images``), or as constructed when it needs no fitting."""
    refiner = create_refiner(method)
    if fit_images is not None and not refiner.can_read_text:
        raise InputError(f"method {method!r} reads no photo text: --images is not used by it")
    if (fit is None) != (labels is None):
        raise InputError("--fit and --labels go together")
    if refiner_file is not None and fit is not None:
        raise InputError("give either --refiner-file or --fit/--labels, not both")
    if refiner_file is not None:
        if not refiner.learns:
            raise InputError(f"method {method!r} learns nothing: it has no refiner file")
        return type(refiner).load(refiner_file)
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


def cross_validate_refiners(
    nb: Neighbours,
    truth: np.ndarray,
    methods: Sequence[str],
    folds: int = 5,
    oracle: bool = True,
    compare: bool = True,
    progress: Any | None = None,
) -> list[tuple[str, Any]]:
    """Rows of :func:`geolocus.eval.results_table`: each refiner's photographer-grouped
    ``folds``-fold cross-validated scores, then the oracle (best of the K neighbours) and
    the published systems on IM2GPS3k. ``progress(method)`` is called as each finishes."""
    for m in methods:
        REFINERS.get(m)  # fail early on an unknown name
    if len(nb) < folds:
        raise InputError(f"need at least {folds} labelled queries for {folds}-fold CV")
    fold = grouped_folds(nb.ids, folds, group=photographer)
    rows: list[tuple[str, Any]] = []
    for m in methods:
        pred = cross_val_predict(partial(create_refiner, m), nb, truth, fold)
        d = haversine_km(pred[:, 0], pred[:, 1], truth[:, 0], truth[:, 1])
        label = f"{m} + photo text" if nb.evidence is not None and m == "best" else m
        rows.append((label, score_errors(d)))
        if progress is not None:
            progress(m)
    if oracle:
        d = haversine_km(nb.near[..., 0], nb.near[..., 1], truth[:, None, 0], truth[:, None, 1])
        rows.append((f"oracle (best of {nb.k})", score_errors(d.min(axis=1))))
    if compare:
        rows += [(r.system, r) for r in published_results("im2gps3k")]
    return rows
