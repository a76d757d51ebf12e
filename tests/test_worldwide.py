"""Worldwide models without a database (issue 10): GeoCLIP's published procedure on
random-weight CLIP, StreetCLIP's country -> city hierarchy, downloads from a fake hub
(pinning, SHA-256, cache listing) and gallery heatmaps. All offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fakes import PLACES, photo
from geolocus import downloads
from geolocus.cli.main import main
from geolocus.encoders.location.pretrained import IMAGE_HEAD, LOGIT_SCALE
from geolocus.errors import ModelUnavailableError
from geolocus.models.embedder import create_embedder
from geolocus.pipeline import GallerySettings, Geolocator, PlaceSettings
from geolocus.weights import require

#: A CLIP vision tower small enough to save and load in a test, with ViT-L/14's 768-d
#: projection (the input of GeoCLIP's image head).
SMALL_CLIP = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=14,
    image_size=224,
    projection_dim=768,
)
REPO = "openai/clip-vit-large-patch14"
REVISION = "0123456789abcdef0123456789abcdef01234567"  # the fake hub's only revision


def _photos(n: int) -> list[Image.Image]:
    """Photos unlike each other (a random CLIP maps noise photos all alike): each a colour
    ramp of its own direction and colours, with stripes of its own period."""
    rng = np.random.default_rng(10)
    out = []
    for i in range(n):
        h, w = 60 + 7 * i, 80
        y, x = np.mgrid[0:h, 0:w] / max(h, w)
        a, b = rng.random(3) * 255, rng.random(3) * 255
        t = (np.cos(i) * x + np.sin(i) * y)[..., None] % 1.0
        img = a * (1 - t) + b * t
        img[(np.arange(h) // (2 + i)) % 2 == 0] *= 0.4
        out.append(Image.fromarray(img.clip(0, 255).astype(np.uint8)))
    return out


def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# -- 1. conformance with GeoCLIP's published procedure ----------------------------------------


def _geoclip_reference(encoder, pixels: torch.Tensor, gallery_embeddings: np.ndarray):
    """GeoCLIP's predict, written out: image -> CLIP -> image head -> logit scale x cosine
    similarity to the gallery's location embeddings -> softmax."""
    head = torch.load(require(IMAGE_HEAD), map_location="cpu", weights_only=True)
    scale = torch.load(require(LOGIT_SCALE), map_location="cpu", weights_only=True).exp()
    with torch.no_grad():
        clip = encoder.model(pixel_values=pixels).image_embeds  # the CLIP model itself
        h = torch.relu(clip @ head["0.weight"].T + head["0.bias"])
        img = h @ head["2.weight"].T + head["2.bias"]
        img = torch.nn.functional.normalize(img.double(), dim=-1)
        loc = torch.nn.functional.normalize(
            torch.from_numpy(np.array(gallery_embeddings)).double(), dim=-1
        )
        return torch.softmax(scale.double() * img @ loc.T, dim=-1).numpy()


@pytest.mark.slow
def test_worldwide_geoclip_conformance_with_published_procedure():
    torch.manual_seed(0)  # CLIP ViT-L/14 from its config, random weights
    emb = create_embedder("geoclip", pretrained=False)
    geo = Geolocator.worldwide(
        embedder=emb,
        places=PlaceSettings(top_k=5, merge_km=0.0, names=False),  # GeoCLIP does not merge
        gallery=GallerySettings(k=5, heatmap=True),
        warmup=False,
    )
    ims = _photos(20)
    preds = geo(ims)
    gallery = emb.model._gallery
    assert gallery is not None and len(gallery) == 100_000
    pixels = torch.from_numpy(np.stack([emb.encoder.preprocessing.image(im) for im in ims]))
    ref = _geoclip_reference(emb.encoder, pixels, gallery.embeddings)
    assert np.allclose(ref.sum(1), 1.0)
    for pred, p in zip(preds, ref, strict=True):
        top = np.argsort(-p, kind="stable")[:5]
        got = np.array([(g.lat, g.lon) for g in pred.guesses])
        assert np.allclose(got, gallery.coords[top]), pred.image
        conf = np.array([g.confidence for g in pred.guesses])
        assert np.allclose(conf, p[top], atol=1e-5, rtol=0)
        assert pred.heatmap is not None
        assert np.allclose(pred.heatmap.probs, p, atol=1e-5, rtol=0)
    # the photos' distributions differ by far more than the tolerance: the comparison has
    # the power to catch a wrong head, scale or gallery
    spread = max(np.abs(ref[i] - ref[0]).max() for i in range(1, len(ref)))
    assert spread > 1e-3


# -- 2. downloads from a fake hub, then predict without --db -----------------------------------


def _fake_hub(root: Path) -> Path:
    """A local 'hub': <root>/<repo id>/<revision>/<files>, holding a small random CLIP."""
    torch.manual_seed(1)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = root / REPO / REVISION
    CLIPVisionModelWithProjection(CLIPVisionConfig(**SMALL_CLIP)).save_pretrained(folder)
    return root


def _fetcher(hub: Path, cache: Path, seen: list):
    """``fetch`` as huggingface_hub does it: the file at that revision, into the cache's
    models--org--name/snapshots/<revision>/ layout."""

    def fetch(repo_id: str, filename: str, revision: str | None) -> Path:
        seen.append((repo_id, filename, revision))
        src = hub / repo_id / str(revision) / filename
        if not src.is_file():
            raise OSError(f"404: {repo_id}@{revision}/{filename}")
        dst = (
            cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / str(revision) / filename
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    return fetch


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """clip-vit-l14 downloaded from the fake hub into a Hugging Face cache of its own."""
    tmp = tmp_path_factory.mktemp("hub")
    hub = _fake_hub(tmp / "remote")
    files = hub / REPO / REVISION
    pin = downloads.Pin(
        REVISION, {f: downloads.sha256_of(files / f) for f in ("config.json", "model.safetensors")}
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_CACHE", str(tmp / "cache"))
    mp.delenv("GEOLOCUS_WEIGHTS_DIR", raising=False)
    mp.setitem(downloads.PINS, "clip-vit-l14", pin)
    seen: list = []
    got = downloads.download("clip-vit-l14", fetch=_fetcher(hub, tmp / "cache", seen))
    yield {"tmp": tmp, "hub": hub, "got": got, "seen": seen, "pin": pin}
    mp.undo()


@pytest.mark.slow
def test_worldwide_download_pins_checks_and_lists(hub_cache, capsys, monkeypatch, tmp_path):
    got, seen = hub_cache["got"], hub_cache["seen"]
    assert [s[2] for s in seen] == [REVISION, REVISION]  # fetched at the pinned revision
    assert {s[0] for s in seen} == {REPO}
    assert got.folder.name == REVISION and got.unchecked == []
    assert downloads.cached("clip-vit-l14") == got.folder
    rc, out, _ = _run(capsys, ["models", "--kind", "image-encoder", "--json"])
    row = next(r for r in json.loads(out) if r["name"] == "clip-vit-l14")
    assert rc == 0 and row["present"] and Path(row["path"]) == got.folder
    streetclip = next(r for r in json.loads(out) if r["name"] == "streetclip")
    assert not streetclip["present"] and streetclip["download"] == "geolocus download streetclip"

    # the command itself, its default fetch pointed at the fake hub: pinned, checked, listed
    seen2: list = []
    monkeypatch.setattr(downloads, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(
        downloads, "_hf_fetch", _fetcher(hub_cache["hub"], hub_cache["tmp"] / "cache", seen2)
    )
    rc, out, err = _run(capsys, ["download", "clip-vit-l14"])
    assert rc == 0, err
    assert f"{REPO} @ {REVISION}" in out and "none recorded" not in out
    assert [s[2] for s in seen2] == [REVISION, REVISION]

    # a hash that differs deletes the file: in a cache of its own, so the module's stays whole
    bad = downloads.Pin(REVISION, {"config.json": "0" * 64})
    monkeypatch.setitem(downloads.PINS, "clip-vit-l14", bad)
    other = tmp_path / "other-cache"
    fetch = _fetcher(hub_cache["hub"], other, [])
    with pytest.raises(ModelUnavailableError, match="SHA-256") as e:
        downloads.download("clip-vit-l14", fetch=fetch)
    gone = other / f"models--{REPO.replace('/', '--')}" / "snapshots" / REVISION / "config.json"
    assert "\n" not in str(e.value) and not gone.exists()
    assert (got.folder / "config.json").is_file()
    # and a revision the hub does not have is one line too
    monkeypatch.setitem(
        downloads.PINS, "clip-vit-l14", downloads.Pin("f" * 40, {"config.json": None})
    )
    with pytest.raises(ModelUnavailableError, match="404"):
        downloads.download("clip-vit-l14", fetch=fetch)


def test_worldwide_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("GEOLOCUS_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    img = photo(tmp_path / "a.jpg", PLACES["paris"][2])
    for argv, name in (
        (["predict", str(img)], "clip-vit-l14"),
        (["predict", str(img), "--world", "streetclip"], "streetclip"),
    ):
        rc, out, err = _run(capsys, argv)
        assert rc == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith("geolocus: error: ") and f"run 'geolocus download {name}'" in err
    rc, out, err = _run(capsys, ["download", "clip-vit-l14"])
    assert rc == 2 and err.count("\n") == 1 and "unreachable" in err
    rc, out, err = _run(capsys, ["download", "no-such-model"])
    assert rc == 2 and "clip-vit-l14" in err and err.count("\n") == 1


# -- 3. predict without --db; heatmaps ---------------------------------------------------------


@pytest.mark.slow
def test_worldwide_predict_without_db_and_heatmap(hub_cache, tmp_path, capsys):
    imgs = [
        photo(tmp_path / f"{n}.jpg", c, seed=3, size=(64, 48)) for n, (_, _, c) in PLACES.items()
    ]
    rc, out, err = _run(capsys, ["predict", str(imgs[0]), "--top-k", "3"])
    assert rc == 0, err
    assert "[gallery]" in out and "most probable first" in out
    assert out.count("\n  1 ") == 1 and "\n  4 " not in out

    js, html = tmp_path / "a.json", tmp_path / "map.html"
    argv = ["predict", *map(str, imgs), "--format", "json", "--heatmap", "--out", str(js)]
    rc, _, err = _run(capsys, [*argv, "--map", str(html)])
    assert rc == 0, err
    answers = json.loads(js.read_text())
    assert len(answers) == len(imgs)
    for a in answers:
        h = a["heatmap"]
        p = np.array(h["probability"])
        assert len(p) == len(h["lat"]) == len(h["lon"]) == 100_000
        assert abs(p.sum() - 1) < 1e-3 and (p >= 0).all()
        # guess 1 is a gallery location of the heatmap, whose place (locations within 5 km
        # merged) holds at least the peak's probability
        g = a["guesses"][0]
        assert g["source"] == "gallery"
        at = np.flatnonzero(
            (np.abs(np.array(h["lat"]) - g["lat"]) < 1e-4)
            & (np.abs(np.array(h["lon"]) - g["lon"]) < 1e-4)
        )
        assert len(at) and p[at].max() > 0
        assert g["confidence"] >= p.max() - 1e-4
        assert [x["confidence"] for x in a["guesses"]] == sorted(
            (x["confidence"] for x in a["guesses"]), reverse=True
        )
    # without --heatmap the JSON stays small
    rc, out, _ = _run(capsys, ["predict", str(imgs[0]), "--format", "json"])
    assert rc == 0 and "heatmap" not in json.loads(out)[0]

    maps = sorted(tmp_path.glob("map-*.html"))
    assert len(maps) == len(imgs)
    page = maps[0].read_text()
    data = json.loads(page.split('id="geolocus-data">')[1].split("</script>")[0])
    heat = data["heat"]
    assert 0 < len(heat) <= 20_000
    ps = [t[2] for t in heat]
    assert ps == sorted(ps, reverse=True) and ps[-1] >= 1e-4 * ps[0]
    assert "Probability heatmap" in page and "heatmap of" in page


def test_worldwide_heatmap_layer_only_when_given(tmp_path):
    from geolocus.viz import map_html

    g = [{"lat": 10.0, "lon": 20.0, "confidence": 0.5}]
    page = map_html(g, place_names=False, detail=False)
    data = json.loads(page.split('id="geolocus-data">')[1].split("</script>")[0])
    assert data["heat"] == []
    coords = np.array([[10.0, 20.0], [11.0, 21.0], [-5.0, 170.0]])
    page = map_html(g, place_names=False, detail=False, heat=(coords, np.array([0.2, 0.7, 1e-9])))
    data = json.loads(page.split('id="geolocus-data">')[1].split("</script>")[0])
    assert [t[2] for t in data["heat"]] == [0.7, 0.2]  # most probable first, negligible dropped


# -- StreetCLIP's hierarchy on random weights --------------------------------------------------


@pytest.mark.slow
def test_worldwide_streetclip_hierarchy_random_weights(one_thread):
    from geolocus.pipeline.worldwide import StreetCLIPEmbedder

    torch.manual_seed(2)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    text = dict(small, max_position_embeddings=32)
    emb = StreetCLIPEmbedder.create(
        pretrained=False, text_options=text, countries=2, cities=4, **small
    )
    calls = []
    emb.text_model.register_forward_hook(lambda *a: calls.append(1))
    ims = _photos(3)
    feats = emb.features(ims)
    coords, probs = emb.gps_candidates(feats.embedding, k=8)
    assert coords.shape == (3, 8, 2) and probs.shape == (3, 8)

    # the same answer, computed by hand: P(country) x P(city | country)
    img = emb.embed_features(feats.embedding)
    ctext = emb.encode_prompts(emb.country_prompts())
    pc = torch.softmax(torch.from_numpy(emb.logit_scale * img @ ctext.T), -1).numpy()
    assert np.allclose(pc.sum(1), 1) and pc.shape[1] == len(emb.countries) > 100
    for b in range(3):
        top2 = [emb.countries[i] for i in np.argsort(-pc[b])[:2]]
        expect = {}
        for code in top2:
            prompts = emb.city_prompts(code)
            assert all(p.startswith("A Street View photo in ") for p in prompts)
            t = emb.encode_prompts(prompts)
            pcity = torch.softmax(torch.from_numpy(emb.logit_scale * img[b] @ t.T), -1).numpy()
            for i, p in zip(emb._cities[code], pcity, strict=True):
                key = (round(float(emb._gaz.lat[i]), 6), round(float(emb._gaz.lon[i]), 6))
                expect[key] = expect.get(key, 0.0) + pc[b, emb.countries.index(code)] * p
        # a country with fewer than 4 places fills its share with probability-0 repeats
        want = (sorted(expect.values(), reverse=True) + [0.0] * 8)[:8]
        assert np.allclose(probs[b], want, atol=1e-6)
        for (la, lo), p in zip(coords[b], probs[b], strict=True):
            if p > 0:
                assert abs(expect[(round(la, 6), round(lo, 6))] - p) < 1e-6
    # prompts were encoded once: answering again runs no text model
    n = len(calls)
    emb.gps_candidates(feats.embedding, k=8)
    assert len(calls) == n

    geo = Geolocator.worldwide(embedder=emb, places=PlaceSettings(top_k=3), warmup=False)
    [pred] = geo([ims[0]])
    assert pred.ok and pred.top.source == "gallery" and pred.top.place is not None
    top2 = {emb.countries[i] for i in np.argsort(-pc[0])[:2]}
    assert {g.place.country_code for g in pred.guesses} <= top2


@pytest.mark.slow
def test_worldwide_with_db_pools_neighbours_and_gallery(hub_cache, tmp_path, capsys):
    """--world geoclip with --db: the database's neighbours join the gallery's candidates."""
    img = tmp_path / "photos"
    rows = []
    for name, (lat, lon, col) in PLACES.items():
        for i in range(2):
            photo(img / f"{name}{i}.jpg", col, seed=i, size=(64, 48))
            rows.append(f"{name}{i}.jpg,{lat + 0.001 * i},{lon}\n")
    (tmp_path / "labels.csv").write_text("IMG_ID,LAT,LON\n" + "".join(rows))
    db = tmp_path / "db"
    argv = ["index", "build", "--images", str(img), "--labels", str(tmp_path / "labels.csv")]
    assert main([*argv, "--model", "geoclip", "--out", str(db)]) == 0
    capsys.readouterr()
    q = photo(tmp_path / "q.jpg", PLACES["tokyo"][2], seed=9, size=(64, 48))
    base = ["predict", str(q), "--db", str(db), "--refine", "nearest", "--format", "json"]
    rc, out, err = _run(capsys, [*base, "--world", "geoclip", "--top-k", "10"])
    assert rc == 0, err
    [a] = json.loads(out)
    sources = {s for g in a["guesses"] for s in g["source"].split("+")}
    assert sources == {"retrieval", "gallery"} and a["neighbours"]["near"]
    rc, _, err = _run(capsys, [*base, "--world", "streetclip"])
    assert rc == 2 and "without --db" in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed")
def test_worldwide_heatmap_draws_offline_in_chromium(tmp_path):
    """The heat layer runs in a browser with no network: a canvas under the markers."""
    import subprocess

    from geolocus.viz import render_map

    rng = np.random.default_rng(0)
    coords = np.c_[rng.uniform(-60, 70, 3000), rng.uniform(-180, 180, 3000)]
    p = rng.random(3000) ** 8
    g = [
        {
            "lat": float(coords[np.argmax(p), 0]),
            "lon": float(coords[np.argmax(p), 1]),
            "confidence": 0.3,
        }
    ]

    def dom(heat):
        path = render_map(g, path=tmp_path / "h.html", heat=heat, place_names=False)
        return subprocess.run(
            [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--virtual-time-budget=3000",
                "--dump-dom", path.as_uri(),
            ],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip

    plain, hot = dom(None), dom((coords, p / p.sum()))
    # the page script's text holds these names once; the drawn layer control and legend add
    # them, and the heat layer's canvas renderer adds a canvas
    for text in ("<canvas", "Probability heatmap", "model's probability (heatmap)"):
        assert hot.count(text) > plain.count(text), text
    assert hot.count("leaflet-interactive") >= 1  # the guess is drawn over it
