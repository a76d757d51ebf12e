"""``geolocus index``: build, extend and inspect a retrieval database of geotagged photos."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geolocus.cli.options import batch_size_option, db_option

app = typer.Typer(
    help="Retrieval databases of geotagged photos: build, add, info.", no_args_is_help=True
)

_LABELS_HELP = "CSV IMG_ID,LAT,LON; IMG_ID is the file's path relative to --images."
_WAIT_HELP = "If another process is writing the database, wait for it to finish instead of failing."


def _inputs(images: Path, labels: Path | None, exif: bool):
    from geolocus.index.build import gather_inputs

    return gather_inputs(images, labels=labels, exif=exif)


def _finish(result) -> None:
    from geolocus.index.build import print_problems

    if result.problems:
        print_problems(result.problems)
    typer.echo(result.summary())


@app.command("build")
def build(
    images: Path = typer.Option(..., "--images", help="Folder of photos (searched recursively)."),
    labels: Path | None = typer.Option(None, "--labels", help=_LABELS_HELP),
    exif: bool = typer.Option(
        False, "--exif", help="Take each photo's position from its EXIF GPS."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Backbone name (see 'geolocus models'), 'geoclip', or a trained model file. "
        "Default: the offline default backbone.",
    ),
    out: Path = typer.Option(..., "--out", help="Database folder to create."),
    factory: str = typer.Option(
        "auto",
        "--index",
        "--factory",
        help="FAISS index: auto (exact Flat up to 200,000 photos, above that IVF-PQ codes "
        "re-ranked exactly, tuned to recall@20 >= 0.95), Flat, or any FAISS factory string "
        "(e.g. 'IVF256,Flat', 'HNSW32,Flat').",
    ),
    batch_size: int = batch_size_option(32),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a database built from other photos or another model, or a damaged one.",
    ),
    wait: bool = typer.Option(False, "--wait", help=_WAIT_HELP),
) -> None:
    """Embed every photo of a folder and store it with its position.

    Positions come from --labels or from each photo's --exif GPS. Unreadable
    photos and photos without a position are skipped and listed in
    OUT/report.csv. Interrupted, the same command resumes where it stopped.
    One process at a time writes a database: a second one fails at once,
    naming the first, unless --wait.
    """
    from geolocus.index.build import build_database
    from geolocus.index.lock import database_lock
    from geolocus.models.embedder import create_embedder

    with database_lock(out, wait=wait):  # before the model loads: a second writer fails at once
        inputs = _inputs(images, labels, exif)
        embedder = create_embedder(model)
        result = build_database(
            out,
            inputs,
            embedder,
            factory=factory,
            batch_size=batch_size,
            overwrite=overwrite,
            wait=wait,
        )
    _finish(result)


@app.command("add")
def add(
    db: Path = db_option(),
    images: Path = typer.Option(..., "--images", help="Folder of photos to add."),
    labels: Path | None = typer.Option(None, "--labels", help=_LABELS_HELP),
    exif: bool = typer.Option(
        False, "--exif", help="Take each photo's position from its EXIF GPS."
    ),
    batch_size: int = batch_size_option(32),
    wait: bool = typer.Option(False, "--wait", help=_WAIT_HELP),
) -> None:
    """Add photos to a database, with the model it was built with.

    Photos already in it (same id: path relative to --images) are skipped, so
    the command can be run again after an interruption; run again when done,
    it says there is nothing new.
    """
    from geolocus.index import Database
    from geolocus.index.build import add_to_database, embedder_for
    from geolocus.index.database import read_manifest
    from geolocus.index.lock import database_lock

    read_manifest(db)  # no database there: say so, creating nothing
    with database_lock(db, wait=wait):
        database = Database.open(db)
        embedder = embedder_for(database)
        inputs = _inputs(images, labels, exif)
        result = add_to_database(database, inputs, embedder, batch_size=batch_size, wait=wait)
    _finish(result)


@app.command("info")
def info(
    db: Path = typer.Argument(..., help="Database folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
    check: bool = typer.Option(
        False,
        "--check",
        help="Verify the whole database (checksums, counts, ids, every vector, coordinates): "
        "exit 0 if sound, else one line naming the problem (exit 2).",
    ),
) -> None:
    """Print a database's manifest: model, dimension, counts, index type, dates."""
    from dataclasses import asdict

    from geolocus.index import Database
    from geolocus.index.build import read_report
    from geolocus.index.check import check_database

    checked: list[str] = []
    if check:
        database = check_database(db, say=checked.append if as_json else typer.echo)
    else:
        database = Database.open(db)
    man = asdict(database.manifest)
    man.pop("files", None)
    report = read_report(db)
    if check and not as_json:
        return
    if as_json:
        man["report"] = {"skipped": len(report)}
        if check:
            man["check"] = {"sound": True, "checked": checked}
        typer.echo(json.dumps(man, indent=2))
        return
    extra = man.pop("extra", {}) or {}
    search = man.pop("search", {}) or {}
    for k, v in man.items():
        typer.echo(f"{k:17s} {v}")
    emb = extra.get("embedder") or {}
    if emb:
        typer.echo(f"{'backbone':17s} {emb.get('backbone')}")
        typer.echo(f"{'location head':17s} {'yes' if emb.get('gps') else 'no'}")
    if extra.get("images"):
        typer.echo(f"{'built from':17s} {extra['images']}")
    if "nprobe" in search:
        typer.echo(
            f"{'search':17s} nprobe {search['nprobe']}, re-rank {search['rerank']}: recall@20 "
            f"{search['recall_at_20']} against exact (target {search.get('target_recall_at_20')}, "
            f"{search.get('tuned_on')} held-out vectors, {search.get('ms_per_query')} ms a query)"
        )
    elif search.get("choice") == "auto":
        typer.echo(f"{'search':17s} exact (auto: Flat up to {search.get('threshold')} photos)")
    sources = database.source_counts()
    typer.echo(f"{'positions from':17s} " + ", ".join(f"{k} {v}" for k, v in sources.items()))
    typer.echo(
        f"{'skipped photos':17s} {len(report)}"
        + (f" (see {Path(db) / 'report.csv'})" if report else "")
    )
