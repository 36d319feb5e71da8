"""Hierarchical byte models against the flat byte LM: equal parameters, equal training time.

For each corpus (read as bytes), the flat byte LM (the ``default`` preset's
layers), HAT and MEGABYTE (their presets, whose backbone or global model is the
same layer schedule) train for the same wall-clock budget. HAT's and
MEGABYTE's ``d_model`` is chosen so that their parameter count is the nearest
to the flat model's. Each model is then scored on the validation split clean
and with ``--noise`` of its characters corrupted (:mod:`lamina.data.noise`),
both with state carried, in bits per byte; training tokens/s is the mean over
the logged windows. A word-level LM (the ``default`` preset with the corpus'
word tokenizer, same width) is scored the same way for the robustness
comparison: its bits per byte count every word it cannot spell as the one
``<unk>`` token, so under noise its figure understates what it would cost to
predict the text.

Writes ``benchmarks/results/hierarchical-<device>.{json,md}``.

    python benchmarks/hierarchical.py --data-dir DIR
    python benchmarks/hierarchical.py --data-dir DIR --corpora tinyshakespeare --seconds 20   # a short run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from lamina.config import load_config
from lamina.data import load_corpus
from lamina.data.noise import corrupt
from lamina.eval import evaluate
from lamina.models import build_model
from lamina.runtime import pick_device
from lamina.train import train

RESULTS = Path(__file__).parent / "results"
MODELS = ("flat", "hat", "megabyte", "word")


def config_for(name: str, overrides: list[str], d_model: int | None = None):
    preset = "default" if name in ("flat", "word") else name
    if name == "word":
        overrides = [o for o in overrides if not o.startswith("data.tokenizer=")] + ["data.tokenizer=words"]
    extra = [f"model.d_model={d_model}"] if d_model else []
    return load_config(preset, overrides + extra)


def matched_d_model(name: str, overrides: list[str], target: int) -> int:
    """The backbone width (a multiple of 32) whose parameter count is the nearest to ``target``."""
    def count(d):
        cfg = config_for(name, overrides, d)
        return build_model(cfg.model, 257).num_parameters()
    return min(range(64, 513, 32), key=lambda d: abs(count(d) - target))


def bits_per_byte(model, cfg, tokenizer, documents: list[bytes], device) -> float:
    """Bits per byte of ``documents`` (each with its separator), for byte and word tokenizers alike."""
    tokens = tokenizer.encode_documents(documents)
    result = evaluate(model, tokens, batch_size=8, tgt_len=cfg.train.seq_len, carry=True, device=device,
                      precision=cfg.train.precision)
    n_bytes = sum(len(doc) + 1 for doc in documents)
    return result.nats * result.tokens / n_bytes / math.log(2)


def first_bytes(documents: list[bytes], n: int) -> list[bytes]:
    """The leading documents holding ``n`` bytes (the last one cut); all of them for ``n = 0``."""
    out, total = [], 0
    for doc in documents:
        if n and total >= n:
            break
        out.append(doc[: n - total] if n else doc)
        total += len(out[-1])
    return out


def write_results(rows: list[dict], args, device) -> list[str]:
    """Write the rows so far to ``benchmarks/results/hierarchical-<device>.{json,md}``; returns the table."""
    tag = torch.cuda.get_device_name().split()[1].lower() if device.type == "cuda" else "cpu"
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            **vars(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"hierarchical-{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Hierarchical byte models against the flat byte LM on {meta['device']}", "",
             f"Equal training time ({args.seconds:.0f} s per model), parameters matched through d_model; validation "
             f"bytes ({args.eval_bytes or 'all'}) scored with state carried, clean and with {args.noise:.0%} of "
             f"characters corrupted. torch {meta['torch']}.", "",
             "| corpus | model | d_model | parameters | steps | train tokens/s | bits/byte | bits/byte, noisy |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['corpus']} | {r['model']} | {r['d_model']} | {r['parameters']:,} | {r['steps']:,} | "
              f"{r['tokens_per_s']:,.0f} | {r['bpb']:.4f} | {r['bpb_noisy']:.4f} |" for r in rows]
    (RESULTS / f"hierarchical-{tag}.md").write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--corpora", default="ptb-char,wikitext-2,tinyshakespeare")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=40.0, help="training budget per model")
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of characters corrupted")
    parser.add_argument("--eval-bytes", type=int, default=262144, help="validation bytes scored (0: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every model")
    parser.add_argument("--out", default="/tmp/hierarchical")
    args = parser.parse_args()
    device = pick_device("auto")
    rows = []
    for corpus_name in args.corpora.split(","):
        corpus = load_corpus(corpus_name, args.data_dir)
        documents = first_bytes(corpus.documents("valid"), args.eval_bytes)
        noisy_documents = [corrupt(doc, args.noise, seed=i) for i, doc in enumerate(documents)]
        common = [f"data.corpus={corpus_name}", f"data.data_dir={args.data_dir}", "data.tokenizer=bytes",
                  "train.steps=1000000", f"train.max_minutes={args.seconds / 60}", "train.eval_every=1000000",
                  "train.save_every=1000000", "train.sample_tokens=0", "train.eval_tokens=65536", *args.set]
        target = None
        for name in args.models.split(","):
            overrides = common + [f"train.out_dir={args.out}/{corpus_name}-{name}"]
            d_model = None
            if name == "flat":
                target = build_model(config_for(name, overrides).model, 257).num_parameters()
            elif target is not None and name != "word":  # the word LM's vocabulary is the corpus': same width instead
                d_model = matched_d_model(name, overrides, target)
            cfg = config_for(name, overrides, d_model)
            start = time.time()
            result = train(cfg, log=lambda *_: None, overwrite=True)
            seconds = time.time() - start
            history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
            speeds = [h["tokens_per_s"] for h in history if "tokens_per_s" in h][1:]  # the first window warms up
            model = result.model
            tok = result.tokenizer
            row = {
                "corpus": corpus_name, "model": name, "d_model": cfg.model.d_model,
                "parameters": model.num_parameters(), "steps": result.step, "train_seconds": seconds,
                "tokens_per_s": sum(speeds) / max(len(speeds), 1),
                "bpb": bits_per_byte(model, cfg, tok, documents, device),
                "bpb_noisy": bits_per_byte(model, cfg, tok, noisy_documents, device),
            }
            rows.append(row)
            write_results(rows, args, device)  # after every model: a cut-short run keeps what it measured
            print(f"{corpus_name:15} {name:9} d {row['d_model']:4} {row['parameters']:>10,} params "
                  f"{row['steps']:6} steps {row['tokens_per_s']:>10,.0f} tok/s  bpb {row['bpb']:.4f}  "
                  f"noisy {row['bpb_noisy']:.4f}", flush=True)
    print("\n".join(write_results(rows, args, device)))


if __name__ == "__main__":
    main()
