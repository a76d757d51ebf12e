"""Stage 2 as the seed papers run it (issue 10, section 4): G3's geo-diversification and
geo-verification, and DualGeo's LMM step, against a fake OpenAI-compatible server on
loopback with scripted answers (malformed ones included). Offline and fast: a GeoCLIP
head over the colour backbone of :mod:`fakes` is the location head.

No accuracy is measured here (no real multimodal model answers offline): these tests
check the procedure, not its results.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fakes import PLACES, ColourEncoder, FakeLMMServer, photo
from geolocus.cli.main import main
from geolocus.errors import InputError, ServiceError
from geolocus.geo import haversine_km
from geolocus.models.embedder import BackboneEmbedder, ModelEmbedder
from geolocus.pipeline import GallerySettings, Geolocator, LMMSettings, RetrievalSettings
from geolocus.refine.lmm import Candidate, LMMClient, parse_answer
from geolocus.refine.procedures import (
    GENERATED,
    RETRIEVED,
    Procedure,
    cluster_order,
    diversify,
    run_dualgeo,
    run_g3,
)

#: A GeoCLIP head over the colour backbone (12-d), an untrained 16-d location encoder.
TOY = dict(
    embed_dim=12,
    dim=16,
    pretrained_location=False,
    location_options={"n_freq": 8, "hidden": 16},
    queue_size=0,
)
NEAR = RetrievalSettings(k=6, k_far=4)


def _json(lat: float, lon: float) -> str:
    return json.dumps({"latitude": lat, "longitude": lon})


def _toy_model(backbone: str = "efficientnet-lite0"):
    from geolocus.models.geoclip import GeoCLIP, GeoCLIPConfig

    torch.manual_seed(0)
    return GeoCLIP(GeoCLIPConfig(backbone=backbone, **TOY)).eval()


def _colour_photos(folder: Path, per_place: int = 3):
    ids, paths, ll = [], [], []
    for name, (lat, lon, col) in PLACES.items():
        for j in range(per_place):
            p = photo(folder / f"{name}_{j}.jpg", col, seed=10 * j + len(ids))
            ids.append(p.name)
            paths.append(str(p))
            ll.append((lat + 0.002 * j, lon - 0.002 * j))
    return ids, paths, np.array(ll)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The colour world in a database built with a GeoCLIP head (a location head), and one
    built with the bare backbone (none)."""
    from geolocus.index.build import Inputs, build_database, inputs_source
    from geolocus.models.gallery import GPSGallery

    tmp = tmp_path_factory.mktemp("g3")
    model = _toy_model()
    coords = np.array([p[:2] for p in PLACES.values()] + [(0.0, 0.0), (60.0, 30.0)])
    gal = GPSGallery.build(model.location_encoder, coords, cache=False, progress=False)
    emb = ModelEmbedder(model, ColourEncoder(), "geoclip-colour", "toy-1", gallery=gal)
    ids, paths, ll = _colour_photos(tmp / "photos")
    inputs = inputs_source(Inputs(ids, paths, ll, "labels"))
    db = build_database(tmp / "db", inputs, emb, progress=False).database
    bare = BackboneEmbedder(ColourEncoder())
    bare_db = build_database(tmp / "bare", inputs, bare, progress=False).database
    query = photo(tmp / "q" / "paris.jpg", PLACES["paris"][2], seed=99)
    return {"emb": emb, "db": db, "bare": bare, "bare_db": bare_db, "query": query, "tmp": tmp}


def _similarities(model, encoder, image_path: Path, coords: np.ndarray) -> np.ndarray:
    """G3's verification score written out: the photo through the backbone and GeoCLIP's
    image head, each position through the location encoder, both unit length, dot product."""
    pixels = torch.from_numpy(encoder.preprocessing.image(Image.open(image_path).convert("RGB")))
    with torch.no_grad():
        img = F.normalize(model.image_head(encoder(pixels[None]).embedding), dim=-1)
        loc = model.location_encoder(torch.tensor(coords, dtype=torch.float64))
        loc = F.normalize(loc.float(), dim=-1)
    return (loc @ img[0]).numpy()


# -- parsing and generating ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("I'd say (48.8566, 2.3522), the Seine.", (48.8566, 2.3522)),
        ("Coordinates: -33.86, 151.21", (-33.86, 151.21)),
        ('{"latitude": null} so 35.68 139.65 maybe', (35.68, 139.65)),
        ('{"latitude": 91.5, "longitude": 2.0}; actually 10.5, 20.25', (10.5, 20.25)),
    ],
)
def test_worldwide_lmm_reads_coordinates_in_prose(text, expected):
    assert parse_answer(text)[:2] == expected


@pytest.mark.parametrize(
    "text", ["33.9° S, 151.2° E", "somewhere in 2024", "(95.5, 10.5)", "[1, 2]", ""]
)
def test_worldwide_lmm_refuses_what_is_no_position(text):
    with pytest.raises(ServiceError, match="no valid coordinates"):
        parse_answer(text)


def test_worldwide_lmm_generation_skips_and_counts_malformed_answers():
    image = Image.new("RGB", (32, 32), (10, 200, 10))
    replies = [_json(1.5, 2.5), "I cannot tell.", "(3.25, 4.75)", '{"latitude": "x"}']
    with FakeLMMServer(replies) as srv:
        got = LMMClient(srv.url, "m").generate(image, [], [], samples=4, temperature=1.2)
    assert got.coords == [(1.5, 2.5), (3.25, 4.75)]
    assert (got.answers, got.malformed) == (4, 2)
    body = srv.requests[0]["body"]
    assert body["n"] == 4 and body["temperature"] == 1.2


# -- G3: geo-diversification ---------------------------------------------------------------


def test_worldwide_g3_asks_with_0_5_10_15_neighbours_and_collects_every_sample():
    near = [Candidate(10.0 + i, 20.0 + i) for i in range(15)]
    far = [Candidate(-40.0 - i, -100.0 - i) for i in range(15)]
    proc = Procedure.named("g3", samples=3)
    assert proc.prompts == (0, 5, 10, 15) and proc.temperature == 1.2
    # 12 answers: 3 per prompt; two malformed, one a pair in prose
    replies = [_json(i, -i) if i % 5 else "no idea" for i in range(1, 12)] + ["(7.25, 8.5)"]
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    with FakeLMMServer(replies) as srv:
        got = diversify(LMMClient(srv.url, "m"), image, near, far, proc)
    assert [r["body"]["n"] for r in srv.requests] == [3, 3, 3, 3]
    assert {r["body"]["temperature"] for r in srv.requests} == {1.2}
    for k, text in zip(proc.prompts, srv.prompts(), strict=True):
        listed_near = sum(f"({c.lat:.5f}, {c.lon:.5f})" in text for c in near)
        listed_far = sum(f"({c.lat:.5f}, {c.lon:.5f})" in text for c in far)
        assert (listed_near, listed_far) == (k, k)
        assert ("similar to this one" in text) == (k > 0)
    assert (got.answers, got.malformed) == (12, 2)
    assert len(got.coords) == 10 and got.coords[-1].tolist() == [7.25, 8.5]
    assert got.prompt.tolist() == [0, 0, 0, 5, 5, 10, 10, 10, 15, 15]


# -- G3: geo-verification ------------------------------------------------------------------


def test_worldwide_g3_verification_keeps_the_candidate_most_similar_to_the_photo(world):
    """The winner is computed here from the model's own layers; it is scripted into the
    middle of the model's answers (in prose), among malformed and other answers."""
    emb, query = world["emb"], world["query"]
    rng = np.random.default_rng(3)
    probe = np.column_stack([rng.uniform(-80, 80, 400), rng.uniform(-180, 180, 400)])
    s = _similarities(emb.model, emb.encoder, query, probe)
    best, others = probe[int(np.argmax(s))], probe[np.argsort(s)[:5]]
    replies = [
        _json(*others[0]),
        "The photo shows a market; I cannot say.",  # malformed
        _json(*others[1]),
        f"Probably here: ({best[0]:.6f}, {best[1]:.6f}).",
        _json(*others[2]),
        _json(*others[3]),
    ]
    proc = Procedure.named("g3", prompts=(0, 2, 4), samples=2)
    gallery = GallerySettings(k=3)
    with FakeLMMServer(replies) as srv:
        lmm = LMMSettings(LMMClient(srv.url, "m"), procedure=proc)
        geo = Geolocator.from_database(
            world["db"], "nearest", embedder=emb, retrieval=NEAR, gallery=gallery, lmm=lmm
        )
        [pred] = geo([query])
    assert len(srv.requests) == 3
    # every candidate, scored independently: retrieved, gallery, generated
    near = pred.neighbours.near[0]
    feats = emb.features([Image.open(query).convert("RGB")])
    gal = emb.gps_candidates(feats.embedding, None, gallery.k)[0][0]
    generated = np.array([others[0], others[1], best.round(6), others[2], others[3]])
    cands = np.concatenate([near, gal, generated])
    sims = _similarities(emb.model, emb.encoder, query, cands)
    want = cands[int(np.argmax(sims))]
    assert np.allclose(want, best.round(6))  # the scripted winner is the most similar
    top = pred.guesses[0]
    assert "lmm" in top.source and float(haversine_km(top.lat, top.lon, *want)) < 1.0
    assert any("g3: 5 coordinates generated from 6 answers (1 malformed" in n for n in pred.notes)
    assert any(f"verified a {GENERATED} candidate" in n for n in pred.notes)

    # the same verification called directly: the index of the highest similarity
    nb = [Candidate(*p) for p in near]
    with FakeLMMServer(list(replies)) as srv:
        ans = run_g3(
            LMMClient(srv.url, "m"),
            Image.open(query),
            nb,
            [],
            [(near, RETRIEVED), (gal, "gallery")],
            emb.location_embeddings,
            emb.location_queries(feats.embedding)[0],
            proc,
        )
    assert ans.verified.index == int(np.argmax(sims))
    np.testing.assert_allclose(ans.verified.similarities, sims, atol=1e-5)


def test_worldwide_g3_retrieved_candidate_wins_when_the_model_is_worse(world):
    """Generated answers less similar than a retrieved neighbour: the neighbour is kept."""
    emb, query = world["emb"], world["query"]
    rng = np.random.default_rng(4)
    probe = np.column_stack([rng.uniform(-80, 80, 300), rng.uniform(-180, 180, 300)])
    worst = probe[np.argsort(_similarities(emb.model, emb.encoder, query, probe))[:2]]
    proc = Procedure.named("g3", prompts=(0,), samples=2)
    with FakeLMMServer([_json(*worst[0]), _json(*worst[1])]) as srv:
        lmm = LMMSettings(LMMClient(srv.url, "m"), procedure=proc)
        geo = Geolocator.from_database(
            world["db"],
            "nearest",
            embedder=emb,
            retrieval=NEAR,
            gallery=GallerySettings(k=0),
            lmm=lmm,
        )
        [pred] = geo([query])
    near = pred.neighbours.near[0]
    sims = _similarities(emb.model, emb.encoder, query, np.concatenate([near, worst]))
    assert int(np.argmax(sims)) < len(near)
    assert any(f"verified a {RETRIEVED} candidate" in n for n in pred.notes)


def test_worldwide_g3_without_a_database_prompts_and_verifies_with_the_gallery(world):
    """A worldwide (gallery) model alone: the prompts list the gallery's likeliest places
    (no far ones) and the verification chooses among them and the generated answers."""
    emb, query = world["emb"], world["query"]
    proc = Procedure.named("g3", prompts=(0, 3), samples=1)
    with FakeLMMServer([_json(5.5, 6.5), _json(-7.25, 8.5)]) as srv:
        lmm = LMMSettings(LMMClient(srv.url, "m"), procedure=proc)
        geo = Geolocator(None, emb, None, gallery=GallerySettings(k=3), lmm=lmm)
        [pred] = geo([query])
    feats = emb.features([Image.open(query).convert("RGB")])
    gal = emb.gps_candidates(feats.embedding, None, 3)[0][0]
    text = srv.prompts()[1]
    assert all(f"({a:.5f}, {b:.5f})" in text for a, b in gal) and "look unlike" not in text
    cands = np.concatenate([gal, [(5.5, 6.5), (-7.25, 8.5)]])
    want = cands[int(np.argmax(_similarities(emb.model, emb.encoder, query, cands)))]
    assert "lmm" in pred.top.source
    assert float(haversine_km(pred.top.lat, pred.top.lon, *want)) < 5.0  # merge radius


def _small_dualgeo():
    from geolocus.models.dualgeo import DualGeo, DualGeoConfig

    torch.manual_seed(1)
    cfg = {k: v for k, v in TOY.items() if k != "embed_dim"}
    m = DualGeo(DualGeoConfig(embed_dim=12, token_dim=8, classes=4, width=16, heads=2, **cfg))
    m.prepare(torch.randn(20, 9, 8))
    return m.eval(), torch.randn(2, 9, 8)


def _small_transgeoclip():
    from geolocus.models.transgeoclip import TransGeoCLIP, TransGeoCLIPConfig

    torch.manual_seed(2)
    loc = {"n_freq": 8, "d_model": 8, "layers": 1, "heads": 2, "anchors": 16}
    return TransGeoCLIP(TransGeoCLIPConfig(embed_dim=12, dim=16, location_options=loc)).eval(), None


@pytest.mark.parametrize("make", [_small_dualgeo, _small_transgeoclip])
def test_worldwide_g3_verifies_under_dualgeo_and_transgeoclip_heads(make):
    """A trained DualGeo or TransGeoCLIP model's location head verifies too: the kept
    candidate is the argmax of the cosine similarity of its own location query (DualGeo:
    the fused view of the photo and its tokens) and location encoder."""
    model, tokens = make()
    emb = ModelEmbedder(model, ColourEncoder(), "m", "id")
    assert emb.has_location_head
    x = torch.randn(2, 12)
    cands = np.array([(48.85, 2.35), (35.68, 139.65), (-33.87, 151.21), (-1.29, 36.82)])
    with torch.no_grad():
        q = F.normalize(model.location_query(x, tokens), dim=-1)
        loc = F.normalize(model.location_encoder(torch.tensor(cands)).float(), dim=-1)
    want = (loc @ q.T).numpy()  # (candidates, photos)
    got = emb.location_queries(x, tokens)
    np.testing.assert_allclose(emb.location_embeddings(cands) @ got.T, want, atol=1e-5)
    proc = Procedure.named("g3", prompts=(0,), samples=1)
    image = Image.new("RGB", (16, 16))
    for b in range(2):
        with FakeLMMServer(["no coordinates"]) as srv:
            pool = [(cands, RETRIEVED)]
            ans = run_g3(
                LMMClient(srv.url, "m"), image, [], [], pool, emb.location_embeddings, got[b], proc
            )
        assert ans.verified.index == int(np.argmax(want[:, b]))
        assert ans.generated.malformed == 1 and ans.verified.kind == RETRIEVED


def test_worldwide_g3_without_a_location_head_is_refused(world):
    lmm = LMMSettings.from_url("http://127.0.0.1:9/v1", "m", procedure=Procedure.named("g3"))
    with pytest.raises(InputError, match="needs a model with a location head"):
        Geolocator.from_database(world["bare_db"], "nearest", embedder=world["bare"], lmm=lmm)


def test_worldwide_g3_unreachable_server_raises_or_falls_back(world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    proc = Procedure.named("g3", prompts=(0, 5))
    kw = dict(embedder=world["emb"], retrieval=NEAR, gallery=GallerySettings(k=3))
    geo = Geolocator.from_database(
        world["db"], "nearest", lmm=LMMSettings.from_url(url, "m", procedure=proc), **kw
    )
    with pytest.raises(ServiceError, match="unreachable") as e:
        geo([world["query"]])
    assert "\n" not in str(e.value)
    warned: list[str] = []
    geo = Geolocator.from_database(
        world["db"],
        "nearest",
        lmm=LMMSettings.from_url(url, "m", True, proc),
        warn=warned.append,
        **kw,
    )
    preds = geo([world["query"], world["query"]])
    assert all(p.ok and p.guesses[0].source != "lmm" for p in preds)
    assert len(warned) == 1 and "lmm failed" in preds[0].notes[0]


# -- DualGeo's step ------------------------------------------------------------------------


def test_worldwide_dualgeo_reranks_by_the_cluster_and_merges_four_samples():
    paris = [(48.8566, 2.3522), (48.86, 2.34), (48.85, 2.36)]
    near = [Candidate(35.68, 139.65), Candidate(*paris[0]), Candidate(-33.87, 151.21)]
    near += [Candidate(*paris[1]), Candidate(*paris[2])]
    far = [Candidate(-50.0, -70.0 - i) for i in range(5)]
    order = cluster_order(np.array([(c.lat, c.lon) for c in near]))
    assert sorted(order[:3].tolist()) == [1, 3, 4] and order[3:].tolist() == [0, 2]
    proc = Procedure.named("dualgeo", prompts=(3,))
    assert (proc.samples, proc.temperature) == (4, 1.2)
    samples = [(48.9, 2.4), (40.4, -3.7), (48.8, 2.3)]  # one stray (Madrid)
    replies = [_json(*samples[0]), "¯\\_(ツ)_/¯", _json(*samples[1]), _json(*samples[2])]
    image = Image.new("RGB", (40, 30), (30, 30, 220))
    with FakeLMMServer(replies) as srv:
        ans = run_dualgeo(LMMClient(srv.url, "m"), image, near, far, proc)
    [req] = srv.requests
    assert req["body"]["n"] == 4 and req["body"]["temperature"] == 1.2
    text = srv.prompts()[0]
    assert all(f"({a:.5f}, {b:.5f})" in text for a, b in paris)  # the cluster, first
    assert "(35.68000, 139.65000)" not in text  # the lone Tokyo neighbour is not listed
    assert sum(f"({c.lat:.5f}, {c.lon:.5f})" in text for c in far) == 3
    # the medoid, written out: least summed great-circle distance to the other samples
    pts = np.array(samples)
    total = [sum(float(haversine_km(*p, *q)) for q in pts) for p in pts]
    assert (ans.lat, ans.lon) == samples[int(np.argmin(total))]
    assert (ans.answers, ans.malformed, len(ans.samples)) == (4, 1, 3)


def test_worldwide_dualgeo_in_the_geolocator(world):
    proc = Procedure.named("dualgeo", prompts=(4,))
    replies = [_json(48.857, 2.351), _json(48.856, 2.353), _json(48.86, 2.35), "?"]
    with FakeLMMServer(replies) as srv:
        lmm = LMMSettings(LMMClient(srv.url, "m"), procedure=proc)
        geo = Geolocator.from_database(
            world["bare_db"], "nearest", embedder=world["bare"], retrieval=NEAR, lmm=lmm
        )
        [pred] = geo([world["query"]])
    assert "lmm" in pred.guesses[0].source
    assert any(
        "dualgeo: merged 3 sampled coordinates of 4 answers (1 malformed" in n for n in pred.notes
    )
    with FakeLMMServer(["no", "idea", "at", "all"]) as srv:
        lmm = LMMSettings(LMMClient(srv.url, "m"), procedure=proc)
        geo = Geolocator.from_database(
            world["bare_db"], "nearest", embedder=world["bare"], retrieval=NEAR, lmm=lmm
        )
        with pytest.raises(ServiceError, match="none of the model's 4 answers"):
            geo([world["query"]])


# -- the command line ----------------------------------------------------------------------


def _run(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


#: An LMM server nobody asks (the options are refused first).
NOWHERE = ["--lmm", "http://127.0.0.1:9/v1", "--lmm-model", "m"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--lmm-prompts", "5"], "--lmm-prompts needs --lmm URL"),
        (["--lmm-procedure", "g3"], "--lmm-procedure needs --lmm URL"),
        ([*NOWHERE, "--lmm-samples", "2"], "--lmm-samples is for --lmm-procedure g3 or dualgeo"),
        (
            [*NOWHERE, "--lmm-procedure", "g3", "--lmm-prompts", "5,x"],
            "--lmm-prompts takes numbers of neighbours",
        ),
        (
            [*NOWHERE, "--lmm-procedure", "g4"],
            "unknown LMM procedure 'g4'; choose one of: choose, g3, dualgeo",
        ),
    ],
)
def test_worldwide_lmm_options_refused_in_one_line(extra, message, tmp_path, capsys):
    q = photo(tmp_path / "q.jpg", (1, 2, 3))
    rc, out, err = _run(capsys, ["predict", str(q), "--db", str(tmp_path), *extra])
    assert rc == 2 and err.startswith(f"geolocus: error: {message}") and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture
def colour_backbone(monkeypatch):
    """The colour backbone under a registry name, so that a model file and a database can
    name it (as they name efficientnet-lite0)."""
    from geolocus.encoders.image import IMAGE_ENCODERS

    def make(pretrained: bool = True, weights=None, **options):
        return ColourEncoder()

    monkeypatch.setitem(IMAGE_ENCODERS._entries, "colour-test", make)


def test_worldwide_g3_and_dualgeo_from_the_command_line(
    world, colour_backbone, tmp_path, capsys, monkeypatch
):
    """``predict --lmm-procedure g3`` over a database built with a trained model file (a
    GeoCLIP head: its location head verifies), and dualgeo over a bare backbone; a
    location-less model is refused for g3 in one line."""
    from geolocus.index.build import Inputs, build_database, inputs_source
    from geolocus.models.embedder import create_embedder

    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path / "cache"))  # the encoded gallery
    model_file = tmp_path / "toy.safetensors"
    _toy_model("colour-test").save(model_file)
    ids, paths, ll = _colour_photos(tmp_path / "photos", per_place=2)
    db = tmp_path / "db"
    build_database(
        db,
        inputs_source(Inputs(ids, paths, ll, "labels")),
        create_embedder(model_file),
        progress=False,
    )
    q = str(world["query"])
    replies = [_json(48.85, 2.35), "hmm", "(48.86, 2.34)", _json(10.0, 10.0)]
    base = ["predict", q, "--db", str(db), "-f", "json", "--k", "4", "--k-far", "2"]
    with FakeLMMServer(replies) as srv:
        lmm = ["--lmm", srv.url, "--lmm-model", "m", "--lmm-procedure", "g3"]
        rc, out, err = _run(capsys, [*base, *lmm, "--lmm-prompts", "0,2", "--lmm-samples", "2"])
    assert rc == 0 and "geolocus:" not in err, err  # (stderr: the gallery's progress bar)
    [pred] = json.loads(out)
    assert "lmm" in pred["guesses"][0]["source"]
    assert any(n.startswith("g3: 3 coordinates generated from 4 answers") for n in pred["notes"])
    assert [r["body"]["n"] for r in srv.requests] == [2, 2]
    with socket.socket() as sock:  # nothing listens there
        sock.bind(("127.0.0.1", 0))
        gone = ["--lmm", f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "--lmm-model", "m"]
    g3 = [*base, *gone, "--lmm-procedure", "g3"]
    rc, out, err = _run(capsys, g3)
    assert rc == 2 and err.count("\n") == 1 and "unreachable" in err and out == ""
    rc, out, err = _run(capsys, [*g3, "--lmm-fallback"])
    assert rc == 0 and err.count("geolocus: warning:") == 1 and "unreachable" in err
    assert "lmm failed" in json.loads(out)[0]["notes"][0]

    bare = ["predict", q, "--db", str(world["bare_db"].path), "-f", "json"]
    rc, _, err = _run(capsys, [*bare, *lmm])
    assert rc == 2 and "needs a model with a location head" in err and err.count("\n") == 1
    with FakeLMMServer([_json(48.85, 2.35)] * 4) as srv:
        dg = ["--lmm", srv.url, "--lmm-model", "m", "--lmm-procedure", "dualgeo"]
        rc, out, err = _run(capsys, [*bare, *dg, "--lmm-prompts", "3"])
    assert rc == 0 and any("dualgeo: merged 4" in n for n in json.loads(out)[0]["notes"])
    assert srv.requests[0]["body"]["temperature"] == 1.2


# -- geolocus refine: the last step on a neighbours table --------------------------------


def _table(tmp: Path, n: int = 3) -> tuple[Path, Path]:
    """A neighbours CSV of ``n`` queries (near: three around Paris after a lone Tokyo; far:
    two in the ocean) and a folder of their photos."""
    cols = ["IMG_ID"] + [f"near_{i}_{c}" for i in range(4) for c in ("lat", "lon")]
    cols += [f"far_{i}_{c}" for i in range(2) for c in ("lat", "lon")]
    near = [35.68, 139.65, 48.85, 2.35, 48.86, 2.34, 48.84, 2.36]
    rows = [",".join(cols)]
    for q in range(n):
        photo(tmp / "photos" / f"q{q}.jpg", PLACES["paris"][2], seed=q)
        rows.append(",".join([f"q{q}.jpg", *map(str, near), "-40,-120,-45,-130"]))
    table = tmp / "neighbours.csv"
    table.write_text("\n".join(rows) + "\n")
    return table, tmp / "photos"


def test_worldwide_refine_with_dualgeo_resumes_from_its_journal(tmp_path, capsys):
    table, photos = _table(tmp_path)
    out = tmp_path / "out" / "pred.csv"
    argv = ["refine", "--neighbours", str(table), "--method", "nearest", "--out", str(out)]
    argv += ["--images", str(photos), "--lmm-procedure", "dualgeo", "--lmm-prompts", "3"]
    first = [_json(48.80, 2.30), _json(48.81, 2.31), "no", _json(48.9, 2.4)]
    with FakeLMMServer(first) as srv:  # answers the first query, nothing after
        rc, _, err = _run(capsys, [*argv, "--lmm", srv.url, "--lmm-model", "m"])
    assert rc == 2 and "none of the model's 0 answers" in err and err.count("\n") == 1
    assert "1 answers are kept in" in err and not out.exists()
    rest = [_json(10.0, 20.0)] * 4 + [_json(-1.0, 36.8)] * 4
    with FakeLMMServer(rest) as srv:  # another address, the same model: it goes on
        rc, _, err = _run(capsys, [*argv, "--lmm", srv.url, "--lmm-model", "m"])
    assert rc == 0 and "dualgeo: 2 answered now, 1 from" in err, err
    assert len(srv.requests) == 2
    got = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [(float(r[1]), float(r[2])) for r in got] == [(48.81, 2.31), (10.0, 20.0), (-1.0, 36.8)]


def test_worldwide_refine_with_g3_verifies_with_a_model_file(
    tmp_path, capsys, colour_backbone, monkeypatch
):
    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path / "cache"))
    table, photos = _table(tmp_path, n=1)
    model_file = tmp_path / "toy.safetensors"
    _toy_model("colour-test").save(model_file)
    out = tmp_path / "pred.csv"
    argv = ["refine", "--neighbours", str(table), "--method", "nearest", "--out", str(out)]
    argv += ["--images", str(photos), "--lmm-procedure", "g3", "--lmm-prompts", "0,2"]
    argv += ["--lmm-samples", "1", "--lmm-model", "m"]
    with FakeLMMServer([_json(12.5, 45.5), "(48.857, 2.352)"]) as srv:
        rc, _, err = _run(capsys, [*argv, "--lmm", srv.url])
        assert rc == 2 and "give --lmm-verifier geoclip" in err and not srv.requests
        rc, _, err = _run(capsys, [*argv, "--lmm", srv.url, "--lmm-verifier", str(model_file)])
    assert rc == 0 and "g3: 1 answered now" in err, err
    # the answer is the candidate of highest similarity under the file's location head
    from geolocus.models import load_model

    model = load_model(model_file)
    enc = ColourEncoder()
    near = np.array([(35.68, 139.65), (48.85, 2.35), (48.86, 2.34), (48.84, 2.36)])
    from geolocus.models.embedder import create_embedder

    emb = create_embedder(model_file)
    feats = emb.features([Image.open(photos / "q0.jpg").convert("RGB")])
    gal = emb.gps_candidates(feats.embedding, None, 10)[0][0]
    cands = np.concatenate([near, gal, [(12.5, 45.5), (48.857, 2.352)]])
    want = cands[int(np.argmax(_similarities(model, enc, photos / "q0.jpg", cands)))]
    row = out.read_text().splitlines()[1].split(",")
    assert np.allclose([float(row[1]), float(row[2])], want, atol=1e-6)


VERIFY_BARE = ["--lmm-verifier", "colour-test"]  # a backbone: no location head


def test_worldwide_refine_lmm_options_refused_in_one_line(tmp_path, capsys, colour_backbone):
    table, photos = _table(tmp_path, n=1)
    argv = ["refine", "--neighbours", str(table), "--out", str(tmp_path / "o.csv")]
    for extra, message in [
        ([*NOWHERE], "--lmm needs the query photos: give --images"),
        (["--lmm-verifier", "geoclip"], "--lmm-verifier needs --lmm URL"),
        (
            [*NOWHERE, "--images", str(photos), "--lmm-verifier", "geoclip"],
            "--lmm-verifier is for --lmm-procedure g3",
        ),
        (
            [*NOWHERE, "--images", str(tmp_path / "nope"), "--lmm-procedure", "dualgeo"],
            "--images: not a folder",
        ),
        (
            [*NOWHERE, "--images", str(photos), "--lmm-procedure", "g3"],
            "G3's geo-verification needs a model with a location head",
        ),
        (
            [*NOWHERE, "--images", str(photos), "--lmm-procedure", "g3", *VERIFY_BARE],
            "--lmm-verifier colour-test has no location head",
        ),
    ]:
        rc, out, err = _run(capsys, [*argv, *extra])
        assert rc == 2 and err.startswith(f"geolocus: error: {message}"), err
        assert err.count("\n") == 1 and "Traceback" not in err and "wrote" not in out
