"""The multimodal-model stage against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import pytest
from PIL import Image

from fakes import FakeLMMServer as _Server
from geolocus.errors import ServiceError
from geolocus.refine.lmm import Candidate, LMMClient, build_prompt, parse_answer


@pytest.fixture
def image():
    return Image.new("RGB", (64, 48), (120, 160, 200))


NEAR = [Candidate(48.8584, 2.2945, "Paris, Île-de-France, France"), Candidate(45.76, 4.83)]
FAR = [Candidate(-33.86, 151.21)]


def test_prompt_lists_candidates_and_negatives():
    p = build_prompt(NEAR, FAR)
    assert "(48.85840, 2.29450) Paris, Île-de-France, France" in p
    assert "(-33.86000, 151.21000)" in p and "not taken there" in p
    assert '"latitude"' in p


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"latitude": 48.85, "longitude": 2.29, "reason": "tower"}', (48.85, 2.29)),
        ('Sure! ```json\n{"lat": -1.5, "lng": 36.8}\n``` done', (-1.5, 36.8)),
        ('I think {"latitude": "10.5", "longitude": "-20"}.', (10.5, -20.0)),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text)[:2] == expected


@pytest.mark.parametrize("text", ["no idea", '{"latitude": 95, "longitude": 0}', "[1, 2]"])
def test_parse_answer_rejects(text):
    with pytest.raises(ServiceError, match="no valid coordinates"):
        parse_answer(text)


def test_client_sends_image_and_prompt_and_takes_the_medoid(image):
    srv = _Server(
        [
            '{"latitude": 48.86, "longitude": 2.29, "reason": "Eiffel"}',
            '{"latitude": 48.85, "longitude": 2.35}',
            '{"latitude": -33.9, "longitude": 151.2}',  # a stray sample
        ]
    )
    try:
        ans = LMMClient(srv.url, "vision-model", api_key="k", samples=3).ask(image, NEAR, FAR)
    finally:
        srv.close()
    assert (ans.lat, ans.lon) in [(48.86, 2.29), (48.85, 2.35)]
    assert len(ans.samples) == 3
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k"
    content = req["body"]["messages"][1]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert req["body"]["model"] == "vision-model" and req["body"]["n"] == 3


def test_unreachable_server_is_one_line_error(image):
    srv = _Server([])
    url = srv.url
    srv.close()  # nothing listens there any more
    with pytest.raises(ServiceError, match="unreachable") as e:
        LMMClient(url, "m", timeout=2).ask(image, NEAR)
    assert "\n" not in str(e.value)
    ans = LMMClient(url, "m", timeout=2).choose(image, NEAR, fallback=True)
    assert ans.used_fallback and (ans.lat, ans.lon) == (48.8584, 2.2945)


def test_http_error_and_bad_answers(image):
    srv = _Server(['{"error": "overloaded"}'], status=503)
    try:
        with pytest.raises(ServiceError, match="HTTP 503"):
            LMMClient(srv.url, "m").ask(image, NEAR)
    finally:
        srv.close()
    srv = _Server(["I cannot tell."])
    try:
        with pytest.raises(ServiceError, match="valid coordinates"):
            LMMClient(srv.url, "m").ask(image, NEAR)
    finally:
        srv.close()
