"""MQAR accuracy against state size at several sequence lengths: the grid of Zoology's Fig. 2.

Arora et al. 2023 ("Zoology", §3, Fig. 2 and appendix E) train two-layer models of several widths on
multi-query associative recall at sequence lengths 64 to 512, the number of key-value pairs growing with the
length, vocabulary 8192, and plot each model's accuracy (best learning rate per width) against its state size.
This script runs that grid with ``lamina.tools.recall``: every setting (``seq_len:kv_pairs``) x model x width x
learning rate is one run of :func:`lamina.tools.recall.run_recall`, ``--jobs`` of them at once in worker processes
(several small models share one GPU). Zoology trains on 100,000 examples for 64 epochs per run; the defaults here
are far smaller, so a grid fits in minutes: its accuracies are lower bounds on what each model can learn.

Writes ``benchmarks/results/recall-grid-<tag>.json``, rewritten after every finished run, so a killed grid keeps
what it has; runs already in it are skipped on the next call with the same task and training flags (``--fresh``
starts over). Then ``recall-grid-<tag>.md`` (one table per setting: best lr per model and width, accuracy, state
size) and ``recall-grid-<tag>.png`` (one panel per setting: accuracy against state size, log x, one line per model).

    python benchmarks/recall_grid.py --tag h100 --device cuda --jobs 8
    python benchmarks/recall_grid.py --settings 32:2 --models attn,hgrn --widths 16 --lrs 3e-3 \\
        --vocab-size 32 --train-examples 64 --test-examples 16 --epochs 1 --jobs 2 --tag smoke   # seconds on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from lamina.cli.args import positive_list
from lamina.data.mqar import RecallTask
from lamina.errors import LaminaError
from lamina.plotting import pyplot
from lamina.runtime import pick_device
from lamina.tools.recall import (
    RecallResult, RecallRun, describe_run, plot_recall, recall_config, run_many, sweep_cells, sweep_table,
)

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODELS = "attn,hgrn,gla,mamba2,deltanet,gated_deltanet,linear_attn"
RUN_KEYS = ("seq_len", "kv_pairs", "model", "d_model", "lr")


def parse_settings(text: str) -> list[tuple[int, int]]:
    """``"64:4,128:8"`` -> ``[(64, 4), (128, 8)]``: (sequence length, key-value pairs) per setting."""
    settings = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise LaminaError(f"--settings takes seq_len:kv_pairs pairs of positive integers separated by commas "
                              f"(e.g. 64:4,128:8), got {text!r}")
        settings.append((int(parts[0]), int(parts[1])))
    return list(dict.fromkeys(settings))


def grid_tasks(args) -> list[RecallTask]:
    """One task per setting, each checked by building one example (a bad setting fails before any training)."""
    tasks = []
    for seq_len, kv_pairs in parse_settings(args.settings):
        task = RecallTask(vocab_size=args.vocab_size, input_seq_len=seq_len, num_kv_pairs=kv_pairs,
                          train_examples=args.train_examples, test_examples=args.test_examples)
        try:
            replace(task, test_examples=1).examples("test", args.seed)
        except LaminaError as err:
            raise LaminaError(f"--settings {seq_len}:{kv_pairs}: {err}") from None
        tasks.append(task)
    return tasks


def header(args, task: RecallTask) -> dict:
    """What every run of one results file shares: a resumed grid must match it."""
    shared = {k: v for k, v in asdict(task).items() if k not in ("input_seq_len", "num_kv_pairs")}
    return {"task": shared, "training": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                                         "overrides": args.overrides}}


def run_key(run: RecallRun) -> tuple:
    return run.task.input_seq_len, run.task.num_kv_pairs, run.model, run.d_model, run.lr


def load_results(path: Path, want: dict, fresh: bool) -> dict:
    """The results file to extend: the one at ``path`` if it matches ``want``, else a new one."""
    if fresh or not path.exists():
        return {**want, "runs": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    have = {k: data.get(k) for k in want}
    if have != want:
        raise LaminaError(f"{path} holds runs of another task or training ({json.dumps(have)}, this call: "
                          f"{json.dumps(want)}); pass another --tag, or --fresh to replace it")
    return data


def write_json(path: Path, data: dict) -> None:
    """Atomically: a grid killed mid-write keeps the previous file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def finished(data: dict, tasks: list[RecallTask]) -> dict[RecallRun, RecallResult]:
    """The runs of ``data`` whose setting is one of ``tasks``, with their results."""
    by_setting = {(t.input_seq_len, t.num_kv_pairs): t for t in tasks}
    result_fields = [f.name for f in fields(RecallResult)]
    out = {}
    for entry in data["runs"]:
        task = by_setting.get((entry["seq_len"], entry["kv_pairs"]))
        if task is not None:
            run = RecallRun(task, entry["model"], entry["d_model"], entry["lr"])
            out[run] = RecallResult(**{k: entry[k] for k in result_fields if k in entry})
    return out


def write_reports(path: Path, runs: list[RecallRun], done: dict[RecallRun, RecallResult], command: str,
                  device: str) -> None:
    """``<stem>.md`` (a table per setting) and ``<stem>.png`` (a panel per setting) of the finished runs among
    ``runs``, in their order."""
    tasks = list(dict.fromkeys(run.task for run in runs))
    seconds = sum(done[run].seconds for run in runs if run in done)
    lines = [f"# MQAR grid (Zoology Fig. 2): {sum(run in done for run in runs)} of {len(runs)} runs finished", "",
             f"`{command}`", "", f"Device {device}; {seconds / 60:.1f} min of training summed over runs.", ""]
    panels = []
    for task in tasks:
        cells = sweep_cells({run: done[run] for run in runs if run.task == task and run in done})
        lines.append(f"## Length {task.input_seq_len}, {task.num_kv_pairs} key-value pairs")
        lines.append("")
        lines.append(sweep_table(cells, task) if cells else "No finished runs.\n")
        if cells:
            panels.append((task, cells))
    path.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    if panels:
        plot_recall(panels, path.with_suffix(".png"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="model overrides for every run")
    p.add_argument("--settings", default="64:4,128:8,256:16", help="seq_len:kv_pairs,... (default 64:4,128:8,256:16)")
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"mixers or presets (default {DEFAULT_MODELS})")
    p.add_argument("--widths", default="64,128,256", help="model.d_model values (default 64,128,256)")
    p.add_argument("--lrs", default="1e-3,3e-3", help="learning rates; the best per model and width is reported")
    p.add_argument("--vocab-size", type=int, default=8192, help="Zoology's 8192 (default)")
    p.add_argument("--train-examples", type=int, default=20000)
    p.add_argument("--test-examples", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in a worker process")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: cores / jobs)")
    p.add_argument("--tag", help="results file suffix (default: the device type)")
    p.add_argument("--out", default=str(RESULTS), help="results directory (default benchmarks/results)")
    p.add_argument("--fresh", action="store_true", help="discard the results file's runs instead of resuming")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return grid(args, " ".join(["python benchmarks/recall_grid.py", *map(shlex.quote, argv or sys.argv[1:])]))
    except LaminaError as err:
        print(f"recall_grid: error: {err}", file=sys.stderr)
        return 2


def grid(args: argparse.Namespace, command: str) -> int:
    for option in ("epochs", "batch_size", "train_examples", "test_examples", "jobs"):
        if getattr(args, option) < 1:
            raise LaminaError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    tasks = grid_tasks(args)
    models = [m for m in args.models.split(",") if m]
    for model in models:
        recall_config(model, args.overrides)  # unknown names and bad overrides fail before any training
    widths = positive_list(args.widths, "--widths")
    lrs = positive_list(args.lrs, "--lrs", float)
    device = pick_device(args.device)
    pyplot("the grid's plot")  # before any training
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"recall-grid-{args.tag or device.type}.json"
    data = load_results(path, header(args, tasks[0]), args.fresh)
    runs = [RecallRun(t, m, w, lr) for t in tasks for m in models for w in widths for lr in lrs]
    done = finished(data, tasks)
    todo = sorted((r for r in runs if r not in done), key=lambda r: -r.task.input_seq_len * r.d_model)
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {path}; training {len(todo)} on {device} "
          f"with {args.jobs} job(s)", flush=True)
    failed, start = 0, time.time()
    for i, (run, outcome) in enumerate(run_many(todo, args.overrides, args.epochs, args.batch_size, device,
                                                args.seed, args.jobs, args.threads), 1):
        where = f"[{i}/{len(todo)} {time.time() - start:.0f} s] {run.task.input_seq_len}:{run.task.num_kv_pairs}"
        if isinstance(outcome, BaseException):
            failed += 1
            print(f"{where}  {run.model} d_model {run.d_model} lr {run.lr:g} failed: {outcome}", flush=True)
            continue
        done[run] = outcome
        data["runs"].append(dict(zip(RUN_KEYS, run_key(run))) | asdict(outcome))
        write_json(path, data)
        print(where + describe_run(run, outcome), flush=True)
    write_json(path, data)
    write_reports(path, runs, done, command, str(device))
    print(f"wrote {path}, {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    if failed:
        print(f"recall_grid: {failed} run(s) failed (see above); a rerun retries them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
