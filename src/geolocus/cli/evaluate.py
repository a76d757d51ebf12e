"""``geolocus evaluate``: score a predictions CSV against ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def evaluate(
    pred: Path = typer.Option(
        ...,
        "--pred",
        help="Predictions CSV with IMG_ID,LAT,LON, or the CSV of 'geolocus predict' (rank 1).",
    ),
    truth: Path = typer.Option(..., "--truth", help="Ground-truth CSV with IMG_ID,LAT,LON."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the scores as JSON."),
    compare: bool = typer.Option(
        False, "--compare", help="Print the published systems' results beside ours."
    ),
    benchmark: str = typer.Option(
        "im2gps3k", "--benchmark", help="Which benchmark's published results --compare shows."
    ),
    name: str = typer.Option("ours", "--name", help="Label of our row in the table."),
) -> None:
    """Accuracy within 1/25/200/750/2500 km, median and mean error, and GeoScore.

    Images of the ground truth without a prediction count as misses (at the
    largest possible distance) and are reported; predictions for images not in
    the ground truth are an error. A prediction's IMG_ID may be a path ending
    with the ground truth's (photos/a.jpg for a.jpg). The CSV of 'geolocus predict'
    (one row per guess) is scored on its rank-1 guesses.
    """
    from geolocus.data import read_coords
    from geolocus.errors import InputError
    from geolocus.eval import evaluate as score
    from geolocus.eval import published_results, results_table
    from geolocus.files import atomic_write, check_output_path

    if json_out is not None:
        check_output_path(json_out, "--json")
    if compare and not published_results(benchmark):  # an empty comparison would look like one
        known = sorted({r.benchmark for r in published_results()})
        raise InputError(f"no published results for {benchmark!r}; known: {', '.join(known)}")
    scores = score(read_coords(pred, "predictions", rank1=True), read_coords(truth, "ground truth"))
    if scores.n_missing:
        first = ", ".join(scores.missing[:3])
        typer.echo(
            f"warning: {scores.n_missing} of {scores.n} images have no prediction and count "
            f"as misses (e.g. {first})",
            err=True,
        )
    rows: list = [(name, scores)]
    if compare:
        rows += [(r.system, r) for r in published_results(benchmark)]
    typer.echo(results_table(rows))
    typer.echo(
        f"median {scores.median_km:.1f} km, mean {scores.mean_km:.1f} km, "
        f"GeoScore {scores.geoscore:.1f}, n = {scores.n}"
    )
    if json_out is not None:
        with atomic_write(json_out) as fh:
            json.dump(scores.to_json(), fh, indent=2)
            fh.write("\n")
