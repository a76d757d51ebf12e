"""``geolocus predict``: where were these photos taken?"""

from __future__ import annotations

from pathlib import Path

import typer

from geolocus.cli.options import (
    DB_HELP,
    batch_size_option,
    lmm_procedure,
    lmm_procedure_option,
    lmm_prompts_option,
    lmm_samples_option,
    lmm_temperature_option,
    objective_option,
    refiner_option,
)


def _map_paths(base: Path, n: int) -> list[Path]:
    if n == 1:
        return [base]
    suffix = base.suffix or ".html"
    return [base.with_name(f"{base.stem}-{i + 1:03d}{suffix}") for i in range(n)]


def predict(
    photos: list[str] = typer.Argument(  # str: typer would turn "" into "." (the cwd)
        ..., help="Photos, folders of photos, or .txt files listing one photo path per line."
    ),
    db: Path | None = typer.Option(
        None,
        "--db",
        help=f"{DB_HELP} Without it a worldwide model answers (--world).",
    ),
    world: str | None = typer.Option(
        None,
        "--world",
        help="Worldwide model: geoclip (the default without --db; with --db, the database "
        "must be built with it and its neighbours join the gallery's) or streetclip "
        "(without --db). Needs 'geolocus download clip-vit-l14' (or streetclip) once.",
    ),
    heatmap: bool = typer.Option(
        False,
        "--heatmap",
        help="JSON: include each photo's probability of every gallery location "
        "(gallery models; --map always draws it).",
    ),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Distinct places to answer per photo."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, csv or geojson."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the answer here, not stdout."),
    map_path: Path | None = typer.Option(
        None, "--map", help="Write an offline HTML map (one file per photo when several)."
    ),
    refine: str = refiner_option(note="One that learns is fitted on the database."),
    objective: str | None = objective_option(),
    model: str | None = typer.Option(
        None,
        "--model",
        help="With --db: check that the database was built with this model. Without --db: "
        "a trained model file that answers alone (a head with a location output, e.g. one "
        "from 'geolocus train configs/planet.toml').",
    ),
    k: int = typer.Option(20, "--k", min=1, help="Near neighbours retrieved per photo."),
    k_far: int = typer.Option(20, "--k-far", min=0, help="Far neighbours retrieved per photo."),
    lmm: str | None = typer.Option(
        None, "--lmm", help="URL of an OpenAI-compatible vision model API (e.g. .../v1)."
    ),
    lmm_model: str | None = typer.Option(None, "--lmm-model", help="Model name for --lmm."),
    lmm_fallback: bool = typer.Option(
        False,
        "--lmm-fallback",
        help="If the --lmm server fails, warn and keep the geometric answer.",
    ),
    lmm_procedure_name: str = lmm_procedure_option(),
    lmm_prompts: str | None = lmm_prompts_option(),
    lmm_samples: int | None = lmm_samples_option(),
    lmm_temperature: float | None = lmm_temperature_option(),
    batch_size: int = batch_size_option(16),
    progress: bool = typer.Option(False, "--progress", help="Show a progress bar on stderr."),
) -> None:
    """Where were these photos taken? Top-k places, confidence, radius and place name.

    Answers are the top-k distinct places, each with a confidence, an
    uncertainty radius (km) and the nearest named place: from a worldwide model
    (--world geoclip, the default, or streetclip; their weights come once from
    'geolocus download'), from a trained model file alone (--model FILE), or from a
    database built by 'geolocus index build' (--db).

    The database's own model embeds the photos. A photo's EXIF GPS position is
    never used as input; where present it is shown beside the answer. Unreadable
    photos get a one-line error and the others go on; the exit status is then 1.
    """
    import sys

    from geolocus.errors import InputError
    from geolocus.files import check_output_path, write_text_atomic
    from geolocus.pipeline import (
        FORMATS,
        GallerySettings,
        Geolocator,
        LMMSettings,
        PlaceSettings,
        RetrievalSettings,
        expand_inputs,
        render,
        write_map,
    )
    from geolocus.pipeline.formats import ORDER_NOTE, WORLD_ORDER_NOTE, table_text
    from geolocus.pipeline.refining import stage2_choice

    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if lmm is not None and not lmm_model:
        raise InputError("--lmm needs --lmm-model NAME")
    procedure = lmm_procedure(lmm, lmm_procedure_name, lmm_prompts, lmm_samples, lmm_temperature)
    from geolocus.pipeline.geolocator import WORLD_GALLERY, WORLD_MODELS

    if world is not None and world not in WORLD_MODELS:
        raise InputError(f"unknown --world {world!r}; choose one of: {', '.join(WORLD_MODELS)}")
    if db is not None and world not in (None, "geoclip"):
        raise InputError(f"--world {world} answers alone: give it without --db")
    if world is not None and model not in (None, world):
        raise InputError(f"--world {world} and --model {model} disagree: give one")
    stage2 = stage2_choice(refine, objective)
    if objective is not None and db is None:
        raise InputError("--objective fits a refiner on a database: give --db")
    # outputs that could not be written are refused before any photo is geolocated
    if out is not None:
        check_output_path(out, "--out")
    if map_path is not None:
        check_output_path(map_path, "--map")
    skipped: list[str] = []

    def on_skip(path: str, reason: str) -> None:
        typer.echo(f"geolocus: error: {path}: skipped ({reason})", err=True)
        skipped.append(path)

    paths = expand_inputs(photos, on_skip=on_skip)
    if not paths:
        raise InputError("no photos given (the folders named hold none)")
    heat = heatmap or map_path is not None
    chooser = (
        None
        if lmm is None
        else LMMSettings.from_url(lmm, lmm_model or "default", lmm_fallback, procedure)
    )
    retrieval = RetrievalSettings(k=k, k_far=k_far, batch_size=batch_size)
    if db is None and model is not None and model not in WORLD_MODELS:
        geo = Geolocator.from_model(
            model,
            retrieval=retrieval,
            places=PlaceSettings(top_k=top_k),
            gallery=GallerySettings(k=WORLD_GALLERY.k, heatmap=heat),
            lmm=chooser,
        )
    elif db is None:
        geo = Geolocator.worldwide(
            world or model or "geoclip",
            retrieval=retrieval,
            places=PlaceSettings(top_k=top_k),
            gallery=GallerySettings(k=WORLD_GALLERY.k, heatmap=heat),
            lmm=chooser,
        )
    else:
        geo = Geolocator.from_database(
            db,
            refine=stage2,
            model=world or model,
            retrieval=retrieval,
            places=PlaceSettings(top_k=top_k),
            gallery=GallerySettings(heatmap=heat),
            lmm=chooser,
        )
    stream = fmt == "table" and out is None

    def on_result(pred) -> None:
        if pred.error is not None:
            typer.echo(f"geolocus: error: {pred.error}", err=True)
        elif stream:
            typer.echo(table_text(pred) + "\n")
            sys.stdout.flush()

    note = ORDER_NOTE if db is not None else WORLD_ORDER_NOTE
    if stream:
        typer.echo(note + "\n")
    preds = geo.predict(paths, progress=progress, on_result=on_result)
    ok = [p for p in preds if p.ok]
    if not stream:
        text = render(ok if fmt == "table" else preds, fmt, heatmap=heatmap, note=note)
        if out is None:
            typer.echo(text, nl=False)
        else:
            try:
                write_text_atomic(out, text)
            except OSError as e:  # e.g. the disk filled up: the answers are not lost
                typer.echo(text, nl=False)
                raise InputError(
                    f"cannot write --out {out}: {e.strerror or e}; the answers went to stdout"
                ) from None
            typer.echo(f"wrote {len(preds)} predictions to {out}", err=True)
    if map_path is not None and ok:
        for p, path in zip(ok, _map_paths(map_path, len(ok)), strict=True):
            write_map(p, path)
        typer.echo(
            f"wrote {len(ok)} map(s): {map_path if len(ok) == 1 else map_path.parent}", err=True
        )
    failed = len(preds) - len(ok)
    if failed:
        typer.echo(f"geolocus: {failed} of {len(preds)} photos could not be geolocated", err=True)
    if skipped:
        typer.echo(f"geolocus: {len(skipped)} path(s) in the folders given were skipped", err=True)
    if failed or skipped:
        raise typer.Exit(1)
