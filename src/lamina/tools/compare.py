"""Train several architectures on one corpus at equal parameters and budget, and write a report.

Each architecture is a preset or a mixer's name (as ``lamina train`` takes). The first one keeps
its ``model.d_model``; every other one gets the width, a multiple of ``width_multiple`` that its
mixers accept, whose parameter count is the nearest to the first's (counted on the ``meta``
device, so no memory is touched). All are trained with the same ``train.batch_size`` and
``train.seq_len`` for the same number of tokens (``train.steps`` from the budget) or the same
wall time (``train.max_minutes``; ``train.steps`` is then only a cap, so the learning rate decays
over the cap rather than over the time actually given). The report directory holds
``report.md`` (one table row per architecture), ``results.json``, the validation curves against
tokens and against wall time as PNG plots, and each run under ``runs/<arch>``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lamina.config import Config, load_config
from lamina.data import build_tokenizer, load_corpus
from lamina.errors import LaminaError
from lamina.plotting import pyplot
from lamina.eval import format_metric, generate, metric_value
from lamina.eval.metrics import UNIT_METRIC
from lamina.models import build_model
from lamina.runtime import pick_device
from lamina.tools.measure import peak_memory, timed, train_step_seconds
from lamina.train import train

# Small enough that three 4-layer byte models train in a few minutes on two CPU cores.
DEFAULTS = ["model.d_model=128", "train.batch_size=8", "train.seq_len=128", "train.eval_tokens=8192",
            "train.warmup_steps=20", "train.log_every=5", "train.keep_checkpoints=1"]
DEFAULT_TOKENS = 8 * 128 * 160
TIME_BUDGET_STEPS = 1_000_000  # the cap on steps under a time budget
EVAL_POINTS = 5  # validation points per run
GENERATE_TOKENS = 128
MAX_WIDTH = 8192


@dataclass
class Budget:
    """Either ``tokens`` per architecture or ``minutes`` of training each (exactly one is set)."""

    tokens: int | None = None
    minutes: float | None = None

    def __post_init__(self):
        if (self.tokens is None) == (self.minutes is None):
            raise LaminaError("give one budget: --tokens N or --minutes M")
        if self.tokens is not None and self.tokens < 1:
            raise LaminaError(f"--tokens must be a positive number of training tokens, got {self.tokens}")
        if self.minutes is not None and not self.minutes > 0:
            raise LaminaError(f"--minutes must be a positive number of minutes, got {self.minutes}")

    def describe(self) -> str:
        return f"{self.tokens:,} training tokens each" if self.tokens else f"{self.minutes:g} minutes of training each"


@dataclass
class Arch:
    """One architecture's config at its matched width, and what training it gave."""

    name: str
    config: Config
    parameters: int
    state_size: int
    vocab: int
    results: dict = field(default_factory=dict)


def with_width(overrides: list[str], d_model: int | None = None) -> list[str]:
    """The comparison's defaults, then ``overrides``, then the width if given: what :func:`load_config` takes."""
    width = [f"model.d_model={d_model}"] if d_model is not None else []
    return DEFAULTS + list(overrides) + width


def count_parameters(cfg: Config, vocab: int) -> int:
    with torch.device("meta"):
        return build_model(cfg.model, vocab).num_parameters()


def matched_width(name: str, overrides: list[str], target: int, vocab: int, width_multiple: int) -> tuple[int, int]:
    """The width (a multiple of ``width_multiple`` that ``name`` accepts) whose parameter count is nearest ``target``.

    Returns ``(d_model, parameters)``. Widths are tried upwards and the search stops at the first
    width above ``target``: parameter counts grow with the width.
    """
    best = None
    for d in range(width_multiple, MAX_WIDTH + 1, width_multiple):
        try:
            count = count_parameters(load_config(name, with_width(overrides, d)), vocab)
        except LaminaError:  # e.g. a width that does not split into the attention heads
            continue
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (d, count)
        if count > target:
            break
    if best is None:
        raise LaminaError(f"{name}: no model.d_model that is a multiple of {width_multiple} up to {MAX_WIDTH} "
                          "builds; check its options (e.g. heads) or give another --width-multiple")
    return best


def plan(names: list[str], overrides: list[str], budget: Budget, width_multiple: int = 32) -> list[Arch]:
    """Configs for ``names`` at matched parameter counts and the same budget (nothing is trained yet)."""
    if len(names) < 2:
        raise LaminaError(f"compare needs at least two architectures (presets or mixer names), got {names}")
    if len(set(names)) != len(names):
        raise LaminaError(f"give each architecture once, got {names}")
    if width_multiple < 1:
        raise LaminaError(f"--width-multiple must be a positive integer, got {width_multiple}")
    configs = [load_config(name, with_width(overrides)) for name in names]
    data = configs[0].data
    for name, cfg in zip(names, configs):
        if (cfg.data.corpus, cfg.data.tokenizer) != (data.corpus, data.tokenizer):
            raise LaminaError(
                f"{name} trains on {cfg.data.corpus} ({cfg.data.tokenizer or 'default'} tokens) but {names[0]} on "
                f"{data.corpus} ({data.tokenizer or 'default'} tokens); compare on one corpus: give data.corpus=... "
                "(and data.tokenizer=...) as an override"
            )
    corpus = load_corpus(data.corpus, data.data_dir, data.download)
    vocab = configs[0].model.vocab_size or build_tokenizer(data.tokenizer, corpus).vocab_size
    target = count_parameters(configs[0], vocab)
    archs = []
    for i, name in enumerate(names):
        cfg = configs[i]
        if i:
            d_model, _ = matched_width(name, overrides, target, vocab, width_multiple)
            cfg = load_config(name, with_width(overrides, d_model))
        _set_budget(cfg, budget)
        model = build_model(cfg.model, vocab)
        archs.append(Arch(name, cfg, model.num_parameters(), model.state_size(), vocab))
    return archs


def _set_budget(cfg: Config, budget: Budget) -> None:
    t = cfg.train
    if budget.tokens is not None:
        per_step = t.batch_size * t.seq_len * t.bptt_segments
        t.steps = math.ceil(budget.tokens / per_step)
        t.eval_every = max(1, math.ceil(t.steps / EVAL_POINTS))
    else:
        t.max_minutes = budget.minutes
        t.steps = TIME_BUDGET_STEPS
        t.eval_every = 10**9  # evaluated on time below instead
    t.save_every = t.steps  # one checkpoint, at the end
    t.warmup_steps = min(t.warmup_steps, max(1, t.steps // 10))


def generation_speed(model, tokenizer, context: int, tokens: int = GENERATE_TOKENS) -> float:
    """Tokens per second of :func:`lamina.eval.generate` from a document start, sampling at temperature 1."""
    prompt = torch.tensor([tokenizer.eos_id])
    device = next(model.parameters()).device
    seconds = timed(lambda: generate(model, prompt, max_new_tokens=tokens, context=context, temperature=1.0, seed=0),
                    device)
    return tokens / seconds


def read_metrics(run_dir: Path, tokens_per_step: int) -> tuple[list[dict], float]:
    """The validation curve (step, tokens, seconds, nats) and the median training tokens/s of the logged windows."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{"step": r["step"], "tokens": r["step"] * tokens_per_step, "elapsed": r["elapsed"],
              "valid_loss": r["valid_loss"]} for r in rows if "valid_loss" in r]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return curve, statistics.median(speeds) if speeds else float("nan")


def run(archs: list[Arch], out: Path, device: str = "auto", log=print) -> None:
    """Train each architecture into ``out/runs/<name>`` and fill in its results."""
    for arch in archs:
        cfg = arch.config
        cfg.train.device = device
        cfg.train.out_dir = str(out / "runs" / arch.name)
        if cfg.train.max_minutes is not None:  # EVAL_POINTS validation points over the time budget
            cfg.train.eval_every = _steps_for_time(arch, cfg, log)
        dev = pick_device(device)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        log(f"== {arch.name}: d_model {cfg.model.d_model}, {arch.parameters:,} parameters")
        result = train(cfg, log=log, overwrite=True)  # the report's own runs
        memory, memory_kind = peak_memory(dev)
        t = cfg.train
        curve, tokens_per_s = read_metrics(result.run_dir, t.batch_size * t.seq_len * t.bptt_segments)
        arch.results = {
            "steps": result.step, "tokens": result.step * t.batch_size * t.seq_len * t.bptt_segments,
            "unit": result.unit, "valid_loss": result.valid_nats, "train_tokens_per_s": tokens_per_s,
            "peak_memory_bytes": memory, "peak_memory_kind": memory_kind,
            "generate_tokens_per_s": generation_speed(result.model, result.tokenizer, t.seq_len),
            "curve": curve, "train_seconds": curve[-1]["elapsed"] if curve else None,
        }


def _steps_for_time(arch: Arch, cfg: Config, log) -> int:
    """Steps between validations under a time budget: the budget over ``EVAL_POINTS``, at the speed of timed steps.

    Two training steps on random tokens, of a throwaway model, estimate the seconds per step.
    """
    t = cfg.train
    device = pick_device(t.device)
    model = build_model(cfg.model, arch.vocab).to(device)
    ids = torch.randint(arch.vocab, (t.batch_size, t.seq_len + 1), device=device)
    per_step = min(train_step_seconds(model, t, ids, device, repeats=2)) * t.bptt_segments
    every = max(1, int(t.max_minutes * 60 / per_step / EVAL_POINTS))
    log(f"{arch.name}: about {per_step:.3f} s per step; validating every {every:,} steps")
    return every


def write_report(archs: list[Arch], out: Path, budget: Budget, command: str, width_multiple: int) -> None:
    """``report.md``, ``results.json`` and the two plots."""
    out.mkdir(parents=True, exist_ok=True)
    unit = archs[0].results["unit"]
    metric = UNIT_METRIC[unit]
    memory_kind = archs[0].results["peak_memory_kind"]
    first = archs[0].parameters
    spread = max(abs(a.parameters / first - 1) for a in archs)
    t = archs[0].config.train
    lines = [
        "# Architecture comparison",
        "",
        f"`{command}`",
        "",
        f"Corpus {archs[0].config.data.corpus}; {budget.describe()}, batches of {t.batch_size}x{t.seq_len} tokens on "
        f"{pick_device(t.device)}. Parameters matched to {archs[0].name}'s through model.d_model (multiples of "
        f"{width_multiple}), within {spread:.1%}. Validation on "
        f"{t.eval_tokens or 'all'} tokens of the valid split. Peak memory: {memory_kind}"
        + (" (of the whole process, so it never goes down from one run to the next)." if "RSS" in memory_kind else ".")
        + " State: the floats carried from one segment to the next; attention's key/value cache within a segment is "
        "not counted (`lamina bench` measures its growth with context).",
        "",
        f"| architecture | d_model | parameters | vs {archs[0].name} | state (floats/sequence) | steps | tokens | "
        f"valid {metric} | train tokens/s | peak memory (MiB) | generate tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in archs:
        r = a.results
        lines.append(
            f"| {a.name} | {a.config.model.d_model} | {a.parameters:,} | {100 * (a.parameters / first - 1):+.1f}% | "
            f"{a.state_size:,} | {r['steps']:,} | {r['tokens']:,} | {metric_value(unit, r['valid_loss']):.4f} | "
            f"{r['train_tokens_per_s']:,.0f} | {r['peak_memory_bytes'] / 2**20:,.0f} | "
            f"{r['generate_tokens_per_s']:,.1f} |"
        )
    finals = "; ".join(f"{a.name} {format_metric(unit, a.results['valid_loss'])}" for a in archs)
    lines += ["", f"Final validation: {finals}", "", "![validation against tokens](valid_vs_tokens.png)", "",
              "![validation against time](valid_vs_time.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    results = {
        "command": command, "width_multiple": width_multiple, "unit": unit, "metric": metric,
        "budget": {"tokens": budget.tokens, "minutes": budget.minutes},
        "architectures": [{"name": a.name, "d_model": a.config.model.d_model, "parameters": a.parameters,
                           "state_size": a.state_size, **a.results} for a in archs],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    _plot(archs, out / "valid_vs_tokens.png", "tokens", "training tokens", unit)
    _plot(archs, out / "valid_vs_time.png", "elapsed", "wall time (s)", unit)



def _plot(archs: list[Arch], path: Path, key: str, xlabel: str, unit: str) -> None:
    plt = pyplot("the comparison's plots")
    fig, ax = plt.subplots(figsize=(6, 4))
    for a in archs:
        curve = a.results["curve"]
        ax.plot([p[key] for p in curve], [metric_value(unit, p["valid_loss"]) for p in curve], marker="o", label=a.name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"validation {UNIT_METRIC[unit]}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(names: list[str], overrides: list[str], budget: Budget, out: Path, device: str = "auto",
            width_multiple: int = 32, command: str = "", log=print) -> list[Arch]:
    """Plan, train and report; returns the architectures with their results."""
    pyplot("the comparison's plots")  # before any training, not after
    for name in names:
        if (out / "runs" / name / "metrics.jsonl").exists():
            raise LaminaError(f"{out} already holds a comparison with {name}; give another --out or remove it")
    archs = plan(names, overrides, budget, width_multiple)
    for a in archs:
        log(f"{a.name}: d_model {a.config.model.d_model}, {a.parameters:,} parameters, {a.config.train.steps:,} steps")
    run(archs, out, device, log)
    write_report(archs, out, budget, command, width_multiple)
    return archs
