"""Where the main job's time goes (``lamina train``: the default preset), and what a change saves.

The main job is ``python -m lamina train --overwrite``: the default preset's
4-layer HGRN byte LM trained for ``train.steps`` steps of
``batch_size x seq_len`` bytes on the stdlib corpus, evaluated every
``eval_every`` steps on ``eval_tokens`` validation bytes, then a 300-byte
sample. Its pieces are timed here with the library's own functions, each in a
fresh process:

- startup: reading the stdlib corpus and encoding its train and valid splits;
- a training step on real batches: forward (with the loss), backward, and
  gradient clipping with the optimizer and scheduler step;
- one evaluation (``evaluate`` over ``--eval-tokens`` tokens, reported per
  ``eval_tokens`` of the preset);
- the final sample (``generate`` of 300 tokens from a newline).

The projection adds them up as the trainer runs them: ``steps`` training steps,
``ceil(steps / eval_every)`` evaluations, the startup and the sample
(checkpoint writes and imports are left out: about a second each).

Machines shared with other work time badly, so sources are compared side by
side: ``--against REV`` times the ``src/`` of a git revision and the working
tree's (both copied to a temporary directory first, so that edits during the
run change nothing) in alternating processes, several rounds, and reports
medians of per-step times and their ratio, with the load average before and
after. Wall time suffers most from other processes (with two threads on two cores a busy
neighbour stalls every parallel region); ``--threads 1`` also reports CPU
time, which a busy machine inflates far less. ``--isa avx2`` runs PyTorch's
own kernels (ATen, oneDNN) and MKL's as on a CPU without AVX-512, such as an
AMD EPYC before Zen 4 (MKL's matrix products use AVX2 on any AMD CPU anyway).

Writes ``benchmarks/results/main-job-cpu.{json,md}``.

    python benchmarks/main_job.py                         # the working tree's pieces, 2 threads
    python benchmarks/main_job.py --against HEAD --rounds 5 --threads 1,2 --isa avx2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, "native": {}}


def worker(args) -> None:
    """Time the pieces of the main job with the ``lamina`` on ``sys.path``; print one JSON line."""
    import torch
    import torch.nn.functional as F
    from torch.utils._pytree import tree_map_only

    from lamina.config import load_config
    from lamina.data import StreamBatcher, build_tokenizer, encode_split, load_corpus
    from lamina.eval import evaluate, generate
    from lamina.models import build_model
    try:
        from lamina.runtime import lr_factor, make_optimizer
    except ImportError:  # a revision from before lamina.runtime (--against)
        from lamina.train.trainer import lr_factor, make_optimizer

    torch.set_num_threads(args.worker_threads)
    cpu = torch.device("cpu")
    cfg = load_config("default", [])
    t = cfg.train
    start = time.perf_counter()
    corpus = load_corpus(cfg.data.corpus, cfg.data.data_dir, cfg.data.download)
    tokenizer = build_tokenizer(cfg.data.tokenizer, corpus)
    train_tokens, valid_tokens = (encode_split(tokenizer, corpus, split) for split in ("train", "valid"))
    startup = time.perf_counter() - start

    torch.manual_seed(t.seed)
    model = build_model(cfg.model, cfg.model.vocab_size or tokenizer.vocab_size)
    optimizer = make_optimizer(model, t, cpu)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.warmup_steps, t.steps, t.min_lr_ratio))
    batcher = StreamBatcher(train_tokens, t.batch_size, t.seq_len)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    steps, state = [], None
    for i in range(args.warmup + args.steps):
        x, y = batcher.segment(i)
        marks = [{k: c() for k, c in clocks.items()}]
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        marks.append({k: c() for k, c in clocks.items()})
        loss.backward()
        marks.append({k: c() for k, c in clocks.items()})
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state = tree_map_only(torch.Tensor, torch.Tensor.detach, state)  # named or positional states alike
        marks.append({k: c() for k, c in clocks.items()})
        if i >= args.warmup:
            steps.append({k: [b[k] - a[k] for a, b in zip(marks, marks[1:])] for k in clocks})

    row = {"startup_s": startup, "steps": steps, "preset": {k: getattr(t, k) for k in ("steps", "eval_every", "eval_tokens")}}
    if args.eval_tokens:
        begin = {k: c() for k, c in clocks.items()}
        result = evaluate(model, valid_tokens, batch_size=t.batch_size, tgt_len=t.seq_len, max_tokens=args.eval_tokens)
        row["eval"] = {k: (c() - begin[k]) * t.eval_tokens / result.tokens for k, c in clocks.items()}
    if args.sample:
        begin = time.perf_counter()
        generate(model, tokenizer.encode(b"\n"), max_new_tokens=t.sample_tokens, context=t.seq_len,
                 temperature=0.8, top_p=0.95, seed=0)
        row["sample_s"] = time.perf_counter() - begin
    print(json.dumps(row))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def extract(rev: str, into: Path) -> Path:
    """``src/`` of git revision ``rev`` under ``into``; returns that ``src``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_worker(src: Path, threads: int, isa: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), **ISA_ENV[isa]}
    command = [sys.executable, __file__, "--worker", "--worker-threads", str(threads), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--eval-tokens", str(args.eval_tokens)] + (["--sample"] if args.sample else [])
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarize(runs: list[dict], clock: str) -> dict:
    """Medians over every timed step of every round (seconds), and of the per-round eval/sample/startup."""
    steps = [s[clock] for r in runs for s in r["steps"]]
    out = {part: statistics.median(s[i] for s in steps) for i, part in enumerate(("forward", "backward", "optimizer"))}
    out["step"] = statistics.median(sum(s) for s in steps)
    out["step_min"] = min(sum(s) for s in steps)
    out["step_per_round"] = [statistics.median(sum(s[clock]) for s in r["steps"]) for r in runs]
    if all("eval" in r for r in runs):
        out["eval"] = statistics.median(r["eval"][clock] for r in runs)
    if clock == "wall":
        out["startup"] = statistics.median(r["startup_s"] for r in runs)
        if all("sample_s" in r for r in runs):
            out["sample"] = statistics.median(r["sample_s"] for r in runs)
    return out


def projection(s: dict, preset: dict) -> float | None:
    """Seconds of the whole main job from its pieces under a source's own preset, or None without an eval timing."""
    if "eval" not in s:
        return None
    evals = math.ceil(preset["steps"] / preset["eval_every"])
    return s.get("startup", 0) + preset["steps"] * s["step"] + evals * s["eval"] + s.get("sample", 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", metavar="REV", help="also time the src/ of this git revision, alternating with the working tree")
    p.add_argument("--rounds", type=int, default=3, help="processes per source and setting (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per process (default 10)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-tokens", type=int, default=32768, help="tokens of one timed evaluation (0: skip)")
    p.add_argument("--sample", action="store_true", help="also time the final 300-token sample")
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    p.add_argument("--isa", default="native", help="comma-separated: native, avx2 (default native)")
    p.add_argument("--out", default=str(RESULTS / "main-job-cpu"), help="results path without extension")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"working tree": Path(shutil.copytree(ROOT / "src", Path(tmp) / "working-tree" / "src"))}
        if args.against:
            sources = {args.against: extract(args.against, Path(tmp) / "against"), **sources}
        settings = [(int(n), isa) for n in args.threads.split(",") for isa in args.isa.split(",")]
        runs = {(name, n, isa): [] for name in sources for n, isa in settings}
        for r in range(args.rounds):
            for n, isa in settings:
                for name, src in sources.items():
                    runs[name, n, isa].append(run_worker(src, n, isa, args))
                    print(f"round {r + 1}/{args.rounds}, {n} thread(s), {isa}: {name} done", file=sys.stderr)

    rows = []
    for (name, n, isa), rs in runs.items():
        for clock in ("wall", "cpu") if n == 1 else ("wall",):
            s = summarize(rs, clock)
            preset = rs[0]["preset"]
            rows.append({"source": name, "threads": n, "isa": isa, "clock": clock, **s, "preset": preset,
                         "job_s": projection(s, preset)})
    base = {(r["threads"], r["isa"], r["clock"]): r for r in rows if args.against and r["source"] == args.against}
    for r in rows:
        b = base.get((r["threads"], r["isa"], r["clock"]))
        r["step_vs_base"] = r["step"] / b["step"] if b and r is not b else None

    ms = lambda v: "" if v is None else f"{1e3 * v:.0f}"  # noqa: E731
    load = f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    lines = [
        f"# The main job's pieces ({cpu_name()}, {os.cpu_count()} CPUs, {load})",
        "",
        f"`python benchmarks/main_job.py {' '.join(sys.argv[1:])}`: {args.rounds} rounds of {args.steps} timed steps "
        f"(after {args.warmup}) per source and setting, alternating sources; medians in ms (eval: one evaluation "
        f"of the preset's eval_tokens). Job: startup + steps x step + evaluations x eval + sample, in seconds, "
        f"under each source's own preset: "
        + "; ".join(f"{name}: {json.dumps(rs[0]['preset'])}" for (name, n, isa), rs in runs.items() if (n, isa) == settings[0])
        + ".",
        "",
        "| source | threads | ISA | clock | forward | backward | optimizer | step | step min | vs base | eval | startup | sample | job (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['step_vs_base']:.2f}x" if r["step_vs_base"] else ""
        job = f"{r['job_s']:.0f}" if r["job_s"] else ""
        lines.append(
            f"| {r['source']} | {r['threads']} | {r['isa']} | {r['clock']} | {ms(r['forward'])} | {ms(r['backward'])} | "
            f"{ms(r['optimizer'])} | {ms(r['step'])} | {ms(r['step_min'])} | {ratio} | {ms(r.get('eval'))} | "
            f"{ms(r.get('startup'))} | {ms(r.get('sample'))} | {job} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table, encoding="utf-8")
    out.with_suffix(".json").write_text(
        json.dumps({"command": sys.argv[1:], "cpu": cpu_name(), "load": load, "rows": rows}, indent=1), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
