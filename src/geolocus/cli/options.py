"""Options several commands share, defined once: their flags, defaults and help.

The refiner choices and default come from the refiner registry (importing it
loads no refiner, so ``geolocus --help`` stays fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from geolocus.refine import DEFAULT_REFINER, REFINERS, list_refiners

DB_HELP = "Database folder (from 'geolocus index build')."


def refiner_choices() -> str:
    """The registered refiner names, for help texts."""
    return ", ".join(list_refiners())


def refiner_option(
    *flags: str, default: str | None = DEFAULT_REFINER, note: str = "", several: bool = False
) -> Any:
    """The stage-2 refiner by name (``--refine`` unless ``flags`` are given); ``several``:
    a comma-separated list."""
    what = "Refiners to compare, comma-separated" if several else "Stage 2 refiner"
    extra = f" {note}" if note else ""
    return typer.Option(
        default, *(flags or ("--refine",)), help=f"{what}: {refiner_choices()}.{extra}"
    )


def db_option(default: Path | None = None, help: str = DB_HELP) -> Any:
    """The database folder, ``--db`` (required unless a ``default`` is given)."""
    return typer.Option(... if default is None else default, "--db", help=help)


def batch_size_option(default: int = 16) -> Any:
    """Photos per forward pass of the backbone, ``--batch-size``."""
    return typer.Option(default, "--batch-size", min=1, help="Photos per forward pass.")


def refiner_names(text: str) -> list[str]:
    """The names of a comma-separated ``--refine``/``--methods`` value, each checked
    against the registry (an unknown one is a one-line error listing the choices)."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        REFINERS.get(m)
    return names
