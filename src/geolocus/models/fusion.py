"""Token-level building blocks of DualGeo: positions, the segmentation-view CNN, and the
bidirectional cross-attention that fuses the RGB and segmentation views."""

from __future__ import annotations

import torch
from torch import nn


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position codes ``(h * w, dim)`` (row-major, as the tokens).

    Fixed rather than learned so one model takes any token grid (7x7, 8x8, 9x9
    for EfficientNet-Lite0/1/2) and spends no parameters on ~2000 training photos.
    """
    if dim % 4:
        raise ValueError("position code width must be divisible by 4")
    q = dim // 4
    freq = 1.0 / (10000.0 ** (torch.arange(q, dtype=torch.float32) / q))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    y = ys.reshape(-1, 1) * freq
    x = xs.reshape(-1, 1) * freq
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)


class SegmentationView(nn.Module):
    """A small CNN over the one-hot class map at token resolution -> ``(B, N, width)``.

    Two 3x3 convolutions (``classes → channels → channels``): the first sees
    which classes surround each patch (layout: sky above buildings, road
    beside vegetation), the second widens that to a 5x5 neighbourhood; then a
    linear map to the fusion width. Narrow (64 channels) because on a CPU a
    256-channel 3x3 convolution would cost more than the rest of the model.
    """

    def __init__(self, classes: int, width: int, channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(classes, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.proj = nn.Linear(channels, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, one_hot: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, k = one_hot.shape
        x = one_hot.transpose(1, 2).reshape(b, k, *grid)
        x = nn.functional.gelu(self.conv2(nn.functional.gelu(self.conv1(x))))
        return self.norm(self.proj(x.flatten(2).transpose(1, 2)))


class BiCrossAttention(nn.Module):
    """RGB tokens attend to segmentation tokens and vice versa, in parallel.

    ``rgb' = LN(rgb + MHA(q=rgb, k=v=seg))`` and ``seg' = LN(seg + MHA(q=seg,
    k=v=rgb))``: each view is enriched by the other, with a residual so that
    neither loses what it had.
    """

    def __init__(self, width: int, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.rgb_from_seg = nn.MultiheadAttention(width, heads, batch_first=True)
        self.seg_from_rgb = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_rgb = nn.LayerNorm(width)
        self.norm_seg = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, rgb: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, _ = self.rgb_from_seg(rgb, seg, seg, need_weights=False)
        s, _ = self.seg_from_rgb(seg, rgb, rgb, need_weights=False)
        return self.norm_rgb(rgb + self.drop(r)), self.norm_seg(seg + self.drop(s))


class SelfAttention(nn.Module):
    """``LN(x + MHA(x, x, x))``: the ablation's stand-in for the cross-attention (same size)."""

    def __init__(self, width: int, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(x, x, x, need_weights=False)
        return self.norm(x + self.drop(a))
