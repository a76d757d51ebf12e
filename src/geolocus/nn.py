"""Small helpers for torch modules, shared by encoders, models and training (no torch import)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[Any]:
    """Run a block with ``module`` in eval mode (dropout off), then restore its mode:
    inference from inside a training run must not switch training off for good."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)
