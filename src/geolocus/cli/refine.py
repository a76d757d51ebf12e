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
    save_model: Path | None = typer.Option(
        None, "--save-model", help="Also write the fitted refiner here (JSON; method best)."
    ),
    model: Path | None = typer.Option(
        None, "--model", help="Use a refiner saved with --save-model instead of --fit/--labels."
    ),
) -> None:
    """Choose each query's position among its retrieved neighbours.

    Methods: nearest (the first neighbour), dualgeo (DualGeo's cluster
    re-ranking), kde (kernel-density mode; --fit tunes its bandwidth), best
    (a learned re-ranker; needs --fit and --labels, or --model).
    """
    from geolocus.data import read_coords, read_neighbours, write_coords
    from geolocus.errors import InputError
    from geolocus.refine import create

    refiner = create(method)
    if (fit is None) != (labels is None):
        raise InputError("--fit and --labels go together")
    if model is not None and fit is not None:
        raise InputError("give either --model or --fit/--labels, not both")
    if (model is not None or save_model is not None) and not hasattr(refiner, "save"):
        raise InputError(f"method {method!r} has no saved form; --model/--save-model need best")
    if save_model is not None and fit is None:
        raise InputError("--save-model saves what --fit learned: give --fit and --labels")
    if model is not None:
        refiner = type(refiner).load(model)
    elif fit is not None and labels is not None:
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
        hint = " (or --model)" if hasattr(refiner, "save") else ""
        raise InputError(f"method {method!r} learns from data: give --fit and --labels{hint}")
    if save_model is not None:
        refiner.save(save_model)
        typer.echo(f"saved the fitted {method} refiner to {save_model}")
    nb = read_neighbours(neighbours)
    write_coords(out, nb.ids, refiner.predict(nb))
    typer.echo(f"wrote {len(nb)} predictions ({method}) to {out}")
