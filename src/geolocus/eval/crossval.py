"""Cross-validated predictions, so that fitted refiners are never scored on what they saw."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from geolocus.data.neighbours import Neighbours


class Estimator(Protocol):
    """What cross-validation needs of a stage-2 refiner (:class:`geolocus.refine.Refiner`)."""

    def fit(self, neighbours: Neighbours, truth: np.ndarray) -> Estimator: ...

    def predict(self, neighbours: Neighbours) -> np.ndarray: ...


def cross_val_predict(
    make: Callable[[], Estimator],
    neighbours: Neighbours,
    truth: np.ndarray,
    folds: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Predict each fold with a refiner fitted on the other folds; ``(N, 2)``.

    ``folds`` gives each query's fold (e.g. from
    :func:`geolocus.eval.folds.grouped_folds`, which keeps photographers apart).
    """
    folds = np.asarray(folds)
    out = np.full((len(neighbours), 2), np.nan)
    uniq = np.unique(folds)
    for j, f in enumerate(uniq):
        test = folds == f
        refiner = make().fit(neighbours.subset(~test), truth[~test])
        out[test] = refiner.predict(neighbours.subset(test))
        if progress is not None:
            progress(j + 1, len(uniq))
    return out
