"""``lamina generate``: stream a saved model's continuation of a prompt."""

from __future__ import annotations

import os
from pathlib import Path

from lamina.cli.args import COUNT, bounded
from lamina.errors import LaminaError, os_reason


def add(sub) -> None:
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
    p.set_defaults(func=run)


def prompt_bytes(args) -> bytes:
    """The prompt's exact bytes: ``--prompt-file``'s, or ``--prompt``'s as typed, valid UTF-8 or not."""
    if args.prompt_file:
        try:
            return Path(args.prompt_file).read_bytes()
        except OSError as err:
            raise LaminaError(f"cannot read --prompt-file {args.prompt_file}: {os_reason(err)}") from None
    # argv arrives decoded with surrogateescape: fsencode gives back the exact bytes, valid UTF-8 or not
    return os.fsencode(args.prompt)


def run(args) -> int:
    from lamina.cli.sample import print_sample
    from lamina.runtime import pick_device
    from lamina.train import load_model

    model, tokenizer, cfg = load_model(args.checkpoint, pick_device(args.device))
    print_sample(model, tokenizer, prompt_bytes(args), cfg.train.seq_len, args.max_new_tokens, args.temperature,
                 args.top_k, args.top_p, args.seed)
    return 0
