"""The ``geolocus`` command: assembles the subcommands and turns user errors into one line.

Commands import their heavy dependencies (torch, faiss) inside their bodies so
that ``geolocus --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from geolocus.cli import (
    benchmark,
    download,
    evaluate,
    geotag,
    index,
    models,
    predict,
    refine,
    serve,
    train,
)
from geolocus.errors import GeolocusError

app = typer.Typer(
    name="geolocus",
    help="Where on Earth was this photo taken? Worldwide image geo-localization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("evaluate")(evaluate.evaluate)
app.command("refine")(refine.refine)
app.command("models")(models.models)
app.command("download")(download.download)
app.add_typer(benchmark.app, name="benchmark")
app.add_typer(index.app, name="index")
app.command("predict")(predict.predict)
app.command("train")(train.train)
app.command("geotag")(geotag.geotag)
app.command("serve")(serve.serve)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Where on Earth was this photo taken? Worldwide image geo-localization."""
    if version:
        from geolocus import __version__

        typer.echo(f"geolocus {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; a :class:`GeolocusError` or an OSError becomes one line on
    stderr, exit 2; any other error one line too, exit 1 (the traceback with GEOLOCUS_DEBUG=1)."""
    try:
        rv = app(args=argv, prog_name="geolocus", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool):
            return rv  # typer.Exit(code) raised by a command comes back as its code
    except GeolocusError as e:
        typer.echo(f"geolocus: error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("geolocus: interrupted", err=True)
        return 130
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.Abort:
        typer.echo("geolocus: aborted", err=True)
        return 1
    except Exception as e:
        # usage errors from Typer's click layer (vendored in recent Typer, plain click before)
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
            msg = " ".join(str(e.format_message()).split())
            typer.echo(f"geolocus: error: {msg}{hint}", err=True)
            return int(e.exit_code)
        return _last_resort(e)
    return 0


#: Set to 1 to see the traceback of an unexpected error instead of its one line.
DEBUG_ENV = "GEOLOCUS_DEBUG"


def _last_resort(e: Exception) -> int:
    """What no command turned into a :class:`GeolocusError` still ends as one line: a
    system error (a full disk, a place that cannot be written) exit 2, a bug exit 1."""
    import os
    import traceback

    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else ""
        typer.echo(f"geolocus: error: {where}{e.strerror or e}", err=True)
        return 2
    msg = (str(e).strip().splitlines() or [""])[0]
    typer.echo(
        f"geolocus: error: internal error: {type(e).__name__}: {msg} "
        f"(set {DEBUG_ENV}=1 for the traceback)",
        err=True,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
