"""Training and decoding speed and peak memory against context length (``lamina bench``).

For each architecture (a mixer's name or a preset, as ``lamina compare`` takes) and each context
length T, two items are measured, each in a fresh worker process:

- train: one training step as ``lamina train`` takes it (forward, backward, gradient clipping and
  the architecture's AdamW, :class:`lamina.train.step.Stepper`) on ``batch`` x T random tokens;
  tokens/s is ``batch * T`` over the median of ``repeats`` timed steps after one warm-up;
- decode: one sequence; a prefill of T tokens read in segments of ``prefill_chunk`` tokens with
  carried state (the state API makes that the same function as one call), with the attention
  memory set to T (a sliding window's to its window) so new tokens see what they would in one call;
  then ``decode_steps`` single-token steps after one warm-up step; tokens/s is one over the median
  step time. The state's size after the prefill is recorded too: attention's T-token cache against
  a recurrent mixer's fixed state.

Peak memory is the growth of the worker's peak over what it held before the model was built: on
CUDA ``torch.cuda.max_memory_allocated`` (tensors only, not the caching allocator's reserve); on
CPU the process's peak resident set size (``getrusage`` ``ru_maxrss``) over its resident size at
the start (``/proc/self/statm``), so it also counts allocator slack and the libraries' own buffers.
The decode peak covers the model, the chunked prefill and the decode steps.

A fresh process per item (forked from a ``multiprocessing`` forkserver that has imported torch
once, so an item starts in well under a second) keeps each peak its own and lets a stuck or
oversized item be stopped:
the worker is killed when it runs past ``max_seconds`` or, on CPU, when its peak RSS growth
(``VmHWM`` in ``/proc/PID/status``, polled) passes ``max_memory``; on CUDA ``max_memory`` caps the
allocator (``torch.cuda.set_per_process_memory_fraction``) and ``torch.OutOfMemoryError`` is caught.
An item that runs out of memory or time is recorded as such and the longer lengths of that
architecture and mode are skipped; the others go on. ``results.json`` and ``bench.md`` are
rewritten after every item, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lamina.config import Config, load_config
from lamina.errors import LaminaError
from lamina.mixers.state import state_tensors
from lamina.models import build_model
from lamina.models.lm import memory_lengths
from lamina.plotting import pyplot
from lamina.runtime import autocast_for
from lamina.tools.measure import peak_memory, timed, train_step_seconds

MODES = ("train", "decode")
# Per device type: small enough on CPU for a run of about a minute; 256 to 64K tokens on CUDA.
DEFAULTS = {
    "cpu": {"d_model": 128, "layers": 2, "batch": 4, "lengths": [256, 1024]},
    "cuda": {"d_model": 256, "layers": 4, "batch": 8, "lengths": [256, 1024, 4096, 16384, 65536]},
}
BYTE_VOCAB = 257  # models whose config leaves the vocabulary to the corpus are timed with byte tokens
POLL_SECONDS = 0.02


@dataclass
class Settings:
    """What every item is measured with (``device`` is ``cpu`` or ``cuda``)."""

    device: str
    d_model: int
    layers: int
    batch: int
    decode_steps: int = 32
    repeats: int = 3
    prefill_chunk: int = 256
    max_memory_gb: float | None = None
    max_seconds: float = 120.0
    threads: int = 0

    def __post_init__(self):
        for name in ("d_model", "layers", "batch", "decode_steps", "repeats", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise LaminaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise LaminaError(f"--max-memory must be a positive number of GB, got {self.max_memory_gb}")
        if not self.max_seconds > 0:
            raise LaminaError(f"--max-seconds must be a positive number of seconds, got {self.max_seconds}")
        if self.threads < 0:
            raise LaminaError(f"--threads must be 0 (torch's default) or more, got {self.threads}")

    @classmethod
    def for_device(cls, device: str, d_model: int | None = None, layers: int | None = None, batch: int | None = None,
                   max_memory_gb: float | None = None, **rest) -> Settings:
        """Settings on ``device`` (``cpu`` or ``cuda``) with its :data:`DEFAULTS` for the sizes not given; on CPU
        the memory cap defaults to half of this machine's memory."""
        given = {"d_model": d_model, "layers": layers, "batch": batch}
        sizes = {key: DEFAULTS[device][key] if value is None else value for key, value in given.items()}
        if max_memory_gb is None and device == "cpu":
            max_memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 / 2**30
        return cls(device=device, **sizes, max_memory_gb=max_memory_gb, **rest)

    @property
    def max_memory_bytes(self) -> int | None:
        return None if self.max_memory_gb is None else int(self.max_memory_gb * 2**30)

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.device == "cuda" else "fp32"

    def config(self, name: str, overrides) -> Config:
        """``name``'s config (:func:`lamina.config.load_config`) at the benchmark's width, a mixer's name with
        ``layers`` layers of that mixer; a preset keeps its own layer schedule."""
        return load_config(name, [*overrides, f"model.d_model={self.d_model}"], layers=self.layers)


@dataclass
class Item:
    """One measurement: an architecture in one mode at one length."""

    arch: str
    overrides: tuple[str, ...]
    mode: str
    T: int


def vocab_size(cfg: Config) -> int:
    return cfg.model.vocab_size or BYTE_VOCAB


def describe_archs(names: list[str], overrides, settings: Settings) -> dict[str, dict]:
    """Each architecture's layer count and parameters, built on the meta device: bad names and options fail here."""
    if not names:
        raise LaminaError("give at least one architecture to benchmark (a mixer's name or a preset)")
    if any(o.startswith("model.d_model=") for o in overrides):
        raise LaminaError("give the benchmark's width with --d-model, not model.d_model=")
    if len(set(names)) != len(names):
        raise LaminaError(f"give each architecture once, got {names}")
    info = {}
    for name in names:
        cfg = settings.config(name, overrides)
        with torch.device("meta"):
            model = build_model(cfg.model, vocab_size(cfg))
        info[name] = {"layers": len(cfg.model.layers), "parameters": model.num_parameters()}
    return info


def state_bytes(state) -> int:
    """Bytes held by a (nested) state of tensors."""
    return sum(t.numel() * t.element_size() for t in state_tensors(state))


@contextlib.contextmanager
def prompt_memory(model, T: int):
    """Inside this block the model's memory layers keep the whole T-token prompt.

    A sliding-window layer keeps only its ``window - 1`` past tokens (all it ever reads), so a windowed
    model's cache is measured at the size it needs, not at T.
    """
    with contextlib.ExitStack() as stack:
        for layer in model.memory_layers():
            window = getattr(layer.options, "window", None)
            stack.enter_context(memory_lengths([layer], T if window is None else min(T, window - 1)))
        yield


def train_speed(model, cfg: Config, T: int, settings: Settings, device: torch.device) -> dict:
    """Tokens/s of training steps (``cfg.train``'s) on ``batch`` x T random tokens: median of ``repeats`` after a
    warm-up."""
    ids = torch.randint(0, vocab_size(cfg), (settings.batch, T + 1), device=device)
    seconds = train_step_seconds(model, cfg.train, ids, device, settings.repeats)
    return {"tokens_per_s": settings.batch * T / statistics.median(seconds)}


@torch.no_grad()
def decode_speed(model, cfg: Config, T: int, settings: Settings, device: torch.device) -> dict:
    """Tokens/s of single-token steps after a chunked T-token prefill (batch 1), and the state's bytes after it."""
    model.eval()
    vocab = vocab_size(cfg)
    prompt = torch.randint(0, vocab, (1, T), device=device)
    token = torch.randint(0, vocab, (1, 1), device=device)
    with prompt_memory(model, T), autocast_for(device, cfg.train.precision):
        state = model.init_state(1, device)
        for start in range(0, T, settings.prefill_chunk):
            _, state = model(prompt[:, start : start + settings.prefill_chunk], state)
        held = state_bytes(state)
        seconds = []
        for _ in range(settings.decode_steps + 1):
            box = []
            seconds.append(timed(lambda: box.append(model(token, state)), device))
            state = box[0][1]
    return {"tokens_per_s": 1 / statistics.median(seconds[1:]), "state_bytes": held}


def _resident_bytes() -> int:
    """The process's resident size now (Linux ``/proc``); elsewhere its peak so far, which can only understate growth.
    """
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_memory(torch.device("cpu"))[0]


def _worker(item: Item, settings: Settings, conn) -> None:
    """Measure one item in this (fresh) process and send ``(status, result)`` through ``conn``."""
    try:
        device = torch.device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if device.type == "cuda":
            if settings.max_memory_bytes is not None:
                total = torch.cuda.get_device_properties(device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, settings.max_memory_bytes / total), device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        else:
            baseline = _resident_bytes()
        conn.send(("start", baseline))
        torch.manual_seed(0)
        cfg = settings.config(item.arch, item.overrides)
        model = build_model(cfg.model, vocab_size(cfg)).to(device)
        measure = train_speed if item.mode == "train" else decode_speed
        result = measure(model, cfg, item.T, settings, device)
        result["peak_bytes"] = peak_memory(device)[0] - baseline
        conn.send(("ok", result))
    except torch.OutOfMemoryError as err:
        conn.send(("OOM", str(err).splitlines()[0]))
    except Exception as err:  # a failure is recorded in its row; the run goes on with the other items
        conn.send(("failed", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def _peak_rss_of(pid: int) -> int | None:
    """A process's peak resident size (``VmHWM``), or None where ``/proc`` cannot tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def run_item(item: Item, settings: Settings) -> dict:
    """Measure ``item`` in a fresh worker, stopping it past the time or (CPU) memory cap.

    Returns ``{"status": "ok", ...measures}`` or ``{"status": "OOM" | "skipped (...)" | "failed (...)", ...}``.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lamina.tools.bench"])
    receive, send = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_worker, args=(item, settings, send), daemon=True)
    start = time.perf_counter()
    worker.start()
    send.close()
    baseline, cap, outcome = None, settings.max_memory_bytes, None
    try:
        while outcome is None:
            if receive.poll(POLL_SECONDS):
                try:
                    kind, value = receive.recv()
                except EOFError:
                    worker.join()
                    outcome = {"status": "OOM" if worker.exitcode == -9 else "failed",
                               "reason": f"the worker died (exit code {worker.exitcode})"}
                    break
                if kind == "start":
                    baseline = value
                else:
                    outcome = {"status": kind, **value} if kind == "ok" else {"status": kind, "reason": value}
                continue
            elapsed = time.perf_counter() - start
            if elapsed > settings.max_seconds:
                outcome = {"status": f"skipped (over --max-seconds {settings.max_seconds:g})", "reason": ""}
            elif settings.device == "cpu" and cap is not None and baseline is not None:
                peak = _peak_rss_of(worker.pid)
                if peak is not None and peak - baseline > cap:
                    outcome = {"status": "OOM",
                               "reason": f"peak RSS growth over --max-memory {settings.max_memory_gb:g} GB"}
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join()
        receive.close()
    seconds = time.perf_counter() - start
    if outcome["status"] == "ok" and cap is not None and outcome["peak_bytes"] > cap:
        outcome = {"status": "OOM", "reason": f"peak {outcome['peak_bytes'] / 2**20:,.0f} MiB over --max-memory"}
    elif outcome["status"] == "ok" and seconds > settings.max_seconds:  # finished between two polls, yet over
        outcome = {"status": f"skipped (over --max-seconds {settings.max_seconds:g})", "reason": ""}
    outcome["seconds"] = round(seconds, 3)
    return outcome


def bench(names: list[str], lengths: list[int], settings: Settings, out: Path, overrides=(), command: str = "",
          log=print) -> list[dict]:
    """Measure every architecture x length x mode, writing the outputs after each item; returns the rows."""
    if not lengths or any(T < 1 for T in lengths):
        raise LaminaError(f"--lengths takes positive integers, got {lengths}")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise LaminaError("--device cuda but CUDA is not available here; use --device cpu or auto")
    archs = describe_archs(names, overrides, settings)
    pyplot("the benchmark's plot")  # before any measuring, not after
    meta = {
        "command": command, "machine": machine(settings.device), "torch": torch.__version__,
        "settings": asdict(settings), "precision": settings.precision, "archs": archs,
        "memory": "CUDA max_memory_allocated over the start" if settings.device == "cuda"
        else "peak RSS (getrusage ru_maxrss) growth over the worker's resident size at the start",
    }
    rows = []
    for name in names:
        blocked = {}  # mode -> why longer lengths are skipped
        for T in sorted(set(lengths)):
            for mode in MODES:
                if mode in blocked:
                    row = {"status": f"skipped ({blocked[mode]})"}
                else:
                    row = run_item(Item(name, tuple(overrides), mode, T), settings)
                    status = row["status"]
                    if status != "ok":
                        why = status[len("skipped ("):-1] if status.startswith("skipped (") else status
                        blocked[mode] = f"{why} at T={T:,}"
                rows.append({"arch": name, "T": T, "mode": mode, **row})
                log(_log_line(rows[-1]))
                write_outputs(rows, meta, out, plot=False)
    write_outputs(rows, meta, out)
    return rows


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def _log_line(row: dict) -> str:
    what = f"{row['arch']} {row['mode']} T={row['T']}"
    if row["status"] != "ok":
        reason = row.get("reason", "").splitlines()[0] if row.get("reason") else ""
        return f"{what}: {row['status']}" + (f": {reason}" if reason else "")
    return f"{what}: {row['tokens_per_s']:,.1f} tokens/s, peak {row['peak_bytes'] / 2**20:,.1f} MiB"


def write_outputs(rows: list[dict], meta: dict, out: Path, plot: bool = True) -> None:
    """``results.json`` and ``bench.md`` (and ``bench.png`` when ``plot``) for the rows so far."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
    (out / "bench.md").write_text(table(rows, meta), encoding="utf-8")
    if plot:
        plot_rows(rows, out / "bench.png")


def _cells(row: dict | None, columns: list[tuple[str, float, str]]) -> list[str]:
    """A mode's table cells: ``(key, scale, format)`` per column; a row that did not run shows its status once."""
    if row is None:
        return [""] * len(columns)
    if row["status"] != "ok":
        return [row["status"]] + ["–"] * (len(columns) - 1)
    return [format(row[key] / scale, fmt) for key, scale, fmt in columns]


def table(rows: list[dict], meta: dict) -> str:
    """The markdown report: a header naming the setup, then one line per architecture and length."""
    s = meta["settings"]
    layers = "; ".join(f"{name} {a['layers']}" for name, a in meta["archs"].items())
    lines = [
        "# Speed and memory against context length", "",
        f"`{meta['command']}`", "",
        f"Machine: {meta['machine']}; torch {meta['torch']}; {meta['precision']}; d_model {s['d_model']}; "
        f"layers: {layers}; training batch {s['batch']}.",
        f"Train: forward, backward, gradient clipping and AdamW on {s['batch']} x T tokens, median of {s['repeats']} steps after a "
        f"warm-up. Decode: batch 1, prefill of T tokens in segments of {s['prefill_chunk']} with carried state "
        f"(attention memory T), then the median of {s['decode_steps']} single-token steps. "
        f"Peak memory: {meta['memory']}, each item in a fresh process. State: bytes carried after the prefill.",
        "",
        "| arch | T | train tokens/s | train peak MiB | decode tokens/s | decode peak MiB | decode state KiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    keyed = {(r["arch"], r["T"], r["mode"]): r for r in rows}
    for arch, T in dict.fromkeys((r["arch"], r["T"]) for r in rows):
        train, decode = keyed.get((arch, T, "train")), keyed.get((arch, T, "decode"))
        cells = [arch, f"{T:,}", *_cells(train, [("tokens_per_s", 1, ",.0f"), ("peak_bytes", 2**20, ",.1f")]),
                 *_cells(decode, [("tokens_per_s", 1, ",.1f"), ("peak_bytes", 2**20, ",.1f"),
                                  ("state_bytes", 2**10, ",.1f")])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_rows(rows: list[dict], path: Path) -> None:
    """2x2 log-log panels against T: train tokens/s, train memory, decode tokens/s, decode memory; a line per arch."""
    plt = pyplot("the benchmark's plot")
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = [("train", "tokens_per_s", "train tokens/s"), ("train", "peak_bytes", "train peak MiB"),
              ("decode", "tokens_per_s", "decode tokens/s"), ("decode", "peak_bytes", "decode peak MiB")]
    for ax, (mode, key, title) in zip(axes.flat, panels):
        for arch in dict.fromkeys(r["arch"] for r in rows):
            points = [(r["T"], r[key] / (2**20 if key == "peak_bytes" else 1)) for r in rows
                      if r["arch"] == arch and r["mode"] == mode and r["status"] == "ok" and r[key] > 0]
            if points:
                ax.plot(*zip(*points), marker="o", label=arch)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("context length T")
        ax.grid(alpha=0.3, which="both")
    if axes.flat[0].lines:
        axes.flat[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
