"""Cross-validation folds that keep related queries together (a photographer's photos,
often of one place), so no fold is scored on what its training side has seen."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np


def grouped_folds(
    ids: Sequence[str] | np.ndarray,
    k: int = 3,
    *,
    group: Callable[[str], str],
    salt: str = "geolocus",
) -> np.ndarray:
    """Fold number in ``[0, k)`` for each id, keeping each group (``group(id)``, e.g. the
    photographer of an IM2GPS3k photo) in one fold.

    Groups can be very unequal (IM2GPS3k has only ~200 photographers for ~3000
    photos, some with hundreds), so folds are balanced greedily: groups from the
    largest down (ties broken by a salted hash, so the split is deterministic and
    does not depend on the order of ``ids``) each go to the fold with the fewest
    ids so far.
    """
    if k < 2:
        raise ValueError("k must be at least 2")
    owners = np.array([group(str(i)) for i in ids], dtype=object)
    uniq, counts = np.unique(owners, return_counts=True)

    def tiebreak(owner: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{salt}:{owner}".encode()).digest()[:8], "big")

    order = sorted(range(len(uniq)), key=lambda j: (-counts[j], tiebreak(str(uniq[j]))))
    sizes = np.zeros(k, dtype=int)
    assign: dict[str, int] = {}
    for j in order:
        f = int(np.argmin(sizes))
        assign[str(uniq[j])] = f
        sizes[f] += counts[j]
    return np.array([assign[str(o)] for o in owners], dtype=int)
