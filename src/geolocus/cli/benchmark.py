"""``geolocus benchmark``: the experiments whose tables go into docs/."""

from __future__ import annotations

from pathlib import Path

import typer

from geolocus.cli.options import (
    db_option,
    objective_names,
    objective_option,
    refiner_names,
    refiner_option,
)
from geolocus.refine import list_refiners

app = typer.Typer(help="Reproducible experiments: cross-validated tables.", no_args_is_help=True)


@app.command("refine")
def refine_cv(
    neighbours: Path = typer.Option(..., "--neighbours", help="Neighbours CSV (dev queries)."),
    labels: Path = typer.Option(..., "--labels", help="IMG_ID,LAT,LON of those queries."),
    methods: str = refiner_option("--methods", default=",".join(list_refiners()), several=True),
    objective: str | None = objective_option(several=True),
    folds: int = typer.Option(
        5, "--folds", min=2, help="Photographer-grouped cross-validation folds."
    ),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Add published rows."),
    oracle: bool = typer.Option(True, "--oracle/--no-oracle", help="Add the best-of-K row."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
    images: Path | None = typer.Option(
        None, "--images", help="Folder of the query photos (by IMG_ID): best also reads text."
    ),
    ocr_cache: Path = typer.Option(
        Path("cache/ocr"), "--ocr-cache", help="Where OCR results are kept (by file hash)."
    ),
) -> None:
    """Cross-validate stage-2 refiners on a neighbours file with labels.

    Queries are split into folds by photographer (the owner id ending each
    IM2GPS3k file name); each fold is predicted by a refiner fitted on the others.
    --objective softmax,georanker gives best one row per training objective.
    """
    from geolocus.eval import results_table
    from geolocus.pipeline.refining import (
        OCRSettings,
        cross_validate_refiners,
        labelled_neighbours,
        refiner_runs,
        with_photo_text,
    )

    names = refiner_names(methods)
    objectives = objective_names(objective)
    refiner_runs(names, objectives)  # checked before reading anything
    nb, truth, n_missing = labelled_neighbours(neighbours, labels, drop_unlabelled=True)
    if n_missing:
        typer.echo(f"note: {n_missing} queries without labels are left out", err=True)
    if images is not None:  # the text in each photo, for the refiners that use it (best)
        nb = with_photo_text(nb, images, OCRSettings(cache=ocr_cache))
    rows = cross_validate_refiners(
        nb,
        truth,
        names,
        folds,
        oracle=oracle,
        compare=compare,
        progress=lambda m: typer.echo(f"{m}: done", err=True),
        objectives=objectives,
    )
    typer.echo(results_table(rows, markdown=markdown))
    if not markdown:
        from geolocus.eval.report import ORACLE_NOTE, TABLE_LEGEND

        typer.echo("\n" + TABLE_LEGEND + ("\n" + ORACLE_NOTE if oracle else ""))


@app.command("im2gps3k")
def im2gps3k(
    protocol: str = typer.Option(
        "cv3", "--protocol", help="cv3 (3-fold CV over all photos) or holdout (the demo)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Backbone name, 'geoclip' or a model file (default: offline default)."
    ),
    refine: str = refiner_option(note="cv3: a comma-separated list compares several."),
    data: Path | None = typer.Option(
        None, "--data", help="IM2GPS3k folder (labels.csv, images/); default: ../shared/data."
    ),
    cache: Path = typer.Option(
        Path("cache/features"), "--cache", help="cv3: where backbone features are cached."
    ),
    db: Path = db_option(Path("out/demo-db"), help="holdout: database folder."),
    test_fold: int = typer.Option(0, "--test-fold", help="holdout: the fold geolocated."),
    sample: int = typer.Option(
        300, "--sample", min=0, help="holdout: photos of that fold geolocated (0: all)."
    ),
    show: int = typer.Option(5, "--show", help="holdout: photos whose guesses are printed."),
    map_path: Path | None = typer.Option(
        None, "--map", help="holdout: write the map of the first shown photo here."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the scores as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Add published rows."),
) -> None:
    """Geolocate IM2GPS3k photos from their pixels against a database of the others.

    Folds keep each photographer on one side. cv3: every photo is predicted once
    by a database of the two other folds. holdout: builds the database of two
    folds on disk (like 'geolocus index build'), geolocates a sample of the third
    from the files (like 'geolocus predict') and prints a few answers.
    """
    import json

    from geolocus.errors import InputError
    from geolocus.files import atomic_write, check_output_path
    from geolocus.pipeline import benchmark as bm

    for path, what in ((map_path, "--map"), (json_out, "--json")):
        if path is not None:
            check_output_path(path, what)  # before the hour of work, not after
    methods = refiner_names(refine)
    if protocol == "cv3":
        res = bm.cross_validate(model, methods, data=data, cache=cache)
    elif protocol == "holdout":
        if len(methods) != 1:
            raise InputError("holdout runs one refiner: give --refine NAME")
        res, preds, truth = bm.holdout(
            model, methods[0], data=data, db_dir=db, test_fold=test_fold, sample=sample or None
        )
        typer.echo(bm.examples_table(preds[:show], truth[:show]))
        if map_path is not None and preds:
            bm.write_truth_map(preds[0], truth[0], map_path)
            typer.echo(f"map of {Path(preds[0].image).name}: {map_path}", err=True)
    else:
        raise InputError(f"unknown protocol {protocol!r}: cv3 or holdout")
    typer.echo(
        f"\nIM2GPS3k, {res.protocol}, model {res.model}: {res.n_queries} queries, "
        f"database of {'/'.join(map(str, res.n_database))} photos"
    )
    typer.echo(res.table(markdown=markdown, compare=compare))
    typer.echo(bm.floor_line())
    if not markdown:
        from geolocus.eval.report import TABLE_LEGEND

        typer.echo(TABLE_LEGEND)
    typer.echo("timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items()), err=True)
    if json_out is not None:
        with atomic_write(json_out) as fh:
            json.dump(res.to_json(), fh, indent=1)


@app.command("collections")
def collections(
    methods: str = typer.Option(
        "nearest,collection-prior,collection",
        "--methods",
        help="Comma-separated: nearest, kde, collection-prior (hand-set), collection (fitted), "
        "collection-prior+flickr-order, collection+flickr-order (+ upload order as capture "
        "time), collection+verify-prior, collection+verify (+ local features; "
        "docs/collections.md).",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Folder with labels.csv (IMG_ID,LAT,LON) and images/; default: ../shared/data.",
    ),
    cache: Path = typer.Option(
        Path("cache/features"), "--cache", help="Where backbone features are cached."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Backbone name or model file (default: the offline default)."
    ),
    folds: int = typer.Option(
        5, "--folds", min=2, help="Photographer-grouped folds for what is learned."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the scores as JSON."),
    pred: Path | None = typer.Option(
        None, "--pred", help="Write IMG_ID,LAT,LON of every photo placed by the last method."
    ),
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
    verify_top: int = typer.Option(
        10, "--verify-top", min=1, help="Candidates verified per photo (methods +verify)."
    ),
    local: str = typer.Option("orb", "--local", help="Local features to verify with: orb, sift."),
    local_features: int = typer.Option(500, "--local-features", min=10, help="Per photo."),
) -> None:
    """Place each photo of a photographer's collection from the others (leave-one-out).

    Every photographer (the owner id ending each IM2GPS3k file name) with 2 or more
    photos is a collection; each photo is placed as 'geolocus geotag' places it, from
    a database of the other photos of its collection. What is learned is fitted on
    other photographers' collections only (photographer-grouped folds).
    """
    import json

    from geolocus.errors import InputError
    from geolocus.files import atomic_write, check_output_path
    from geolocus.pipeline.benchmark import labelled_photos
    from geolocus.pipeline.collections import benchmark_collections, confidence_table

    for path, what in ((json_out, "--json"), (pred, "--pred")):
        if path is not None:
            check_output_path(path, what)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise InputError("--methods is empty")
    _, ids, paths, truth = labelled_photos(data)
    res = benchmark_collections(
        ids,
        paths,
        truth,
        names,
        model=model,
        cache=cache,
        folds=folds,
        verify={
            "top": verify_top,
            "kind": local,
            "features": local_features,
            "cache": cache.parent / "local",
        },
    )
    typer.echo(
        f"\ncollections: {int(res.placed.sum())} photos in {res.n_collections} collections "
        f"of 2 or more, each placed from the others of its collection"
    )
    typer.echo(res.table(markdown=markdown))
    typer.echo("\n" + confidence_table(res, names[-1]))
    typer.echo("timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items()), err=True)
    if json_out is not None:
        with atomic_write(json_out) as fh:
            json.dump(res.to_json(), fh, indent=1)
    if pred is not None:
        n = res.write_predictions(names[-1], pred)
        typer.echo(f"{n} predictions of {names[-1]} in {pred}", err=True)
