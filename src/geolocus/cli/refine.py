"""``geolocus refine``: stage 2 on a table of retrieved neighbours."""

from __future__ import annotations

from pathlib import Path

import typer

from geolocus.cli.options import (
    lmm_procedure,
    lmm_procedure_option,
    lmm_prompts_option,
    lmm_samples_option,
    lmm_temperature_option,
    objective_option,
    refiner_option,
)


def refine(
    neighbours: Path = typer.Option(
        ..., "--neighbours", help="Neighbours CSV: IMG_ID, near_<i>_lat/lon, far_<i>_lat/lon."
    ),
    method: str = refiner_option("--method", "-m"),
    objective: str | None = objective_option(),
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
    lmm: str | None = typer.Option(
        None,
        "--lmm",
        help="URL of an OpenAI-compatible vision model API (e.g. .../v1): it takes the last "
        "step from each query's photo (--images) and neighbours.",
    ),
    lmm_model: str | None = typer.Option(None, "--lmm-model", help="Model name for --lmm."),
    lmm_fallback: bool = typer.Option(
        False,
        "--lmm-fallback",
        help="If the --lmm server fails, warn and keep the refiner's answers from there on.",
    ),
    lmm_procedure_name: str = lmm_procedure_option(),
    lmm_prompts: str | None = lmm_prompts_option(),
    lmm_samples: int | None = lmm_samples_option(),
    lmm_temperature: float | None = lmm_temperature_option(),
    lmm_verifier: str | None = typer.Option(
        None,
        "--lmm-verifier",
        help="g3: the model whose location head verifies (geoclip, or a GeoCLIP, DualGeo or "
        "TransGeoCLIP model file); it embeds each query photo.",
    ),
    lmm_journal: Path | None = typer.Option(
        None,
        "--lmm-journal",
        help="Where each --lmm answer is kept as it comes (default: OUT.lmm.jsonl); a run "
        "started again goes on from there.",
    ),
    progress: bool = typer.Option(False, "--progress", help="Show a progress bar on stderr."),
) -> None:
    """Choose each query's position among its retrieved neighbours.

    Methods: nearest (the first neighbour), dualgeo (DualGeo's cluster
    re-ranking), kde (kernel-density mode; --fit tunes its bandwidth), best
    (a learned re-ranker; needs --fit and --labels, or --refiner-file; --objective
    georanker fits it to GeoRanker's ranking loss instead). With
    --images, best also weighs what the text in each photo says (script,
    language, place names; docs/ocr.md): the first run reads every photo (about
    a second each), later runs reuse the cache.

    With --lmm and --images a multimodal model takes the last step (docs/lmm.md):
    --lmm-procedure choose, dualgeo, or g3 (with --lmm-verifier).
    """
    from geolocus.data import write_coords
    from geolocus.errors import InputError
    from geolocus.files import check_output_path
    from geolocus.pipeline.refining import OCRSettings, check_objective, get_refiner, refine_table

    check_objective(method, objective)
    if save_refiner is not None and fit is None:
        raise InputError("--save-refiner saves what --fit learned: give --fit and --labels")
    if lmm is not None and not lmm_model:
        raise InputError("--lmm needs --lmm-model NAME")
    if lmm is not None and images is None:
        raise InputError("--lmm needs the query photos: give --images")
    for flag, value in (("--lmm-verifier", lmm_verifier), ("--lmm-journal", lmm_journal)):
        if value is not None and lmm is None:
            raise InputError(f"{flag} needs --lmm URL")
    procedure = lmm_procedure(lmm, lmm_procedure_name, lmm_prompts, lmm_samples, lmm_temperature)
    if lmm_verifier is not None and procedure.name != "g3":
        raise InputError("--lmm-verifier is for --lmm-procedure g3")
    if lmm is not None and procedure.name == "g3" and lmm_verifier is None:
        raise InputError(
            "G3's geo-verification needs a model with a location head to embed the photos: "
            "give --lmm-verifier geoclip or a GeoCLIP, DualGeo or TransGeoCLIP model file"
        )
    check_output_path(out, "--out")  # before fitting, which can take minutes
    journal = lmm_journal or out.with_name(out.name + ".lmm.jsonl")
    if lmm is not None:
        check_output_path(journal, "--lmm-journal")
    if save_refiner is not None:
        check_output_path(save_refiner, "--save-refiner")
    ocr = OCRSettings(ocr_cache, ocr_backend)
    verifier = None
    if lmm_verifier is not None:  # loaded (or refused) before any fitting or request
        from geolocus.models.embedder import create_embedder

        verifier = create_embedder(lmm_verifier)
        if not verifier.has_location_head:
            raise InputError(
                f"--lmm-verifier {lmm_verifier} has no location head: give geoclip or a "
                "GeoCLIP, DualGeo or TransGeoCLIP model file"
            )
    from geolocus.refine import create_refiner

    # with --lmm the photos are the model's; the refiner reads their text only if it can
    text_images = images if lmm is None or create_refiner(method).can_read_text else None
    refiner = get_refiner(
        method,
        fit=fit,
        labels=labels,
        refiner_file=refiner_file,
        fit_images=fit_images or text_images,
        ocr=ocr,
        objective=objective,
    )
    if save_refiner is not None:
        refiner.save(save_refiner)
        typer.echo(f"saved the fitted {method} refiner to {save_refiner}")
    done = refine_table(refiner, neighbours, images=text_images, ocr=ocr)
    for note in done.notes:
        typer.echo(f"note: {note}", err=True)
    positions, how = done.positions, method
    if lmm is not None and images is not None:
        from geolocus.pipeline import LMMSettings
        from geolocus.pipeline.refining import refine_with_lmm

        asked = refine_with_lmm(
            done.neighbours,
            done.positions,
            images,
            LMMSettings.from_url(lmm, lmm_model or "default", lmm_fallback, procedure),
            verifier=verifier,
            journal=journal,
            progress=progress,
        )
        positions, how = asked.positions, f"{method}, then {procedure.describe()}"
        typer.echo(
            f"{procedure.name}: {asked.asked} answered now, {asked.reused} from {journal}, "
            f"{asked.kept} kept the {method} answer",
            err=True,
        )
    write_coords(out, done.neighbours.ids, positions)
    typer.echo(f"wrote {len(done.neighbours)} predictions ({how}) to {out}")
