"""``lamina info``: the presets, mixers and corpora there are, or a run's or preset's architecture, parameters,
state size and training memory."""

from __future__ import annotations

from pathlib import Path

from lamina.cli.args import split_items
from lamina.errors import LaminaError


def add(sub) -> None:
    p = sub.add_parser("info", help="architecture, parameters and state size of a run or preset")
    p.add_argument("items", nargs="*", metavar="RUN|PRESET|key=value")
    p.set_defaults(func=run)


def run(args) -> int:
    from lamina.config import load_config, preset_names
    from lamina.data import corpus_names
    from lamina.mixers import mixer_names
    from lamina.models import build_model
    from lamina.train import load_checkpoint, load_model
    from lamina.train.budget import estimate_training_memory

    target, overrides = split_items(args.items)
    if target is None:
        print(f"presets: {', '.join(preset_names())}")
        print(f"mixers:  {', '.join(mixer_names())}")
        print(f"corpora: {', '.join(corpus_names())}")
        return 0
    if Path(target).is_dir():
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
