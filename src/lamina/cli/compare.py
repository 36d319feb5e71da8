"""``lamina compare``: train several architectures at equal parameters and budget and write a report
(:mod:`lamina.tools.compare`)."""

from __future__ import annotations

from lamina.cli.args import POSITIVE, bounded, names_and_overrides


def add(sub) -> None:
    p = sub.add_parser("compare", help="train several architectures at equal parameters and budget; write a report")
    p.add_argument("items", nargs="*", metavar="ARCH|key=value",
                   help="presets or mixer names (parameters matched to the first), then overrides for all")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=POSITIVE, help="training tokens per architecture (default: a few CPU minutes)")
    budget.add_argument("--minutes", type=bounded(float, 0, above=True), help="training minutes per architecture instead of a token budget")
    p.add_argument("--out", help="report directory (default: runs/compare-ARCH-ARCH...)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--width-multiple", type=POSITIVE, default=32, help="matched widths are multiples of this (default 32)")
    p.set_defaults(func=run)


def run(args) -> int:
    import shlex
    import time
    from pathlib import Path

    from lamina.tools.compare import DEFAULT_TOKENS, Budget, compare

    names, overrides = names_and_overrides(args.items)
    tokens = DEFAULT_TOKENS if args.tokens is None and args.minutes is None else args.tokens
    budget = Budget(tokens=tokens, minutes=args.minutes)
    out = Path(args.out or "runs/compare-" + "-".join(names))
    flag = f"--tokens {tokens}" if tokens is not None else f"--minutes {args.minutes:g}"
    command = " ".join(["lamina compare", *map(shlex.quote, names + overrides), flag, f"--device {args.device}"])
    start = time.time()
    compare(names, overrides, budget, out, device=args.device, width_multiple=args.width_multiple, command=command)
    print(f"compared {len(names)} architectures in {time.time() - start:.0f} s; report in {out / 'report.md'}")
    return 0
