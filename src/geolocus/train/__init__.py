"""Training: a resumable loop with safetensors checkpoints, for heads on cached features."""

from geolocus.train.checkpoint import load_checkpoint, read_config, save_checkpoint
from geolocus.train.loop import TrainConfig, TrainResult, fit, minibatches, seed_everything

__all__ = [
    "TrainConfig",
    "TrainResult",
    "fit",
    "load_checkpoint",
    "minibatches",
    "read_config",
    "save_checkpoint",
    "seed_everything",
]
