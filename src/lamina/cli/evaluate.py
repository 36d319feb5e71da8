"""``lamina eval``: score a saved model on its corpus or on files (bits per byte/char or perplexity, by position if
asked), or its passkey retrieval."""

from __future__ import annotations

from lamina.cli.args import COUNT, POSITIVE, bounded, positive_list
from lamina.errors import LaminaError


def add(sub) -> None:
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
    p.set_defaults(func=run)


def run(args) -> int:
    from lamina.data import metric_unit
    from lamina.eval import format_metric, score
    from lamina.runtime import pick_device
    from lamina.train import load_model

    if args.file and args.split:
        raise LaminaError("--file scores every byte of the files given; --split belongs to the run's own corpus")
    split = args.split or "test"
    edges = positive_list(args.buckets, "--buckets") if args.buckets else None
    device = pick_device(args.device)
    model, tokenizer, cfg = load_model(args.checkpoint, device)
    tgt_len = args.tgt_len or cfg.train.seq_len
    if args.passkey:
        with model.memory(mem_len=args.mem_len):
            return print_passkey(model, tokenizer, tgt_len, args)
    corpus, what, tokens = tokens_to_score(args, cfg, tokenizer, split)
    unit = metric_unit(corpus, tokenizer)
    modes = [True, False] if args.carry == "both" else [args.carry == "yes"]
    scored = min(len(tokens) - 1, args.max_tokens or len(tokens))
    print(f"scoring {scored:,} tokens of the {what}{' twice' if len(modes) == 2 else ''} "
          f"in {args.batch_size} streams of {tgt_len}-token segments on {device}")
    with model.memory(mem_len=args.mem_len):
        mems = sorted(set(m.mem_len for m in model.memory_layers()))
        passes = score(model, tokens, modes, edges=edges, eos_id=tokenizer.eos_id, positions=args.positions,
                       batch_size=args.batch_size, tgt_len=tgt_len, max_tokens=args.max_tokens, device=device,
                       precision=cfg.train.precision, name=what)
        for done in passes:
            result = done.result
            how = "state carried across segments" if done.carry else "each segment from an empty state"
            mem = f", mem_len {mems[0] if len(mems) == 1 else mems}" if mems else ""
            label = args.file if args.file else f"{cfg.data.corpus} {split}"
            print(f"{label}: {format_metric(unit, result.nats)} "
                  f"(loss {result.nats:.4f} nats/token) over {result.tokens:,} tokens; tgt_len {tgt_len}{mem}; {how}")
            if done.buckets is not None:
                print(f"  by position within {'document' if args.positions == 'document' else 'evaluation stream'}:")
                print_buckets(done.buckets, unit)
    return 0


def tokens_to_score(args, cfg, tokenizer, split: str):
    """``(corpus, what, tokens)``: the run's corpus split or ``--file``'s files, corrupted if asked (and said)."""
    from lamina.data import encode_split, load_corpus, load_files
    from lamina.data.noise import corrupt_documents

    if args.file:
        corpus, what = load_files(args.file), f"files {args.file}"
    else:
        corpus, what = load_corpus(cfg.data.corpus, args.data_dir or cfg.data.data_dir, cfg.data.download), \
            f"{split} split of {cfg.data.corpus}"
    if not args.corrupt:
        return corpus, what, encode_split(tokenizer, corpus, split)
    print(f"scoring the {what} with {args.corrupt:.1%} of its characters corrupted "
          f"(keyboard-neighbour substitutions, drops, doubles, swaps; seed {args.seed})")
    return corpus, what, tokenizer.encode_documents(corrupt_documents(corpus.documents(split), args.corrupt, args.seed))


def print_buckets(result, unit: str) -> None:
    """One line per position range: its loss and how many targets it holds."""
    from lamina.eval import format_metric

    for (low, high), nats, count in zip(result.ranges(), result.nats(), result.counts):
        span = f"[{low}, {high})" if high is not None else f"[{low}, end)"
        value = f"{format_metric(unit, nats)} (loss {nats:.4f} nats/token)" if count else "no targets"
        print(f"  positions {span:<16} {count:>12,} tokens  {value}")


def print_passkey(model, tokenizer, context: int, args) -> int:
    """Passkey retrieval at each ``--passkey`` length, one line each."""
    from lamina.eval import passkey_accuracy

    lengths = positive_list(args.passkey, "--passkey")
    if tokenizer.name != "bytes":
        print(f"note: the passkey task is meant for byte models; this {tokenizer.name} model reads the key as <unk>")
    print(f"passkey retrieval, greedy, exact match; prefill in segments of {context} tokens with carried state")
    for length in lengths:
        correct, trials = passkey_accuracy(model, tokenizer, length, args.passkey_trials, context, seed=args.seed)
        print(f"  length {length:>9,}: {correct}/{trials} correct ({100 * correct / trials:.0f}%)")
    return 0
