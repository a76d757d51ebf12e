"""``geolocus serve``: the web service (JSON API and upload page) over a database."""

from __future__ import annotations

from pathlib import Path

import typer

from geolocus.cli.options import db_option, refiner_option


def serve(
    db: Path = db_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    refine: str = refiner_option(),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Distinct places per photo."),
    lmm: str | None = typer.Option(None, "--lmm", help="URL of an OpenAI-compatible vision API."),
    lmm_model: str | None = typer.Option(None, "--lmm-model", help="Model name for --lmm."),
    max_upload_mb: float = typer.Option(32.0, "--max-upload-mb", help="Largest request."),
) -> None:
    """Serve the geolocator over HTTP: an upload page at /, POST /v1/predict, GET /v1/health.

    The model, index and gazetteer are loaded once at start. It listens on
    127.0.0.1 by default; pass --host 0.0.0.0 to accept other machines.
    """
    from geolocus.pipeline import Geolocator, LMMSettings, PlaceSettings
    from geolocus.server import make_server

    geo = Geolocator.from_database(
        db,
        refine=refine,
        places=PlaceSettings(top_k=top_k),
        lmm=None if lmm is None else LMMSettings.from_url(lmm, lmm_model or "default", True),
    )
    try:
        server = make_server(geo, host, port, max_upload_bytes=int(max_upload_mb * 1024 * 1024))
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
