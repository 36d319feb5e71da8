"""``lamina train``: segment-by-segment training with carried state (truncated BPTT).

``batch_size`` parallel streams are read in consecutive ``seq_len`` segments;
the state after segment n is detached and becomes the initial state of
segment n+1, so Transformer-XL memory, RNN hidden states and HGRN states all
train in this one loop. With ``bptt_segments = k > 1`` one optimizer step
reads k consecutive segments, their mean loss is back-propagated through all
k (the state is carried between them with its graph, as the Recurrent Memory
Transformer's BPTT unroll), and the state is detached only after the k-th;
a step then costs k segments of compute and holds k segments' activations.

The run is made of parts: :func:`lamina.train.setup.setup` (data, model, optimizer, schedule, resume),
:func:`train_step` (one optimizer step: forward, backward, clipping and AdamW through
:class:`lamina.train.step.Stepper`, with the state carried and a non-finite loss stopped), and
:func:`validate` and :func:`lamina.train.setup.save` (evaluate, checkpoint). :func:`train` runs them with
periodic evaluation, JSONL metrics, atomic checkpoints, a locked run directory and Ctrl-C/SIGTERM handling.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lamina.config import Config
from lamina.data import canonical_corpus
from lamina.errors import LaminaError
from lamina.eval import EvalStopped, evaluate, format_metric, metric_value
from lamina.eval.metrics import UNIT_METRIC
from lamina.mixers import detach_state
from lamina.progress import Progress
from lamina.runtime import pick_device
from lamina.train.budget import check_fits
from lamina.train.checkpoint import LATEST, Checkpoint, load_checkpoint
from lamina.train.run_dir import RunDir, write_error
from lamina.train.setup import TrainRun, save, setup


@dataclass
class TrainResult:
    """What :func:`train` gives back: where the run is, how far it got, its final validation and its model."""

    run_dir: Path
    step: int
    valid_nats: float | None
    unit: str
    interrupted: bool
    model: torch.nn.Module  # LM, HAT or Megabyte (lamina.models.build_model)
    tokenizer: object


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


def train_step(run: TrainRun) -> tuple[torch.Tensor, int]:
    """One optimizer step over ``train.bptt_segments`` consecutive segments with the state carried through them
    (a new pass over the streams, or every segment without carried state, starts empty); returns the loss and
    the tokens read.

    A loss that is not finite stops the run with a LaminaError that says how to go on."""
    k = run.cfg.train.bptt_segments
    losses, tokens = [], 0
    for segment in range(run.step * k, run.step * k + k):  # one segment unless train.bptt_segments > 1
        position = run.position(segment)
        if position == 0 or not run.carry:
            run.state = None  # a new pass over the streams starts empty
        x, y = (v.to(run.device, non_blocking=True) for v in run.batcher.segment(position))
        loss, run.state = run.stepper.loss(x, y, run.state)
        losses.append(loss)
        tokens += x.numel()
    loss = losses[0] if k == 1 else torch.stack(losses).mean()
    if not torch.isfinite(loss):
        saved = sorted(run.run_dir.glob("ckpt-*"))
        way_out = (f"then --resume {run.run_dir} from its last checkpoint ({saved[-1].name})" if saved
                   else "then train again (no checkpoint was saved yet)")
        raise LaminaError(
            f"the loss became {loss.item()} at step {run.step + 1}; training stopped. "
            f"Lower train.lr or raise train.warmup_steps, {way_out}"
        )
    run.stepper.update(loss)
    run.state = detach_state(run.state)
    run.step += 1
    return loss, tokens


def record(run: TrainRun, row: dict) -> None:
    """Append ``row`` to the run's ``metrics.jsonl``."""
    metrics_file = run.run_dir / "metrics.jsonl"
    try:
        with open(metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as err:
        raise write_error(metrics_file, err, "write") from None


def validate(run: TrainRun, max_tokens: int, elapsed: float, log, stop=None) -> float:
    """Score ``max_tokens`` (0: all) of the validation split with the training's segments and carried state;
    record and log the loss and return it. ``stop()`` can end it between segments (:class:`EvalStopped`)."""
    t = run.cfg.train
    result = evaluate(
        run.model, run.valid_tokens, batch_size=t.batch_size, tgt_len=t.seq_len, carry=t.carry_state,
        max_tokens=max_tokens, device=run.device, precision=t.precision, name=f"valid split of {run.cfg.data.corpus}",
        stop=stop,
    )
    record(run, {"step": run.step, "valid_loss": result.nats, "valid_tokens": result.tokens, "elapsed": elapsed})
    log(f"step {run.step}: valid {format_metric(run.unit, result.nats)} "
        f"(loss {result.nats:.4f} nats/token, {result.tokens:,} tokens)")
    return result.nats


def _train(cfg: Config, ckpt: Checkpoint | None, run_dir: Path, device: torch.device, log) -> TrainResult:
    t = cfg.train
    k = t.bptt_segments
    run = setup(cfg, ckpt, run_dir, device, log)
    start = time.time()
    valid_nats, interrupted = None, False
    progress = Progress(t.steps, "training", initial=run.step)
    window_tokens, window_start, last_eval_step = 0, time.time(), run.step
    run.model.train()
    with _StopFlag() as stop:
        while run.step < t.steps:
            loss, tokens = train_step(run)
            step = run.step
            window_tokens += tokens

            figures = {}
            if step % t.log_every == 0 or step == t.steps:
                now = time.time()
                tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                nats = loss.item()
                record(run, {"step": step, "loss": nats, "lr": run.stepper.lr, "tokens_per_s": tokens_per_s,
                             "elapsed": now - start})
                figures = {"loss": f"{nats:.3f}", UNIT_METRIC[run.unit]: f"{metric_value(run.unit, nats):.3f}",
                           "tok/s": f"{tokens_per_s:,.0f}"}
                window_tokens, window_start = 0, now
            progress.update(1, **figures)
            out_of_time = t.max_minutes is not None and time.time() - start > 60 * t.max_minutes
            if not stop.requested and (step % t.eval_every == 0 or step == t.steps or out_of_time):
                try:
                    trained = (step - last_eval_step) * k * t.batch_size * t.seq_len
                    max_tokens = _eval_tokens(t, step == t.steps or out_of_time, trained)
                    valid_nats = validate(run, max_tokens, time.time() - start, log, stop=lambda: stop.requested)
                    last_eval_step = step
                except EvalStopped:
                    valid_nats = None
            if step % t.save_every == 0 or step == t.steps or out_of_time or stop.requested:
                path = save(run)
                if stop.requested or out_of_time:
                    reason = "interrupted" if stop.requested else f"time limit of {t.max_minutes} minutes reached"
                    log(f"{reason} at step {step}; saved {path}; continue with: lamina train --resume {run_dir}")
                    interrupted = stop.requested
                    break
    progress.close()
    if valid_nats is None and not interrupted:  # resumed a finished run
        valid_nats = validate(run, t.eval_tokens, time.time() - start, log, stop=lambda: stop.requested)
    return TrainResult(run_dir, run.step, valid_nats, run.unit, interrupted, run.model, run.tokenizer)
