"""Our chunked GLA op and gated scan against fla's Triton kernels and SDPA, on one GPU.

Same run, same shapes (B=8, H=16, D=128, T = 2048 and 8192, bf16):

- speed: forward + backward time of ``lamina.ops.gla`` (vector gates) and
  ``lamina.ops.gated_scan`` (HGRN's scan over H*D channels) against
  flash-linear-attention's ``chunk_gla`` and ``chunk_hgrn`` and against
  causal ``scaled_dot_product_attention``, with the ratios;
- numerics: identical bf16 inputs into ours and fla's, outputs and input
  gradients compared with each other and with our float64 reference loop
  (which decides who is right where they differ).

Writes ``benchmarks/results/gpu-ops-<gpu>.{json,md}``. Needs CUDA and
``flash-linear-attention==0.6.0`` / ``fla-core==0.6.0``.

    python benchmarks/gpu_ops.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from lamina.ops import gated_scan, gated_scan_reference
from lamina.ops.gla import gla, gla_reference

RESULTS = Path(__file__).parent / "results"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def time_ms(fn, repeats: int = 10) -> float:
    """Median milliseconds of ``fn`` (forward and backward) after two warm-ups, by CUDA events."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def gla_inputs(B, T, H, D, dtype, seed=0):
    """q, k, v and GLA-like log gates (logsigmoid(x) / 16, as the GLA layer makes them)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, device="cuda", generator=gen).to(dtype) for _ in range(3))
    g = (F.logsigmoid(torch.randn(B, T, H, D, device="cuda", generator=gen)) / 16).to(dtype)
    return q, k, v, g


def scan_inputs(B, T, C, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(B, T, C, device="cuda", generator=gen).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, C, device="cuda", generator=gen) + 2).to(dtype)
    return x, g


def fwd_bwd(op, *inputs):
    """A closure running ``op`` forward and backward on fresh leaves of ``inputs``."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]

    def run():
        out = op(*leaves)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(torch.ones_like(out))
        for t in leaves:
            t.grad = None

    return run


def speed(args) -> list[dict]:
    from fla.ops.gla import chunk_gla
    from fla.ops.hgrn import chunk_hgrn

    B, H, D = args.batch, args.heads, args.head_dim
    rows = []
    for T in args.lengths:
        q, k, v, g = gla_inputs(B, T, H, D, torch.bfloat16)
        x, gs = scan_inputs(B, T, H * D, torch.bfloat16)
        scale = D**-0.5
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        times = {
            "lamina gla": time_ms(fwd_bwd(lambda *a: gla(*a, scale=scale), q, k, v, g)),
            "fla chunk_gla": time_ms(fwd_bwd(lambda *a: chunk_gla(*a, scale=scale), q, k, v, g)),
            "lamina gated_scan": time_ms(fwd_bwd(gated_scan, x, gs)),
            "fla chunk_hgrn": time_ms(fwd_bwd(chunk_hgrn, x, gs)),
            "sdpa causal": time_ms(fwd_bwd(lambda *a: F.scaled_dot_product_attention(*a, is_causal=True), qt, kt, vt)),
        }
        for name, ms in times.items():
            rows.append({"T": T, "op": name, "ms": ms})
        print(f"T={T}: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in times.items()), flush=True)
    return rows


def numerics(args) -> list[dict]:
    """Ours and fla's in bf16 on identical inputs, each against the float64 reference."""
    from fla.ops.gla import chunk_gla
    from fla.ops.hgrn import chunk_hgrn

    B, H, D, T = 2, 4, args.head_dim, args.check_len
    rows = []
    w = torch.randn(B, T, H, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(7))

    def grads(op, inputs, dtype, weight):
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
        out = op(*leaves)
        out = out[0] if isinstance(out, tuple) else out
        (out.double() * weight.double()).sum().backward()
        return [out.detach()] + [t.grad.detach() for t in leaves]

    q, k, v, g = gla_inputs(B, T, H, D, torch.bfloat16, seed=1)
    scale = D**-0.5
    cases = {
        "gla": (
            (q, k, v, g),
            lambda *a: gla(*a, scale=scale),
            lambda *a: chunk_gla(*a, scale=scale),
            lambda *a: gla_reference(*a, scale=scale),
            ["out", "dq", "dk", "dv", "dg"],
            w,
        ),
    }
    x, gs = scan_inputs(B, T, H * D, torch.bfloat16, seed=2)
    cases["hgrn scan"] = ((x, gs), gated_scan, chunk_hgrn, gated_scan_reference, ["out", "dx", "dg"], w.flatten(2))
    for name, (inputs, ours, theirs, reference, labels, weight) in cases.items():
        want = grads(reference, inputs, torch.float64, weight)
        a = grads(ours, inputs, torch.bfloat16, weight)
        b = grads(theirs, inputs, torch.bfloat16, weight)
        for label, x_ours, x_fla, x_ref in zip(labels, a, b, want):
            row = {"op": name, "tensor": label, "lamina_vs_fla": rel_err(x_ours, x_fla),
                   "lamina_vs_ref": rel_err(x_ours, x_ref), "fla_vs_ref": rel_err(x_fla, x_ref)}
            rows.append(row)
            print(f"{name:9} {label:4} lamina~fla {row['lamina_vs_fla']:.2e}  lamina~ref {row['lamina_vs_ref']:.2e}"
                  f"  fla~ref {row['fla_vs_ref']:.2e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 8192])
    parser.add_argument("--check-len", type=int, default=1000, help="length of the numerics check (the float64 loop)")
    args = parser.parse_args()
    gpu = torch.cuda.get_device_name()
    import fla

    print(f"{gpu}; torch {torch.__version__}; fla {getattr(fla, '__version__', '?')}")
    numeric_rows = numerics(args)
    speed_rows = speed(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "gpu-ops-" + gpu.split()[1].lower() if len(gpu.split()) > 1 else "gpu-ops"
    meta = {"gpu": gpu, "torch": torch.__version__, "fla": getattr(fla, "__version__", "?"), "batch": args.batch,
            "heads": args.heads, "head_dim": args.head_dim, "dtype": "bf16", "check_len": args.check_len}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "speed": speed_rows, "numerics": numeric_rows}, indent=1))

    lines = [f"# GPU ops on {gpu}", "",
             f"torch {meta['torch']}, fla {meta['fla']}; B={args.batch}, H={args.heads}, D={args.head_dim}, bf16; "
             "forward + backward, median of 10 after 2 warm-ups.", "",
             "| T | op | ms | vs fla | vs SDPA |", "| ---: | --- | ---: | ---: | ---: |"]
    for T in args.lengths:
        ms = {r["op"]: r["ms"] for r in speed_rows if r["T"] == T}
        pairs = {"lamina gla": "fla chunk_gla", "lamina gated_scan": "fla chunk_hgrn"}
        for op, t in ms.items():
            vs_fla = f"{t / ms[pairs[op]]:.2f}x" if op in pairs else ""
            lines.append(f"| {T} | {op} | {t:.2f} | {vs_fla} | {t / ms['sdpa causal']:.2f}x |")
    lines += ["", f"Numerics: B=2, H=4, D={args.head_dim}, T={args.check_len}, identical bf16 inputs; relative errors "
              "‖a − b‖/‖b‖ (ref: our float64 loop on the same bf16-rounded inputs).", "",
              "| op | tensor | lamina vs fla | lamina vs ref | fla vs ref |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['op']} | {r['tensor']} | {r['lamina_vs_fla']:.2e} | {r['lamina_vs_ref']:.2e} | {r['fla_vs_ref']:.2e} |"
              for r in numeric_rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
