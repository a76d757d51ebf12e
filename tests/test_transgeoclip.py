"""TransGeoCLIP: joint image-text-GPS space, hardest-negative triplet, the common model file."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geolocus.errors import InputError
from geolocus.models import load_model
from geolocus.models.losses import clip_loss, hardest_negative_triplet, same_place
from geolocus.models.transgeoclip import TransGeoCLIP, TransGeoCLIPConfig
from stage1_helpers import overfit, random_coords

SMALL = {
    "backbone": "tiny",
    "embed_dim": 16,
    "text_dim": 8,
    "dim": 32,
    "location_options": {"n_freq": 16, "d_model": 16, "layers": 1, "heads": 2, "anchors": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gps = torch.as_tensor(random_coords(n, seed), dtype=torch.float32)
    return {
        "image_emb": torch.randn(n, 16, generator=g),
        "gps": gps,
        "text_emb": F.normalize(torch.randn(n, 8, generator=g), dim=1),
    }


def _model(**kw) -> TransGeoCLIP:
    torch.manual_seed(0)
    return TransGeoCLIP(TransGeoCLIPConfig(**{**SMALL, **kw}))


def test_shapes_and_loss_terms():
    m = _model().train()
    out = m.loss(_data())
    assert {"loss", "loss_ig", "loss_it", "loss_tg", "triplet", "acc"} <= set(out)
    expected = out["loss_ig"] + out["loss_it"] + out["loss_tg"] + 0.5 * out["triplet"]
    torch.testing.assert_close(out["loss"], expected)
    assert m.retrieval_dim == 32 and m.needs_text
    v = m.embed_image(_data()["image_emb"])
    assert v.shape == (12, 32)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(12))
    with pytest.raises(InputError, match="text_emb"):
        m.loss({"image_emb": torch.randn(3, 16), "gps": torch.zeros(3, 2)})


def test_without_the_text_view():
    m = _model(use_text=False).train()
    assert not hasattr(m, "text_head") and not m.needs_text
    b = _data()
    del b["text_emb"]
    out = m.loss(b)
    assert "loss_it" not in out
    torch.testing.assert_close(out["loss"], out["loss_ig"])


def test_gradients_reach_heads_and_the_trained_location_encoder():
    m = _model().train()
    m.loss(_data())["loss"].backward()
    for mod in (m.image_head, m.text_head, m.location_encoder):
        grads = [p.grad for p in mod.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
    for p in (m.logit_scale, m.text_logit_scale, m.text_gps_logit_scale):
        assert p.grad is not None
    # a frozen encoder gets none
    f = _model(location_encoder="geoclip", location_options={"n_freq": 16, "hidden": 32},
               train_location_encoder=False, queue_size=4)  # fmt: skip
    f.train().loss(_data())["loss"].backward()
    assert all(p.grad is None for p in f.location_encoder.parameters())


def test_hardest_negative_triplet_picks_the_hardest_valid_negative():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    pos = a.clone()
    cand = F.normalize(torch.tensor([[1.0, 0.1], [0.9, 0.1], [-1.0, 0.0]]), dim=1)
    # anchor 0: hardest other candidate is 1 (cos ≈ 1) -> loss ≈ margin
    loss = hardest_negative_triplet(a[:1].repeat(3, 1), pos[:1].repeat(3, 1), cand, 0.5)
    assert loss.item() > 0.4
    # the same, but candidate 1 is the same place as anchor 0: the next hardest counts
    invalid = torch.zeros(3, 3, dtype=torch.bool)
    invalid[:, 1] = True
    l2 = hardest_negative_triplet(a[:1].repeat(3, 1), pos[:1].repeat(3, 1), cand, 0.5, invalid)
    assert l2.item() < loss.item()
    # far-apart negatives and perfect positives: no loss
    far = F.normalize(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), dim=1)
    assert hardest_negative_triplet(far, far, -far.flip(0), 0.5).item() == 0.0
    near = same_place(torch.tensor([[48.85, 2.35], [48.851, 2.351], [35.7, 139.7]]), 1.0)
    assert near.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_clip_loss_ignores_pairs_marked_the_same():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    scale = torch.tensor(2.0)
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert clip_loss(a, a, scale, same).item() < clip_loss(a, a, scale).item()


def test_loss_decreases_and_overfits_a_tiny_set():
    m = _model(dropout=0.0, gps_noise_km=0.0)
    b = _data(10)
    start, final = overfit(m, b, steps=60)
    with torch.no_grad():
        img = F.normalize(m.encode_image(b["image_emb"]), dim=1)
        loc = F.normalize(m.encode_location(b["gps"]), dim=1)
    assert final["loss"].item() < 0.3 * start, (start, final["loss"].item())
    assert torch.equal((img @ loc.T).argmax(dim=1), torch.arange(10))


def test_embed_image_is_deterministic_and_batch_independent():
    m = _model().eval()
    x = _data(6)["image_emb"]
    whole = m.embed_image(x)
    single = torch.cat([m.embed_image(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=1e-5)
    assert torch.equal(whole, m.embed_image(x))
    # the location embeddings are batch-independent too (anchored location attention)
    gps = _data(6)["gps"]
    with torch.no_grad():
        loc = m.encode_location(gps)
        loc1 = torch.cat([m.encode_location(gps[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(loc, loc1, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_through_load_model(tmp_path):
    m = _model()
    m.train().loss(_data())  # any state
    m.eval()
    path = tmp_path / "tg.safetensors"
    m.save(path)
    back = load_model(path)
    assert isinstance(back, TransGeoCLIP) and back.config == m.config
    x = _data(4)
    torch.testing.assert_close(back.embed_image(x["image_emb"]), m.embed_image(x["image_emb"]))
    with torch.no_grad():
        torch.testing.assert_close(back.encode_location(x["gps"]), m.encode_location(x["gps"]))
    gal = back.gallery(random_coords(200, seed=2), cache_dir=tmp_path, progress=False)
    coords, probs = back.search_gallery(x["image_emb"], None, gal, k=3)
    assert coords.shape == (4, 3, 2) and probs.shape == (4, 3)
    with pytest.raises(InputError, match="transgeoclip"):
        from geolocus.models.dualgeo import DualGeo

        DualGeo.load(path)
