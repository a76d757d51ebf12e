"""``geolocus index``: build, extend and inspect a retrieval database of geotagged photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from geolocus.cli.options import (
    batch_size_option,
    column_option,
    db_option,
    exif_option,
    images_option,
    labels_option,
    ray_address_option,
    ray_option,
    shard_size_option,
    shards_option,
    table_option,
    wait_option,
    workers_option,
)

app = typer.Typer(
    help="Retrieval databases of geotagged photos: build, add, info.", no_args_is_help=True
)


def _finish(result) -> None:
    from geolocus.index.build import print_problems

    if result.problems:
        print_problems(result.problems)
    typer.echo(result.summary())


def _check_inputs(
    images: Path | None,
    labels: Path | None,
    exif: bool,
    shards: str | None,
    table: Path | None,
    shard_size: int | None,
    workers: int | None,
    ray: bool,
    ray_address: str | None,
) -> None:
    """The input and executor options make sense together: one line if not, before
    anything is loaded or written."""
    from geolocus.errors import InputError
    from geolocus.index.executors import import_ray

    if sum(x is not None for x in (images, shards, table)) != 1:
        raise InputError("give one input: --images DIR, --shards GLOB or --table FILE")
    if images is None and (labels is not None or exif):
        raise InputError("--labels and --exif go with --images (shards and tables hold positions)")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, not {workers}")
    if shard_size is not None and shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, not {shard_size}")
    if ray or ray_address:
        import_ray()


def _source(
    images: Path | None,
    labels: Path | None,
    exif: bool,
    shards: str | None,
    table: Path | None,
    columns: dict[str, str | None],
    shard_size: int | None,
):
    """The one input given, as a sharded source (a folder: its photos with positions)."""
    from geolocus.data.sources import table_source, tar_source
    from geolocus.index.build import SHARD_SIZE, gather_inputs, inputs_source

    if shards is not None:
        return tar_source(shards)
    if table is not None:
        return table_source(table, shard_size or SHARD_SIZE, **columns)
    assert images is not None
    return inputs_source(gather_inputs(images, labels=labels, exif=exif), shard_size)


@app.command("build")
def build(
    images: Path | None = images_option(),
    labels: Path | None = labels_option(),
    exif: bool = exif_option(),
    shards: str | None = shards_option(),
    table: Path | None = table_option(),
    image_column: str | None = column_option("image"),
    lat_column: str | None = column_option("lat"),
    lon_column: str | None = column_option("lon"),
    id_column: str | None = column_option("id"),
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
    shard_size: int | None = shard_size_option(),
    workers: int | None = workers_option(),
    ray: bool = ray_option(),
    ray_address: str | None = ray_address_option(),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a database built from other photos or another model, or a damaged one.",
    ),
    wait: bool = wait_option(),
) -> None:
    """Embed geotagged photos and store them with their positions.

    Input: a folder (--images, positions from --labels or each photo's --exif
    GPS), WebDataset tar shards (--shards), or a table (--table). Work is cut
    into shards (a folder or table into --shard-size photos), each kept once
    embedded; with --workers N or --ray they are embedded in parallel, and the
    same database comes out. Unreadable photos and photos without a position are
    skipped and listed in OUT/report.csv. Interrupted, the same command resumes
    where it stopped. One process at a time writes a database: a second one
    fails at once, naming the first, unless --wait.
    """
    from geolocus.index.build import build_database
    from geolocus.index.executors import make_executor
    from geolocus.index.lock import database_lock
    from geolocus.models.embedder import create_embedder

    _check_inputs(images, labels, exif, shards, table, shard_size, workers, ray, ray_address)
    columns = {
        "image_column": image_column,
        "lat_column": lat_column,
        "lon_column": lon_column,
        "id_column": id_column,
    }
    with database_lock(out, wait=wait):  # before the model loads: a second writer fails at once
        source = _source(images, labels, exif, shards, table, columns, shard_size)
        embedder = create_embedder(model)
        executor = make_executor(
            embedder,
            model or embedder.name,
            workers=workers,
            ray=ray,
            ray_address=ray_address,
            batch_size=batch_size,
        )
        result = build_database(
            out, source, embedder, executor, factory=factory, overwrite=overwrite, wait=wait
        )
    _finish(result)


@app.command("add")
def add(
    db: Path = db_option(),
    images: Path | None = images_option(),
    labels: Path | None = labels_option(),
    exif: bool = exif_option(),
    shards: str | None = shards_option(),
    table: Path | None = table_option(),
    image_column: str | None = column_option("image"),
    lat_column: str | None = column_option("lat"),
    lon_column: str | None = column_option("lon"),
    id_column: str | None = column_option("id"),
    batch_size: int = batch_size_option(32),
    shard_size: int | None = shard_size_option(),
    workers: int | None = workers_option(),
    ray: bool = ray_option(),
    ray_address: str | None = ray_address_option(),
    wait: bool = wait_option(),
) -> None:
    """Add photos to a database, with the model it was built with.

    The same inputs as 'index build' (a folder, tar shards or a table) and the same
    executors. Photos already in it (same id: for a folder, the path relative to
    --images) are skipped, so the command can be run again after an interruption;
    run again when done, it says there is nothing new.
    """
    from geolocus.index import Database
    from geolocus.index.build import add_to_database, embedder_for
    from geolocus.index.database import read_manifest
    from geolocus.index.executors import make_executor
    from geolocus.index.lock import database_lock

    _check_inputs(images, labels, exif, shards, table, shard_size, workers, ray, ray_address)
    read_manifest(db)  # no database there: say so, creating nothing
    columns = {
        "image_column": image_column,
        "lat_column": lat_column,
        "lon_column": lon_column,
        "id_column": id_column,
    }
    with database_lock(db, wait=wait):
        database = Database.open(db)
        source = _source(images, labels, exif, shards, table, columns, shard_size)
        embedder = embedder_for(database)  # after the inputs: their errors come at once
        executor = make_executor(
            embedder,
            database.manifest.model,
            workers=workers,
            ray=ray,
            ray_address=ray_address,
            batch_size=batch_size,
        )
        result = add_to_database(database, source, embedder, executor, wait=wait)
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
            f"{'search':17s} {_setting(search)}: recall@20 "
            f"{search['recall_at_20']} against exact (target {search.get('target_recall_at_20')}, "
            f"{search.get('tuned_on')} held-out vectors, {search.get('ms_per_query')} ms a query)"
        )
        if "far_nprobe" in search:
            typer.echo(
                f"{'far search':17s} {_setting(search, 'far_')}: recall@20 "
                f"{search['far_recall_at_20']} ({search.get('far_ms_per_query')} ms a query)"
            )
    elif search.get("choice") == "auto":
        typer.echo(f"{'search':17s} exact (auto: Flat up to {search.get('threshold')} photos)")
    sources = database.source_counts()
    typer.echo(f"{'positions from':17s} " + ", ".join(f"{k} {v}" for k, v in sources.items()))
    typer.echo(
        f"{'skipped photos':17s} {len(report)}"
        + (f" (see {Path(db) / 'report.csv'})" if report else "")
    )


@app.command("tune")
def tune(
    db: Path = typer.Argument(..., help="Database folder (a compressed one)."),
    target: float | None = typer.Option(
        None,
        "--target-recall",
        help="Recall@20 against exact search to reach (default: the one recorded, 0.99 for "
        "new databases); lower is faster.",
    ),
    wait: bool = wait_option(),
) -> None:
    """Choose a compressed database's search settings again, without rebuilding it: the
    cheapest setting (lists scanned exactly, or lists probed and PQ candidates re-ranked)
    that reaches the target recall@20 on held-out database vectors, as a build does. A
    database saved before list order existed gets its list-ordered vectors written."""
    from geolocus.index import Database

    search = Database.open(db).retune(target, wait=wait, progress=True)
    typer.echo(
        f"search: {_setting(search)}: recall@20 {search['recall_at_20']} (target "
        f"{search['target_recall_at_20']}, {search['ms_per_query']} ms a query); far: "
        f"{_setting(search, 'far_')}: recall@20 {search['far_recall_at_20']} "
        f"({search['far_ms_per_query']} ms a query)"
    )


def _setting(search: dict[str, Any], side: str = "") -> str:
    """A compressed database's search setting in words: lists scanned exactly, or PQ
    candidates re-ranked."""
    nprobe, rerank = search[f"{side}nprobe"], search[f"{side}rerank"]
    lists = f"{nprobe} list{'s' if nprobe != 1 else ''}"
    if rerank == 0:
        return f"{lists} scanned exactly"
    return f"nprobe {nprobe}, re-rank {rerank}"
