"""``geolocus refine``: stage 2 on a table of retrieved neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer


def refine(
    neighbours: Path = typer.Option(
        ..., "--neighbours", help="Neighbours CSV: IMG_ID, near_<i>_lat/lon, far_<i>_lat/lon."
    ),
    method: str = typer.Option(
        "dualgeo", "--method", "-m", help="Refiner: nearest, dualgeo, kde or best."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write IMG_ID,LAT,LON predictions."),
    fit: Path | None = typer.Option(
        None, "--fit", help="Neighbours CSV of queries with known positions, to fit the refiner."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="IMG_ID,LAT,LON of the --fit queries."
    ),
) -> None:
    """Choose each query's position among its retrieved neighbours.

    Methods: nearest (the first neighbour), dualgeo (DualGeo's cluster
    re-ranking), kde (kernel-density mode; --fit tunes its bandwidth), best
    (a learned re-ranker; needs --fit and --labels).
    """
    from geolocus.data import read_coords, read_neighbours, write_coords
    from geolocus.errors import InputError
    from geolocus.refine import create

    refiner = create(method)
    if (fit is None) != (labels is None):
        raise InputError("--fit and --labels go together")
    if fit is not None and labels is not None:
        fit_nb = read_neighbours(fit)
        lab = read_coords(labels, "labels").set_index("IMG_ID")
        missing = ~np.isin(fit_nb.ids, lab.index)
        if missing.any():
            raise InputError(
                f"{int(missing.sum())} --fit queries have no row in --labels, "
                f"first {fit_nb.ids[missing][0]!r}"
            )
        refiner.fit(fit_nb, lab.loc[list(fit_nb.ids), ["LAT", "LON"]].to_numpy())
    elif refiner.requires_fit:
        raise InputError(f"method {method!r} learns from data: give --fit and --labels")
    nb = read_neighbours(neighbours)
    write_coords(out, nb.ids, refiner.predict(nb))
    typer.echo(f"wrote {len(nb)} predictions ({method}) to {out}")
