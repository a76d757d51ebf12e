"""The refiner interface: candidates in, a ranked list of positions out.

Refiners follow scikit-learn's convention: ``fit(neighbours, truth)`` (a
no-op for rules that learn nothing) and ``predict(neighbours)``, plus
``rank(neighbours)`` for the whole ranked candidate list that top-k answers use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from geolocus.data.neighbours import Neighbours


@dataclass
class Ranking:
    """Ranked candidate positions for ``N`` queries, best first.

    ``candidates`` is ``(N, C, 2)`` (lat, lon); ``scores`` is ``(N, C)``,
    non-increasing along each row. Where a refiner is probabilistic the scores
    of a row sum to 1 and read as confidences.
    """

    candidates: np.ndarray
    scores: np.ndarray

    def top1(self) -> np.ndarray:
        return self.candidates[:, 0, :]


class Refiner:
    """Base class of stage-2 refiners."""

    #: Registry name (``geolocus refine --method NAME``).
    name: ClassVar[str] = ""
    #: Whether ``fit`` must be called before ``predict``.
    requires_fit: ClassVar[bool] = False

    def fit(self, neighbours: Neighbours, truth: np.ndarray) -> Refiner:
        """Learn from queries with known positions ``truth`` (N, 2). Default: nothing to learn."""
        return self

    def rank(self, neighbours: Neighbours) -> Ranking:
        raise NotImplementedError

    def predict(self, neighbours: Neighbours) -> np.ndarray:
        """The best candidate of each query, ``(N, 2)``."""
        return self.rank(neighbours).top1()


def order_rows(candidates: np.ndarray, scores: np.ndarray) -> Ranking:
    """Sort each query's candidates by descending score (stable: ties keep retrieval order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return Ranking(
        candidates=np.take_along_axis(candidates, order[..., None], axis=1),
        scores=np.take_along_axis(scores, order, axis=1),
    )
