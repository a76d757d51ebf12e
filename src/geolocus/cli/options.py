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


def lmm_procedure_option() -> Any:
    """How the ``--lmm`` model is used, ``--lmm-procedure``."""
    return typer.Option(
        "choose",
        "--lmm-procedure",
        help="choose (the model picks among the places), g3 (G3: prompts with 0, 5, 10, 15 "
        "neighbours, several samples each; the candidate most similar to the photo under the "
        "model's location head wins) or dualgeo (DualGeo: neighbours re-ranked by their DBSCAN "
        "cluster, 4 samples at 1.2, merged). docs/lmm.md.",
    )


def lmm_prompts_option() -> Any:
    """Neighbours listed per prompt, ``--lmm-prompts``."""
    return typer.Option(
        None,
        "--lmm-prompts",
        help="g3/dualgeo: near (and as many far) neighbours in each prompt, comma-separated "
        "(g3: 0,5,10,15; dualgeo: 15).",
    )


def lmm_samples_option() -> Any:
    """Samples per prompt, ``--lmm-samples``."""
    return typer.Option(
        None, "--lmm-samples", min=1, help="g3/dualgeo: samples per prompt (g3: 5; dualgeo: 4)."
    )


def lmm_temperature_option() -> Any:
    """Sampling temperature, ``--lmm-temperature``."""
    return typer.Option(
        None,
        "--lmm-temperature",
        min=0.0,
        max=2.0,
        help="g3/dualgeo: sampling temperature (both papers' code: 1.2).",
    )


def lmm_procedure(
    url: str | None,
    name: str,
    prompts: str | None,
    samples: int | None,
    temperature: float | None,
) -> Any:
    """The :class:`~geolocus.refine.procedures.Procedure` the ``--lmm-…`` options ask for
    (a one-line error when they do not fit together)."""
    from geolocus.errors import InputError
    from geolocus.refine.procedures import CHOOSE, Procedure, parse_prompts

    tuned = [
        flag
        for flag, v in (
            ("--lmm-prompts", prompts),
            ("--lmm-samples", samples),
            ("--lmm-temperature", temperature),
        )
        if v is not None
    ]
    if url is None and (tuned or name != CHOOSE):
        raise InputError(f"{(tuned or ['--lmm-procedure'])[0]} needs --lmm URL")
    if name == CHOOSE and tuned:
        raise InputError(f"{tuned[0]} is for --lmm-procedure g3 or dualgeo")
    return Procedure.named(
        name,
        prompts=None if prompts is None else parse_prompts(prompts),
        samples=samples,
        temperature=temperature,
    )
