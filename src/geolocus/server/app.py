"""A small, dependency-free web service over a geolocator.

Endpoints:

- ``GET /`` — an upload page; ``POST /`` (the form) answers with a page of
  guesses, place names, confidences and the offline map;
- ``POST /v1/predict`` — photos as ``multipart/form-data`` (any number of file
  fields) or one photo as the raw body (``Content-Type: image/...``); answers
  ``{"predictions": [...]}`` in the JSON form of ``geolocus predict --format json``.
  ``?neighbours=0`` leaves out the retrieved neighbours;
- ``GET /v1/health`` — the database, model and refiner in use.

The standard library's threading HTTP server handles connections; predictions
run one at a time behind a lock (the model is one set of weights in memory).
Requests are limited in size; every failure is a JSON (or HTML) error with a
one-line message and a fitting status: 400 bad request, 404, 405, 413 too
large, 415 not a photo type, 422 unreadable photo, 500 for a bug.
"""

from __future__ import annotations

import html
import json
import sys
import threading
import traceback
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: Largest request body accepted (all photos of one request together).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: At most this many photos per request.
MAX_FILES = 32


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_photos(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each photo in a request body."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if not body:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is empty")
        return [("upload", body)]
    if ctype != "multipart/form-data":
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"send photos as multipart/form-data or as an image/* body, not {ctype or 'nothing'}",
        )
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise RequestError(HTTPStatus.BAD_REQUEST, "malformed multipart body")
    files: list[tuple[str, bytes]] = []
    for part in msg.iter_parts():
        name = part.get_filename()
        if name is None:
            continue  # a plain form field
        data = part.get_payload(decode=True)
        if isinstance(data, bytes) and data:
            files.append((name, data))
    if not files:
        raise RequestError(HTTPStatus.BAD_REQUEST, "no photo in the request (no file field)")
    if len(files) > MAX_FILES:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"at most {MAX_FILES} photos per request")
    return files


class _Named(bytes):
    """Photo bytes that carry their upload name into the prediction."""

    name: str


def _named(name: str, data: bytes) -> _Named:
    b = _Named(data)
    b.name = name
    return b


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>geolocus</title>
<style>
 body {{ font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em; }}
 h1 {{ font-size: 1.4em; }} table {{ border-collapse: collapse; margin: .5em 0 1em; }}
 td, th {{ border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: left; }}
 .err {{ color: #b00; }} iframe {{ width: 100%; height: 520px; border: 1px solid #ccc; }}
 .muted {{ color: #666; }}
</style></head><body>
<h1>geolocus: where was this photo taken?</h1>
<form method="post" action="/" enctype="multipart/form-data">
 <input type="file" name="photo" accept="image/*" multiple required>
 <button type="submit">Locate</button>
</form>
<p class="muted">Database: {db}. Photos are processed on this machine and not kept.</p>
{body}
</body></html>
"""


def _result_html(preds: list[Any], map_text) -> str:
    parts = []
    for p in preds:
        parts.append(f"<h2>{html.escape(p.image)}</h2>")
        if not p.ok:
            parts.append(f'<p class="err">{html.escape(p.error or "no answer")}</p>')
            continue
        rows = "".join(
            "<tr><td>{}</td><td>{:.5f}, {:.5f}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
                r,
                g.lat,
                g.lon,
                html.escape(g.label or ""),
                "-" if g.confidence is None else f"{100 * g.confidence:.1f} %",
                "-" if g.uncertainty_km is None else f"{g.uncertainty_km:.0f} km",
            )
            for r, g in enumerate(p.guesses, start=1)
        )
        parts.append(
            "<table><tr><th>#</th><th>lat, lon</th><th>place</th><th>confidence</th>"
            f"<th>radius</th></tr>{rows}</table>"
        )
        if p.exif_gps is not None:
            parts.append(
                f"<p class=muted>The photo's own EXIF GPS (not used): {p.exif_gps[0]:.5f}, "
                f"{p.exif_gps[1]:.5f}; guess 1 is {p.exif_error_km:.1f} km from it.</p>"
            )
        parts.append(f'<iframe srcdoc="{html.escape(map_text(p), quote=True)}"></iframe>')
    return "\n".join(parts)


def make_server(
    geolocator: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    log: bool = True,
) -> ThreadingHTTPServer:
    """An HTTP server answering with ``geolocator`` (call ``serve_forever()`` on it)."""
    from geolocus import __version__
    from geolocus.pipeline.formats import map_text

    lock = threading.Lock()
    db = geolocator.database
    db_label = html.escape(f"{len(db)} photos, model {db.manifest.model}")

    def locate(files: list[tuple[str, bytes]]) -> list[Any]:
        with lock:
            return geolocator.predict([_named(n, d) for n, d in files])

    class Handler(BaseHTTPRequestHandler):
        server_version = f"geolocus/{__version__}"

        def log_message(self, fmt: str, *args: Any) -> None:
            if log:
                sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: HTTPStatus, obj: Any) -> None:
            body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self._send(status, body, "application/json; charset=utf-8")

        def _page(self, status: HTTPStatus, body: str) -> None:
            self._send(
                status, PAGE.format(db=db_label, body=body).encode(), "text/html; charset=utf-8"
            )

        def _body(self) -> bytes:
            try:
                n = int(self.headers.get("Content-Length", ""))
            except ValueError:
                raise RequestError(
                    HTTPStatus.LENGTH_REQUIRED, "Content-Length is required"
                ) from None
            if n > max_upload_bytes:
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"request of {n} bytes is over the limit of {max_upload_bytes}",
                )
            return self.rfile.read(n)

        def _handle(self, fn, html_errors: bool = False) -> None:
            try:
                fn()
            except RequestError as e:
                if html_errors:
                    self._page(e.status, f'<p class="err">{html.escape(str(e))}</p>')
                else:
                    self._json(e.status, {"error": str(e)})
            except Exception as e:  # a bug: say so in one line, log the trace
                traceback.print_exc()
                msg = f"internal error: {type(e).__name__}: {e}".splitlines()[0]
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": msg})

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/":
                self._page(HTTPStatus.OK, "")
            elif path == "/v1/health":
                self._json(
                    HTTPStatus.OK,
                    {
                        "status": "ok",
                        "version": __version__,
                        "database": {"photos": len(db), "model": db.manifest.model},
                        "refiner": geolocator.refiner.name,
                        "top_k": geolocator.places.top_k,
                    },
                )
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})

        do_HEAD = do_GET

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/v1/predict":
                self._handle(lambda: self._api_predict(parse_qs(url.query)))
            elif url.path == "/":
                self._handle(self._ui_predict, html_errors=True)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {url.path}"})

        def _api_predict(self, query: dict[str, list[str]]) -> None:
            files = parse_photos(self.headers.get("Content-Type", ""), self._body())
            preds = locate(files)
            with_nb = query.get("neighbours", ["1"])[0] not in ("0", "false", "no")
            out: dict[str, Any] = {"predictions": [p.to_dict(neighbours=with_nb) for p in preds]}
            bad = [p for p in preds if not p.ok]
            if len(bad) == len(preds):  # nothing could be read: the request failed
                out["error"] = bad[0].error or "no answer"
                self._json(HTTPStatus.UNPROCESSABLE_ENTITY, out)
            else:
                self._json(HTTPStatus.OK, out)

        def _ui_predict(self) -> None:
            files = parse_photos(self.headers.get("Content-Type", ""), self._body())
            preds = locate(files)
            status = HTTPStatus.OK if any(p.ok for p in preds) else HTTPStatus.UNPROCESSABLE_ENTITY
            self._page(status, _result_html(preds, map_text))

        def do_PUT(self) -> None:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET or POST"})

        do_DELETE = do_PATCH = do_PUT

    return ThreadingHTTPServer((host, port), Handler)
