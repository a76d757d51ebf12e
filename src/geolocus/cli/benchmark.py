"""``geolocus benchmark``: the experiments whose tables go into docs/."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Reproducible experiments: cross-validated tables.", no_args_is_help=True)


@app.command("refine")
def refine_cv(
    neighbours: Path = typer.Option(..., "--neighbours", help="Neighbours CSV (dev queries)."),
    labels: Path = typer.Option(..., "--labels", help="IMG_ID,LAT,LON of those queries."),
    methods: str = typer.Option(
        "nearest,dualgeo,kde,best", "--methods", help="Comma-separated refiners to compare."
    ),
    folds: int = typer.Option(5, "--folds", help="Photographer-grouped cross-validation folds."),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Add published rows."),
    oracle: bool = typer.Option(True, "--oracle/--no-oracle", help="Add the best-of-K row."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
) -> None:
    """Cross-validate stage-2 refiners on a neighbours file with labels.

    Queries are split into folds by photographer (the owner id ending each
    IM2GPS3k file name); each fold is predicted by a refiner fitted on the others.
    """
    import numpy as np

    from geolocus.data import read_coords, read_neighbours
    from geolocus.data.im2gps3k import grouped_folds
    from geolocus.errors import InputError
    from geolocus.eval import published_results, results_table, score_errors
    from geolocus.eval.crossval import cross_val_predict
    from geolocus.geo import haversine_km
    from geolocus.refine import create

    nb = read_neighbours(neighbours)
    lab = read_coords(labels, "labels").set_index("IMG_ID")
    have = np.isin(nb.ids, lab.index)
    if not have.all():
        typer.echo(f"note: {int((~have).sum())} queries without labels are left out", err=True)
        nb = nb.subset(have)
    if len(nb) < folds:
        raise InputError(f"need at least {folds} labelled queries for {folds}-fold CV")
    truth = lab.loc[list(nb.ids), ["LAT", "LON"]].to_numpy()
    fold = grouped_folds(nb.ids, folds)
    rows: list = []
    for m in [m.strip() for m in methods.split(",") if m.strip()]:
        create(m)  # fail early on an unknown name
        pred = cross_val_predict(lambda m=m: create(m), nb, truth, fold)
        d = haversine_km(pred[:, 0], pred[:, 1], truth[:, 0], truth[:, 1])
        rows.append((m, score_errors(d)))
        typer.echo(f"{m}: done", err=True)
    if oracle:
        d = haversine_km(nb.near[..., 0], nb.near[..., 1], truth[:, None, 0], truth[:, None, 1])
        rows.append((f"oracle (best of {nb.k})", score_errors(d.min(axis=1))))
    if compare:
        rows += [(r.system, r) for r in published_results("im2gps3k")]
    typer.echo(results_table(rows, markdown=markdown))
