"""The stage-1 to stage-2 contract: each query's retrieved neighbours, near and far.

The database search (:mod:`geolocus.index`) and the neighbours CSV
(:func:`geolocus.data.read_neighbours`) produce it; the refiners
(:mod:`geolocus.refine`) consume it. It lives below both so neither imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass
class Neighbours:
    """Retrieved neighbours of ``N`` queries, in rank order.

    ``near`` is ``(N, K, 2)`` (lat, lon) of the K most similar database photos;
    ``far`` is ``(N, K', 2)`` of the most similar to the negated query (the
    "dissimilar" photos of G3, Img2Loc and DualGeo), possibly ``K' = 0``.
    Scores (cosine similarities) are optional: not every source publishes them.
    ``near_ids``/``far_ids`` name the retrieved database photos where known.
    ``evidence`` holds what is known about each query beyond its neighbours (a
    sequence of :class:`geolocus.ocr.TextEvidence`, one per query, from the text
    read in its photo), or ``None`` when the photos were not given: refiners that
    can use it (``best``) do, the others ignore it.
    """

    ids: np.ndarray
    near: np.ndarray
    far: np.ndarray
    near_scores: np.ndarray | None = None
    far_scores: np.ndarray | None = None
    near_ids: np.ndarray | None = None
    far_ids: np.ndarray | None = None
    evidence: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        self.near = np.asarray(self.near, dtype=float)
        self.far = np.asarray(self.far, dtype=float).reshape(len(self.ids), -1, 2)
        n = len(self.ids)
        if self.near.ndim != 3 or self.near.shape[0] != n or self.near.shape[2] != 2:
            raise ValueError(f"near must be (N, K, 2) with N={n}, got {self.near.shape}")
        for name in ("near_scores", "far_scores", "near_ids", "far_ids"):
            s = getattr(self, name)
            if s is not None:
                s = np.asarray(s, dtype=object if name.endswith("ids") else float)
                ref = self.near if name.startswith("near") else self.far
                if s.shape != ref.shape[:2]:
                    raise ValueError(f"{name} must have shape {ref.shape[:2]}, got {s.shape}")
                setattr(self, name, s)
        if self.evidence is not None:
            ev = np.empty(n, dtype=object)
            if len(self.evidence) != n:
                raise ValueError(
                    f"evidence must have one entry per query ({n}), got {len(self.evidence)}"
                )
            ev[:] = list(self.evidence)
            self.evidence = ev  # type: ignore[assignment]  # an object array: a sequence

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def k(self) -> int:
        return self.near.shape[1]

    def subset(self, index: np.ndarray | slice | list[int]) -> Neighbours:
        """The same neighbours for a subset of queries (boolean mask or positions)."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Neighbours(
            ids=self.ids[index],
            near=self.near[index],
            far=self.far[index],
            near_scores=pick(self.near_scores),
            far_scores=pick(self.far_scores),
            near_ids=pick(self.near_ids),
            far_ids=pick(self.far_ids),
            evidence=pick(self.evidence),
        )

    def with_evidence(self, evidence: Sequence[Any] | None) -> Neighbours:
        """The same neighbours with ``evidence`` (one entry per query) attached."""
        return replace(self, evidence=evidence)

    def truncate(self, k_near: int, k_far: int | None = None) -> Neighbours:
        """Keep only the first ``k_near`` near (and ``k_far`` far) neighbours."""
        kf = self.far.shape[1] if k_far is None else k_far
        cut = lambda a, k: None if a is None else a[:, :k]  # noqa: E731
        return Neighbours(
            ids=self.ids,
            near=self.near[:, :k_near],
            far=self.far[:, :kf],
            near_scores=cut(self.near_scores, k_near),
            far_scores=cut(self.far_scores, kf),
            near_ids=cut(self.near_ids, k_near),
            far_ids=cut(self.far_ids, kf),
            evidence=self.evidence,
        )
