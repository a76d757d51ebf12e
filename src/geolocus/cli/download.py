"""``geolocus download NAME...``: the one command that fetches weights from the network."""

from __future__ import annotations

import typer


def download(
    names: list[str] = typer.Argument(
        ..., help="Weights to fetch: clip-vit-l14, streetclip, dinov2-..., segformer-b0-ade."
    ),
) -> None:
    """Fetch hub weights into the Hugging Face cache, pinned and checked against SHA-256.

    Needed once per machine for the worldwide models ('geolocus predict PHOTO' without
    --db needs clip-vit-l14; --world streetclip needs streetclip). Nothing else in
    geolocus downloads anything; 'geolocus models' shows what is cached.
    """
    from geolocus.downloads import PINS, download, repo_of

    for name in names:
        repo_of(name)  # an unknown name fails before anything is fetched
    for name in names:
        got = download(name)
        rev = got.revision or "main (revision not pinned yet)"
        typer.echo(f"{name}: {repo_of(name)} @ {rev} -> {got.folder}")
        for f in got.unchecked:
            typer.echo(f"  {f}: sha256 {got.sha256[f]} (none recorded to check against)")
    if not names:  # pragma: no cover - typer requires one
        typer.echo(", ".join(PINS))
