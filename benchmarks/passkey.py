"""Passkey retrieval by prompt length for memory models trained on the task.

Each architecture (same width and depth) trains on passkey prompts
(:mod:`lamina.data.passkey`) of up to ``--train-len`` bytes, read in
``--segment``-byte segments with the state carried and the graph kept across
the whole prompt (backpropagation through every segment of it). The longest
training prompt grows from ``--min-len`` to ``--train-len`` over the first
half of training: copying a key is found on short prompts first. The loss is
the next-byte loss of the prompt plus the loss of the answer. Then every model
is scored with lamina's own passkey evaluation (``lamina eval --passkey``:
chunked prefill in segments, greedy decoding, exact match) on prompts of 1K
to 64K bytes, far longer than any it was trained on. Training and evaluation
prompts come from disjoint seeds.

Writes ``benchmarks/results/passkey-<device>.{json,md}``.

    python benchmarks/passkey.py                           # every architecture, 1K to 64K
    python benchmarks/passkey.py --archs attn,hgrn --steps 50 --lengths 512 --trials 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lamina.config import ModelConfig
from lamina.data.passkey import min_length, passkey_prompt
from lamina.data.tokenizers import ByteTokenizer
from lamina.eval import passkey_accuracy
from lamina.models import LM
from lamina.runtime import pick_device

RESULTS = Path(__file__).parent / "results"
TRAIN_SEEDS = 10**9  # training prompts use seeds from here on; evaluation uses 0, 1, ...


def architectures(segment: int) -> dict[str, dict]:
    """Model configs by name: 4 layers of d_model 256, each a memory mechanism of lamina."""
    attn = {"heads": 4, "mem_len": segment}
    return {
        "attn": {"layers": ["attn"] * 4, "mixers": {"attn": attn}},
        "xl": {"layers": ["xl"] * 4, "mixers": {"xl": {"heads": 4, "mem_len": segment}}},
        "rmt": {"layers": ["attn"] * 4, "mixers": {"attn": attn}, "memory_tokens": 16, "memory_segment": segment},
        "hmt": {"layers": ["attn"] * 4, "mixers": {"attn": attn}, "hmt": {"segment": segment, "sensory": 16, "cache": 32}},
        "titans_mac": {"layers": ["titans_mac"] * 4, "mixers": {"titans_mac": {"heads": 4, "segment": segment}}},
        "titans_mag": {"layers": ["titans_mag"] * 4, "mixers": {"titans_mag": {"heads": 4, "window": segment}}},
        "titans": {"layers": ["titans", "attn"] * 2, "mixers": {"attn": attn}},
        "infini": {"layers": ["infini"] * 4, "mixers": {"infini": {"heads": 4, "segment": segment}}},
        "block_recurrent": {"layers": ["block_recurrent", "attn"] * 2,
                            "mixers": {"attn": attn, "block_recurrent": {"heads": 4, "segment": segment}}},
        "hgrn": {"layers": ["hgrn"] * 4},
        "gla": {"layers": ["gla"] * 4},
    }


def batch_of_prompts(tokenizer, length: int, batch: int, first_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, length]`` ids (prompt then answer) and a ``[B, length - 1]`` mask of the answer's target positions."""
    rows, masks = [], []
    answer_len = len(passkey_prompt(tokenizer, min_length(tokenizer), 0).answer)  # " NNNNN" for bytes
    for b in range(batch):
        p = passkey_prompt(tokenizer, length - answer_len, first_seed + b)
        ids = torch.cat([p.ids, p.answer])
        mask = torch.zeros(length - 1, dtype=torch.bool)
        mask[len(p.ids) - 1 :] = True  # targets ids[len(p.ids):], the answer
        rows.append(ids)
        masks.append(mask)
    return torch.stack(rows), torch.stack(masks)


def train_on_passkeys(model, tokenizer, args, device) -> float:
    """Train ``model`` in place; returns the last step's answer loss (nats per answer byte)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50))
    rng = random.Random(0)
    model.train()
    answer_loss = float("nan")
    for step in range(args.steps):
        # curriculum: the longest prompt grows from min_len to train_len over the first half of training
        longest = args.min_len + round((args.train_len - args.min_len) * min(1.0, 2 * step / args.steps))
        length = rng.randint(args.min_len, longest)
        ids, mask = batch_of_prompts(tokenizer, length, args.batch, TRAIN_SEEDS + step * args.batch)
        ids, mask = ids.to(device), mask.to(device)
        state, losses = None, []
        for start in range(0, length - 1, args.segment):
            stop = min(start + args.segment, length - 1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits, state = model(ids[:, start:stop], state)
            targets = ids[:, start + 1 : stop + 1]
            losses.append(F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none"))  # [B, stop - start]
        per_token = torch.cat(losses, dim=1)
        answer = per_token[mask].mean()
        loss = per_token.mean() + answer
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        answer_loss = answer.item()
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"  step {step + 1}: loss {loss.item():.4f}, answer {answer_loss:.4f} nats/byte", flush=True)
    model.eval()
    return answer_loss


def write_results(rows: list[dict], lengths: list[int], args, device) -> list[str]:
    """Write the rows so far to ``benchmarks/results/passkey-<device><tag>.{json,md}``; returns the table's lines."""
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    tag = (device_name.split()[1].lower() if device.type == "cuda" else "cpu") + args.tag
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"device": device_name, "torch": torch.__version__, **vars(args)}
    (RESULTS / f"passkey-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    head = "| model | parameters | state (floats) | answer loss after training | " + " | ".join(
        f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths) + " |"
    lines = [f"# Passkey retrieval by length on {device_name}", "",
             f"4 layers, d_model {args.d_model}; trained {args.steps} steps of {args.batch} prompts of "
             f"{args.min_len}-{args.train_len} bytes (the longest growing over the first half) in {args.segment}-byte "
             f"segments (lr {args.lr}); "
             f"accuracy over {args.trials} prompts per length (greedy, exact match), prefill in {args.segment}-byte "
             f"segments. torch {meta['torch']}.", "", head, "|" + " --- |" * 1 + " ---: |" * (3 + len(lengths))]
    for r in rows:
        acc = " | ".join(f"{r['accuracy'][n]:.0%}" for n in lengths)
        lines.append(f"| {r['arch']} | {r['parameters']:,} | {r['state_floats']:,} | {r['answer_loss']:.3f} | {acc} |")
    (RESULTS / f"passkey-{tag}.md").write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=None, help="comma-separated subset of the architectures (default: all)")
    parser.add_argument("--lengths", default="1024,4096,16384,65536", help="evaluation prompt lengths in bytes")
    parser.add_argument("--trials", type=int, default=10, help="prompts per length")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--segment", type=int, default=256, help="segment length of training and of the prefill")
    parser.add_argument("--min-len", type=int, default=128, help="shortest training prompt (bytes)")
    parser.add_argument("--train-len", type=int, default=1024, help="longest training prompt (bytes)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()
    device = pick_device("auto")
    tokenizer = ByteTokenizer()
    archs = architectures(args.segment)
    names = args.archs.split(",") if args.archs else list(archs)
    lengths = [int(n) for n in args.lengths.split(",")]
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = LM(ModelConfig(d_model=args.d_model, **archs[name]), tokenizer.vocab_size).to(device)
        print(f"{name}: {model.num_parameters():,} parameters, state {model.state_size():,} floats", flush=True)
        start = time.time()
        answer_loss = train_on_passkeys(model, tokenizer, args, device)
        seconds = time.time() - start
        print(f"  trained in {seconds:.0f} s", flush=True)
        row = {"arch": name, "parameters": model.num_parameters(), "state_floats": model.state_size(),
               "train_seconds": seconds, "answer_loss": answer_loss, "accuracy": {}}
        for length in lengths:
            start = time.time()
            correct, trials = passkey_accuracy(model, tokenizer, length, args.trials, context=args.segment)
            row["accuracy"][length] = correct / trials
            print(f"  {length:>6} bytes: {correct}/{trials} ({time.time() - start:.0f} s)", flush=True)
        rows.append(row)
        write_results(rows, lengths, args, device)  # after every model: a cut-short run keeps what it measured
    print("\n".join(write_results(rows, lengths, args, device)))


if __name__ == "__main__":
    main()
