"""The ``lamina`` command: train, eval, generate, info, compare, bench, recall.

    lamina train [PRESET|FILE.yaml] [key=value ...] [--resume RUN | --overwrite]
    lamina eval RUN [--split test | --file PATH] [--tgt-len N] [--mem-len N] [--carry both|yes|no] [--buckets N,N,...] [--corrupt RATE]
    lamina eval RUN --passkey LEN,LEN,... [--passkey-trials N]
    lamina generate RUN [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
    lamina info [RUN|PRESET] [key=value ...]
    lamina compare ARCH ARCH ... [key=value ...] [--tokens N | --minutes M] [--out DIR] [--device cpu|cuda]
    lamina bench ARCH [ARCH ...] [key=value ...] [--lengths N,N,...] [--device cpu|cuda] [--out DIR]
    lamina recall [PRESET|MIXER] [key=value ...] [--vocab-size V] [--seq-len L] [--kv-pairs K] [--epochs E]
    lamina recall --sweep --models attn,hgrn --widths 32,64 --lrs 1e-3,3e-3 [--jobs N] [--out DIR]

Errors a user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import codecs
import math
import os
import sys
import time
from pathlib import Path

from lamina.errors import LaminaError, os_reason


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """``[preset] key=value ...`` -> (preset, overrides)."""
    preset, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif preset is None:
            preset = item
        else:
            raise LaminaError(f"unexpected argument {item!r}: give one preset, then key=value overrides")
    return preset, overrides


def _prompt_bytes(args) -> bytes:
    if args.prompt_file:
        try:
            return Path(args.prompt_file).read_bytes()
        except OSError as err:
            raise LaminaError(f"cannot read --prompt-file {args.prompt_file}: {os_reason(err)}") from None
    # argv arrives decoded with surrogateescape: fsencode gives back the exact bytes, valid UTF-8 or not
    return os.fsencode(args.prompt)


class _Streamer:
    """Writes generated tokens to stdout as they come, decoding UTF-8 across token boundaries."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.words = tokenizer.name == "words"

    def __call__(self, token: int) -> None:
        piece = self.tokenizer.decode([token])
        if self.words and piece != b"\n":
            piece += b" "
        sys.stdout.write(self.decoder.decode(piece))
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.write(self.decoder.decode(b"", final=True) + "\n")
        sys.stdout.flush()


def _sample_text(model, tokenizer, prompt: bytes, context: int, args) -> None:
    import torch

    from lamina.eval import generate

    ids = tokenizer.encode(prompt)
    if len(ids) == 0:  # start at a line start: a newline byte, or a word model's end-of-line token
        ids = tokenizer.encode(b"\n") if tokenizer.name == "bytes" else torch.tensor([tokenizer.eos_id])
    streamer = _Streamer(tokenizer)
    sys.stdout.write(prompt.decode("utf-8", errors="replace"))
    generate(
        model, ids, max_new_tokens=args.max_new_tokens, context=context, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_token=streamer,
    )
    streamer.close()


def cmd_train(args) -> int:
    from lamina.config import apply_override, from_dict, load_config, Config
    from lamina.eval import format_metric
    from lamina.train import load_checkpoint, train

    preset, overrides = _split_args(args.items)
    if args.resume and args.overwrite:
        raise LaminaError("--resume continues a saved run and --overwrite replaces one; give only one of them")
    if args.resume:
        if preset:
            raise LaminaError("--resume continues a saved run with its own config; give overrides only")
        resume = load_checkpoint(args.resume, with_trainer_state=True)
        data = resume.config.to_dict()
        for assignment in overrides:
            apply_override(data, assignment)
        cfg = from_dict(Config, data)
    else:
        resume = None
        cfg = load_config(preset or "default", overrides)
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    result = train(cfg, resume=resume, overwrite=args.overwrite)
    if result.valid_nats is None:
        print(f"stopped at step {result.step}; run saved in {result.run_dir}")
    else:
        print(f"final validation: {format_metric(result.unit, result.valid_nats)} "
              f"(loss {result.valid_nats:.4f} nats/token) after {result.step} steps; run saved in {result.run_dir}")
    if cfg.train.sample_tokens and not result.interrupted:
        print("--- sample ---")
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed = cfg.train.sample_tokens, 0.8, 0, 0.95, 0
        _sample_text(result.model, result.tokenizer, b"", cfg.train.seq_len, args)
    return 130 if result.interrupted else 0


def positive_list(text: str, option: str, kind: type = int) -> list:
    """``"128,512"`` -> ``[128, 512]``: positive numbers of ``kind`` (int or float) separated by commas, or a
    LaminaError that names ``option``."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        what, example = ("integers", "128,512,2048") if kind is int else ("numbers", "1e-3,3e-3")
        raise LaminaError(f"{option} takes positive {what} separated by commas (e.g. {example}), got {text!r}")
    return values


def bounded(kind: type = int, low: float | None = None, high: float | None = None, *, above: bool = False,
            below: bool = False):
    """An argparse type: a finite number of ``kind`` with ``low <= x <= high`` (``low < x`` with ``above``,
    ``x < high`` with ``below``); a bad value is a one-line usage error naming the option."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if above else value < low)
        too_high = high is not None and (value >= high if below else value > high)
        if too_low or too_high:
            bounds = [f"{'>' if above else '>='} {low:g}"] if low is not None else []
            bounds += [f"{'<' if below else '<='} {high:g}"] if high is not None else []
            raise argparse.ArgumentTypeError(f"must be {' and '.join(bounds)}, got {text}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


POSITIVE = bounded(int, 1)
COUNT = bounded(int, 0)


def _print_buckets(result, unit: str) -> None:
    from lamina.eval import format_metric

    for (low, high), nats, count in zip(result.ranges(), result.nats(), result.counts):
        span = f"[{low}, {high})" if high is not None else f"[{low}, end)"
        value = f"{format_metric(unit, nats)} (loss {nats:.4f} nats/token)" if count else "no targets"
        print(f"  positions {span:<16} {count:>12,} tokens  {value}")


def _passkey(model, tokenizer, context: int, args) -> int:
    from lamina.eval import passkey_accuracy

    lengths = positive_list(args.passkey, "--passkey")
    if tokenizer.name != "bytes":
        print(f"note: the passkey task is meant for byte models; this {tokenizer.name} model reads the key as <unk>")
    print(f"passkey retrieval, greedy, exact match; prefill in segments of {context} tokens with carried state")
    for length in lengths:
        correct, trials = passkey_accuracy(model, tokenizer, length, args.passkey_trials, context, seed=args.seed)
        print(f"  length {length:>9,}: {correct}/{trials} correct ({100 * correct / trials:.0f}%)")
    return 0


def cmd_eval(args) -> int:
    from lamina.data import encode_split, load_corpus, load_files, metric_unit
    from lamina.eval import evaluate, format_metric, loss_by_position
    from lamina.train import load_model, pick_device

    if args.file and args.split:
        raise LaminaError("--file scores every byte of the files given; --split belongs to the run's own corpus")
    split = args.split or "test"
    edges = positive_list(args.buckets, "--buckets") if args.buckets else None
    device = pick_device(args.device)
    model, tokenizer, cfg = load_model(args.checkpoint, device)
    tgt_len = args.tgt_len or cfg.train.seq_len
    if args.passkey:
        with model.memory(mem_len=args.mem_len):
            return _passkey(model, tokenizer, tgt_len, args)
    if args.file:
        corpus, what = load_files(args.file), f"files {args.file}"
    else:
        corpus, what = load_corpus(cfg.data.corpus, args.data_dir or cfg.data.data_dir, cfg.data.download), \
            f"{split} split of {cfg.data.corpus}"
    if args.corrupt:
        from lamina.data.noise import corrupt

        documents = [corrupt(doc, args.corrupt, seed=args.seed * 1_000_003 + i)
                     for i, doc in enumerate(corpus.documents(split))]
        tokens = tokenizer.encode_documents(documents)
        print(f"scoring the {what} with {args.corrupt:.1%} of its characters corrupted "
              f"(keyboard-neighbour substitutions, drops, doubles, swaps; seed {args.seed})")
    else:
        tokens = encode_split(tokenizer, corpus, split)
    unit = metric_unit(corpus, tokenizer)
    modes = [True, False] if args.carry == "both" else [args.carry == "yes"]
    scored = min(len(tokens) - 1, args.max_tokens or len(tokens))
    print(f"scoring {scored:,} tokens of the {what}{' twice' if len(modes) == 2 else ''} "
          f"in {args.batch_size} streams of {tgt_len}-token segments on {device}")
    with model.memory(mem_len=args.mem_len):
        mems = sorted(set(m.mem_len for m in model.memory_layers()))
        for carry in modes:
            common = dict(
                batch_size=args.batch_size, tgt_len=tgt_len, carry=carry, max_tokens=args.max_tokens,
                device=device, precision=cfg.train.precision, name=what,
            )
            if edges:
                buckets = loss_by_position(model, tokens, edges, eos_id=tokenizer.eos_id, positions=args.positions, **common)
                result = buckets.total
            else:
                result = evaluate(model, tokens, **common)
            how = "state carried across segments" if carry else "each segment from an empty state"
            mem = f", mem_len {mems[0] if len(mems) == 1 else mems}" if mems else ""
            label = args.file if args.file else f"{cfg.data.corpus} {split}"
            print(f"{label}: {format_metric(unit, result.nats)} "
                  f"(loss {result.nats:.4f} nats/token) over {result.tokens:,} tokens; tgt_len {tgt_len}{mem}; {how}")
            if edges:
                print(f"  by position within {'document' if args.positions == 'document' else 'evaluation stream'}:")
                _print_buckets(buckets, unit)
    return 0


def cmd_generate(args) -> int:
    from lamina.train import load_model, pick_device

    model, tokenizer, cfg = load_model(args.checkpoint, pick_device(args.device))
    _sample_text(model, tokenizer, _prompt_bytes(args), cfg.train.seq_len, args)
    return 0


def cmd_info(args) -> int:
    from lamina.config import load_config, preset_names
    from lamina.data import corpus_names
    from lamina.mixers import mixer_names
    from lamina.models import build_model
    from lamina.train import load_checkpoint
    from lamina.train.budget import estimate_training_memory

    target, overrides = _split_args(args.items)
    if target is None:
        print(f"presets: {', '.join(preset_names())}")
        print(f"mixers:  {', '.join(mixer_names())}")
        print(f"corpora: {', '.join(corpus_names())}")
        return 0
    if Path(target).is_dir():
        from lamina.train import load_model

        ckpt = load_checkpoint(target)
        model, tokenizer, cfg = load_model(ckpt)
        print(f"checkpoint {ckpt.path}")
    else:
        cfg = load_config(target, overrides)
        vocab = cfg.model.vocab_size or (257 if cfg.data.tokenizer in (None, "bytes") else 0)
        if not vocab:
            raise LaminaError("a word-level preset's vocabulary comes from its corpus; give model.vocab_size=N")
        model = build_model(cfg.model, vocab)
        print(f"preset {cfg.preset}")
    print(model.describe())
    print(f"memory: {estimate_training_memory(cfg, model.vocab_size).describe()}")
    print(f"data: {cfg.data.corpus} ({cfg.data.tokenizer or 'corpus default'} tokens); "
          f"train: {cfg.train.steps} steps of {cfg.train.batch_size}x{cfg.train.seq_len}")
    return 0


def cmd_compare(args) -> int:
    import shlex

    from lamina.compare import DEFAULT_TOKENS, Budget, compare

    names = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    tokens = DEFAULT_TOKENS if args.tokens is None and args.minutes is None else args.tokens
    budget = Budget(tokens=tokens, minutes=args.minutes)
    out = Path(args.out or "runs/compare-" + "-".join(names))
    flag = f"--tokens {tokens}" if tokens is not None else f"--minutes {args.minutes:g}"
    command = " ".join(["lamina compare", *map(shlex.quote, names + overrides), flag, f"--device {args.device}"])
    start = time.time()
    compare(names, overrides, budget, out, device=args.device, width_multiple=args.width_multiple, command=command)
    print(f"compared {len(names)} architectures in {time.time() - start:.0f} s; report in {out / 'report.md'}")
    return 0


def cmd_bench(args) -> int:
    import shlex

    from lamina.bench import DEFAULTS, Settings, bench
    from lamina.train import pick_device

    names = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    device = pick_device(args.device).type
    if device not in DEFAULTS:
        raise LaminaError(f"--device takes cpu, cuda or auto, got {args.device!r}")
    defaults = DEFAULTS[device]
    lengths = positive_list(args.lengths, "--lengths") if args.lengths is not None else defaults["lengths"]
    max_memory = args.max_memory
    if max_memory is None and device == "cpu":  # half of this machine's memory
        max_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 / 2**30
    sizes = {key: defaults[key] if getattr(args, key) is None else getattr(args, key)
             for key in ("d_model", "layers", "batch")}
    settings = Settings(
        device=device, **sizes, decode_steps=args.decode_steps, repeats=args.repeats, prefill_chunk=args.prefill_chunk,
        max_memory_gb=max_memory, max_seconds=args.max_seconds, threads=args.threads,
    )
    out = Path(args.out or "runs/bench-" + "-".join(names))
    command = " ".join(["lamina bench", *map(shlex.quote, names + overrides), "--lengths", ",".join(map(str, lengths)),
                        "--device", device])
    start = time.time()
    bench(names, lengths, settings, out, overrides, command)
    print(f"benchmarked {len(names)} architectures in {time.time() - start:.0f} s; report in {out / 'bench.md'}")
    return 0


def cmd_recall(args) -> int:
    import torch
    import yaml

    from lamina.plotting import pyplot
    from lamina.eval.recall import (
        RecallTask, plot_recall, recall_config, recall_train_config, sweep, sweep_table, train_recall,
    )
    from lamina.train import pick_device

    target, overrides = _split_args(args.items)
    task = RecallTask(
        vocab_size=args.vocab_size, input_seq_len=args.seq_len, num_kv_pairs=args.kv_pairs, power_a=args.power_a,
        random_non_queries=not args.blank_non_queries, num_passes=args.passes,
        train_examples=args.train_examples, test_examples=args.test_examples,
    )
    task.examples("test", args.seed)  # bad task parameters fail here, before any training
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.sweep:
        if args.models or args.widths or args.lrs or args.out or args.jobs != 1:
            raise LaminaError("--models, --widths, --lrs, --jobs and --out belong to --sweep")
        cfg = recall_config(target, overrides)
        cfg.train = recall_train_config(cfg.train, args.lr, args.batch_size, args.epochs, task)
        result = train_recall(cfg, task, args.epochs, device, args.seed, shuffled=args.shuffle_labels)
        what = "labels shuffled across examples (control)" if args.shuffle_labels else "MQAR"
        layers = yaml.safe_dump(cfg.model.layers, default_flow_style=True, width=1000).strip()
        print(f"{cfg.preset}: layers {layers}, d_model {cfg.model.d_model}, "
              f"{result.parameters:,} parameters, state {result.state_size:,} floats; trained on {what}, "
              f"final train loss {result.loss:.4f}")
        print(f"MQAR accuracy: {result.accuracy:.4f} on {task.test_examples * task.num_kv_pairs:,} held-out queries "
              f"(chance {2 / task.vocab_size:.4f})")
        return 0
    if target and args.models:
        raise LaminaError(f"give the models to sweep either as {target!r} or with --models, not both")
    models = [m for m in (args.models or target or "attn").split(",") if m]
    for model in models:
        recall_config(model, overrides)  # unknown names and bad overrides fail before any training
    widths = positive_list(args.widths or "32,64", "--widths")
    lrs = positive_list(args.lrs or "1e-3,3e-3", "--lrs", float)
    pyplot("the recall sweep's plots")  # before any training
    out = Path(args.out or "runs/recall")
    out.mkdir(parents=True, exist_ok=True)
    cells = sweep(models, overrides, widths, lrs, task, args.epochs, args.batch_size, device, args.seed, args.jobs,
                  args.threads)
    table = sweep_table(cells, task)
    (out / "recall.md").write_text(table, encoding="utf-8")
    plot_recall([(task, cells)], out / "recall.png")
    print(table)
    print(f"wrote {out / 'recall.md'} and {out / 'recall.png'}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``lamina eval: error: argument --top-p: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lamina", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default preset on the embedded stdlib corpus)")
    p.add_argument("items", nargs="*", metavar="PRESET|key=value", help="a preset name or .yaml file, then overrides")
    p.add_argument("--resume", metavar="RUN", help="continue a run directory or checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a saved run in train.out_dir (by default a fresh run refuses to)")
    p.add_argument("--data-dir", help="directory holding corpus files (else $LAMINA_DATA_DIR, then the cache)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="bits per byte/char or perplexity of a checkpoint")
    p.add_argument("checkpoint", metavar="RUN")
    p.add_argument("--split", choices=["train", "valid", "test"], help="the run's corpus split to score (default test)")
    p.add_argument("--file", metavar="PATH",
                   help="score every byte of your own files instead: a file, a directory (recursively) or a glob")
    p.add_argument("--tgt-len", type=POSITIVE, help="segment length (default: the training seq_len)")
    p.add_argument("--mem-len", type=COUNT, default=None, help="attention memory length (default: as trained)")
    p.add_argument("--carry", choices=["yes", "no", "both"], default="yes",
                   help="carry state across segments (default yes; both: score the split twice, with and without)")
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="parallel streams")
    p.add_argument("--max-tokens", type=COUNT, default=0, help="score only the first N tokens (0: all)")
    p.add_argument(
        "--buckets", metavar="N,N,...",
        help="also report the loss per range of target positions: [0,N1), [N1,N2), ..., [Nk,end); a position is "
        "counted from the start of the target's document (documents are separated by the tokenizer's eos id; "
        "for word tokenizers eos ends every line) or, with --positions stream, of its evaluation stream",
    )
    p.add_argument("--positions", choices=["document", "stream"], default="document",
                   help="what --buckets counts positions from (default: document)")
    p.add_argument(
        "--passkey", metavar="LEN,LEN,...",
        help="instead of the corpus loss, passkey retrieval accuracy at these prompt lengths in tokens "
        "(Landmark Attention's task, meant for byte models; the prompt is read in --tgt-len segments with carried state)",
    )
    p.add_argument("--passkey-trials", type=POSITIVE, default=10, help="prompts per length (default 10)")
    p.add_argument("--corrupt", type=bounded(float, 0, 1), default=0.0, metavar="RATE",
                   help="score the split with this fraction of characters corrupted by typing noise (e.g. 0.05)")
    p.add_argument("--seed", type=int, default=0, help="passkey prompts' and --corrupt noise's seed")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="stream a continuation of a prompt")
    p.add_argument("checkpoint", metavar="RUN")
    p.add_argument("--prompt", default="", help="prompt text (any bytes)")
    p.add_argument("--prompt-file", help="read the prompt from a file")
    p.add_argument("--max-new-tokens", type=COUNT, default=300)
    p.add_argument("--temperature", type=bounded(float, 0), default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=COUNT, default=0, help="0: off")
    p.add_argument("--top-p", type=bounded(float, 0, 1, above=True), default=1.0, help="nucleus mass, 0 < P <= 1 (1: off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="architecture, parameters and state size of a run or preset")
    p.add_argument("items", nargs="*", metavar="RUN|PRESET|key=value")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("compare", help="train several architectures at equal parameters and budget; write a report")
    p.add_argument("items", nargs="*", metavar="ARCH|key=value",
                   help="presets or mixer names (parameters matched to the first), then overrides for all")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=POSITIVE, help="training tokens per architecture (default: a few CPU minutes)")
    budget.add_argument("--minutes", type=bounded(float, 0, above=True), help="training minutes per architecture instead of a token budget")
    p.add_argument("--out", help="report directory (default: runs/compare-ARCH-ARCH...)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--width-multiple", type=POSITIVE, default=32, help="matched widths are multiples of this (default 32)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="training and decoding tokens/s and peak memory against context length")
    p.add_argument("items", nargs="*", metavar="ARCH|key=value", help="mixer names or presets, then overrides for all")
    p.add_argument("--lengths", metavar="N,N,...",
                   help="context lengths (default 256,1024 on CPU; 256,1024,4096,16384,65536 on CUDA)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--d-model", type=POSITIVE, help="model width (default 128 on CPU, 256 on CUDA)")
    p.add_argument("--layers", type=POSITIVE,
                   help="layers of a mixer given by name; presets keep theirs (default 2 on CPU, 4 on CUDA)")
    p.add_argument("--batch", type=POSITIVE, help="training batch (default 4 on CPU, 8 on CUDA)")
    p.add_argument("--decode-steps", type=POSITIVE, default=32, help="timed single-token steps after the prefill")
    p.add_argument("--repeats", type=POSITIVE, default=3, help="timed training steps (after one warm-up)")
    p.add_argument("--prefill-chunk", type=POSITIVE, default=256, help="tokens per prefill segment (state carried)")
    p.add_argument("--max-memory", type=bounded(float, 0, above=True), metavar="GB",
                   help="per-item memory cap: an item past it is OOM (default on CPU: half the machine's memory)")
    p.add_argument("--max-seconds", type=bounded(float, 0, above=True), default=120.0, help="per-item time cap (default 120)")
    p.add_argument("--threads", type=COUNT, default=0, help="CPU threads per item (0: torch's default)")
    p.add_argument("--out", help="output directory (default runs/bench-ARCH-ARCH...)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("recall", help="multi-query associative recall (Zoology's MQAR): train a small model, score it")
    p.add_argument("items", nargs="*", metavar="PRESET|MIXER|key=value",
                   help="a mixer's name (two layers of it, as in Zoology) or a preset, then overrides (default attn)")
    p.add_argument("--vocab-size", type=POSITIVE, default=64, help="keys from the lower half, values from the upper")
    p.add_argument("--seq-len", type=POSITIVE, default=32, help="tokens per example")
    p.add_argument("--kv-pairs", type=POSITIVE, default=4, help="key-value pairs per example, each queried once")
    p.add_argument("--power-a", type=bounded(float, 0, above=True), default=0.01, help="query gaps ~ power law with this a (1: uniform)")
    p.add_argument("--passes", type=POSITIVE, default=1, help="times the pairs are repeated before the queries")
    p.add_argument("--blank-non-queries", action="store_true", help="fill non-query slots with 0, not random tokens")
    p.add_argument("--train-examples", type=POSITIVE, default=4000)
    p.add_argument("--test-examples", type=POSITIVE, default=500, help="held-out examples (seed + 10)")
    p.add_argument("--epochs", type=POSITIVE, default=4)
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--lr", type=bounded(float, 0, above=True), default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle-labels", action="store_true",
                   help="control: train on labels permuted across examples, so keys no longer predict values")
    p.add_argument("--sweep", action="store_true",
                   help="every model x width x lr; table (recall.md) and plot (recall.png) of the best lr per cell")
    p.add_argument("--models", metavar="A,B,...", help="--sweep: mixers or presets (default: the one given, or attn)")
    p.add_argument("--widths", metavar="D,D,...", help="--sweep: model.d_model values (default 32,64)")
    p.add_argument("--lrs", metavar="LR,LR,...", help="--sweep: learning rates (default 1e-3,3e-3)")
    p.add_argument("--jobs", type=POSITIVE, default=1,
                   help="--sweep: runs trained at once in worker processes (several small models share a GPU)")
    p.add_argument("--out", metavar="DIR", help="--sweep: output directory (default runs/recall)")
    p.add_argument("--threads", type=COUNT, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_recall)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a log file or a pipe sees each line as it is printed
    parser = build_parser()
    try:  # a usage error (one line, status 2) or --help (status 0) ends here, as a status, not an exception
        args, extra = parser.parse_known_args(argv)
        # overrides may follow options (lamina train PRESET --data-dir D key=value)
        if extra and (not hasattr(args, "items") or any(e.startswith("-") for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:
        return done.code
    if extra:
        args.items += extra
    try:
        return args.func(args)
    except LaminaError as err:
        print(f"lamina: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        return 130
