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
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Folder of the query photos, named by IMG_ID: method best also reads the text "
        "in them (OCR, cached by file hash).",
    ),
    fit_images: Path | None = typer.Option(
        None, "--fit-images", help="Folder of the --fit queries' photos (default: --images)."
    ),
    ocr_cache: Path = typer.Option(
        Path("cache/ocr"), "--ocr-cache", help="Where OCR results are kept (reused next time)."
    ),
    ocr_backend: str = typer.Option(
        "rapidocr", "--ocr-backend", help="OCR engine: rapidocr (default) or tesseract."
    ),
) -> None:
    """Choose each query's position among its retrieved neighbours.

    Methods: nearest (the first neighbour), dualgeo (DualGeo's cluster
    re-ranking), kde (kernel-density mode; --fit tunes its bandwidth), best
    (a learned re-ranker; needs --fit and --labels, or --model). With --images,
    best also weighs what the text in each photo says (script, language, place
    names; docs/ocr.md): the first run reads every photo (about a second each),
    later runs reuse the cache.
    """
    from geolocus.data import read_coords, read_neighbours, write_coords
    from geolocus.errors import InputError
    from geolocus.files import check_output_path
    from geolocus.refine import create

    refiner = create(method)
    check_output_path(out, "--out")  # before fitting, which can take minutes
    if save_model is not None:
        check_output_path(save_model, "--save-model")
    if (fit is None) != (labels is None):
        raise InputError("--fit and --labels go together")
    if model is not None and fit is not None:
        raise InputError("give either --model or --fit/--labels, not both")
    if (model is not None or save_model is not None) and not hasattr(refiner, "save"):
        raise InputError(f"method {method!r} has no saved form; --model/--save-model need best")
    if save_model is not None and fit is None:
        raise InputError("--save-model saves what --fit learned: give --fit and --labels")
    if (images is not None or fit_images is not None) and method != "best":
        raise InputError(f"--images is used by method best only, not {method!r}")
    fit_images = fit_images or images

    def evidence(nb, folder):
        from geolocus.ocr.collection import photo_evidence

        return nb.with_evidence(
            photo_evidence(list(nb.ids), folder, ocr_cache, backend=ocr_backend)
        )

    if model is not None:
        refiner = type(refiner).load(model)
    elif fit is not None and labels is not None:
        fit_nb = read_neighbours(fit)
        if fit_images is not None:
            fit_nb = evidence(fit_nb, fit_images)
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
    uses_text = getattr(getattr(refiner, "spec", None), "text", False)
    if images is not None and uses_text:
        nb = evidence(nb, images)
    elif images is not None:
        typer.echo("note: this model was fitted without photos: --images is not used", err=True)
    elif uses_text:
        typer.echo(
            "note: this model reads photo text but no --images were given: "
            "every query is ranked as a photo without text",
            err=True,
        )
    write_coords(out, nb.ids, refiner.predict(nb))
    typer.echo(f"wrote {len(nb)} predictions ({method}) to {out}")
