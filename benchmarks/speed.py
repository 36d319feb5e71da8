"""Training and generation tokens/s per mixer at several context lengths.

For each mixer, a 4-layer LM of that mixer (d_model 256 by default) is timed:
- training: forward + backward + AdamW step on B x T tokens (tokens/s = B*T / step time);
- generation: one sequence, prefill of T tokens, then single-token decode steps
  (tokens/s of the decode steps; attention keeps a T-token memory).

Prints a table and writes ``benchmarks/results/speed-<device>.{json,md}``.

    python benchmarks/speed.py                       # CPU, T = 256, 1024, 4096
    python benchmarks/speed.py --device cuda --batch 16
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lamina.config import ModelConfig
from lamina.eval import autocast_for
from lamina.mixers import mixer_names
from lamina.models import LM

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def build(mixer: str, d_model: int, layers: int, mem_len: int, device: torch.device) -> LM:
    mixers = {"attn": {"heads": max(1, d_model // 64), "mem_len": mem_len}}
    return LM(ModelConfig(d_model=d_model, layers=[mixer] * layers, mixers=mixers), 257).to(device)


def bench_train(mixer, T, args, device) -> float:
    model = build(mixer, args.d_model, args.layers, 0, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 256, (args.batch, T + 1), device=device)

    def step():
        with autocast_for(device, "auto"):
            logits, _ = model(ids[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return args.batch * T / timed(step, device, args.repeats)


@torch.no_grad()
def bench_generate(mixer, T, args, device) -> float:
    model = build(mixer, args.d_model, args.layers, T, device).eval()
    prompt = torch.randint(0, 256, (1, T), device=device)
    token = torch.randint(0, 256, (1, 1), device=device)

    def decode():
        with autocast_for(device, "auto"):
            _, state = model(prompt)
            sync(device)
            start = time.perf_counter()
            for _ in range(args.decode_steps):
                _, state = model(token, state)
            sync(device)
        decode.seconds = time.perf_counter() - start

    timed(decode, device, 1)
    return args.decode_steps / decode.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixers", default=",".join(mixer_names()), help="comma-separated (default: every mixer)")
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    rows = []
    print(f"{'mixer':8} {'T':>6} {'train tok/s':>14} {'generate tok/s':>15}")
    for mixer in args.mixers.split(","):
        for T in map(int, args.lengths.split(",")):
            train_tps = bench_train(mixer, T, args, device)
            gen_tps = bench_generate(mixer, T, args, device)
            rows.append({"mixer": mixer, "T": T, "train_tokens_per_s": train_tps, "generate_tokens_per_s": gen_tps})
            print(f"{mixer:8} {T:>6} {train_tps:>14,.0f} {gen_tps:>15,.1f}", flush=True)
    meta = {
        "device": machine, "torch": torch.__version__, "d_model": args.d_model, "layers": args.layers,
        "batch": args.batch, "decode_steps": args.decode_steps, "repeats": args.repeats,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"speed-{device.type}"
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# Speed on {machine}",
        "",
        f"4-layer LMs, d_model {meta['d_model']}, training batch {meta['batch']}, {meta['precision']}, torch {meta['torch']}.",
        f"Training: median of {meta['repeats']} timed steps after one warm-up. "
        f"Generation: tokens/s of {meta['decode_steps']} decode steps after a T-token prefill (batch 1).",
        "",
        "| mixer | T | train tokens/s | generate tokens/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['mixer']} | {r['T']} | {r['train_tokens_per_s']:,.0f} | {r['generate_tokens_per_s']:,.1f} |" for r in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / name}.json and .md")


if __name__ == "__main__":
    main()
