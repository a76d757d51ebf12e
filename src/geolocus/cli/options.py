"""Options several commands share, defined once: their flags, defaults and help.

The refiner choices and default come from the refiner registry (importing it
loads no refiner, so ``geolocus --help`` stays fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from geolocus.errors import InputError
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


def objective_option(several: bool = False) -> Any:
    """What a refiner with a choice of training objectives (``best``) is fitted to,
    ``--objective``; ``several``: a comma-separated list, one row each."""
    what = "comma-separated, one row each: " if several else ""
    return typer.Option(
        None,
        "--objective",
        help=f"What method best is fitted to ({what}softmax, the default: the expected "
        "number of accuracy thresholds met; georanker: GeoRanker's distance-aware "
        "multi-order ranking loss). docs/refine.md.",
    )


def objective_names(text: str | None) -> list[str] | None:
    """The names of a comma-separated ``--objective`` value (``None`` if not given)."""
    if text is None:
        return None
    names = [o.strip() for o in text.split(",") if o.strip()]
    if not names:
        raise InputError("--objective needs a name: softmax or georanker")
    return names


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


# ------------------------------------------------ inputs of 'index build' and 'index add'

LABELS_HELP = "CSV IMG_ID,LAT,LON; IMG_ID is the file's path relative to --images."
SHARDS_HELP = (
    "WebDataset tar shards, a glob (quote it): 'data/shard-*.tar'. Each sample is KEY.jpg "
    "(or .jpeg, .png, .webp) with KEY.json holding lat and lon (or latitude, longitude)."
)
TABLE_HELP = (
    "A Parquet or CSV table: a column of image paths (relative to the table's folder) or "
    "image bytes, and lat/lon columns."
)
_COLUMN_HELP = {
    "image": "The table's image column (default: image, path, ...).",
    "lat": "The table's latitude column (default: lat or latitude).",
    "lon": "The table's longitude column (default: lon or longitude).",
    "id": "The table's id column (default: the image path, or the row).",
}


def images_option() -> Any:
    """A folder of photos, ``--images`` (one of the inputs)."""
    return typer.Option(None, "--images", help="Folder of photos (searched recursively).")


def labels_option() -> Any:
    """The positions of a folder's photos, ``--labels``."""
    return typer.Option(None, "--labels", help=LABELS_HELP)


def exif_option() -> Any:
    """The positions of a folder's photos from their EXIF GPS, ``--exif``."""
    return typer.Option(False, "--exif", help="Take each photo's position from its EXIF GPS.")


def shards_option() -> Any:
    """WebDataset tar shards, ``--shards GLOB`` (one of the inputs)."""
    return typer.Option(None, "--shards", help=SHARDS_HELP)


def table_option() -> Any:
    """A Parquet or CSV table of photos, ``--table`` (one of the inputs)."""
    return typer.Option(None, "--table", help=TABLE_HELP)


def column_option(what: str) -> Any:
    """A table's column, ``--{what}-column`` (image, lat, lon or id)."""
    return typer.Option(None, f"--{what}-column", help=_COLUMN_HELP[what])


def shard_size_option() -> Any:
    """Photos per shard of a folder or table, ``--shard-size``."""
    return typer.Option(
        None,
        "--shard-size",
        help="Photos per shard of a folder or table (default 1000; a folder of fewer than "
        "8,000 photos is cut into about 8 shards); each finished shard is kept, so an "
        "interrupted run redoes only the unfinished ones.",
    )


def workers_option() -> Any:
    """A local pool of embedding processes, ``--workers N``."""
    return typer.Option(None, "--workers", help="Embed shards in a local pool of N processes.")


def ray_option() -> Any:
    """Embedding on Ray actors, ``--ray``."""
    return typer.Option(
        False,
        "--ray",
        help="Embed shards on Ray actors (pip install 'geolocus[ray]'): a local Ray runtime, "
        "or the cluster at --ray-address.",
    )


def ray_address_option() -> Any:
    """An existing Ray cluster, ``--ray-address``."""
    return typer.Option(
        None, "--ray-address", help="An existing Ray cluster ('auto' or HOST:PORT)."
    )


def wait_option() -> Any:
    """Wait for another writer of the database, ``--wait``."""
    return typer.Option(
        False,
        "--wait",
        help="If another process is writing the database, wait for it to finish instead of "
        "failing.",
    )
