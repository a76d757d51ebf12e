"""``geolocus refine``: stage 2 on a table of retrieved neighbours."""

from __future__ import annotations

from pathlib import Path

import typer

from geolocus.cli.options import refiner_option


def refine(
    neighbours: Path = typer.Option(
        ..., "--neighbours", help="Neighbours CSV: IMG_ID, near_<i>_lat/lon, far_<i>_lat/lon."
    ),
    method: str = refiner_option("--method", "-m"),
    out: Path = typer.Option(..., "--out", help="Where to write IMG_ID,LAT,LON predictions."),
    fit: Path | None = typer.Option(
        None, "--fit", help="Neighbours CSV of queries with known positions, to fit the refiner."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="IMG_ID,LAT,LON of the --fit queries."
    ),
    save_refiner: Path | None = typer.Option(
        None, "--save-refiner", help="Also write the fitted refiner here (JSON; kde or best)."
    ),
    refiner_file: Path | None = typer.Option(
        None,
        "--refiner-file",
        help="Use a refiner saved with --save-refiner instead of --fit/--labels.",
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
    (a learned re-ranker; needs --fit and --labels, or --refiner-file). With
    --images, best also weighs what the text in each photo says (script,
    language, place names; docs/ocr.md): the first run reads every photo (about
    a second each), later runs reuse the cache.
    """
    from geolocus.data import write_coords
    from geolocus.errors import InputError
    from geolocus.files import check_output_path
    from geolocus.pipeline.refining import OCRSettings, get_refiner, refine_table

    if save_refiner is not None and fit is None:
        raise InputError("--save-refiner saves what --fit learned: give --fit and --labels")
    check_output_path(out, "--out")  # before fitting, which can take minutes
    if save_refiner is not None:
        check_output_path(save_refiner, "--save-refiner")
    ocr = OCRSettings(ocr_cache, ocr_backend)
    refiner = get_refiner(
        method,
        fit=fit,
        labels=labels,
        refiner_file=refiner_file,
        fit_images=fit_images or images,
        ocr=ocr,
    )
    if save_refiner is not None:
        refiner.save(save_refiner)
        typer.echo(f"saved the fitted {method} refiner to {save_refiner}")
    done = refine_table(refiner, neighbours, images=images, ocr=ocr)
    for note in done.notes:
        typer.echo(f"note: {note}", err=True)
    write_coords(out, done.neighbours.ids, done.positions)
    typer.echo(f"wrote {len(done.neighbours)} predictions ({method}) to {out}")
