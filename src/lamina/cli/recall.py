"""``lamina recall``: train a small model on multi-query associative recall and score it, or sweep models, widths
and learning rates (:mod:`lamina.tools.recall`)."""

from __future__ import annotations

from lamina.cli.args import COUNT, POSITIVE, bounded, positive_list, split_items
from lamina.errors import LaminaError


def add(sub) -> None:
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
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from lamina.data.mqar import RecallTask
    from lamina.runtime import pick_device

    target, overrides = split_items(args.items)
    task = RecallTask(
        vocab_size=args.vocab_size, input_seq_len=args.seq_len, num_kv_pairs=args.kv_pairs, power_a=args.power_a,
        random_non_queries=not args.blank_non_queries, num_passes=args.passes,
        train_examples=args.train_examples, test_examples=args.test_examples,
    )
    task.examples("test", args.seed)  # bad task parameters fail here, before any training
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        return run_sweep(args, target, overrides, task, device)
    if args.models or args.widths or args.lrs or args.out or args.jobs != 1:
        raise LaminaError("--models, --widths, --lrs, --jobs and --out belong to --sweep")
    return run_one(args, target, overrides, task, device)


def run_one(args, target, overrides, task, device) -> int:
    """Train one model and print its accuracy."""
    import yaml

    from lamina.tools.recall import recall_config, recall_train_config, train_recall

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


def run_sweep(args, target, overrides, task, device) -> int:
    """Train every model x width x learning rate; write and print the table of the best per cell."""
    from pathlib import Path

    from lamina.plotting import pyplot
    from lamina.tools.recall import recall_config, sweep, write_sweep

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
    print(write_sweep(cells, task, out))
    print(f"wrote {out / 'recall.md'} and {out / 'recall.png'}")
    return 0
