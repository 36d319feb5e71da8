"""Associative recall accuracy: train a small LM on MQAR and score it on held-out examples (Arora et al. 2023,
"Zoology", §3 and appendix E: two layers, cross-entropy on the query positions only, accuracy = the fraction of
queries whose argmax prediction is the paired value; a sweep takes the best learning rate per model and width).

Examples come from :class:`lamina.data.mqar.RecallTask`; the test set uses another seed, as in Zoology. Training
takes the steps of ``lamina train`` (:class:`lamina.train.step.Stepper`). A sweep is a
list of :class:`RecallRun` (task, model, width, learning rate); :func:`run_many` trains them, in parallel worker
processes if asked (several small models share one GPU), and :func:`sweep_cells` groups the results by model and
width for :func:`sweep_table` and :func:`plot_recall`. ``lamina recall --sweep`` runs one task;
``benchmarks/recall_grid.py`` runs several (Zoology's Fig. 2).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lamina.config import Config, TrainConfig, load_config
from lamina.data.mqar import IGNORE, RecallTask, cached_examples, shuffle_labels
from lamina.errors import LaminaError
from lamina.models import build_model
from lamina.plotting import pyplot
from lamina.progress import Progress
from lamina.runtime import autocast_for
from lamina.train.step import Stepper


@dataclass
class RecallResult:
    accuracy: float  # fraction of held-out queries answered with the paired value
    loss: float  # mean training loss over the last epoch, nats per query
    state_size: int  # floats of state at an example's last token (see recall_state_size)
    parameters: int
    seconds: float = 0.0  # wall time of training and scoring


@torch.no_grad()
def recall_accuracy(model, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, device,
                    precision: str = "auto") -> float:
    """Fraction of query positions (labels != -100) whose argmax logit is the label.

    Each example is read from an empty state; bf16 autocast on CUDA as in training (see ``autocast_for``)."""
    model.eval()
    inputs, labels = inputs.to(device), labels.to(device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for i in range(0, len(inputs), batch_size):
        x, y = inputs[i:i + batch_size], labels[i:i + batch_size]
        with autocast_for(device, precision):
            logits, _ = model(x)
        correct += ((logits.argmax(-1) == y) & (y != IGNORE)).sum()
    return correct.item() / (labels != IGNORE).sum().item()


def train_recall(cfg: Config, task: RecallTask, epochs: int, device: torch.device, seed: int = 0,
                 shuffled: bool = False, progress: bool = True) -> RecallResult:
    """Train ``cfg.model`` on ``task``'s train examples for ``epochs`` and score its held-out accuracy.

    The steps are ``lamina train``'s (:class:`lamina.train.step.Stepper` with ``cfg.train``: AdamW, its
    warmup-then-cosine schedule over the run's steps, gradient clipping); each example is a whole sequence read from an empty state, in batches of
    ``cfg.train.batch_size``, reshuffled every epoch. ``shuffled`` trains on :func:`shuffle_labels` (a control).
    The examples move to ``device`` once, the forward pass runs under ``cfg.train.precision``'s autocast (bf16 on
    CUDA by default) with the loss in fp32, and the running loss stays on the device: a GPU step never waits for
    the host to read a value back. ``progress`` shows the steps (:class:`lamina.progress.Progress`); a sweep's
    workers, which log each run as it ends instead, turn it off.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise LaminaError(f"epochs must be a positive integer, got {epochs!r}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    inputs, labels = cached_examples(task, "train", seed)
    if shuffled:
        labels = shuffle_labels(labels, gen)
    inputs, labels = inputs.to(device), labels.to(device)
    model = build_model(cfg.model, task.vocab_size).to(device)
    train = cfg.train
    per_epoch = math.ceil(len(inputs) / train.batch_size)
    stepper = Stepper(model, train, device, total=epochs * per_epoch)
    shown = Progress(epochs * per_epoch, "training on MQAR", show=progress)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        for i in range(0, len(inputs), train.batch_size):
            idx = order[i:i + train.batch_size]
            loss, _ = stepper.loss(inputs[idx], labels[idx])  # IGNORE labels are not scored
            stepper.update(loss)
            loss_sum += loss.detach()
            shown.update()
    shown.close()
    test_inputs, test_labels = cached_examples(task, "test", seed)
    accuracy = recall_accuracy(model, test_inputs, test_labels, train.batch_size, device, train.precision)
    return RecallResult(accuracy, loss_sum.item() / per_epoch, recall_state_size(model, task),
                        model.num_parameters(), time.perf_counter() - start)


def recall_state_size(model, task: RecallTask) -> int:
    """``model.state_size()`` with attention holding a whole example (its own memory plus ``input_seq_len``):
    the state that answers the last query, which Zoology's plots put on the x axis (a KV cache of 2 * L * d per
    attention layer; a recurrent layer's fixed state)."""
    with model.memory(extra=task.input_seq_len):
        return model.state_size()


def recall_train_config(train: TrainConfig, lr: float, batch_size: int, epochs: int, task: RecallTask) -> TrainConfig:
    """``train`` with the recall run's lr and batch size, warmup over the first tenth of the steps."""
    steps = epochs * math.ceil(task.train_examples / batch_size)
    return replace(train, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10))


def recall_config(target: str | None, overrides: list[str] = ()) -> Config:
    """The model to train (:func:`lamina.config.load_config`): a mixer's name gives Zoology's two layers of it; a
    preset (or YAML file) keeps its own layer schedule. Either way ``model.d_model`` starts at 64 so a CPU run
    takes seconds; overrides come last. A byte model, which cannot read MQAR's token ids, is refused."""
    target = target or "attn"
    cfg = load_config(target, ["model.d_model=64", *overrides], layers=2)
    for byte_model in ("hat", "megabyte"):
        if getattr(cfg.model, byte_model) is not None:
            raise LaminaError(f"{target}: model.{byte_model} reads UTF-8 bytes, not MQAR's token ids; "
                              f"pick a mixer or another preset, or add model.{byte_model}=null")
    return cfg


@dataclass(frozen=True)
class RecallRun:
    """One training run of a sweep: ``model`` (a mixer or preset, see :func:`recall_config`) at ``d_model`` and
    learning rate ``lr`` on ``task``."""

    task: RecallTask
    model: str
    d_model: int
    lr: float


def run_recall(run: RecallRun, overrides: list[str], epochs: int, batch_size: int, device, seed: int = 0
               ) -> RecallResult:
    """Train and score one run; ``overrides`` apply before the run's width."""
    cfg = recall_config(run.model, [*overrides, f"model.d_model={run.d_model}"])
    cfg.train = recall_train_config(cfg.train, run.lr, batch_size, epochs, run.task)
    return train_recall(cfg, run.task, epochs, torch.device(device), seed, progress=False)


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def run_many(runs: Iterable[RecallRun], overrides: list[str], epochs: int, batch_size: int, device, seed: int = 0,
             jobs: int = 1, threads: int = 0) -> Iterator[tuple[RecallRun, RecallResult | BaseException]]:
    """Train every run; yield ``(run, result)`` as each finishes, or ``(run, error)`` where one fails, so a long
    sweep keeps the rest. ``jobs > 1`` trains that many at once in spawned worker processes (CUDA needs spawn),
    each with ``threads`` CPU threads (0: the cores shared out among the jobs): small models leave one GPU mostly
    idle, so several share it. ``jobs == 1`` trains in this process, in order, with ``threads`` (0: as it is)."""
    runs = list(runs)
    if jobs < 1:
        raise LaminaError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1:
        _set_threads(threads)
        for run in runs:
            try:
                yield run, run_recall(run, overrides, epochs, batch_size, device, seed)
            except Exception as err:  # noqa: BLE001 -- reported to the caller with its run
                yield run, err
        return
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_set_threads, initargs=(threads,)) as pool:
        pending = {pool.submit(run_recall, run, overrides, epochs, batch_size, str(device), seed): run
                   for run in runs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run = pending.pop(future)
                    error = future.exception()
                    yield run, error if error is not None else future.result()
        finally:
            for future in pending:
                future.cancel()


def describe_run(run: RecallRun, result: RecallResult) -> str:
    """One log line per finished run."""
    return (f"  {run.model:<14} d_model {run.d_model:>5}  lr {run.lr:<8g} accuracy {result.accuracy:.3f}  "
            f"state {result.state_size:,}  {result.seconds:.1f} s")


@dataclass
class SweepCell:
    """One (model, width): the accuracy at every learning rate and the best of them, as Zoology reports."""

    model: str
    d_model: int
    results: dict[float, RecallResult]

    @property
    def best_lr(self) -> float:
        return max(self.results, key=lambda lr: self.results[lr].accuracy)

    @property
    def best(self) -> RecallResult:
        return self.results[self.best_lr]


def sweep_cells(results: dict[RecallRun, RecallResult]) -> list[SweepCell]:
    """Group one task's runs by (model, width), in the order they first appear, learning rates ascending."""
    cells: dict[tuple[str, int], SweepCell] = {}
    for run in sorted(results, key=lambda r: r.lr):
        cells.setdefault((run.model, run.d_model), SweepCell(run.model, run.d_model, {})).results[run.lr] = results[run]
    order = list(dict.fromkeys((run.model, run.d_model) for run in results))
    return [cells[key] for key in order]


def sweep(targets: list[str], overrides: list[str], widths: list[int], lrs: list[float], task: RecallTask,
          epochs: int, batch_size: int, device: torch.device, seed: int = 0, jobs: int = 1, threads: int = 0,
          log=print) -> list[SweepCell]:
    """Train every target at every width and learning rate; one cell per (target, width). ``jobs`` and ``threads``
    as in :func:`run_many`; a failed run stops the sweep with its error."""
    runs = [RecallRun(task, target, width, lr) for target in targets for width in widths for lr in lrs]
    results = {}
    for run, outcome in run_many(runs, overrides, epochs, batch_size, device, seed, jobs, threads):
        if isinstance(outcome, BaseException):
            raise outcome
        results[run] = outcome
        log(describe_run(run, outcome))
    return sweep_cells({run: results[run] for run in runs})


def sweep_table(cells: list[SweepCell], task: RecallTask) -> str:
    """Markdown: one row per (model, width) with its best learning rate's accuracy, and every lr's accuracy
    (a dash where that run has no result, e.g. in an unfinished grid)."""
    lrs = sorted({lr for c in cells for lr in c.results})
    lines = [
        f"MQAR: vocab {task.vocab_size}, length {task.input_seq_len}, {task.num_kv_pairs} key-value pairs, "
        f"power_a {task.power_a}, {task.num_passes} pass(es); {task.train_examples} train and {task.test_examples} "
        "test examples; accuracy on held-out queries at the best learning rate.",
        "",
        "| model | d_model | state size | parameters | best lr | accuracy | "
        + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(lrs),
    ]
    for c in cells:
        by_lr = " | ".join(f"{c.results[lr].accuracy:.3f}" if lr in c.results else "–" for lr in lrs)
        lines.append(f"| {c.model} | {c.d_model} | {c.best.state_size:,} | {c.best.parameters:,} | {c.best_lr:g} | "
                     f"{c.best.accuracy:.3f} | {by_lr} |")
    return "\n".join(lines) + "\n"


def write_sweep(cells: list[SweepCell], task: RecallTask, out: Path) -> str:
    """Write ``recall.md`` (:func:`sweep_table`) and ``recall.png`` (:func:`plot_recall`) into ``out``; returns the
    table."""
    table = sweep_table(cells, task)
    (out / "recall.md").write_text(table, encoding="utf-8")
    plot_recall([(task, cells)], out / "recall.png")
    return table


def plot_recall(panels: list[tuple[RecallTask, list[SweepCell]]], path) -> None:
    """One panel per task: accuracy against state size (log scale), one line per model, points ordered by state
    size, each model one colour in every panel (Zoology, Fig. 2)."""
    plt = pyplot("the recall sweep's plots")
    colours = {model: f"C{i % 10}" for i, model in enumerate(dict.fromkeys(c.model for _, cs in panels for c in cs))}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (task, cells) in zip(axes[0], panels):
        for model in dict.fromkeys(c.model for c in cells):
            mine = sorted((c for c in cells if c.model == model), key=lambda c: c.best.state_size)
            ax.plot([c.best.state_size for c in mine], [c.best.accuracy for c in mine], marker="o", label=model,
                    color=colours[model])
        ax.set_xscale("log")
        ax.set_xlabel("state size (floats per sequence)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"MQAR: length {task.input_seq_len}, {task.num_kv_pairs} kv pairs, vocab {task.vocab_size}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_ylabel("MQAR accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
