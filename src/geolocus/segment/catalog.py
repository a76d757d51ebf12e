"""Segmenter weights known to geolocus (registered in :mod:`geolocus.weights`; no torch)."""

from __future__ import annotations

from geolocus.weights import WeightsInfo, hf_cache, register_weights, user_weights

SEGFORMER_ADE = "segformer-b0-ade"
SEGFORMER_ADE_ID = "nvidia/segformer-b0-finetuned-ade-512-512"

register_weights(
    WeightsInfo(
        name=SEGFORMER_ADE,
        kind="segmenter",
        source=f"hub:{SEGFORMER_ADE_ID}",
        description="SegFormer-B0 scene parser, ADE20K (150 classes), 512x512 input",
        license="NVIDIA Source Code License for SegFormer (non-commercial)",
        locate=lambda: user_weights(SEGFORMER_ADE) or hf_cache(SEGFORMER_ADE_ID),
    )
)
