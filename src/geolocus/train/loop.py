"""A small, resumable training loop for the heads that sit on cached backbone features.

The models define ``loss(batch) -> dict`` (with a ``"loss"`` entry, plus any
values worth logging); the loop owns the optimizer (AdamW), the learning-rate
schedule (StepLR, γ 0.87 per epoch as in GeoCLIP/G3), seeding, progress and
checkpoints. A checkpoint is written after every epoch; Ctrl-C stops after the
current step and leaves the last complete epoch's checkpoint, from which
``resume=True`` continues (epochs on cached features are short, so at most
one epoch's work is redone).
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geolocus.train.checkpoint import load_checkpoint, save_checkpoint


@dataclass
class TrainConfig:
    """Optimisation settings (defaults from the GeoCLIP/G3/DualGeo papers where they give one)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-5
    weight_decay: float = 1e-6
    step_size: int = 1  # epochs between learning-rate decays
    gamma: float = 0.87
    seed: int = 0
    grad_clip: float | None = None
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    epochs_done: int
    history: list[dict[str, float]]
    interrupted: bool = False


class _Interrupt:
    """Turn the first Ctrl-C into a flag checked between steps (a second one aborts)."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Any = None

    def __enter__(self) -> _Interrupt:
        def handler(signum, frame):
            if self.flag:
                raise KeyboardInterrupt
            self.flag = True

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread: no handler, Ctrl-C raises as usual
            self._old = None
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def fit(
    model: torch.nn.Module,
    batches: Callable[[int], Iterable[dict[str, Any]]],
    config: TrainConfig,
    checkpoint: str | Path | None = None,
    model_config: dict | None = None,
    resume: bool = False,
    steps_per_epoch: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.epochs`` epochs.

    ``batches(epoch)`` yields the batches of one epoch (so the caller controls
    shuffling with the epoch as seed, which keeps resumed runs reproducible).
    A checkpoint is written after every epoch. ``on_epoch(epoch, record)`` is
    called after each epoch (1-based; e.g. to score a dev set, adding entries
    to ``record``, which then enter the history) before the checkpoint.
    """
    seed_everything(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.step_size, gamma=config.gamma)
    start, history = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt, model, opt, sched)
        start, history = int(state.get("epoch", 0)), list(state.get("history", []))
        if log:
            log(f"resumed from {ckpt} after epoch {start}")
    interrupted = False
    with _Interrupt() as stop:
        for epoch in range(start, config.epochs):
            model.train()
            t_epoch = time.perf_counter()
            sums: dict[str, float] = {}
            n = 0
            it: Iterator = iter(batches(epoch))
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(
                    it,
                    total=steps_per_epoch,
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    leave=False,
                    dynamic_ncols=True,
                )
                it = iter(bar)
            for batch in it:
                out = model.loss(batch)  # type: ignore[operator]  # a geolocus model's loss
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
                n += 1
                if bar is not None:
                    bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
                if stop.flag:
                    break
            if bar is not None:
                bar.close()
            if stop.flag:
                interrupted = True
                if log:
                    log(f"interrupted during epoch {epoch + 1}; checkpoint keeps epoch {epoch}")
                break
            sched.step()
            record = {k: v / max(n, 1) for k, v in sums.items()}
            record["epoch"] = epoch + 1
            record["lr"] = opt.param_groups[0]["lr"]
            record["seconds"] = time.perf_counter() - t_epoch
            if on_epoch is not None:
                was = model.training
                on_epoch(epoch + 1, record)
                model.train(was)
            history.append(record)
            if log:
                log(
                    f"epoch {epoch + 1}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch",))
                )
            if ckpt is not None:
                save_checkpoint(
                    ckpt,
                    model,
                    model_config,
                    opt,
                    sched,
                    {"epoch": epoch + 1, "history": history},
                    train_config=asdict(config),
                )
    done = len(history)
    return TrainResult(epochs_done=done, history=history, interrupted=interrupted)


def minibatches(
    n: int, batch_size: int, epoch: int, seed: int = 0, drop_last: bool = False
) -> Iterator[np.ndarray]:
    """Shuffled index batches for one epoch, reproducible from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        yield order[i : i + batch_size]


def steps(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)
