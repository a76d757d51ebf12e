"""Tables of results, as plain text for terminals and Markdown for docs/."""

from __future__ import annotations

from collections.abc import Sequence

from geolocus.eval.metrics import Scores
from geolocus.eval.published import PublishedResult
from geolocus.geo import THRESHOLDS_KM

#: What the numbers of :func:`results_table` mean, for a reader who has not read docs/.
TABLE_LEGEND = (
    "'N km': % of photos whose answer is within N km of where they were taken "
    "(1 street, 25 city, 200 region, 750 country, 2500 continent); "
    "median km: half the answers are closer; n: photos scored"
)
#: What the oracle row of a refiner comparison is.
ORACLE_NOTE = (
    "oracle (best of K): the retrieved neighbour nearest the true position, picked knowing "
    "it: the most any stage 2 could reach from these neighbours"
)


def results_table(
    rows: Sequence[tuple[str, Scores | PublishedResult]], markdown: bool = False
) -> str:
    """One line per method: accuracy at each threshold, then median error and n when known."""
    head = ["method", *[f"{t} km" for t in THRESHOLDS_KM], "median km", "n"]
    body = []
    for name, r in rows:
        acc = [f"{a:.2f}" for a in r.row()]
        if isinstance(r, Scores):
            body.append([name, *acc, f"{r.median_km:.1f}", str(r.n)])
        else:
            body.append([f"{name} (published)", *acc, "", ""])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines)
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])
