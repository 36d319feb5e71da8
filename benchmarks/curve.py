"""Plot a run's training and validation loss against steps and wall time.

    python benchmarks/curve.py runs/shakespeare-char/metrics.jsonl NAME [--reference 1.47]

Writes ``benchmarks/results/NAME.png`` and ``NAME.md`` (the validation curve as a table).
Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("name")
    parser.add_argument("--reference", type=float, default=None, help="a published validation loss to draw")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    valid = [r for r in rows if "valid_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "step", "step"), (axes[1], "elapsed", "wall time (s)")):
        ax.plot([r[key] for r in train], [r["loss"] for r in train], label="train loss", alpha=0.6)
        ax.plot([r[key] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation loss")
        if args.reference is not None:
            ax.axhline(args.reference, color="gray", linestyle="--", label=f"reference {args.reference}")
        ax.set_xlabel(label)
        ax.set_ylabel("nats per token")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(args.title or args.name)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{args.name}.png", dpi=110)
    lines = ["| step | wall time (s) | validation loss (nats) |", "| ---: | ---: | ---: |"]
    lines += [f"| {r['step']} | {r['elapsed']:.0f} | {r['valid_loss']:.4f} |" for r in valid]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / args.name}.png and .md; best validation loss {min(r['valid_loss'] for r in valid):.4f}")


if __name__ == "__main__":
    main()
