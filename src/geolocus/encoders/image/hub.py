"""Hub backbones through ``transformers``: CLIP ViT-L/14, StreetCLIP, DINOv2 S/B/L.

Weights arrive only through ``geolocus download NAME`` (:mod:`geolocus.downloads`) or a
copy made by hand. ``pretrained=False`` builds the architecture from a config written
here, with random weights, so tests and timing need no download. ``pretrained=True``
loads, in order, from ``weights=PATH``, ``$GEOLOCUS_WEIGHTS_DIR/<name>`` and the Hugging
Face cache; when none has them it raises :class:`ModelUnavailableError` naming the
download command.

Features:

- CLIP / StreetCLIP: ``embedding`` is the projected 768-d image feature
  (``image_embeds``, what DualGeo, G3, GeoCLIP and Img2Loc use); ``tokens`` are
  the last layer's 1024-d patch tokens (16x16 at 224 px, 24x24 at 336 px).
- DINOv2: ``embedding`` is the CLS token after the final layer norm
  (``pooler_output``); ``tokens`` are the normalised patch tokens (16x16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from geolocus.encoders.image.base import (
    CLIP_MEAN,
    CLIP_STD,
    ImageEncoder,
    ImageFeatures,
    Preprocessing,
    file_identity,
    random_identity,
    square_grid,
)
from geolocus.encoders.image.catalog import EncoderSpec
from geolocus.errors import ModelUnavailableError
from geolocus.weights import WEIGHTS_DIR_ENV, download_hint

# Architectures of the published checkpoints (their config.json, written out).
_CLIP_L14 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=224,
    projection_dim=768,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
_DINOV2 = dict(patch_size=14, image_size=518, mlp_ratio=4, layerscale_value=1.0, qkv_bias=True)
CONFIGS: dict[str, tuple[str, dict]] = {
    "clip-vit-l14": ("clip", _CLIP_L14),
    "streetclip": ("clip", {**_CLIP_L14, "image_size": 336}),
    "dinov2-small": (
        "dinov2",
        {**_DINOV2, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    ),
    "dinov2-base": (
        "dinov2",
        {**_DINOV2, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    ),
    "dinov2-large": (
        "dinov2",
        {**_DINOV2, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    ),
}


class HubEncoder(ImageEncoder):
    """A ``transformers`` vision model behind the :class:`ImageEncoder` interface."""

    def __init__(self, spec: EncoderSpec, family: str, model: torch.nn.Module, weights_id: str):
        super().__init__()
        self.name = spec.name
        self.family = family
        self.model = model
        cfg: Any = model.config  # a transformers config
        self.token_dim = int(cfg.hidden_size)
        self.weights_id = weights_id
        if family == "clip":
            self.image_size = int(cfg.image_size)
            self.dim = int(cfg.projection_dim)
            self.preprocessing = Preprocessing(
                size=self.image_size, resize=self.image_size, mean=CLIP_MEAN, std=CLIP_STD
            )
            self.pooling = "clip-projection"
        else:
            self.image_size = 224
            self.dim = int(cfg.hidden_size)
            self.preprocessing = Preprocessing(size=224, resize=256)
            self.pooling = "cls"

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        out = self.model(pixel_values=pixels)
        tokens = out.last_hidden_state[:, 1:]
        emb = out.image_embeds if self.family == "clip" else out.pooler_output
        return ImageFeatures(embedding=emb, tokens=tokens, grid=square_grid(tokens.shape[1]))


def _classes(family: str):
    try:
        from transformers import (
            CLIPVisionConfig,
            CLIPVisionModelWithProjection,
            Dinov2Config,
            Dinov2Model,
        )
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ModelUnavailableError(
            "hub backbones need transformers: pip install 'geolocus[hub]'"
        ) from None
    hf_logging.disable_progress_bar()
    if family == "clip":
        return CLIPVisionConfig, CLIPVisionModelWithProjection
    return Dinov2Config, Dinov2Model


def build(
    spec: EncoderSpec,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    **overrides,
) -> HubEncoder:
    """A hub backbone; ``overrides`` change the random-weight config (tests shrink it)."""
    family, base = CONFIGS[spec.name]
    config_cls, model_cls = _classes(family)
    if not pretrained:
        model = model_cls(config_cls(**{**base, **overrides}))
        return HubEncoder(spec, family, model.eval(), random_identity())
    if overrides:
        raise ValueError("config overrides apply to pretrained=False only")
    local = _local_folder(spec, weights)
    try:
        model = model_cls.from_pretrained(str(local), local_files_only=True)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelUnavailableError(f"cannot load {spec.name} from {local}: {msg}") from None
    return HubEncoder(spec, family, model.eval(), file_identity(local))


def _local_folder(spec: EncoderSpec, weights: str | Path | None = None) -> Path:
    """The folder holding a hub backbone's files on this machine (``weights``,
    ``$GEOLOCUS_WEIGHTS_DIR/<name>`` or the Hugging Face cache), or a one-line error that
    names the command fetching them."""
    model_id = spec.model_id or spec.name
    local = Path(weights) if weights is not None else spec.locate()
    # no command takes a weights path: the folder the environment variable names is the way
    hint = (
        f"put a copy of {model_id} (config.json and weights) in ${WEIGHTS_DIR_ENV}/{spec.name} "
        f"(export {WEIGHTS_DIR_ENV}=a folder of yours; 'geolocus models' shows what is found)"
    )
    if local is None:
        # nothing here downloads: 'geolocus download NAME' is the one way weights arrive
        raise ModelUnavailableError(
            f"weights of {spec.name} ({model_id}) are not on this machine: "
            f"{download_hint(spec.name)}, or {hint}"
        )
    if not (local / "config.json").is_file():
        raise ModelUnavailableError(f"{local}: no config.json of {model_id} there; {hint}")
    return local


#: CLIP ViT-L/14's text tower (its config.json, written out).
_CLIP_L14_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    vocab_size=49408,
    projection_dim=768,
    hidden_act="quick_gelu",
)
#: CLIP's trained temperature, exp(logit_scale), which training clamps at 100.
CLIP_LOGIT_SCALE = 100.0


def clip_text(
    spec: EncoderSpec, *, pretrained: bool = True, **overrides: Any
) -> tuple[torch.nn.Module, Any, float]:
    """The text tower of a hub CLIP (zero-shot prompts): ``(model, tokenizer, logit scale)``.

    ``pretrained=False``: random weights from the config (``overrides`` shrink it) and no
    tokenizer (CLIP's vocabulary ships with the weights); the caller brings one.
    """
    if CONFIGS[spec.name][0] != "clip":
        raise ModelUnavailableError(f"{spec.name} has no text tower")
    try:
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
    except ImportError:
        raise ModelUnavailableError(
            "hub backbones need transformers: pip install 'geolocus[hub]'"
        ) from None
    if not pretrained:
        model = CLIPTextModelWithProjection(CLIPTextConfig(**{**_CLIP_L14_TEXT, **overrides}))
        return model.eval(), None, CLIP_LOGIT_SCALE
    local = _local_folder(spec)
    try:
        model = CLIPTextModelWithProjection.from_pretrained(str(local), local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(local), local_files_only=True)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelUnavailableError(f"cannot load {spec.name} from {local}: {msg}") from None
    return model.eval(), tokenizer, _logit_scale(local)


def _logit_scale(folder: Path) -> float:
    """exp of the checkpoint's ``logit_scale`` (CLIP's 100 when it has none)."""
    from safetensors import safe_open

    f = folder / "model.safetensors"
    if not f.is_file():
        return CLIP_LOGIT_SCALE
    with safe_open(str(f), framework="pt") as st:
        if "logit_scale" not in st.keys():  # noqa: SIM118 - safe_open has no __contains__
            return CLIP_LOGIT_SCALE
        return float(st.get_tensor("logit_scale").float().exp())
