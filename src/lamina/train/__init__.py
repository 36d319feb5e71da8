"""The training loop and its parts (setup, step, validate and save), checkpoints."""

from lamina.train.checkpoint import load_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from lamina.train.trainer import TrainResult, train

__all__ = ["TrainResult", "load_checkpoint", "load_model", "resolve_checkpoint", "save_checkpoint", "train"]
