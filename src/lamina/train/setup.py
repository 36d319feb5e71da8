"""A training run's setup: its data, model, optimizer and schedule, fresh or resumed from a checkpoint, and the
checkpoint that saves it again.

:func:`setup` gives a :class:`TrainRun`, everything the loop (:mod:`lamina.train.trainer`) carries from one step
to the next. The data position is a pure function of the step, and a checkpoint carries the optimizer, schedule,
RNG and stream state, so a resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from lamina.config import Config
from lamina.data import RandomWindows, StreamBatcher, build_tokenizer, encode_split, load_corpus, metric_unit, tokenizer_from_dict
from lamina.errors import LaminaError
from lamina.mixers.state import flatten_state, restore_state
from lamina.models import build_model, compile_model
from lamina.train.budget import check_fits, config_vocab_size
from lamina.train.checkpoint import Checkpoint, save_checkpoint
from lamina.train.step import Stepper


@dataclass
class TrainRun:
    """A run between two steps: what it reads, what it trains and how, where it is, and where it writes."""

    cfg: Config
    run_dir: Path
    device: torch.device
    tokenizer: object  # lamina.data.Tokenizer
    unit: str  # what the metric is per: byte, char or word (lamina.data.metric_unit)
    batcher: StreamBatcher | RandomWindows
    valid_tokens: torch.Tensor
    model: torch.nn.Module  # LM, HAT or Megabyte (lamina.models.build_model)
    stepper: Stepper
    step: int = 0  # optimizer steps taken
    state: object = None  # the state carried into the next segment

    @property
    def carry(self) -> bool:
        """Whether the state is carried from one segment to the next (consecutive segments of streams)."""
        return self.cfg.train.carry_state and self.cfg.train.sampling == "streams"

    def position(self, segment: int) -> int:
        """The batcher's position of the run's ``segment``-th segment: carried streams wrap around their data."""
        return segment % len(self.batcher) if self.carry else segment


def setup(cfg: Config, ckpt: Checkpoint | None, run_dir: Path, device: torch.device, log) -> TrainRun:
    """Load the corpus and tokenizer, build the model, optimizer and schedule, and restore ``ckpt`` (a checkpoint
    loaded with its trainer state) if given."""
    t = cfg.train
    corpus = load_corpus(cfg.data.corpus, cfg.data.data_dir, cfg.data.download)
    log(corpus.describe())
    tokenizer = tokenizer_from_dict(ckpt.tokenizer) if ckpt else build_tokenizer(cfg.data.tokenizer, corpus)
    if not cfg.model.vocab_size and tokenizer.vocab_size != config_vocab_size(cfg):  # a word vocabulary: again
        check_fits(cfg, tokenizer.vocab_size, device)
    unit = metric_unit(corpus, tokenizer)
    train_tokens = encode_split(tokenizer, corpus, "train")
    valid_tokens = encode_split(tokenizer, corpus, "valid")
    if t.sampling == "random":
        batcher = RandomWindows(train_tokens, t.batch_size, t.seq_len, t.seed, name=f"train split of {cfg.data.corpus}")
    else:
        batcher = StreamBatcher(train_tokens, t.batch_size, t.seq_len, name=f"train split of {cfg.data.corpus}")

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    model = build_model(cfg.model, cfg.model.vocab_size or tokenizer.vocab_size).to(device)
    stepper = Stepper(model, t, device, forward=compile_model(model) if t.compile else model)
    run = TrainRun(cfg, run_dir, device, tokenizer, unit, batcher, valid_tokens, model, stepper)
    if ckpt:
        model.load_state_dict(ckpt.model_state)
        trainer_state = ckpt.trainer_state
        stepper.load_state_dict(trainer_state)
        _set_rng_state(trainer_state["rng"])
        run.step = trainer_state["step"]
        run.state = _saved_stream_state(trainer_state["stream_state"], model.init_state(t.batch_size, device), ckpt.path)
        log(f"resumed {ckpt.path} at step {run.step}")
    log(model.describe())
    k = t.bptt_segments
    per_step = f"{k} segments of " if k > 1 else ""
    log(f"training on {device}: {t.steps} steps of {per_step}{t.batch_size}x{t.seq_len} tokens -> {run_dir}")
    return run


def save(run: TrainRun) -> Path:
    """Checkpoint the run as it stands (model, optimizer, schedule, RNG, data position and carried state)."""
    t = run.cfg.train
    trainer_state = {
        **run.stepper.state_dict(),
        "rng": _rng_state(),
        "step": run.step,
        "data_position": run.position(run.step * t.bptt_segments),
        "stream_state": {name: v.cpu() for name, v in flatten_state(run.state).items()},  # by name, no classes
    }
    return save_checkpoint(run.run_dir, run.step, run.cfg, run.tokenizer.to_dict(), run.model.state_dict(),
                           trainer_state, t.keep_checkpoints)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _saved_stream_state(saved, template, ckpt):
    """The carried state saved by name in a checkpoint, shaped like ``template`` (None: the streams start empty).

    A state saved by another layout (an older lamina, another config) is a LaminaError naming what differs.
    """
    if not saved:
        return None
    try:
        return restore_state(saved, template)
    except LaminaError as err:
        raise LaminaError(f"checkpoint {ckpt} cannot resume its carried state: {err}; "
                          "evaluate or generate from it, or train again") from None
