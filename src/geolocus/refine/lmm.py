"""Stage 2 with a large multimodal model: any OpenAI-compatible vision chat endpoint
chooses the final coordinates from the photo and the retrieved candidates.

This follows the retrieval-augmented prompting of Img2Loc, G3 and DualGeo: the
prompt lists the coordinates (and place names, where known) of the most similar
database photos as candidates and of the most dissimilar ones as places the
photo is probably *not* from; the model answers in JSON. Several samples can
be drawn; their answers are combined by taking the medoid on the sphere (the
answer closest to all others), which discards a stray sample.

Only the standard library talks to the server (``urllib``), so no client
package is needed. Every failure — server unreachable, HTTP error, timeout,
an answer that is not valid JSON or not a valid coordinate — raises
:class:`~geolocus.errors.ServiceError` with a one-line message, unless
``fallback=True``, where the geometric choice is kept and the reason recorded.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from geolocus.errors import ServiceError
from geolocus.geo import pairwise_km

SYSTEM_PROMPT = (
    "You are an expert in image geo-localization. Given a photo, estimate where on Earth it "
    "was taken: look for landmarks, text, languages, vegetation, architecture, road signs, "
    "vehicles, and climate."
)


@dataclass
class Candidate:
    lat: float
    lon: float
    label: str = ""  # e.g. a place name
    score: float | None = None


@dataclass
class LMMAnswer:
    lat: float
    lon: float
    reason: str = ""
    samples: list[tuple[float, float]] = field(default_factory=list)
    used_fallback: bool = False


@dataclass
class Generation:
    """What a model generated for one prompt: the valid coordinates of its samples, and how
    many of its answers held none (skipped, counted)."""

    coords: list[tuple[float, float]]
    answers: int
    malformed: int


def medoid(points: Sequence[tuple[float, float]] | np.ndarray) -> int:
    """Index of the point with the least total great-circle distance to the others: the
    merge of several samples that a stray one cannot pull away (unlike a mean)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("no points to merge")
    return int(np.argmin(pairwise_km(pts).sum(axis=1)))


class Chooser(Protocol):
    """What chooses among candidate places for a photo: :class:`LMMClient`, or a stand-in."""

    def ask(self, image: Any, near: Sequence[Candidate], far: Sequence[Candidate]) -> LMMAnswer:
        """The position chosen for ``image`` among the ``near`` candidates (``far``: ones
        unlikely, shown for contrast); raises :class:`ServiceError` when it cannot answer."""
        ...


def build_prompt(near: Sequence[Candidate], far: Sequence[Candidate]) -> str:
    """The user prompt: candidates from similar photos, then places it is likely not from."""

    def fmt(c: Candidate) -> str:
        s = f"({c.lat:.5f}, {c.lon:.5f})"
        return f"{s} {c.label}".rstrip()

    lines = []
    if near:
        lines.append("For reference, GPS coordinates of photos similar to this one:")
        lines += [f"- {fmt(c)}" for c in near]
    if far:
        lines.append("And of photos that look unlike it (it was probably not taken there):")
        lines += [f"- {fmt(c)}" for c in far]
    lines.append(
        "Where was this photo taken? You may choose one of the reference coordinates or give "
        'your own. Answer with JSON only: {"latitude": <float>, "longitude": <float>, '
        '"reason": "<one sentence>"}'
    )
    return "\n".join(lines)


_JSON_RE = re.compile(r"\{.*?\}", re.DOTALL)
#: Two decimal numbers side by side, "(48.85, 2.29)" or "48.85, 2.29": the coordinates
#: G3's and DualGeo's extraction reads (decimal numbers only, so "[1, 2]" is no answer).
#: Hemisphere letters ("33.9° S") are not read: a sign read wrong is worse than a skip.
_PAIR_RE = re.compile(r"([-+]?\d+\.\d+)\s*[,;/\s]\s*([-+]?\d+\.\d+)")


def _valid(lat: float, lon: float) -> bool:
    return bool(np.isfinite(lat) and np.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180)


def parse_answer(text: str) -> tuple[float, float, str]:
    """Latitude, longitude and reason from a model's reply: JSON (possibly inside prose or a
    code fence), else the first pair of decimal numbers that is a valid position."""
    for m in [text, *_JSON_RE.findall(text)]:
        try:
            obj = json.loads(m.strip().removeprefix("```json").removesuffix("```"))
        except (json.JSONDecodeError, AttributeError):
            continue
        if not isinstance(obj, dict):
            continue
        lat = obj.get("latitude", obj.get("lat"))
        lon = obj.get("longitude", obj.get("lon", obj.get("lng")))
        try:
            lat, lon = float(lat), float(lon)  # type: ignore[arg-type]  # None: TypeError below
        except (TypeError, ValueError):
            continue
        if _valid(lat, lon):
            return lat, lon, str(obj.get("reason", ""))
    for a, b in _PAIR_RE.findall(text):
        if _valid(float(a), float(b)):
            return float(a), float(b), ""
    raise ServiceError(f"the model's answer holds no valid coordinates: {text[:120]!r}")


def encode_image(image, max_side: int = 768, quality: int = 90) -> str:
    """A PIL image as a JPEG data URL, downscaled so the request stays small."""
    im = image.convert("RGB")
    im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class LMMClient:
    """Chat-completions client for an OpenAI-compatible vision model.

    ``base_url`` is the API root (e.g. ``http://localhost:8000/v1``); the API key
    comes from ``api_key`` or ``$GEOLOCUS_LMM_API_KEY`` / ``$OPENAI_API_KEY``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        samples: int = 1,
        temperature: float = 0.7,
        max_tokens: int = 300,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = (
            api_key or os.environ.get("GEOLOCUS_LMM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        )
        self.timeout = timeout
        self.samples = max(1, int(samples))
        self.temperature = temperature
        self.max_tokens = max_tokens

    def _post(self, payload: dict) -> dict:
        req = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")[:200].replace("\n", " ")
            raise ServiceError(f"model server {self.url} answered HTTP {e.code}: {body}") from None
        except urllib.error.URLError as e:
            raise ServiceError(f"model server {self.url} is unreachable: {e.reason}") from None
        except TimeoutError:
            raise ServiceError(
                f"model server {self.url} timed out after {self.timeout} s"
            ) from None
        except json.JSONDecodeError:
            raise ServiceError(f"model server {self.url} did not answer JSON") from None

    def _texts(self, resp: Any) -> list[Any]:
        try:
            return [c["message"]["content"] for c in resp["choices"]]
        except (KeyError, TypeError):
            raise ServiceError("model server answered without choices/message/content") from None

    def complete(
        self,
        image: Any,
        near: Sequence[Candidate],
        far: Sequence[Candidate],
        samples: int,
        temperature: float,
    ) -> list[tuple[float, float, str] | None]:
        """``samples`` answers to one prompt (the photo, ``near`` and ``far`` listed), each
        parsed, or None where it held no valid coordinates. A server that ignores ``n`` is
        asked again, one sample at a time; a failure of the server raises
        :class:`ServiceError`."""
        content = [
            {"type": "text", "text": build_prompt(near, far)},
            {"type": "image_url", "image_url": {"url": encode_image(image)}},
        ]
        payload = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": content},
            ],
            "temperature": temperature,
            "max_tokens": self.max_tokens,
            "n": samples,
        }
        texts = self._texts(self._post(payload))[:samples]
        for _ in range(samples - len(texts)):  # servers that ignore n: ask again
            texts += self._texts(self._post(payload | {"n": 1}))[:1]
        out: list[tuple[float, float, str] | None] = []
        for t in texts:
            try:
                out.append(parse_answer(t if isinstance(t, str) else json.dumps(t)))
            except ServiceError:
                out.append(None)
        return out

    def generate(
        self,
        image: Any,
        near: Sequence[Candidate],
        far: Sequence[Candidate],
        samples: int,
        temperature: float,
    ) -> Generation:
        """The coordinates ``samples`` answers to one prompt generated; malformed answers
        are skipped and counted (G3's geo-diversification asks this per prompt)."""
        got = self.complete(image, near, far, samples, temperature)
        coords = [(p[0], p[1]) for p in got if p is not None]
        return Generation(coords, len(got), len(got) - len(coords))

    def ask(self, image, near: Sequence[Candidate], far: Sequence[Candidate] = ()) -> LMMAnswer:
        """One answer per sample; the medoid of the samples on the sphere is returned."""
        temperature = self.temperature if self.samples > 1 else 0.0
        got = self.complete(image, near, far, self.samples, temperature)
        parsed = [p for p in got if p is not None]
        if not parsed:
            raise ServiceError(f"none of the model's {len(got)} answers held valid coordinates")
        pts = np.array([[p[0], p[1]] for p in parsed])
        best = medoid(pts)
        return LMMAnswer(
            lat=float(pts[best, 0]),
            lon=float(pts[best, 1]),
            reason=parsed[best][2],
            samples=[(float(a), float(b)) for a, b in pts],
        )

    def choose(
        self,
        image,
        near: Sequence[Candidate],
        far: Sequence[Candidate] = (),
        fallback: bool = False,
    ) -> LMMAnswer:
        """:meth:`ask`, or with ``fallback`` the first candidate when the model fails."""
        try:
            return self.ask(image, near, far)
        except ServiceError as e:
            if not fallback or not near:
                raise
            return LMMAnswer(near[0].lat, near[0].lon, reason=f"fallback: {e}", used_fallback=True)
