"""GeoCLIP baseline: the GPS gallery (cached encoding, search) and the model over embeddings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from geolocus.encoders.location import GeoCLIPLocationEncoder
from geolocus.errors import InputError
from geolocus.geo import haversine_km
from geolocus.modelfile import META_CONFIG
from geolocus.models import gallery as gallery_mod
from geolocus.models.gallery import GPSGallery, fingerprint
from geolocus.models.geoclip import (
    IMAGE_HEAD_KEY_MAP,
    GeoCLIP,
    GeoCLIPConfig,
    jitter_gps,
)
from geolocus.weights import package_file
from stage1_helpers import overfit


def _coords(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return np.stack([lat, rng.uniform(-180, 180, n)], axis=1)


def _small_encoder(seed: int = 0) -> GeoCLIPLocationEncoder:
    return GeoCLIPLocationEncoder(n_freq=16, hidden=32, dim=24, seed=seed).eval()


class Counting(torch.nn.Module):
    """Wraps an encoder and counts how many locations it encoded."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.dim, self.count = inner, inner.dim, 0

    def forward(self, c):
        self.count += len(c)
        return self.inner(c)


# ---------------------------------------------------------------- gallery


def test_gallery_is_encoded_once_then_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOLOCUS_CACHE", str(tmp_path / "cache"))
    coords = _coords(700)
    enc = Counting(_small_encoder())
    g1 = GPSGallery.build(enc, coords, batch_size=256, progress=False)
    assert enc.count == 700 and g1.path is not None
    assert g1.path.parent == tmp_path / "cache" / "galleries"
    assert g1.embeddings.shape == (700, 24) and isinstance(g1.embeddings, np.memmap)
    np.testing.assert_allclose(np.linalg.norm(g1.embeddings, axis=1), 1.0, atol=1e-5)
    g2 = GPSGallery.build(enc, coords, batch_size=256, progress=False)
    assert enc.count == 700  # not re-encoded
    assert g2.path == g1.path and np.array_equal(g1.embeddings, g2.embeddings)
    # no temporary files left behind
    assert [p.name for p in g1.path.parent.iterdir()] == [g1.path.name]
    # another encoder, or other coordinates: another cache entry
    g3 = GPSGallery.build(_small_encoder(seed=1), coords, progress=False)
    g4 = GPSGallery.build(enc, coords[:-1], progress=False)
    assert len({g1.path, g3.path, g4.path}) == 3
    # the cached values equal a fresh encoding
    fresh = GPSGallery.build(enc.inner, coords, cache=False, progress=False)
    np.testing.assert_allclose(fresh.embeddings, g1.embeddings, atol=1e-6)


def test_gallery_rebuilds_a_corrupt_cache(tmp_path):
    coords = _coords(50)
    g = GPSGallery.build(_small_encoder(), coords, cache_dir=tmp_path, progress=False)
    good = np.array(g.embeddings)
    g.path.write_bytes(b"not a numpy file")
    g2 = GPSGallery.build(_small_encoder(), coords, cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(np.asarray(g2.embeddings), good, atol=1e-6)


def test_gallery_works_without_a_writable_cache(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="not cached"):
        g = GPSGallery.build(_small_encoder(), _coords(20), cache_dir=blocker, progress=False)
    assert g.path is None and g.embeddings.shape == (20, 24)


def test_gallery_search_matches_geoclip_procedure(tmp_path):
    coords = _coords(300, seed=1)
    enc = _small_encoder()
    g = GPSGallery.build(enc, coords, logit_scale=30.0, cache_dir=tmp_path, progress=False)
    q = torch.randn(4, 24, generator=torch.Generator().manual_seed(0))
    top_c, top_p = g.search(q, k=7)
    assert top_c.shape == (4, 7, 2) and top_p.shape == (4, 7)
    # GeoCLIP: softmax(logit_scale * cos) over the whole gallery, then top-k
    with torch.no_grad():
        loc = torch.nn.functional.normalize(enc(torch.as_tensor(coords)).float(), dim=1)
        probs = (30.0 * torch.nn.functional.normalize(q, dim=1) @ loc.T).softmax(dim=-1)
        ref = torch.topk(probs, 7, dim=1)
    np.testing.assert_allclose(top_p, ref.values.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(top_c, coords[ref.indices.numpy()])
    assert (np.diff(top_p, axis=1) <= 0).all() and (top_p.sum(axis=1) <= 1 + 1e-6).all()
    # a query pointing exactly at a gallery location finds it first
    c1, _ = g.search(g.embeddings[123] * 5.0, k=1, logit_scale=100.0)
    assert c1.shape == (1, 1, 2) and np.array_equal(c1[0, 0], coords[123])
    with pytest.raises(InputError):
        g.search(q, k=0)
    with pytest.raises(InputError):
        g.search(torch.randn(2, 5), k=1)


def test_gallery_rejects_bad_input(tmp_path):
    from geolocus.encoders.location import TransGeoLocationEncoder

    with pytest.raises(InputError):
        GPSGallery.build(_small_encoder(), np.array([[91.0, 0.0]]), cache_dir=tmp_path)
    with pytest.raises(InputError):
        GPSGallery.build(_small_encoder(), np.zeros((0, 2)), cache_dir=tmp_path)
    batchy = TransGeoLocationEncoder(n_freq=8, d_model=16, layers=1, heads=2, dim=16,
                                     context="batch")  # fmt: skip
    with pytest.raises(InputError, match="batch"):
        GPSGallery.build(batchy, _coords(10), cache_dir=tmp_path, progress=False)


def test_fingerprint_tracks_weights():
    a, b = _small_encoder(), _small_encoder()
    assert fingerprint(a) == fingerprint(b)
    with torch.no_grad():
        b.branches[0].fc1.bias[0] += 1e-3
    assert fingerprint(a) != fingerprint(b)


# ---------------------------------------------------------------- model


def _model(**kw) -> GeoCLIP:
    small = {"n_freq": 32, "hidden": 64}
    cfg = {"embed_dim": 32, "pretrained_location": False, "location_options": small,
           "queue_size": 48, **kw}  # fmt: skip
    torch.manual_seed(0)
    return GeoCLIP(GeoCLIPConfig(**cfg))


def _data(n: int = 16, d: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.as_tensor(_coords(n, seed), dtype=torch.float32)


def test_model_shapes_and_loss():
    m = _model()
    emb, gps = _data()
    assert m.encode_image(emb).shape == (16, 512) and m.location_encoder.dim == 512
    assert m(emb, gps).shape == (16, 16)
    out = m.loss(emb, gps)
    assert set(out) == {"loss", "acc", "logit_scale"} and out["loss"].ndim == 0
    assert out["loss"] > 0 and math.isfinite(out["loss"].item())
    # the batch form the training loop passes
    out2 = m.loss({"image_emb": emb, "gps": gps})
    assert out2["loss"].ndim == 0
    with pytest.raises(InputError):
        m.loss(emb, gps[:3])
    with pytest.raises(InputError):
        m.encode_image(torch.randn(2, 31))


def test_gradients_reach_the_head_not_the_frozen_location_encoder():
    m = _model().train()
    emb, gps = _data()
    m.loss(emb, gps)["loss"].backward()
    for n, p in m.image_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert m.logit_scale.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in m.location_encoder.parameters())
    assert not m.location_encoder.training  # frozen: kept in eval mode


def test_trainable_location_encoder_gets_gradients():
    m = _model(train_location_encoder=True).train()
    emb, gps = _data()
    m.loss(emb, gps)["loss"].backward()
    grads = [p.grad for p in m.location_encoder.parameters()]
    assert grads and all(g is not None for g in grads)


def test_queue_is_a_ring_buffer_of_recent_gps():
    m = _model(queue_size=5).train()
    assert m.queued_gps().shape == (0, 2)
    a = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    m.enqueue(a)
    assert torch.equal(m.queued_gps(), a)
    b = torch.tensor([[4.0, 4.0], [5.0, 5.0], [6.0, 6.0]])
    m.enqueue(b)
    assert len(m.queued_gps()) == 5 and int(m.queue_ptr) == 1
    assert {tuple(r) for r in m.queued_gps().tolist()} == {(v, v) for v in (2.0, 3, 4, 5, 6)}
    emb, gps = _data(4)
    logits = m(emb, torch.cat([gps, m.queued_gps()]))
    assert logits.shape == (4, 9)
    m.loss(emb, gps)  # training mode: the batch is enqueued
    assert int(m.queue_len) == 5 and any(torch.equal(r, gps[-1]) for r in m.gps_queue)
    m.eval()
    before = m.gps_queue.clone()
    m.loss(emb, gps)
    assert torch.equal(before, m.gps_queue)  # evaluation leaves the queue alone


def test_loss_decreases_when_overfitting_a_tiny_set(one_thread):
    # no queue: repeated batches would fill it with copies of the positives (false
    # negatives), which bounds the loss away from 0; the queue is tested above
    m = _model(queue_size=0)
    start, final = overfit(m, _data(16), steps=40, loss=lambda m, b: m.loss(*b))
    assert final["loss"].item() < 0.3 * start, (start, final["loss"].item())
    assert final["acc"] == 1.0


def test_geoclip_with_a_transgeo_location_encoder_round_trips(tmp_path):
    opts = {"n_freq": 16, "d_model": 16, "layers": 1, "heads": 2, "anchors": 32}
    m = _model(location_encoder="transgeo", location_options=opts).eval()
    m.save(tmp_path / "t.safetensors")
    back = GeoCLIP.load(tmp_path / "t.safetensors").eval()
    emb, gps = _data(4)
    with torch.no_grad():
        torch.testing.assert_close(back(emb, gps), m(emb, gps))
    with pytest.raises(InputError):
        GeoCLIP(GeoCLIPConfig(location_encoder="transgeo"))  # no pretrained TransGeo weights


def test_jitter_moves_points_by_sigma_km():
    g = torch.Generator().manual_seed(0)
    pts = torch.tensor([[0.0, 0.0], [60.0, 10.0], [-45.0, 179.999]], dtype=torch.float64)
    pts = pts.repeat_interleave(4000, dim=0)
    moved = jitter_gps(pts, 10.0, generator=g)
    d = haversine_km(pts[:, 0], pts[:, 1], moved[:, 0], moved[:, 1]).reshape(3, -1)
    # isotropic 2-D Gaussian of σ per axis: the distance is Rayleigh, mean σ·sqrt(π/2)
    np.testing.assert_allclose(d.mean(dim=1).numpy(), 10.0 * math.sqrt(math.pi / 2), rtol=0.05)
    assert moved[:, 1].abs().max() <= 180.0 and torch.equal(jitter_gps(pts, 0.0), pts)


def test_predict_over_a_gallery(tmp_path):
    m = _model().eval()
    coords = _coords(200, seed=3)
    gal = m.gallery(coords, cache_dir=tmp_path, progress=False)
    emb, _ = _data(3)
    c, p = m.predict(emb, gal, k=4)
    assert c.shape == (3, 4, 2) and p.shape == (3, 4)
    other = GPSGallery.build(_small_encoder(), coords, cache_dir=tmp_path, progress=False)
    with pytest.raises(InputError):
        m.predict(emb, other, k=1)
    with torch.no_grad():  # the encoder changes after the gallery was built: refused
        m.location_encoder.branches[0].head.bias.add_(0.01)
    with pytest.raises(InputError, match="another location encoder"):
        m.predict(emb, gal, k=1)


def test_save_load_round_trip(tmp_path):
    m = _model(gps_noise_km=0.5).eval()
    with torch.no_grad():
        m.logit_scale.fill_(2.5)
    path = tmp_path / "geoclip.safetensors"
    m.save(path)
    with safe_open(str(path), framework="pt") as f:
        cfg = json.loads(f.metadata()[META_CONFIG])
        keys = set(f.keys())
    assert cfg["embed_dim"] == 32 and cfg["gps_noise_km"] == 0.5
    assert any(k.startswith("location_encoder.") for k in keys)  # not pretrained: stored
    assert not any("queue" in k for k in keys)  # training state stays out
    back = GeoCLIP.load(path).eval()
    emb, gps = _data()
    with torch.no_grad():
        torch.testing.assert_close(back(emb, gps), m(emb, gps))
    assert back.config == m.config


def test_load_rejects_foreign_files(tmp_path):
    with pytest.raises(InputError):
        GeoCLIP.load(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(InputError, match="not a geolocus model"):
        GeoCLIP.load(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(InputError):
        GeoCLIP.load(junk)


# ---------------------------------------------------------------- pretrained (needs the wheel)


@pytest.fixture(scope="module")
def wheel():
    if package_file("geoclip", "geoclip/model/weights/image_encoder_mlp_weights.pth") is None:
        pytest.skip("geoclip wheel not installed (pip install --no-deps geoclip==1.3.0)")


def test_pretrained_clip_head_and_small_file(wheel, tmp_path):
    m = GeoCLIP.pretrained_clip()
    head = torch.load(
        package_file("geoclip", "geoclip/model/weights/image_encoder_mlp_weights.pth"),
        weights_only=True,
    )
    for k, v in head.items():
        assert torch.equal(m.image_head.state_dict()[IMAGE_HEAD_KEY_MAP[k]], v)
    assert m.logit_scale.exp().item() == pytest.approx(39.69, abs=0.01)
    path = tmp_path / "clip.safetensors"
    m.save(path)  # the frozen pretrained location encoder is not stored...
    with safe_open(str(path), framework="pt") as f:
        stored = list(f.keys())
    assert stored and not any(k.startswith("location_encoder.") for k in stored)
    assert path.stat().st_size < 5e6
    back = GeoCLIP.load(path)  # ...and comes back from the wheel
    emb = torch.randn(2, 768)
    gps = torch.tensor([[48.85, 2.35], [35.7, 139.7]])
    with torch.no_grad():
        torch.testing.assert_close(back(emb, gps), m(emb, gps))
    with pytest.raises(InputError):
        GeoCLIP.pretrained_clip(embed_dim=1280)


def test_geoclip_gallery_coordinates(wheel):
    coords = gallery_mod.load_geoclip_coords()
    assert coords.shape == (100_000, 2) and np.isfinite(coords).all()
    assert gallery_mod.load_geoclip_logit_scale() == pytest.approx(39.69, abs=0.01)
