"""``lamina train``: train a preset (or continue a saved run), then print the final validation and a sample."""

from __future__ import annotations

from lamina.cli.args import split_items
from lamina.errors import LaminaError


def add(sub) -> None:
    p = sub.add_parser("train", help="train a model (default preset on the embedded stdlib corpus)")
    p.add_argument("items", nargs="*", metavar="PRESET|key=value", help="a preset name or .yaml file, then overrides")
    p.add_argument("--resume", metavar="RUN", help="continue a run directory or checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a saved run in train.out_dir (by default a fresh run refuses to)")
    p.add_argument("--data-dir", help="directory holding corpus files (else $LAMINA_DATA_DIR, then the cache)")
    p.set_defaults(func=run)


def run(args) -> int:
    from lamina.cli.sample import print_sample
    from lamina.config import load_config, with_overrides
    from lamina.eval import format_metric
    from lamina.train import load_checkpoint, train

    preset, overrides = split_items(args.items)
    if args.resume and args.overwrite:
        raise LaminaError("--resume continues a saved run and --overwrite replaces one; give only one of them")
    if args.resume:
        if preset:
            raise LaminaError("--resume continues a saved run with its own config; give overrides only")
        resume = load_checkpoint(args.resume, with_trainer_state=True)
        cfg = with_overrides(resume.config, overrides)
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
        print_sample(result.model, result.tokenizer, b"", cfg.train.seq_len, cfg.train.sample_tokens,
                     temperature=0.8, top_k=0, top_p=0.95, seed=0)
    return 130 if result.interrupted else 0
