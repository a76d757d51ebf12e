"""DualGeo: two views fused by cross-attention, dual-view InfoNCE, the common model file."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from geolocus.errors import InputError
from geolocus.modelfile import META_MODEL
from geolocus.models import create_model, list_models, load_model
from geolocus.models.dualgeo import DualGeo, DualGeoConfig
from stage1_helpers import overfit, random_coords

SMALL = {
    "backbone": "tiny",
    "embed_dim": 16,
    "token_dim": 16,
    "classes": 4,
    "width": 32,
    "hidden_dim": 32,
    "dim": 32,
    "pretrained_location": False,
    "location_options": {"n_freq": 16, "hidden": 32},
    "queue_size": 8,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 12, t: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, t, 16, generator=g)
    emb = tokens.mean(1) + 0.1 * torch.randn(n, 16, generator=g)
    gps = torch.as_tensor(random_coords(n, seed), dtype=torch.float32)
    return {"image_emb": emb, "tokens": tokens, "gps": gps}


def _model(**kw) -> DualGeo:
    torch.manual_seed(0)
    m = DualGeo(DualGeoConfig(**{**SMALL, **kw}))
    m.prepare(_data(40, seed=9)["tokens"])
    return m


def test_shapes_and_loss_terms():
    m = _model()
    b = _data()
    fused, seg = m.views(b["image_emb"], b["tokens"])
    assert fused.shape == (12, 32) and seg.shape == (12, 32)
    out = m.train().loss(b)
    assert {"loss", "loss_fused", "loss_seg", "acc"} <= set(out)
    torch.testing.assert_close(out["loss"], out["loss_fused"] + out["loss_seg"])
    assert m.retrieval_dim == 32 + 16  # fused ⊕ raw image feature
    v = m.embed_image(b["image_emb"], b["tokens"])
    assert v.shape == (12, 48)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(12))
    # each half is the L2-normalised part, scaled by 1/sqrt(2)
    raw = torch.nn.functional.normalize(b["image_emb"], dim=1) * 0.5**0.5
    torch.testing.assert_close(v[:, 32:], raw)
    with pytest.raises(InputError, match="tokens"):
        m.embed_image(b["image_emb"], None)
    with pytest.raises(InputError):
        m.loss({"image_emb": b["image_emb"], "gps": b["gps"]})
    with pytest.raises(InputError):
        m.views(b["image_emb"], b["tokens"][:, :15])  # not a square grid


def test_gradients_reach_both_views_not_the_frozen_parts():
    m = _model().train()
    m.loss(_data())["loss"].backward()
    for name in ("rgb_in", "seg_view", "fusion", "fused_head", "seg_head"):
        grads = [p.grad for p in getattr(m, name).parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert m.logit_scale.grad is not None and m.seg_logit_scale.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in m.location_encoder.parameters())
    assert not m.location_encoder.training
    assert not any(n.startswith("codebook.") for n, _ in m.named_parameters())  # fixed


def test_without_the_segmentation_view():
    m = _model(use_seg=False)
    assert not hasattr(m, "seg_view") and not hasattr(m, "seg_head")
    out = m.train().loss(_data())
    assert "loss_seg" not in out
    torch.testing.assert_close(out["loss"], out["loss_fused"])


def test_codebook_must_be_fitted():
    torch.manual_seed(0)
    m = DualGeo(DualGeoConfig(**SMALL))
    with pytest.raises(InputError, match="codebook"):
        m.loss(_data())


def test_loss_decreases_and_overfits_a_tiny_set():
    m = _model(queue_size=0, dropout=0.0)
    b = _data(10)
    start, final = overfit(m, b, steps=50)
    with torch.no_grad():
        logits = (
            m.location_query(b["image_emb"], b["tokens"])
            @ torch.nn.functional.normalize(m.encode_location(b["gps"]), dim=1).T
        )
    assert final["loss"].item() < 0.3 * start, (start, final["loss"].item())
    # each photo retrieves its own GPS among the ten
    assert torch.equal(logits.argmax(dim=1), torch.arange(10))


def test_embed_image_is_deterministic_and_batch_independent():
    m = _model().eval()
    b = _data(6)
    whole = m.embed_image(b["image_emb"], b["tokens"])
    again = m.embed_image(b["image_emb"], b["tokens"])
    single = torch.cat([m.embed_image(b["image_emb"][i : i + 1], b["tokens"][i : i + 1])
                        for i in range(6)])  # fmt: skip
    assert torch.equal(whole, again)
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=1e-5)
    m.train()  # embed_image switches to eval mode by itself (no dropout)
    torch.testing.assert_close(m.embed_image(b["image_emb"], b["tokens"]), whole)
    assert m.training


def test_save_load_round_trip_through_load_model(tmp_path):
    m = _model().eval()
    with torch.no_grad():
        m.logit_scale.fill_(2.0)
    path = tmp_path / "dualgeo.safetensors"
    m.save(path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()[META_MODEL] == "dualgeo"
        keys = set(f.keys())
    assert "codebook.centroids" in keys and not any("queue" in k for k in keys)
    back = load_model(path)
    assert isinstance(back, DualGeo) and not back.training
    assert back.backbone == "tiny" and back.retrieval_dim == 48
    assert torch.equal(back.codebook.centroids, m.codebook.centroids)
    b = _data(5)
    torch.testing.assert_close(
        back.embed_image(b["image_emb"], b["tokens"]), m.embed_image(b["image_emb"], b["tokens"])
    )
    assert DualGeo.load(path).config == m.config
    # the codebook can be read out of the model file for the segmenter
    from geolocus.segment import TokenCodebook

    assert torch.equal(TokenCodebook.load(path).centroids, m.codebook.centroids)


def test_gps_prediction_over_a_gallery(tmp_path):
    m = _model().eval()
    gal = m.gallery(random_coords(300, seed=4), cache_dir=tmp_path, progress=False)
    b = _data(3)
    coords, probs = m.search_gallery(b["image_emb"], b["tokens"], gal, k=5)
    assert coords.shape == (3, 5, 2) and probs.shape == (3, 5)
    assert (probs[:, :-1] >= probs[:, 1:]).all()


def test_registry_and_retrieval_modes():
    assert {"geoclip", "dualgeo", "transgeoclip"} <= set(list_models())
    m = create_model("dualgeo", **{**SMALL, "retrieval": "head"})
    m.prepare(_data(40)["tokens"])
    assert m.retrieval_dim == 32
    b = _data(2)
    assert m.embed_image(b["image_emb"], b["tokens"]).shape == (2, 32)
    with pytest.raises(InputError):
        create_model("nope")
    with pytest.raises(InputError, match="unknown"):
        create_model("dualgeo", no_such_field=1)
