"""Training loop, optimizer and schedule, checkpoints."""

from lamina.train.checkpoint import load_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from lamina.train.trainer import TrainResult, lr_factor, pick_device, train

__all__ = ["TrainResult", "load_checkpoint", "load_model", "lr_factor", "pick_device", "resolve_checkpoint", "save_checkpoint", "train"]
