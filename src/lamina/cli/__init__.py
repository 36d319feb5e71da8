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
# Each command is one module of this package: ``add`` declares its arguments, ``run`` calls the library and
# prints what it returns.

from __future__ import annotations

import argparse
import sys

from lamina.cli import bench, compare, evaluate, generate, info, recall, train
from lamina.errors import LaminaError

COMMANDS = (train, evaluate, generate, info, compare, bench, recall)  # each: add(subparsers), run(args) -> status


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``lamina eval: error: argument --top-p: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lamina", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
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
