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
Every failure is a JSON (or HTML) error with a one-line message and a fitting
status: 400 bad request, 404, 405, 408 timed out, 411 length required, 413 too
large, 415 not a photo type, 422 unreadable photo, 501 unknown transfer coding,
503 busy, 500 for a bug.

Clients are not trusted (docs/server.md): a body's size is checked from the
headers before it is read (chunked bodies while they are read); every wait for
a client's bytes has a timeout; at most ``max_connections`` connections are
served at once (one thread each), others get a quick 503; the photos of one
request may declare at most ``max_request_pixels`` pixels in all, weighed from
their headers before any is decoded; multipart bodies are split in linear time.
A client that goes away costs one log line.
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import json
import quopri
import socket
import sys
import threading
import time
import traceback
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from geolocus import __version__
from geolocus.data.images import read_image_size
from geolocus.errors import ImageError

#: Largest request body accepted (all photos of one request together).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: At most this many photos per request.
MAX_FILES = 32
#: Most pixels the photos of one request may declare together (one 108 MP photo,
#: or 21 of 12 MP): bounds the decoding time one request holds the model for.
MAX_REQUEST_PIXELS = 256_000_000
#: Seconds a connection may stay silent while the server waits for its request.
READ_TIMEOUT_S = 30.0
#: Seconds a whole request (line, headers and body) may take to arrive, however it trickles.
REQUEST_TIMEOUT_S = 300.0
#: Connections served at once (one thread each); more are answered 503.
MAX_CONNECTIONS = 32

#: What a client that went away raises: one log line, never a traceback.
CLIENT_GONE = (ConnectionError, TimeoutError)
_MAX_LINE = 4096  # a chunk-size or trailer line
_MAX_PARTS = 2 * MAX_FILES  # parts of a multipart body, plain form fields included
_MAX_PART_HEAD = 16384  # bytes of one part's headers
_MAX_TRAILERS = 64
_HEX = b"0123456789abcdefABCDEF"
_PIECE = 1 << 16  # bytes read from the socket at a time


class RequestError(Exception):
    """A request the server refuses: its status and one-line message go to the client."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _DeadlineReader(io.RawIOBase):
    """A socket's input where each wait is at most ``idle`` seconds and all of them
    end at ``deadline``: a client trickling a byte at a time cannot hold a thread."""

    def __init__(self, sock: socket.socket, idle: float, deadline: float) -> None:
        super().__init__()
        self.sock, self.idle, self.deadline = sock, idle, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long to arrive")
        self.sock.settimeout(min(self.idle, left))
        return self.sock.recv_into(buf)


def _one_line(e: BaseException) -> str:
    return (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0]


def _too_large(limit: int) -> RequestError:
    return RequestError(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        f"request body is over the limit of {limit:,} bytes",
    )


def _content_length(headers: Message) -> int | None:
    """The declared body length, or None where there is none; refuses any malformed value.

    Only digits are a length (RFC 9110): ``-1``, ``+5``, ``abc`` and ``1e3`` are 400,
    never read as "until the client closes".
    """
    values = [v.strip() for h in headers.get_all("Content-Length") or [] for v in h.split(",")]
    if not values:
        return None
    for v in values:
        if not (v.isascii() and v.isdigit()):
            shown = v if len(v) <= 40 else v[:40] + "..."
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"Content-Length must be a whole number of bytes, not {shown!r}",
            )
    if len({v.lstrip("0") for v in values}) > 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, "conflicting Content-Length values")
    v = values[0].lstrip("0") or "0"
    return int(v) if len(v) <= 18 else 10**18  # longer numbers are too large anyway


def _read_exactly(rfile: io.BufferedIOBase | IO[bytes], n: int) -> bytes:
    """``n`` bytes of the body (``n`` already checked); a body cut short is a 400.

    One buffered ``read``: it fills a single bytes object as the data comes, so a
    body is held once in memory, never as pieces plus their join.
    """
    data = rfile.read(n)
    if len(data) < n:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"the body ended after {len(data):,} of {n:,} bytes"
        )
    return data


def _read_chunked(rfile: io.BufferedIOBase | IO[bytes], limit: int) -> bytes:
    """A ``Transfer-Encoding: chunked`` body, refused (413) as soon as it passes ``limit``."""
    out = bytearray()
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line.endswith(b"\n"):
            if len(line) > _MAX_LINE:
                raise RequestError(HTTPStatus.BAD_REQUEST, "malformed chunked body: long line")
            raise RequestError(HTTPStatus.BAD_REQUEST, "the chunked body ended early")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 15 or any(c not in _HEX for c in size_text):
            shown = size_text[:20].decode("latin-1")
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"malformed chunked body: chunk size {shown!r}"
            )
        size = int(size_text, 16)
        if size == 0:
            break
        if len(out) + size > limit:
            raise _too_large(limit)
        out += _read_exactly(rfile, size)
        if rfile.read(2) != b"\r\n":
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "malformed chunked body: chunk not followed by CRLF"
            )
    for _ in range(_MAX_TRAILERS):  # trailer fields, ignored, up to the blank line
        line = rfile.readline(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n", b""):
            return bytes(out)
        if len(line) > _MAX_LINE:
            raise RequestError(HTTPStatus.BAD_REQUEST, "malformed chunked body: long trailer")
    raise RequestError(HTTPStatus.BAD_REQUEST, "malformed chunked body: too many trailers")


def body_length(headers: Message, limit: int) -> int | None:
    """The body's declared length (None: chunked), checked from the headers alone.

    411 without a length, 400 for a malformed or negative one or for both framings,
    413 over ``limit``, 501 for a transfer coding other than chunked.
    """
    codings = [
        c.strip().lower()
        for h in headers.get_all("Transfer-Encoding") or []
        for c in h.split(",")
        if c.strip()
    ]
    n = _content_length(headers)
    if codings:
        if n is not None:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "both Transfer-Encoding and Content-Length given"
            )
        if codings != ["chunked"]:
            raise RequestError(
                HTTPStatus.NOT_IMPLEMENTED,
                f"transfer coding {', '.join(codings)!r} is not supported (only chunked)",
            )
        return None
    if n is None:
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
    if n > limit:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request of {n:,} bytes is over the limit of {limit:,}",
        )
    return n


def read_body(rfile: io.BufferedIOBase | IO[bytes], headers: Message, limit: int) -> bytes:
    """The request body, refused from its headers (:func:`body_length`) before a byte
    is read; a chunked body 413 as soon as its running total passes ``limit``; 408
    when the client stalls."""
    n = body_length(headers, limit)
    try:
        return _read_chunked(rfile, limit) if n is None else _read_exactly(rfile, n)
    except TimeoutError:
        raise RequestError(
            HTTPStatus.REQUEST_TIMEOUT, "timed out waiting for the request body"
        ) from None


def check_pixels(files: list[tuple[str, bytes]], budget: int) -> None:
    """Refuse (413) photos that declare more than ``budget`` pixels together.

    Sizes come from the image headers, before anything is decoded. A photo whose
    header cannot be read counts for nothing here: the geolocator reports it.
    """
    total = 0
    for name, data in files:
        try:
            w, h = read_image_size(data)
        except ImageError:
            continue
        total += w * h
        if total > budget:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the photos of one request may hold {budget:,} pixels in all; up to {name} "
                f"({w}x{h}) they hold {total:,}: send fewer or smaller photos",
            )


def _malformed(why: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {why}")


def _multipart_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a multipart body (RFC 2046), split with ``bytes.find``: linear time.

    (The ``email`` parser goes line by line: a 2 MB part of newlines took it 2 s,
    10,000 tiny parts 9 s.)
    """
    dash = b"--" + boundary
    if body.startswith(dash):
        pos = len(dash)
    else:  # a preamble before the first delimiter is ignored
        first = body.find(b"\r\n" + dash)
        if first < 0:
            raise _malformed("no boundary in the body")
        pos = first + 2 + len(dash)
    delimiter = b"\r\n" + dash
    parts: list[bytes] = []
    while not body.startswith(b"--", pos):  # "--" after a delimiter ends the body
        eol = body.find(b"\r\n", pos, pos + 1024)  # (transport padding, then CRLF)
        end = body.find(delimiter, eol + 2) if eol >= 0 else -1
        if end < 0:
            raise _malformed("a part does not end with the boundary")
        if len(parts) == _MAX_PARTS:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"at most {_MAX_PARTS} parts ({MAX_FILES} photos) per request",
            )
        parts.append(body[eol + 2 : end])
        pos = end + len(delimiter)
    return parts


def _transfer_decoded(data: bytes, cte: str) -> bytes:
    """A part's bytes under its (rare, deprecated by RFC 7578) Content-Transfer-Encoding."""
    if cte == "base64":
        try:
            return base64.b64decode(data)
        except binascii.Error:
            raise _malformed("bad base64 part") from None
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    return data


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
    outer = Message()
    outer["Content-Type"] = content_type
    boundary = outer.get_boundary()
    if not boundary or len(boundary) > 200:
        raise _malformed("no usable boundary in its Content-Type")
    files = []
    for part in _multipart_parts(body, boundary.encode("latin-1")):
        if part.startswith(b"\r\n"):
            head, data = b"", part[2:]  # a part without headers
        else:
            blank = part.find(b"\r\n\r\n", 0, _MAX_PART_HEAD)
            if blank < 0:
                raise _malformed("part headers too long or unterminated")
            head, data = part[:blank], part[blank + 4 :]
        headers = BytesHeaderParser(policy=HTTP).parsebytes(head + b"\r\n\r\n")
        name = headers.get_filename()
        if name is None:
            continue  # a plain form field
        name = "".join(c if c.isprintable() else "?" for c in name)  # messages stay one line
        cte = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
        data = _transfer_decoded(data, cte)
        if data:
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


class GeolocusHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``max_connections`` connections at once.

    ``process_request`` runs in the accepting thread: when every slot is taken the
    connection gets a 503 at once (nothing is read from it) and is closed, so a
    flood of stalled clients costs no threads.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], handler: type, max_connections: int, log: bool
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.log = log
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def log_line(self, client: Any, message: str) -> None:
        """One line on stderr, prefixed with the client's address (unless ``log`` is off)."""
        if self.log:
            host = client[0] if isinstance(client, tuple) else client
            sys.stderr.write(f"{host} {message}\n")

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            threading.Thread(
                target=self._serve_in_slot, args=(request, client_address), daemon=True
            ).start()
        except RuntimeError as e:  # no thread to be had: refuse rather than fail the loop
            self._slots.release()
            self.log_line(client_address, f"cannot start a thread: {e}")
            self._refuse(request, client_address)

    def _serve_in_slot(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        """503 without reading or waiting: the accepting thread must never block on a client."""
        body = json.dumps(
            {"error": f"server busy: {self.max_connections} connections open; try again"}
        ).encode()
        head = (
            "HTTP/1.0 503 Service Unavailable\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.setblocking(False)
            request.send(head.encode() + body)
        except OSError:
            pass
        self.log_line(client_address, "refused: 503 server busy")
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line for whatever escaped a handler (the default prints a traceback)."""
        e = sys.exc_info()[1]
        if e is None:
            return
        if isinstance(e, CLIENT_GONE):
            self.log_line(client_address, f"client went away: {_one_line(e)}")
        else:
            self.log_line(client_address, f"internal error: {_one_line(e)}")


def make_server(
    geolocator: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    log: bool = True,
    *,
    max_request_pixels: int = MAX_REQUEST_PIXELS,
    read_timeout: float = READ_TIMEOUT_S,
    request_timeout: float = REQUEST_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> GeolocusHTTPServer:
    """An HTTP server answering with ``geolocator`` (call ``serve_forever()`` on it).

    ``read_timeout``: seconds a client may stay silent while its request is read;
    ``request_timeout``: seconds the whole request may take to arrive;
    ``max_connections``: connections served at once; ``max_request_pixels``: the
    pixel budget of one request (see :func:`check_pixels`).
    """
    from geolocus.pipeline.formats import map_text  # torch: `geolocus --help` stays fast

    if read_timeout <= 0 or request_timeout <= 0:
        raise ValueError("read_timeout and request_timeout must be positive")
    lock = threading.Lock()
    db = geolocator.database
    if db is None:
        db_label = html.escape(f"no database, worldwide model {geolocator.embedder.name}")
        db_info: dict[str, Any] | None = None
    else:
        db_label = html.escape(f"{len(db)} photos, model {db.manifest.model}")
        db_info = {"photos": len(db), "model": db.manifest.model}
    refiner_name = None if geolocator.refiner is None else geolocator.refiner.name

    def locate(files: list[tuple[str, bytes]]) -> list[Any]:
        with lock:
            return geolocator.predict([_named(n, d) for n, d in files])

    class Handler(BaseHTTPRequestHandler):
        server_version = f"geolocus/{__version__}"
        # HTTP/1.1 for "Expect: 100-continue"; every answer still closes its connection
        protocol_version = "HTTP/1.1"
        timeout = read_timeout  # set on the socket by StreamRequestHandler: bounds every read
        server: GeolocusHTTPServer

        def log_message(self, fmt: str, *args: Any) -> None:
            self.server.log_line(self.client_address, fmt % args)

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # (else the socket's file stays open after close())
            deadline = time.monotonic() + request_timeout
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, read_timeout, deadline))

        def handle(self) -> None:
            self._body_unread = False
            try:
                super().handle()
            except CLIENT_GONE as e:
                self.close_connection = True
                self.log_message("client went away: %s", _one_line(e))

        def finish(self) -> None:
            if self._body_unread:
                self._drain()
            super().finish()

        def _drain(self) -> None:
            """Read (a bounded amount of) what the client still sends after an early answer.

            Closing a socket with unread bytes sends a reset, which can destroy the
            answer before the client reads it; so half-close, then discard up to 1 MB
            or one second of input.
            """
            sock = self.connection
            try:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(min(1.0, read_timeout))
                left = 1 << 20
                while left > 0:
                    got = sock.recv(min(_PIECE, left))
                    if not got:
                        break
                    left -= len(got)
            except OSError:
                pass

        def handle_expect_100(self) -> bool:
            """``Expect: 100-continue``: the client sends its body only if the headers
            pass, so an upload over the limit is refused before it is sent."""
            if self.command in ("POST", "PUT", "PATCH"):
                try:
                    body_length(self.headers, max_upload_bytes)
                except RequestError as e:
                    self._body_unread = True
                    self._json(e.status, {"error": str(e)})
                    return False
            return super().handle_expect_100()

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """The standard library's own refusals (a bad request line, 414, 431, an
            unknown method) as one-line JSON, like every other error."""
            try:
                status = HTTPStatus(code)
            except ValueError:
                status = HTTPStatus.BAD_REQUEST
            self._body_unread = True
            self.close_connection = True
            self._json(status, {"error": (message or status.phrase).splitlines()[0]})

        def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
            self.connection.settimeout(read_timeout)  # a client that never reads is let go
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Connection", "close")
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

        def _photos(self) -> list[tuple[str, bytes]]:
            """The request's photos: body bounded in bytes, then in declared pixels."""
            self._body_unread = True  # until read to its end
            body = read_body(self.rfile, self.headers, max_upload_bytes)
            self._body_unread = False
            files = parse_photos(self.headers.get("Content-Type", ""), body)
            check_pixels(files, max_request_pixels)
            return files

        def _handle(self, fn, html_errors: bool = False) -> None:
            try:
                fn()
            except RequestError as e:
                if html_errors:
                    self._page(e.status, f'<p class="err">{html.escape(str(e))}</p>')
                else:
                    self._json(e.status, {"error": str(e)})
            except CLIENT_GONE:
                raise  # nobody to answer: handle() logs one line
            except Exception as e:  # a bug: say so in one line, log one line with its place
                where = traceback.extract_tb(e.__traceback__)[-1]
                self.log_message(
                    "internal error in %s %s: %s (%s:%d)",
                    self.command,
                    urlsplit(self.path).path,
                    _one_line(e),
                    where.filename.rsplit("/", 1)[-1],
                    where.lineno or 0,
                )
                msg = f"internal error: {_one_line(e)}"
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
                        "database": db_info,
                        "refiner": refiner_name,
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
                self._body_unread = True
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {url.path}"})

        def _api_predict(self, query: dict[str, list[str]]) -> None:
            preds = locate(self._photos())
            with_nb = query.get("neighbours", ["1"])[0] not in ("0", "false", "no")
            out: dict[str, Any] = {"predictions": [p.to_dict(neighbours=with_nb) for p in preds]}
            bad = [p for p in preds if not p.ok]
            if len(bad) == len(preds):  # nothing could be read: the request failed
                out["error"] = bad[0].error or "no answer"
                self._json(HTTPStatus.UNPROCESSABLE_ENTITY, out)
            else:
                self._json(HTTPStatus.OK, out)

        def _ui_predict(self) -> None:
            preds = locate(self._photos())
            status = HTTPStatus.OK if any(p.ok for p in preds) else HTTPStatus.UNPROCESSABLE_ENTITY
            self._page(status, _result_html(preds, map_text))

        def do_PUT(self) -> None:
            self._body_unread = True
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET or POST"})

        do_DELETE = do_PATCH = do_PUT

    return GeolocusHTTPServer((host, port), Handler, max_connections, log)
