"""``geolocus serve``: the web service (JSON API and upload page) over a database."""

from __future__ import annotations

from pathlib import Path

import typer

from geolocus.cli.options import db_option, objective_option, refiner_option
from geolocus.server.app import (
    MAX_CONNECTIONS,
    MAX_REQUEST_PIXELS,
    MAX_UPLOAD_BYTES,
    READ_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
)


def serve(
    db: Path = db_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    refine: str = refiner_option(),
    objective: str | None = objective_option(),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Distinct places per photo."),
    lmm: str | None = typer.Option(None, "--lmm", help="URL of an OpenAI-compatible vision API."),
    lmm_model: str | None = typer.Option(None, "--lmm-model", help="Model name for --lmm."),
    max_upload_mb: float = typer.Option(
        MAX_UPLOAD_BYTES / 2**20, "--max-upload-mb", min=0.001, help="Largest request body, in MB."
    ),
    max_request_mp: float = typer.Option(
        MAX_REQUEST_PIXELS / 1e6,
        "--max-request-mp",
        min=0.001,
        help="Most megapixels the photos of one request may declare together.",
    ),
    read_timeout: float = typer.Option(
        READ_TIMEOUT_S,
        "--read-timeout",
        min=0.01,
        help="Seconds a client may stay silent mid-request.",
    ),
    request_timeout: float = typer.Option(
        REQUEST_TIMEOUT_S,
        "--request-timeout",
        min=0.01,
        help="Seconds a whole request may take to arrive.",
    ),
    max_connections: int = typer.Option(
        MAX_CONNECTIONS,
        "--max-connections",
        min=1,
        help="Connections served at once; more get a 503.",
    ),
) -> None:
    """Serve the geolocator over HTTP: an upload page at /, POST /v1/predict, GET /v1/health.

    The model, index and gazetteer are loaded once at start. It listens on
    127.0.0.1 by default; pass --host 0.0.0.0 to accept other machines (the
    limits it holds against hostile clients: docs/server.md).
    """
    from geolocus.pipeline import Geolocator, LMMSettings, PlaceSettings
    from geolocus.pipeline.refining import stage2_choice
    from geolocus.server import make_server

    geo = Geolocator.from_database(
        db,
        refine=stage2_choice(refine, objective),
        places=PlaceSettings(top_k=top_k),
        lmm=None if lmm is None else LMMSettings.from_url(lmm, lmm_model or "default", True),
    )
    try:
        server = make_server(
            geo,
            host,
            port,
            max_upload_bytes=int(max_upload_mb * 2**20),
            max_request_pixels=int(max_request_mp * 1_000_000),
            read_timeout=read_timeout,
            request_timeout=request_timeout,
            max_connections=max_connections,
        )
    except OSError as e:
        from geolocus.errors import InputError

        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    h, p = server.server_address[:2]
    typer.echo(f"geolocus: serving {db} on http://{h!s}:{p}/ (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
