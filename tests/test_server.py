"""The web service, live on loopback: JSON API, upload page, bad requests and hostile clients.

Hostile clients are played with raw sockets: malformed lengths and chunked bodies,
stalled uploads, more connections than the bound, pixel bombs, disconnects.
"""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

import pytest

from geolocus.pipeline import Geolocator, PlaceSettings
from geolocus.server import make_server
from geolocus.server.app import MAX_UPLOAD_BYTES, RequestError, parse_photos
from test_pipeline import PLACES, bomb, photo, world  # noqa: F401  (world is a fixture)

#: Read timeout of the test servers: short, so that stalled clients time out quickly.
TIMEOUT = 1.0


@contextlib.contextmanager
def serving(geo, **kw):
    """A live server on an ephemeral loopback port; yields its base URL."""
    kw = {"max_upload_bytes": 200_000, "log": False, "read_timeout": TIMEOUT, **kw}
    srv = make_server(geo, "127.0.0.1", 0, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def geo(world):  # noqa: F811
    _, emb, db = world
    return Geolocator.from_database(db, "nearest", embedder=emb, places=PlaceSettings(top_k=3))


@pytest.fixture(scope="module")
def server(geo):
    with serving(geo, max_request_pixels=50_000) as url:
        yield url


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = [f'--{b}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'.encode()]
    for name, data in files:
        head = (
            f'--{b}\r\nContent-Disposition: form-data; name="photo"; filename="{name}"'
            "\r\nContent-Type: image/jpeg\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{b}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={b}"


def _post(url: str, body: bytes, ctype: str) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]


def _jpeg(tmp_path, name, colour) -> bytes:
    return photo(tmp_path / name, colour).read_bytes()


def test_health(server):
    with urllib.request.urlopen(server + "/v1/health", timeout=10) as r:
        h = json.loads(r.read())
    assert h["status"] == "ok" and h["database"]["photos"] == 20 and h["refiner"] == "nearest"


def test_predict_multipart_places_each_photo(server, tmp_path):
    red = _jpeg(tmp_path, "red.jpg", PLACES["paris"][2])
    blue = _jpeg(tmp_path, "blue.jpg", PLACES["tokyo"][2])
    body, ctype = _multipart([("red.jpg", red), ("blue.jpg", blue)])
    status, data, rtype = _post(server + "/v1/predict?neighbours=0", body, ctype)
    assert status == 200 and rtype.startswith("application/json")
    preds = json.loads(data)["predictions"]
    assert [p["image"] for p in preds] == ["red.jpg", "blue.jpg"]
    assert preds[0]["guesses"][0]["country_code"] == "FR"
    assert preds[1]["guesses"][0]["country_code"] == "JP"
    assert len(preds[0]["guesses"]) <= 3 and "neighbours" not in preds[0]


def test_predict_raw_body_and_partial_failure(server, tmp_path):
    green = _jpeg(tmp_path, "g.jpg", PLACES["sydney"][2])
    status, data, _ = _post(server + "/v1/predict", green, "image/jpeg")
    p = json.loads(data)["predictions"][0]
    assert status == 200 and p["guesses"][0]["country_code"] == "AU" and "neighbours" in p
    body, ctype = _multipart([("good.jpg", green), ("bad.jpg", b"\xff\xd8 broken")])
    status, data, _ = _post(server + "/v1/predict", body, ctype)
    preds = json.loads(data)["predictions"]
    assert status == 200 and preds[0]["error"] is None
    assert preds[1]["error"] and "bad.jpg" in preds[1]["error"]


@pytest.mark.parametrize(
    "body,ctype,status,match",
    [
        (b"hello", "text/plain", 415, "multipart/form-data"),
        (b"", "image/jpeg", 400, "empty"),
        (b"GIF89a nonsense", "image/gif", 422, "upload"),
        (b"x" * 300_000, "image/jpeg", 413, "over the limit"),
    ],
)
def test_bad_requests_are_one_line_json_errors(server, body, ctype, status, match):
    code, data, rtype = _post(server + "/v1/predict", body, ctype)
    err = json.loads(data)["error"]
    assert code == status and rtype.startswith("application/json")
    assert match in err and "\n" not in err


def test_hostile_multipart_is_parsed_in_linear_time():
    b = "x" * 8
    ctype = f"multipart/form-data; boundary={b}"
    head = f'--{b}\r\nContent-Disposition: form-data; name="p"; filename="a"\r\n\r\n'.encode()
    t0 = time.monotonic()
    with pytest.raises(RequestError, match="at most 64 parts"):  # 100,000 tiny parts
        parse_photos(ctype, (head + b"z\r\n") * 100_000 + f"--{b}--\r\n".encode())
    lines = b"\n" * (8 << 20)  # one part of 8 million lines
    assert parse_photos(ctype, head + lines + f"\r\n--{b}--\r\n".encode()) == [("a", lines)]
    assert time.monotonic() - t0 < 1.5  # the email package's parser: 75 s and 9 s


def test_base64_part_is_decoded(server, tmp_path):
    data = _jpeg(tmp_path, "p.jpg", PLACES["paris"][2])
    b = uuid.uuid4().hex
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n".encode()
        + base64.b64encode(data)
        + f"\r\n--{b}--\r\n".encode()
    )
    code, out, _ = _post(server + "/v1/predict", body, f"multipart/form-data; boundary={b}")
    assert code == 200 and json.loads(out)["predictions"][0]["guesses"][0]["country_code"] == "FR"


def test_upload_names_stay_one_line(server):
    b = uuid.uuid4().hex
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="photo"; '
        f"filename*=utf-8''bad%0Aline%0D.jpg\r\n\r\nnot a photo\r\n--{b}--\r\n"
    ).encode()
    code, out, _ = _post(server + "/v1/predict", body, f"multipart/form-data; boundary={b}")
    pred = json.loads(out)["predictions"][0]
    assert code == 422 and pred["image"] == "bad?line?.jpg" and "bad?line?.jpg" in _error(out)


@pytest.mark.parametrize(
    "body,ctype,match",
    [
        (b"--b\r\n\r\nabc", "multipart/form-data; boundary=b", "does not end"),
        (b"abc", "multipart/form-data; boundary=b", "no boundary in the body"),
        (b"--b\r\n\r\nabc\r\n--b--", "multipart/form-data", "no usable boundary"),
        (
            b"--b\r\n" + b"X: y\r\n" * 5000 + b"\r\nz\r\n--b--",
            "multipart/form-data; boundary=b",
            "part headers",
        ),
        (
            b"--b\r\nContent-Disposition: form-data; name=n\r\n\r\nv\r\n--b--",
            "multipart/form-data; boundary=b",
            "no photo",
        ),
    ],
)
def test_malformed_multipart_is_400(server, body, ctype, match):
    code, out, _ = _post(server + "/v1/predict", body, ctype)
    assert code == 400 and match in _error(out)


def test_bomb_is_refused(server, tmp_path):
    code, data, _ = _post(
        server + "/v1/predict", bomb(tmp_path / "b.png").read_bytes(), "image/png"
    )
    assert code == 422 and "pixels" in json.loads(data)["error"]


def test_unknown_endpoint_and_method(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "/nope", timeout=10)
    assert e.value.code == 404
    req = urllib.request.Request(server + "/v1/predict", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


def test_upload_page_and_result_page_escape_names(server, tmp_path):
    with urllib.request.urlopen(server + "/", timeout=10) as r:
        page = r.read().decode()
    assert '<form method="post"' in page and 'type="file"' in page
    red = _jpeg(tmp_path, "r.jpg", PLACES["paris"][2])
    body, ctype = _multipart([("<script>x</script>.jpg", red)])
    status, data, rtype = _post(server + "/", body, ctype)
    text = data.decode()
    assert status == 200 and rtype.startswith("text/html")
    assert "<script>x</script>" not in text and "&lt;script&gt;x&lt;/script&gt;.jpg" in text
    assert "France" in text and "<iframe srcdoc=" in text


# --- hostile clients, over raw sockets ---------------------------------------------------


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(url: str, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _port(url)), timeout=timeout)


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of the response, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _raw(url: str, request: bytes, half_close: bool = False) -> tuple[int, bytes, float]:
    """Send ``request`` as is; status, body and seconds until the answer was complete."""
    t0 = time.monotonic()
    with _connect(url) as s:
        s.sendall(request)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        code, body = _answer(s)
    return code, body, time.monotonic() - t0


def _head(*lines: str) -> bytes:
    return (
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in lines)
    ).encode()


def _error(body: bytes) -> str:
    err = json.loads(body)["error"]
    assert "\n" not in err
    return err


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET /a b HTTP/1.1\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n", 431),
        (b"BREW /v1/predict HTTP/1.1\r\n\r\n", 501),
    ],
)
def test_malformed_requests_get_one_line_json(server, request_bytes, status):
    code, body, _ = _raw(server, request_bytes)
    assert code == status and _error(body)


@pytest.mark.parametrize(
    "length,status,match",
    [
        ("-1", 400, "whole number"),
        ("-5", 400, "whole number"),
        ("abc", 400, "whole number"),
        ("+5", 400, "whole number"),
        ("1e3", 400, "whole number"),
        ("5, 6", 400, "conflicting"),
        ("300000", 413, "over the limit"),
        ("9" * 40, 413, "over the limit"),
    ],
)
def test_bad_content_length_is_refused_from_the_headers(server, length, status, match):
    # no body is sent: a server that tried to read one would wait for the read timeout
    code, body, took = _raw(
        server, _head("Content-Type: image/jpeg", f"Content-Length: {length}") + b"\r\n"
    )
    assert code == status and match in _error(body)
    assert took < TIMEOUT / 2


def test_expect_100_continue_is_answered_from_the_headers(server, tmp_path):
    expect = ("Content-Type: image/jpeg", "Expect: 100-continue")
    # over the limit: refused before the client sends its body
    code, body, took = _raw(server, _head(*expect, "Content-Length: 300000") + b"\r\n")
    assert code == 413 and "over the limit" in _error(body) and took < TIMEOUT / 2
    data = _jpeg(tmp_path, "n.jpg", PLACES["nairobi"][2])
    with _connect(server) as s:
        s.sendall(_head(*expect, f"Content-Length: {len(data)}") + b"\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(data)
        code, body = _answer(s)
    assert code == 200 and json.loads(body)["predictions"][0]["guesses"][0]["country_code"] == "KE"


def test_missing_length_is_411_and_body_is_not_read(server):
    code, body, took = _raw(server, _head("Content-Type: image/jpeg") + b"\r\nsome bytes")
    assert code == 411 and "Content-Length" in _error(body) and took < TIMEOUT / 2


def test_chunked_upload_is_read(server, tmp_path):
    data = _jpeg(tmp_path, "t.jpg", PLACES["tokyo"][2])
    chunks = b"".join(
        f"{len(data[i : i + 700]):x};ext=1\r\n".encode() + data[i : i + 700] + b"\r\n"
        for i in range(0, len(data), 700)
    )
    request = _head("Content-Type: image/jpeg", "Transfer-Encoding: chunked") + b"\r\n"
    code, body, _ = _raw(server, request + chunks + b"0\r\nX-Trailer: 1\r\n\r\n")
    assert code == 200 and json.loads(body)["predictions"][0]["guesses"][0]["country_code"] == "JP"


def test_oversized_chunked_body_is_stopped_at_the_limit(server):
    request = _head("Content-Type: image/jpeg", "Transfer-Encoding: chunked") + b"\r\n"
    # chunks under the limit one by one, over it together (limit 200,000 bytes)
    chunks = (b"10000\r\n" + b"x" * 0x10000 + b"\r\n") * 4 + b"0\r\n\r\n"
    code, body, _ = _raw(server, request + chunks)
    assert code == 413 and "over the limit of 200,000" in _error(body)
    # one chunk declaring 16 MB: refused from its size line, before its data comes
    code, body, took = _raw(server, request + b"1000000\r\n")
    assert code == 413 and took < TIMEOUT / 2


@pytest.mark.parametrize(
    "chunks,match",
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", "chunk size"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "chunk size"),
        (b"\r\n", "chunk size"),
        (b"5\r\nhelloXX0\r\n\r\n", "CRLF"),
        (b"5\r\nhel", "ended"),
        (b"5\r\nhello\r\n", "ended early"),
        (b"f" * 5000 + b"\r\n", "long line"),
    ],
)
def test_malformed_chunked_body_is_400(server, chunks, match):
    request = _head("Content-Type: image/jpeg", "Transfer-Encoding: chunked") + b"\r\n"
    code, body, _ = _raw(server, request + chunks, half_close=True)
    assert code == 400 and match in _error(body)


@pytest.mark.parametrize(
    "headers,status",
    [
        (("Transfer-Encoding: gzip, chunked",), 501),
        (("Transfer-Encoding: chunked", "Content-Length: 5"), 400),
    ],
)
def test_unsupported_or_ambiguous_framing_is_refused(server, headers, status):
    code, body, _ = _raw(server, _head("Content-Type: image/jpeg", *headers) + b"\r\n")
    assert code == status and _error(body)


def test_stalled_clients_time_out_and_others_are_served(server):
    mid_body = _connect(server)
    mid_body.sendall(_head("Content-Type: image/jpeg", "Content-Length: 1000") + b"\r\nabc")
    mid_head = _connect(server)
    mid_head.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
    with urllib.request.urlopen(server + "/v1/health", timeout=TIMEOUT / 2) as r:
        assert r.status == 200  # not held up by the stalled ones
    t0 = time.monotonic()
    code, body = _answer(mid_body)
    assert code == 408 and "timed out" in _error(body)
    assert mid_head.recv(100) == b""  # closed without an answer: no request line came whole
    assert time.monotonic() - t0 < 3 * TIMEOUT
    mid_body.close()
    mid_head.close()


def test_trickling_client_is_cut_off_at_the_request_deadline(geo):
    with serving(geo, request_timeout=1.5) as url, _connect(url) as s:
        t0 = time.monotonic()
        s.sendall(_head("Content-Type: image/jpeg", "Content-Length: 1000") + b"\r\n")
        while time.monotonic() - t0 < 4:  # a byte every 0.2 s: never silent for a second
            if select.select([s], [], [], 0.2)[0]:
                break  # the answer has come
            s.sendall(b"x")
        took = time.monotonic() - t0
        code, body = _answer(s)
    assert code == 408 and "timed out" in _error(body)
    assert 1.4 < took < 2.5


def test_connections_beyond_the_bound_get_503_without_threads(geo):
    with serving(geo, max_connections=3, read_timeout=5.0) as url:
        stalled = [_connect(url) for _ in range(3)]  # connected, never send a byte
        time.sleep(0.3)  # accepted: they hold every slot
        threads = threading.active_count()
        extra = [_connect(url) for _ in range(30)]
        answers = [_answer(s) for s in extra]
        assert {code for code, _ in answers} == {503}
        assert "busy" in _error(answers[0][1])
        assert threading.active_count() <= threads
        for s in [*stalled, *extra]:
            s.close()
        deadline = time.monotonic() + 5
        while True:  # the slots come back once the stalled clients have gone
            with _connect(url) as s:
                s.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")
                if _answer(s)[0] == 200 or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        with urllib.request.urlopen(url + "/v1/health", timeout=5) as r:
            assert r.status == 200


def _big_png(w: int, h: int) -> bytes:
    """A real 1-bit PNG of w x h pixels: a few KB that decode to w*h pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = (b"\x00" + b"\xff" * ((w + 7) // 8)) * h
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def test_pixel_bomb_batch_is_refused_before_decoding(geo, world):  # noqa: F811
    png = _big_png(12000, 12000)  # 144 MP each, under the per-image cap
    assert len(png) < 40_000
    body, ctype = _multipart([(f"b{i}.png", png) for i in range(32)])
    calls = world[1].encoder.calls
    with serving(geo, max_upload_bytes=MAX_UPLOAD_BYTES) as url:  # default: 256 MP a request
        t0 = time.monotonic()
        code, data, _ = _post(url + "/v1/predict", body, ctype)
        took = time.monotonic() - t0
    err = _error(data)
    assert code == 413 and "pixels" in err and "b1.png (12000x12000)" in err
    assert took < 2.0 and world[1].encoder.calls == calls  # nothing decoded, model untouched


def test_pixel_budget_counts_all_photos_of_a_request(server, tmp_path):
    small = photo(tmp_path / "s.png", PLACES["paris"][2], size=(150, 150)).read_bytes()
    body, ctype = _multipart([("one.png", small)])
    assert _post(server + "/v1/predict", body, ctype)[0] == 200  # 22,500 of 50,000 pixels
    body, ctype = _multipart([("a.png", small), ("b.png", small), ("c.png", small)])
    code, data, _ = _post(server + "/v1/predict", body, ctype)
    assert code == 413 and "50,000 pixels" in _error(data)
    code, data, rtype = _post(server + "/", body, ctype)  # the upload page says it in HTML
    assert code == 413 and rtype.startswith("text/html") and b"50,000 pixels" in data


def _wait_for(capfd, text: str, seconds: float = 5.0) -> str:
    """Captured stderr once ``text`` appears in it (or the time is up)."""
    err = ""
    deadline = time.monotonic() + seconds
    while text not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capfd.readouterr().err
    return err


def test_client_that_disconnects_costs_one_log_line(geo, tmp_path, capfd):
    data = _jpeg(tmp_path, "r.jpg", PLACES["paris"][2])
    with serving(geo, log=True) as url:
        for _ in range(3):
            s = _connect(url)
            s.sendall(
                _head("Content-Type: image/jpeg", f"Content-Length: {len(data)}") + b"\r\n" + data
            )
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset, before the answer is written
        err = _wait_for(capfd, "went away")
        time.sleep(0.3)
        err += capfd.readouterr().err
    assert "Traceback" not in err
    gone = [line for line in err.splitlines() if "client went away" in line]
    assert 1 <= len(gone) <= 3 and all(line.startswith("127.0.0.1 ") for line in gone)


def test_a_bug_answers_500_and_logs_one_line(world, tmp_path, capfd, monkeypatch):  # noqa: F811
    _, emb, db = world
    broken = Geolocator.from_database(db, "nearest", embedder=emb, places=PlaceSettings(top_k=3))

    def fail(items):
        raise KeyError("lost")

    monkeypatch.setattr(broken, "predict", fail)
    with serving(broken, log=True) as url:
        code, data, _ = _post(
            url + "/v1/predict", _jpeg(tmp_path, "g.jpg", PLACES["sydney"][2]), "image/jpeg"
        )
        err = _wait_for(capfd, "internal error")
    assert code == 500 and _error(data) == "internal error: KeyError: 'lost'"
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "internal error" in line]) == 1
