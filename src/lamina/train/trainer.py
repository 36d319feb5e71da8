"""Segment-by-segment training with carried state (truncated BPTT).

``batch_size`` parallel streams are read in consecutive ``seq_len`` segments;
the state after segment n is detached and becomes the initial state of
segment n+1, so Transformer-XL memory, RNN hidden states and HGRN states all
train in this one loop. With ``bptt_segments = k > 1`` one optimizer step
reads k consecutive segments, their mean loss is back-propagated through all
k (the state is carried between them with its graph, as the Recurrent Memory
Transformer's BPTT unroll), and the state is detached only after the k-th;
a step then costs k segments of compute and holds k segments' activations.
AdamW with linear warmup and cosine decay, gradient clipping, bf16 autocast
on CUDA, periodic evaluation, JSONL metrics and atomic checkpoints. The data position is a pure function of the step, and the
checkpoint carries optimizer, scheduler, RNG and stream state, so a resumed
run continues bit for bit on CPU.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lamina.config import Config
from lamina.data import RandomWindows, canonical_corpus, StreamBatcher, build_tokenizer, encode_split, load_corpus, metric_unit, tokenizer_from_dict
from lamina.errors import LaminaError
from lamina.eval import EvalStopped, autocast_for, evaluate, format_metric, metric_value
from lamina.eval.metrics import UNIT_METRIC
from lamina.mixers import detach_state
from lamina.models import build_model
from lamina.progress import Progress
from lamina.train.budget import check_fits, config_vocab_size
from lamina.train.checkpoint import LATEST, Checkpoint, load_checkpoint, save_checkpoint
from lamina.train.run_dir import RunDir, write_error


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    valid_nats: float | None
    unit: str
    interrupted: bool
    model: torch.nn.Module  # LM, HAT or Megabyte (lamina.models.build_model)
    tokenizer: object


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a LaminaError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise LaminaError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LaminaError(f"the device is {name} but CUDA is not available here; use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise LaminaError(f"the device is {name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only (not on norms, biases or gate vectors)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )


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


class _StopFlag:
    """Ctrl-C (or SIGTERM) asks the loop to save and stop at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a fresh run: refuse one that holds a saved run unless ``overwrite``, which
    clears its checkpoints and curve first, so a fresh run never mixes with, or silently replaces, another."""
    saved = sorted(run_dir.glob("ckpt-*")) if run_dir.is_dir() else []
    if saved and not overwrite:
        raise LaminaError(
            f"{run_dir} already holds a run (last saved: {saved[-1].name}); continue it with "
            f"`lamina train --resume {run_dir}`, start a new one with train.out_dir=DIR, or replace it with --overwrite"
        )
    for path in saved:
        shutil.rmtree(path)
    for name in (LATEST, "metrics.jsonl"):
        (run_dir / name).unlink(missing_ok=True)


def run_dir_for(cfg: Config, resumed: Checkpoint | None) -> Path:
    """Where a run writes: ``train.out_dir``, or ``runs/<preset>``; a resumed run writes into the run directory
    it was resumed from (a copied run stays a copy) unless ``train.out_dir`` was changed from the saved one."""
    out_dir = cfg.train.out_dir
    if resumed is not None and (out_dir is None or out_dir == resumed.config.train.out_dir):
        return resumed.path.parent
    return Path(out_dir or f"runs/{cfg.preset}")


def _eval_tokens(t, final: bool, trained_since: int) -> int:
    """Tokens a validation scores (0: all): ``eval_tokens``, but a periodic one no more than were trained since
    the previous one, so validation never dominates a short run; the final one is always whole."""
    if final:
        return t.eval_tokens
    return min(t.eval_tokens, trained_since) if t.eval_tokens else trained_since


def train(cfg: Config, resume: str | Path | Checkpoint | None = None, log=print, overwrite: bool = False) -> TrainResult:
    """Train (or resume: a run or checkpoint directory, or one loaded with its trainer state) a run described by
    ``cfg``; returns the final model and metrics.

    The run directory (:func:`run_dir_for`) is locked for the whole run (:class:`RunDir`). A fresh run's
    directory must not hold another saved run unless ``overwrite`` (see :func:`claim_run_dir`)."""
    t = cfg.train
    device = pick_device(t.device)
    check_fits(cfg, cfg.model.vocab_size or None, device)  # on the meta device: a run too big stops before any data
    cfg.data.corpus = canonical_corpus(cfg.data.corpus)  # a path is saved absolute: eval finds it from anywhere
    ckpt = resume if isinstance(resume, Checkpoint) or not resume else load_checkpoint(resume, with_trainer_state=True)
    if ckpt is not None and ckpt.trainer_state is None:
        raise ValueError("resuming needs the trainer state: load the checkpoint with with_trainer_state=True")
    run_dir = run_dir_for(cfg, ckpt)
    with RunDir(run_dir, log):
        if not ckpt or run_dir != ckpt.path.parent:
            claim_run_dir(run_dir, overwrite)
        return _train(cfg, ckpt, run_dir, device, log)


def _train(cfg: Config, ckpt: Checkpoint | None, run_dir: Path, device: torch.device, log) -> TrainResult:
    t = cfg.train
    corpus = load_corpus(cfg.data.corpus, cfg.data.data_dir, cfg.data.download)
    log(corpus.describe())
    tokenizer = tokenizer_from_dict(ckpt.tokenizer) if ckpt else build_tokenizer(cfg.data.tokenizer, corpus)
    if not cfg.model.vocab_size and tokenizer.vocab_size != config_vocab_size(cfg):  # a word vocabulary: again
        check_fits(cfg, tokenizer.vocab_size, device)
    unit = metric_unit(corpus, tokenizer)
    train_tokens = encode_split(tokenizer, corpus, "train")
    valid_tokens = encode_split(tokenizer, corpus, "valid")
    carry = t.carry_state and t.sampling == "streams"
    if t.sampling == "random":
        batcher = RandomWindows(train_tokens, t.batch_size, t.seq_len, t.seed, name=f"train split of {cfg.data.corpus}")
    else:
        batcher = StreamBatcher(train_tokens, t.batch_size, t.seq_len, name=f"train split of {cfg.data.corpus}")

    torch.manual_seed(t.seed)
    random.seed(t.seed)
    model = build_model(cfg.model, cfg.model.vocab_size or tokenizer.vocab_size).to(device)
    optimizer = make_optimizer(model, t, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.steps, t.min_lr_ratio)
    )
    step, state = 0, None
    k = t.bptt_segments
    if ckpt:
        model.load_state_dict(ckpt.model_state)
        trainer_state = ckpt.trainer_state
        optimizer.load_state_dict(trainer_state["optimizer"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        _set_rng_state(trainer_state["rng"])
        step = trainer_state["step"]
        state = _to_device(trainer_state["stream_state"], device)
        log(f"resumed {ckpt.path} at step {step}")
    log(model.describe())
    per_step = f"{k} segments of " if k > 1 else ""
    log(f"training on {device}: {t.steps} steps of {per_step}{t.batch_size}x{t.seq_len} tokens -> {run_dir}")

    forward = torch.compile(model) if t.compile else model
    metrics_file = run_dir / "metrics.jsonl"

    def save() -> Path:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "step": step,
            "data_position": step * k % len(batcher) if carry else step * k,
            "stream_state": _to_device(state, torch.device("cpu")),
        }
        return save_checkpoint(run_dir, step, cfg, tokenizer.to_dict(), model.state_dict(), trainer_state, t.keep_checkpoints)

    def record(row: dict) -> None:
        try:
            with open(metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as err:
            raise write_error(metrics_file, err, "write") from None

    def run_eval(max_tokens: int) -> float:
        result = evaluate(
            model, valid_tokens, batch_size=t.batch_size, tgt_len=t.seq_len, carry=t.carry_state,
            max_tokens=max_tokens, device=device, precision=t.precision, name=f"valid split of {cfg.data.corpus}",
            stop=lambda: stop.requested,
        )
        record({"step": step, "valid_loss": result.nats, "valid_tokens": result.tokens, "elapsed": time.time() - start})
        log(f"step {step}: valid {format_metric(unit, result.nats)} (loss {result.nats:.4f} nats/token, {result.tokens:,} tokens)")
        return result.nats

    start = time.time()
    valid_nats, interrupted = None, False
    progress = Progress(t.steps, "training", initial=step)
    window_tokens, window_start, last_eval_step = 0, time.time(), step
    model.train()
    with _StopFlag() as stop:
        while step < t.steps:
            losses = []
            for segment in range(step * k, step * k + k):  # one segment unless train.bptt_segments > 1
                position = segment % len(batcher) if carry else segment
                if position == 0 or not carry:
                    state = None  # a new pass over the streams starts empty
                x, y = (v.to(device, non_blocking=True) for v in batcher.segment(position))
                with autocast_for(device, t.precision):
                    logits, state = forward(x, state)
                losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
            loss = losses[0] if k == 1 else torch.stack(losses).mean()
            if not torch.isfinite(loss):
                saved = sorted(run_dir.glob("ckpt-*"))
                way_out = (f"then --resume {run_dir} from its last checkpoint ({saved[-1].name})" if saved
                           else "then train again (no checkpoint was saved yet)")
                raise LaminaError(
                    f"the loss became {loss.item()} at step {step + 1}; training stopped. "
                    f"Lower train.lr or raise train.warmup_steps, {way_out}"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state = detach_state(state)
            step += 1
            window_tokens += k * x.numel()

            figures = {}
            if step % t.log_every == 0 or step == t.steps:
                now = time.time()
                tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                nats = loss.item()
                record({"step": step, "loss": nats, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s, "elapsed": now - start})
                figures = {"loss": f"{nats:.3f}", UNIT_METRIC[unit]: f"{metric_value(unit, nats):.3f}", "tok/s": f"{tokens_per_s:,.0f}"}
                window_tokens, window_start = 0, now
            progress.update(1, **figures)
            out_of_time = t.max_minutes is not None and time.time() - start > 60 * t.max_minutes
            if not stop.requested and (step % t.eval_every == 0 or step == t.steps or out_of_time):
                try:
                    trained = (step - last_eval_step) * k * t.batch_size * t.seq_len
                    valid_nats = run_eval(_eval_tokens(t, step == t.steps or out_of_time, trained))
                    last_eval_step = step
                except EvalStopped:
                    valid_nats = None
            if step % t.save_every == 0 or step == t.steps or out_of_time or stop.requested:
                path = save()
                if stop.requested or out_of_time:
                    reason = "interrupted" if stop.requested else f"time limit of {t.max_minutes} minutes reached"
                    log(f"{reason} at step {step}; saved {path}; continue with: lamina train --resume {run_dir}")
                    interrupted = stop.requested
                    break
    progress.close()
    if valid_nats is None and not interrupted:  # resumed a finished run
        valid_nats = run_eval(t.eval_tokens)
    return TrainResult(run_dir, step, valid_nats, unit, interrupted, model, tokenizer)


def _to_device(state, device: torch.device):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return type(state)(_to_device(s, device) for s in state)
