"""``geolocus geotag``: place the photos of a collection that lack GPS, from those that have it."""

from __future__ import annotations

from pathlib import Path

import typer

from geolocus.cli.options import batch_size_option, objective_option, refiner_option

#: geolocus.pipeline.geotag.MIN_CONFIDENCE, repeated here so that --help imports no pipeline
MIN_CONFIDENCE = 0.3


def geotag(
    collection: Path = typer.Argument(..., help="Folder of photos, some with EXIF GPS."),
    out: Path = typer.Option(
        None, "--out", "-o", help="CSV of answers (default: COLLECTION/geotags.csv)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Backbone or model file (default: the offline default backbone)."
    ),
    refine: str | None = refiner_option(
        default=None,
        note="Default: collection (similarity-weighted votes and capture times).",
    ),
    objective: str | None = objective_option(),
    xmp: bool = typer.Option(
        False, "--xmp", help="Also write XMP sidecars (photo.jpg.xmp); existing ones are kept."
    ),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Estimate accuracy by leave-one-out on geotagged photos."
    ),
    verify: bool = typer.Option(
        False,
        "--verify/--no-verify",
        help="Also match local features (OpenCV, geolocus[verify]) with the most similar photos.",
    ),
    min_confidence: float = typer.Option(
        MIN_CONFIDENCE,
        "--min-confidence",
        min=0.0,
        max=1.0,
        help="Leave a photo untagged (no sidecar; TAGGED no in the CSV) below this confidence.",
    ),
    batch_size: int = batch_size_option(16),
) -> None:
    """Geolocate the photos of a collection that have no GPS from the ones that do.

    The geotagged photos become a retrieval database (COLLECTION/.geolocus/db,
    resumable); each photo without a position gets the best place, a confidence
    and a radius. Photos are never modified. An interrupted run resumes.
    """
    from geolocus.pipeline.geotag import check_table, write_sidecars
    from geolocus.pipeline.geotag import geotag as run

    out = out if out is not None else collection / "geotags.csv"
    res = run(
        collection,
        out,
        model=model,
        refine=refine,
        objective=objective,
        check=check,
        verify=verify,
        min_confidence=min_confidence,
        batch_size=batch_size,
        log=lambda s: typer.echo(s, err=True),
    )
    if res.check is not None:
        typer.echo(check_table(res.check))
    typer.echo(
        f"{res.n_predicted} photos geotagged from {res.geotagged} with GPS "
        f"(stage 2: {res.refiner}); answers in {out}"
    )
    if res.unsure:
        typer.echo(
            f"{len(res.unsure)} photos left untagged: confidence below {min_confidence:g} "
            "(their best guess is in the CSV, TAGGED no)"
        )
    if res.failed:
        typer.echo(f"{len(res.failed)} photos could not be read:", err=True)
        for r in res.failed[:10]:
            typer.echo(f"  {r['IMG_ID']}: {r['ERROR']}", err=True)
    if xmp:
        n, skipped = write_sidecars(res.predicted, Path(collection).expanduser().resolve())
        typer.echo(
            f"wrote {n} XMP sidecars" + (f"; kept {len(skipped)} existing" if skipped else "")
        )
    if res.failed:
        raise typer.Exit(1)
