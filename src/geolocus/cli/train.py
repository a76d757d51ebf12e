"""``geolocus train CONFIG``: train a stage-1 model (GeoCLIP, DualGeo, TransGeoCLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def train(
    config: Path = typer.Argument(..., help="Run config (TOML), e.g. configs/dualgeo.toml."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the run's checkpoint (after an interruption)."
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a config value: section.key=value, or key=value when unambiguous "
        "(e.g. --set epochs=3 --set model.dropout=0.2). Repeatable.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Model file to write (output.path)."),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or epoch log."),
) -> None:
    """Train a model on frozen backbone features and write it as one safetensors file.

    The config's sections name the model and its backbone (model), the
    training photos (data: a labels CSV IMG_ID,LAT,LON plus an images folder or
    a feature store), the optimisation (train: AdamW, StepLR) and the output
    (output.path). Backbone features are extracted once and cached
    (memory-mapped), so epochs cost only the heads. A checkpoint is written
    after every epoch; Ctrl-C stops after the current step and --resume goes
    on from the last complete epoch. Open the result with
    geolocus.models.load_model.
    """
    import torch

    from geolocus.train.config import load_config
    from geolocus.train.run import train_from_config

    torch.set_num_threads(max(1, threads))
    overrides = list(set_) + ([f"output.path={json.dumps(str(out))}"] if out is not None else [])
    cfg = load_config(config, overrides)
    log = None if quiet else (lambda m: typer.echo(m, err=True))
    summary = train_from_config(cfg, resume=resume, progress=not quiet, log=log)
    if summary.interrupted:
        typer.echo(
            f"interrupted after {summary.epochs_done} epoch(s); continue with: "
            f"geolocus train {config} --resume",
            err=True,
        )
        raise typer.Exit(130)
    last = summary.history[-1] if summary.history else {}
    loss = f", final loss {last['loss']:.4f}" if "loss" in last else ""
    typer.echo(f"wrote {summary.model_path} ({summary.epochs_done} epochs{loss})")
