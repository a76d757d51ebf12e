"""The web service, live on loopback: JSON API, upload page, and bad requests."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid

import pytest

from geolocus.pipeline import Geolocator, PlaceSettings
from geolocus.server import make_server
from test_pipeline import PLACES, bomb, photo, world  # noqa: F401  (world is a fixture)


@pytest.fixture(scope="module")
def server(world):  # noqa: F811
    _, emb, db = world
    geo = Geolocator.from_database(db, "nearest", embedder=emb, places=PlaceSettings(top_k=3))
    srv = make_server(geo, "127.0.0.1", 0, max_upload_bytes=200_000, log=False)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


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
