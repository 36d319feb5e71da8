"""Peak memory of evaluation over long streams with carried state: bounded, not growing with the stream.

A small recurrent LM (hgrn layers, untrained: memory does not depend on the
weights) is evaluated with :func:`lamina.eval.evaluate` over the first N
tokens of the stdlib corpus' train split (repeated if it is shorter), with
state carried across segments. Each length runs in a fresh process, so its
peak RSS (``resource.getrusage``) is its own: the stream is prepared in a
process of its own too, and the parent never imports torch, because Linux
carries a process's peak RSS over into a child forked and exec'd from it. Only one segment's logits exist
at a time and only loss sums are kept; what grows with N is the token ids
themselves (8 bytes a token as int64).

Prints a table and writes ``benchmarks/results/long-stream-<device>.{json,md}``.

    python benchmarks/long_stream.py                        # 10K, 100K, 1M tokens on CPU
    python benchmarks/long_stream.py --lengths 10000,100000 --d-model 64
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(args) -> None:
    """Evaluate over the first ``args.child`` tokens of the saved stream; print one JSON line."""
    import torch

    from lamina.config import ModelConfig
    from lamina.eval import evaluate
    from lamina.models import LM

    torch.set_num_threads(args.threads)
    n = args.child
    tokens = torch.from_file(args.stream, size=n + 1, dtype=torch.int16).long()  # only the tokens needed
    torch.manual_seed(0)
    model = LM(ModelConfig(d_model=args.d_model, layers=["hgrn"] * args.layers), 257)
    evaluate(model, tokens[: args.tgt_len * args.batch + 1], batch_size=args.batch, tgt_len=args.tgt_len)  # warm-up
    before = peak_rss_mib()
    start = time.perf_counter()
    result = evaluate(model, tokens, batch_size=args.batch, tgt_len=args.tgt_len, carry=True)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "tokens": result.tokens, "bits_per_byte": result.nats / math.log(2), "seconds": seconds,
        "tokens_per_s": result.tokens / seconds, "rss_before_eval_mib": before, "peak_rss_mib": peak_rss_mib(),
        "token_ids_mib": tokens.numel() * 8 / 2**20, "state_floats_per_stream": model.state_size(),
        "parameters": model.num_parameters(), "torch": torch.__version__,
    }))


def prepare(args) -> None:
    """Write the first ``max(lengths) + 1`` stdlib train tokens to ``args.stream`` as int16."""
    import torch

    from lamina.data import ByteTokenizer, encode_split, load_corpus

    need = max(int(n) for n in args.lengths.split(",")) + 1
    tokens = encode_split(ByteTokenizer(), load_corpus("stdlib"), "train")
    tokens = tokens.repeat(-(-need // tokens.numel()))[:need].to(torch.int16)  # ids < 257 fit
    Path(args.stream).write_bytes(tokens.numpy().tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="10000,100000,1000000")
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="parallel streams")
    parser.add_argument("--tgt-len", type=int, default=512, help="segment length")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared machine more spin-wait)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.prepare:
        return prepare(args)

    lengths = [int(n) for n in args.lengths.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "stream.i16"
        subprocess.run([sys.executable, __file__, "--prepare", "--lengths", args.lengths, "--stream", str(stream)], check=True)
        for n in lengths:
            cmd = [sys.executable, __file__, "--child", str(n), "--stream", str(stream), "--d-model", str(args.d_model),
                   "--layers", str(args.layers), "--batch", str(args.batch), "--tgt-len", str(args.tgt_len),
                   "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = {"stream_tokens": n, **json.loads(out.strip().splitlines()[-1])}
            torch_version = row.pop("torch")
            rows.append(row)
            print(f"{n:>10,} tokens: peak RSS {row['peak_rss_mib']:7.1f} MiB (before eval {row['rss_before_eval_mib']:.1f}), "
                  f"{row['tokens_per_s']:,.0f} tokens/s, {row['bits_per_byte']:.3f} bits/byte", flush=True)

    meta = {
        "device": "cpu", "cpu": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch_version, "python": platform.python_version(),
        "model": f"{args.layers} x hgrn, d_model {args.d_model}, vocab 257, untrained",
        "batch_streams": args.batch, "tgt_len": args.tgt_len, "carry": True,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "long-stream-cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Evaluation memory over long streams (CPU)",
        "",
        f"{meta['model']}; {args.batch} streams of {args.tgt_len}-token segments, state carried; "
        f"{args.threads} threads, torch {meta['torch']}. Each length in a fresh process; "
        "peak RSS from `resource.getrusage`. Token ids are held as int64 (8 bytes a token).",
        "",
        "| stream tokens | peak RSS (MiB) | RSS before eval (MiB) | token ids (MiB) | tokens/s | bits/byte |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['stream_tokens']:,} | {r['peak_rss_mib']:.1f} | {r['rss_before_eval_mib']:.1f} | "
                     f"{r['token_ids_mib']:.1f} | {r['tokens_per_s']:,.0f} | {r['bits_per_byte']:.3f} |")
    if len(rows) > 1:
        a, b = rows[-2], rows[-1]
        lines += ["", f"From {a['stream_tokens']:,} to {b['stream_tokens']:,} tokens the peak RSS grows by "
                  f"{b['peak_rss_mib'] - a['peak_rss_mib']:.1f} MiB, of which {b['token_ids_mib'] - a['token_ids_mib']:.1f} MiB "
                  "is the larger array of int64 token ids and the rest allocator variation: the evaluation itself holds one segment's logits "
                  f"({args.batch} x {args.tgt_len} x 257 floats) and running sums. Tokens/s on a shared machine are indicative only."]
    (RESULTS / "long-stream-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
