"""``lamina bench``: training and decoding speed and peak memory against context length
(:mod:`lamina.tools.bench`)."""

from __future__ import annotations

from lamina.cli.args import COUNT, POSITIVE, bounded, names_and_overrides, positive_list


def add(sub) -> None:
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
    p.set_defaults(func=run)


def run(args) -> int:
    import shlex
    import time
    from pathlib import Path

    from lamina.runtime import pick_device
    from lamina.tools.bench import DEFAULTS, Settings, bench

    names, overrides = names_and_overrides(args.items)
    device = pick_device(args.device).type
    lengths = positive_list(args.lengths, "--lengths") if args.lengths is not None else DEFAULTS[device]["lengths"]
    settings = Settings.for_device(
        device, d_model=args.d_model, layers=args.layers, batch=args.batch, max_memory_gb=args.max_memory,
        decode_steps=args.decode_steps, repeats=args.repeats, prefill_chunk=args.prefill_chunk,
        max_seconds=args.max_seconds, threads=args.threads,
    )
    out = Path(args.out or "runs/bench-" + "-".join(names))
    command = " ".join(["lamina bench", *map(shlex.quote, names + overrides), "--lengths", ",".join(map(str, lengths)),
                        "--device", device])
    start = time.time()
    bench(names, lengths, settings, out, overrides, command)
    print(f"benchmarked {len(names)} architectures in {time.time() - start:.0f} s; report in {out / 'bench.md'}")
    return 0
