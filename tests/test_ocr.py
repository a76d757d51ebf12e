"""OCR as evidence: scripts, country tables, place names, the cache, a real backend reading
rendered text, and the CLI with photos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from geolocus.errors import InputError
from geolocus.ocr import (
    NO_TEXT,
    OCRBackend,
    OCRCache,
    PlaceMatcher,
    TextBox,
    available_backends,
    create_backend,
    read_text,
    register_backend,
    script_of,
    scripts_in,
    text_evidence,
)
from geolocus.ocr import countries as ctry
from geolocus.ocr.places import normalise
from geolocus.refine import BestRefiner

FONTS = [
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf"),
]


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("Hello world", "Latin"),
        ("Zürich Straße", "Latin"),
        ("Hà Nội", "Latin"),
        ("Москва", "Cyrillic"),
        ("Αθήνα", "Greek"),
        ("北京", "Han"),
        ("とうきょう東京", "Kana"),  # Japanese mixes kana and kanji
        ("서울", "Hangul"),
        ("مرحبا", "Arabic"),
        ("שלום", "Hebrew"),
        ("กรุงเทพ", "Thai"),
        ("नमस्ते", "Devanagari"),
        ("Москва Moscow Москва", "Cyrillic"),  # the most letters wins
        ("12:30 - !", None),
        ("", None),
    ],
)
def test_script_of(text: str, script: str | None) -> None:
    assert script_of(text) == script


def test_scripts_in_counts_letters_only() -> None:
    assert dict(scripts_in("Paris 75 Москва!")) == {"Latin": 5, "Cyrillic": 6}


def test_country_tables() -> None:
    assert ctry.script_countries("Hangul") == {"KR", "KP"}
    assert {"GR", "CY"} <= ctry.script_countries("Greek")
    assert "JP" in ctry.script_countries("Kana")
    assert {"RU", "UA", "BG"} <= ctry.script_countries("Cyrillic")
    assert "US" not in ctry.script_countries("Cyrillic")
    assert ctry.script_countries("Latin") is None  # says nothing
    assert {"DE", "AT", "CH"} <= ctry.language_countries("de")
    en = ctry.language_countries("en")
    assert {"US", "GB", "AU"} <= en and "DE" not in en and "KR" not in en
    assert "DE" in ctry.letter_countries("ß") and "FR" not in ctry.letter_countries("ß")
    assert "PL" in ctry.letter_countries("Ł")
    assert ctry.letter_countries("a") is None
    assert ctry.distinctive_letters("Straße in Łódź") == ["ß", "ł", "ź"]


def test_normalise() -> None:
    assert normalise("Welcome to ZÜRICH!") == "welcome to zurich"
    assert normalise("São-Paulo  2024") == "sao paulo"
    assert normalise("서울특별시") == "서울특별시"  # Hangul syllables stay whole
    assert normalise("ガソリン") == "ガソリン"


@pytest.fixture(scope="module")
def matcher() -> PlaceMatcher:
    return PlaceMatcher.load()


def test_place_matcher(matcher: PlaceMatcher) -> None:
    zurich = [m for m in matcher.match(["Welcome to Zürich"]) if m.name == "zurich"]
    assert zurich and all(m.country_code == "CH" for m in zurich)
    assert all(abs(m.lat - 47.4) < 0.5 and abs(m.lon - 8.6) < 0.6 for m in zurich)
    assert abs(sum(m.weight for m in zurich) - 1.0) < 1e-9
    names = {m.name for m in matcher.match(["NEW YORK CITY"])}
    assert "new york city" in names and "york" not in names  # the longest name wins
    assert matcher.match(["HOTEL"]) == []  # a common word, not Hotel (somewhere)
    assert matcher.match(["Rome"]) and not matcher.match(["CHROMED"])  # whole words only
    tokyo = matcher.match(["東京タワー"])
    assert tokyo and tokyo[0].country_code == "JP"
    assert {m.country_code for m in matcher.match(["ITALIA"]) if m.kind == "country"} == {"IT"}


def _boxes(*lines: str) -> list[TextBox]:
    return [TextBox(t, 0.9) for t in lines]


def test_text_evidence(matcher: PlaceMatcher) -> None:
    assert text_evidence([], matcher) is NO_TEXT
    assert text_evidence(_boxes("12:30", "-"), matcher) is NO_TEXT  # no letters
    ev = text_evidence(_boxes("Οδός Ερμού", "ΑΘΗΝΑ"), matcher)
    assert ev.has_text and "GR" in ev.script_countries and "US" not in ev.script_countries
    ev = text_evidence(_boxes("Willkommen in München", "Hauptbahnhof"), matcher)
    assert ev.script_countries is None  # Latin alone narrows nothing
    assert "DE" in ev.letter_countries or ev.letter_countries is None
    assert any(p.country_code == "DE" and abs(p.lat - 48.1) < 0.3 for p in ev.places)
    ev = text_evidence(_boxes("Ristorante", "Made in Italia"), matcher)
    assert ev.named_countries == {"IT"}
    assert "no text" in NO_TEXT.summary()


class ColourBackend(OCRBackend):
    """Reads the 'text' of a generated photo from its colour (counts its calls)."""

    name = "colour-test"
    calls: ClassVar[int] = 0
    texts: ClassVar[dict[tuple[int, int, int], str]] = {}

    @property
    def tag(self) -> str:
        return "colour-test-v1"

    def read(self, image: Image.Image) -> list[TextBox]:
        type(self).calls += 1
        text = self.texts.get(tuple(int(v) for v in np.asarray(image)[0, 0]), "")
        return [TextBox(text, 0.99, ((0, 0), (1, 0), (1, 1), (0, 1)))] if text else []


def _photo(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (32, 24), colour).save(path)
    return path


def test_cache_reads_each_photo_once(tmp_path: Path) -> None:
    ColourBackend.calls = 0
    ColourBackend.texts = {(10, 20, 30): "Zürich"}
    a = _photo(tmp_path / "a.png", (10, 20, 30))
    b = _photo(tmp_path / "b.png", (0, 0, 0))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    cache = OCRCache(tmp_path / "cache", ColourBackend())
    out = cache.many([a, b, bad], progress=False)
    assert [[x.text for x in o] for o in out] == [["Zürich"], [], []]
    assert ColourBackend.calls == 2  # the unreadable file is cached as an error, not read
    again = tmp_path / "copy-of-a.png"
    again.write_bytes(a.read_bytes())
    assert cache.get(again)[0].text == "Zürich" and ColourBackend.calls == 2  # by content
    assert cache.many([a, b, bad], progress=False) == out and ColourBackend.calls == 2
    files = list((tmp_path / "cache" / "colour-test-v1").rglob("*.json"))
    assert len(files) == 3
    rec = json.loads(
        next(f for f in files if "not" in f.read_text() or "bad" in f.read_text()).read_text()
    )
    assert rec["error"] and rec["boxes"] == []
    assert OCRCache(tmp_path / "cache", None).lookup(a, "colour-test-v1")[0].text == "Zürich"
    assert OCRCache(tmp_path / "cache", None).lookup(b, "other-tag") is None


def test_unknown_backend() -> None:
    with pytest.raises(InputError, match="unknown OCR backend"):
        create_backend("nope")


def _font() -> Path:
    font = next((f for f in FONTS if f.is_file()), None)
    if font is None:
        pytest.skip("no TrueType font (DejaVu or Liberation) to render test text")
    return font


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["rapidocr", "tesseract"])
def test_backend_reads_rendered_text(backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"OCR backend {backend!r} not installed (pip install 'geolocus[ocr]' / apt)")
    font = ImageFont.truetype(str(_font()), 34)
    img = Image.new("RGB", (320, 240), (235, 235, 225))
    draw = ImageDraw.Draw(img)
    draw.text((16, 40), "ZÜRICH HBF", fill=(20, 20, 60), font=font)
    draw.text((16, 140), "Gleis 7", fill=(20, 20, 60), font=font)
    boxes = read_text(img, backend)
    text = normalise(" ".join(b.text for b in boxes))
    assert "zurich" in text and "gleis" in text
    assert all(0 < b.score <= 1 and len(b.box) == 4 for b in boxes)
    # the corners of the line that says ZURICH lie around where it was drawn
    (z,) = [b for b in boxes if "zurich" in normalise(b.text)]
    ys = [y for _, y in z.box]
    assert 10 < np.mean(ys) < 100
    assert read_text(Image.new("RGB", (64, 48), (128, 128, 128)), backend) == []


@pytest.mark.slow
def test_refine_cli_with_photos(tmp_path: Path) -> None:
    """geolocus refine --method best --images: each photo names the place where it was
    taken; the refiner fitted with photo text puts the truth first more often."""
    from geolocus.cli.main import main
    from geolocus.data import read_coords
    from geolocus.geo import distance_km

    register_backend(ColourBackend)
    rng = np.random.default_rng(3)
    cities = {  # name -> (lat, lon): places the matcher knows, far apart
        "Zürich": (47.37, 8.55),
        "Madrid": (40.42, -3.70),
        "Nairobi": (-1.29, 36.82),
        "Chicago": (41.88, -87.63),
        "Melbourne": (-37.81, 144.96),
        "Osaka": (34.69, 135.50),
    }
    names = list(cities)
    n, k = 120, 6
    rows, labels, texts = [], [], {}
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(n):
        a, b = rng.choice(len(names), 2, replace=False)
        truth = np.array(cities[names[a]]) + rng.normal(0, 0.02, 2)
        at_truth = rng.permutation(k) < k // 2  # half the neighbours at each, random ranks
        near = [cities[names[a]] if t else cities[names[b]] for t in at_truth]
        near = np.array(near) + rng.normal(0, 0.02, (k, 2))
        img_id = f"{i}_x_{i % 30}@N00.png"
        colour = (i, 255 - i, (7 * i) % 256)
        _photo(images / img_id, colour)
        texts[colour] = f"Welcome to {names[a]}" if i % 4 else ""
        rows.append([img_id, *near.ravel().tolist()])
        labels.append([img_id, *truth.tolist()])
    ColourBackend.texts = texts
    cols = ["IMG_ID"] + [f"near_{j}_{c}" for j in range(k) for c in ("lat", "lon")]
    import pandas as pd

    pd.DataFrame(rows, columns=cols).to_csv(tmp_path / "nb.csv", index=False)
    pd.DataFrame(labels, columns=["IMG_ID", "LAT", "LON"]).to_csv(tmp_path / "lab.csv", index=False)
    common = ["refine", "--method", "best", "--neighbours", str(tmp_path / "nb.csv")]
    fit = ["--fit", str(tmp_path / "nb.csv"), "--labels", str(tmp_path / "lab.csv")]
    ocr = ["--ocr-cache", str(tmp_path / "ocr"), "--ocr-backend", "colour-test"]
    assert main([*common, *fit, "--out", str(tmp_path / "plain.csv")]) in (0, None)
    assert main(
        [
            *common,
            *fit,
            *ocr,
            "--images",
            str(images),
            "--out",
            str(tmp_path / "text.csv"),
            "--save-refiner",
            str(tmp_path / "m.json"),
        ]
    ) in (0, None)
    truth = read_coords(tmp_path / "lab.csv").set_index("IMG_ID")
    acc = {}
    for name in ("plain", "text"):
        pred = read_coords(tmp_path / f"{name}.csv").set_index("IMG_ID").loc[truth.index]
        d = distance_km(pred[["LAT", "LON"]].to_numpy(), truth[["LAT", "LON"]].to_numpy())
        acc[name] = float(np.mean(d < 25))
    assert acc["text"] > max(0.85, acc["plain"] + 0.15), acc
    saved = json.loads((tmp_path / "m.json").read_text())
    back = BestRefiner.load(tmp_path / "m.json")
    assert saved["refiner"] == "best" and back.spec_.text
    assert "txt_place_25km" in back.spec_.names()
    # a saved text model reused with --model and --images gives the same answers
    calls = ColourBackend.calls
    out2 = tmp_path / "again.csv"
    assert main(
        [
            *common,
            *ocr,
            "--refiner-file",
            str(tmp_path / "m.json"),
            "--images",
            str(images),
            "--out",
            str(out2),
        ]
    ) in (0, None)
    assert out2.read_text() == (tmp_path / "text.csv").read_text()
    assert ColourBackend.calls == calls  # every photo came from the cache
    # --images with a method that cannot use it, and a folder lacking photos: clear errors
    assert (
        main(
            [
                "refine",
                "--method",
                "nearest",
                "--neighbours",
                str(tmp_path / "nb.csv"),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 2
    )
    (images / rows[0][0]).unlink()
    assert (
        main(
            [
                *common,
                *ocr,
                "--refiner-file",
                str(tmp_path / "m.json"),
                "--images",
                str(images),
                "--out",
                str(out2),
            ]
        )
        == 2
    )
