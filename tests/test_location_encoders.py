"""Location encoders: GeoCLIP's (conformance with the geoclip wheel) and TransGeoCLIP's."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from geolocus.encoders.location import (
    GaussianFourierFeatures,
    GeoCLIPLocationEncoder,
    LocationAttention,
    TransGeoLocationEncoder,
    create_location_encoder,
    geoclip_key_map,
    project_geoclip,
)
from geolocus.encoders.location.reference import geoclip_reference_class
from geolocus.errors import InputError, InvalidCoordinatesError, ModelUnavailableError
from geolocus.geo import equal_earth, fibonacci_sphere, haversine_km
from geolocus.weights import list_weights


def _sphere(n: int, seed: int = 0) -> torch.Tensor:
    """n points uniform on the sphere, the first ones at the poles and on ±180°."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.rad2deg(torch.asin(torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1))
    lon = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    pts = torch.stack((lat, lon), dim=1)
    special = torch.tensor(
        [[90, 0], [-90, 0], [90, 180], [-90, -180], [0, 180], [0, -180], [45, 180], [-45, -180]],
        dtype=torch.float64,
    )
    pts[: len(special)] = special
    return pts


# ---------------------------------------------------------------- GeoCLIP: conformance


@pytest.fixture(scope="module")
def geoclip_pair():
    try:  # geoclip's own class, loaded by file path into a synthetic package
        ref_cls = geoclip_reference_class()
    except ModelUnavailableError as e:
        pytest.skip(str(e))
    assert "geoclip" not in sys.modules  # its __init__ (and torchvision) never imported
    ref = ref_cls(from_pretrained=True).eval()
    ours = GeoCLIPLocationEncoder.from_pretrained().eval()
    return ref, ours


def test_key_map_moves_every_geoclip_weight_to_ours(geoclip_pair):
    ref, ours = geoclip_pair
    theirs, mine = ref.state_dict(), ours.state_dict()
    key_map = geoclip_key_map()
    assert set(key_map) == set(theirs) and set(key_map.values()) == set(mine)
    for k, v in theirs.items():
        assert torch.equal(v, mine[key_map[k]]), k


@pytest.mark.slow
def test_embeddings_match_geoclip_on_10k_points(geoclip_pair):
    """Our float32 encoder vs geoclip's LocationEncoder run in float64, 10,000 points.

    Both get the same float64 coordinates. We compute the Fourier phase in float64;
    geoclip's float32 code differs from its own float64 result by ~2.4e-5, so its
    float64 run is the reference that can be met at 1e-5. Against its float32 output
    we are within that float32 error.
    """
    ref, ours = geoclip_pair
    pts = _sphere(10_000)
    with torch.no_grad():
        mine = ours(pts)  # float64 coordinates in, float32 embeddings out
        ref64 = ref.double()
        try:
            theirs = ref64(pts)
            assert mine.dtype == torch.float32 and mine.shape == (10_000, 512)
            err = (mine.double() - theirs).abs().max().item()
            assert err < 1e-5, f"max abs difference {err:.2e} on 10,000 points"
            scale = theirs.abs().max().item()
            assert scale > 1e-2  # a real comparison, not of near-zero outputs
        finally:
            ref.float()
        theirs32 = ref(pts[:1000].float())
        err32 = (mine[:1000] - theirs32).abs().max().item()
        assert err32 < 1e-4, f"vs geoclip's float32 output: {err32:.2e}"


def test_pretrained_registered_in_weights_registry():
    names = {w.name: w for w in list_weights()}
    for n in (
        "geoclip-location-encoder",
        "geoclip-image-head",
        "geoclip-logit-scale",
        "geoclip-gps-gallery-100k",
    ):
        assert n in names and names[n].source == "pypi:geoclip" and names[n].offline
    assert names["geoclip-location-encoder"].kind == "location-encoder"


# ---------------------------------------------------------------- GeoCLIP: structure


def test_projection_is_geolocus_equal_earth_in_float64():
    pts = _sphere(200, seed=1)
    v = project_geoclip(pts.float())
    x, y = equal_earth(pts[:, 0].float().double(), pts[:, 1].float().double(), geoclip_scale=True)
    assert v.dtype == torch.float64
    torch.testing.assert_close(v, torch.stack((x, y), 1))
    assert v[:, 0].abs().max() < 1.0 and v[:, 1].abs().max() < 0.5  # GeoCLIP's scale
    with pytest.raises(ValueError):
        project_geoclip(torch.zeros(3))


def test_fourier_features_layout():
    rff = GaussianFourierFeatures(16.0, 2, 8, generator=torch.Generator().manual_seed(0))
    v = torch.tensor([[0.1, -0.2], [0.0, 0.0]])
    f = rff(v)
    assert f.shape == (2, 16) and f.dtype == torch.float32
    torch.testing.assert_close(f[:, :8] ** 2 + f[:, 8:] ** 2, torch.ones(2, 8))
    phase = 2 * np.pi * v.double() @ rff.b.double().T
    torch.testing.assert_close(f[0, :8], torch.cos(phase[0]).float())
    torch.testing.assert_close(f[1], torch.cat((torch.ones(8), torch.zeros(8))))
    assert "b" in dict(rff.named_buffers()) and not list(rff.parameters())


def test_geoclip_encoder_shapes_seed_and_batch_independence():
    a = GeoCLIPLocationEncoder(n_freq=16, hidden=32, dim=24, seed=3).eval()
    b = GeoCLIPLocationEncoder(n_freq=16, hidden=32, dim=24, seed=3).eval()
    c = GeoCLIPLocationEncoder(n_freq=16, hidden=32, dim=24, seed=4).eval()
    pts = _sphere(50, seed=2).float()
    with torch.no_grad():
        ea = a(pts)
        assert ea.shape == (50, 24)
        assert torch.equal(ea, b(pts))
        assert not torch.allclose(ea, c(pts))
        torch.testing.assert_close(a(pts[7:8]), ea[7:8], atol=1e-6, rtol=0)
    assert [br.rff.sigma for br in a.branches] == [1.0, 16.0, 256.0]


def test_geoclip_rejects_foreign_state_dict():
    enc = GeoCLIPLocationEncoder(n_freq=4, hidden=8, dim=8)
    with pytest.raises(InputError):
        enc.load_geoclip_state_dict({"encoder.weight": torch.zeros(1)})
    assert set(geoclip_key_map().values()) == set(GeoCLIPLocationEncoder().state_dict())


def test_factory():
    assert isinstance(create_location_encoder("geoclip", pretrained=False), GeoCLIPLocationEncoder)
    assert isinstance(create_location_encoder("transgeo", d_model=16), TransGeoLocationEncoder)
    with pytest.raises(InputError):
        create_location_encoder("nope")


# ---------------------------------------------------------------- TransGeoCLIP


def _small(context: str = "anchors", **kw) -> TransGeoLocationEncoder:
    kw = {"n_freq": 32, "d_model": 32, "layers": 1, "heads": 2, "dim": 32, "anchors": 64, **kw}
    return TransGeoLocationEncoder(context=context, **kw)


def _cities() -> torch.Tensor:
    return torch.tensor(
        [[48.85, 2.35], [51.5, -0.12], [40.7, -74.0], [35.7, 139.7], [-33.9, 151.2],
         [-22.9, -43.2], [55.75, 37.6], [1.35, 103.8], [64.1, -21.9], [-1.3, 36.8]]
    )  # fmt: skip


@pytest.mark.parametrize("context", ["anchors", "batch", "none"])
def test_transgeo_shapes_and_eval_determinism(context):
    enc = _small(context).eval()
    pts = _cities()
    with torch.no_grad():
        out = enc(pts)
        assert out.shape == (10, 32) and torch.isfinite(out).all()
        assert torch.equal(out, enc(pts))
        single = enc(pts[:1])
    assert single.shape == (1, 32)
    assert enc.batch_dependent == (context == "batch")
    enc.train()
    with torch.no_grad():
        assert not torch.equal(enc(pts), enc(pts))  # dropout is on in training


@pytest.mark.parametrize("context", ["anchors", "batch"])
def test_transgeo_permutation_equivariance(context):
    enc = _small(context).eval()
    pts = _cities()
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(enc(pts[perm]), enc(pts)[perm], atol=1e-5, rtol=1e-5)


def test_anchor_context_makes_embeddings_independent_of_the_batch():
    enc = _small("anchors").eval()
    pts = _cities()
    with torch.no_grad():
        full = enc(pts)
        for i in (0, 5, 9):
            torch.testing.assert_close(enc(pts[i : i + 1]), full[i : i + 1], atol=1e-5, rtol=0)
        # while in-batch attention does change with the batch
        batch = _small("batch").eval()
        alone, together = batch(pts[:1]), batch(pts)[:1]
    assert (alone - together).abs().max() > 1e-3


def test_anchor_cache_follows_parameter_updates():
    enc = _small("anchors").eval()
    pts = _cities()
    with torch.no_grad():
        before = enc(pts)
        enc.anchor_memory.add_(1.0)  # an in-place update, as an optimizer step makes
        after = enc(pts)
    assert (before - after).abs().max() > 1e-4


def test_location_attention_favours_near_context():
    torch.manual_seed(0)
    att = LocationAttention(dim=16, heads=4, tau_km=[50, 200, 1000, 5000]).eval()
    x = torch.randn(1, 16)
    nb = torch.randn(1, 16)
    here = torch.tensor([[48.85, 2.35]])
    ctx_self = (x, here)
    outs, weights = {}, {}
    for name, where in {"near": [48.95, 2.40], "far": [-33.9, 151.2]}.items():
        c = torch.cat([ctx_self[0], nb]), torch.cat([here, torch.tensor([where])])
        with torch.no_grad():
            outs[name] = att(x, here, *c)
            weights[name] = att.attention(x, here, *c)[:, 0, 1]  # weight on the neighbour
    with torch.no_grad():
        alone = att(x, here, *ctx_self)
    assert (weights["near"] > weights["far"]).all()
    assert (outs["near"] - alone).norm() > (outs["far"] - alone).norm()
    assert weights["far"].max() < 0.2  # 17,000 km away: ≤ e^{-3.4} of a near weight


def test_transgeo_far_point_changes_embedding_less_than_near_point():
    pts = _cities()
    near = torch.tensor([[48.9, 2.5]])  # 12 km from Paris
    far = torch.tensor([[-45.0, 170.0]])  # New Zealand
    assert haversine_km(48.85, 2.35, 48.9, 2.5) < 15
    for seed in range(3):
        enc = _small("batch", seed=seed).eval()
        with torch.no_grad():
            base = enc(pts)[0]
            d_near = (enc(torch.cat([pts, near]))[0] - base).norm()
            d_far = (enc(torch.cat([pts, far]))[0] - base).norm()
        assert d_far < d_near, seed


@pytest.mark.parametrize("context", ["anchors", "batch"])
def test_transgeo_gradients_reach_every_trainable_part(context):
    enc = _small(context).train()
    out = enc(_cities())
    (out**2).sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    for n, g in grads.items():
        if context == "batch" and n == "anchor_memory":
            assert g is None  # anchors unused in batch mode
            continue
        assert g is not None and torch.isfinite(g).all(), n
    for n in ("location_attention.log_tau", "tokens.2.weight", "proj.weight",
              "location_attention.q.weight", "transformer.layers.0.linear1.weight"):  # fmt: skip
        assert grads[n].abs().sum() > 0, n
    assert not any(n.startswith("rff") for n in grads)  # Fourier matrices are fixed buffers


def test_transgeo_anchors_and_validation():
    anchors = torch.from_numpy(fibonacci_sphere(500)).float()
    assert anchors.shape == (500, 2)
    assert anchors[:, 0].abs().max() < 90 and anchors[:, 1].abs().max() <= 180
    # quasi-uniform: hemispheres hold half each
    assert abs(int((anchors[:, 0] > 0).sum()) - 250) <= 1
    enc = _small(anchors=_cities())
    assert enc.anchor_coords.shape == (10, 2) and enc.anchor_memory.shape == (10, 32)
    with pytest.raises(InvalidCoordinatesError):
        _small(anchors=torch.tensor([[95.0, 0.0]]))
    with pytest.raises(InputError):
        _small(context="everything")
    with pytest.raises(InputError):
        LocationAttention(dim=16, heads=3)
