"""The training loop: learning, checkpoints, resume and interruption."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from geolocus.errors import InputError
from geolocus.train import TrainConfig, fit, load_checkpoint, minibatches, read_config
from geolocus.train.checkpoint import save_checkpoint


class Tiny(torch.nn.Module):
    def __init__(self, kill_at: int | None = None) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.calls = 0
        self.kill_at = kill_at

    def loss(self, batch):
        self.calls += 1
        if self.kill_at is not None and self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGINT)
        pred = self.lin(batch["x"]).squeeze(-1)
        return {"loss": torch.mean((pred - batch["y"]) ** 2)}


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    return x, y


def _batches(x, y, bs=16):
    return lambda epoch: ({"x": x[i], "y": y[i]} for i in minibatches(len(x), bs, epoch))


CFG = TrainConfig(epochs=6, batch_size=16, lr=0.05, gamma=0.9, seed=3)


def test_loss_decreases_and_overfits():
    x, y = _data()
    torch.manual_seed(0)
    m = Tiny()
    cfg = TrainConfig(epochs=40, batch_size=16, lr=0.2, gamma=0.95, seed=3)
    res = fit(m, _batches(x, y), cfg, progress=False)
    losses = [h["loss"] for h in res.history]
    assert res.epochs_done == 40 and losses[-1] < 0.01 * losses[0]
    assert res.history[1]["lr"] == pytest.approx(0.2 * 0.95**2)


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    straight = Tiny()
    fit(straight, _batches(x, y), CFG, checkpoint=tmp_path / "a.safetensors", progress=False)

    torch.manual_seed(0)
    part = Tiny()
    half = TrainConfig(**{**CFG.__dict__, "epochs": 3})
    fit(part, _batches(x, y), half, checkpoint=tmp_path / "b.safetensors", progress=False)
    torch.manual_seed(123)  # a different init: the checkpoint must override it
    resumed = Tiny()
    res = fit(
        resumed,
        _batches(x, y),
        CFG,
        checkpoint=tmp_path / "b.safetensors",
        resume=True,
        progress=False,
    )
    assert res.epochs_done == 6
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_interrupt_keeps_last_epoch_and_resumes(tmp_path):
    x, y = _data()
    ck = tmp_path / "c.safetensors"
    torch.manual_seed(0)
    m = Tiny(kill_at=10)  # 4 steps per epoch: interrupted in epoch 3
    res = fit(m, _batches(x, y), CFG, checkpoint=ck, progress=False)
    assert res.interrupted and res.epochs_done == 2
    m2 = Tiny()
    assert load_checkpoint(ck, m2)["epoch"] == 2
    res = fit(m2, _batches(x, y), CFG, checkpoint=ck, resume=True, progress=False)
    assert not res.interrupted and res.epochs_done == 6


def test_checkpoint_round_trip_and_errors(tmp_path):
    m = Tiny()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m.loss({"x": torch.randn(8, 4), "y": torch.randn(8)})["loss"].backward()
    opt.step()
    p = tmp_path / "m.safetensors"
    save_checkpoint(p, m, {"name": "tiny", "dims": [4, 1]}, opt, progress={"epoch": 1})
    assert read_config(p) == {"name": "tiny", "dims": [4, 1]}
    m2 = Tiny()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.5)
    assert load_checkpoint(p, m2, opt2) == {"epoch": 1}
    torch.testing.assert_close(m.lin.weight, m2.lin.weight)
    assert opt2.param_groups[0]["lr"] == 0.1
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    torch.testing.assert_close(s1["exp_avg"], s2["exp_avg"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        read_config(bad)
    with pytest.raises(InputError, match="does not fit"):
        load_checkpoint(p, torch.nn.Linear(3, 3))


def test_minibatches_are_a_permutation_per_epoch():
    a = np.concatenate(list(minibatches(10, 3, epoch=0)))
    b = np.concatenate(list(minibatches(10, 3, epoch=1)))
    assert sorted(a) == list(range(10)) and sorted(b) == list(range(10))
    assert not np.array_equal(a, b)
    assert np.array_equal(a, np.concatenate(list(minibatches(10, 3, epoch=0))))


def test_eval_mode_restores_the_mode_even_after_an_error():
    import torch

    from geolocus.nn import eval_mode

    m = torch.nn.Dropout(0.5).train()
    with eval_mode(m):
        assert not m.training
    assert m.training
    try:
        with eval_mode(m):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert m.training
    with eval_mode(m.eval()):
        pass
    assert not m.training
