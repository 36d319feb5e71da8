"""What Transformer-XL's memory buys: the `xl` preset with and without memory, same segments and parameters.

For each corpus, two models identical but for ``mem_len`` (0 and ``--mem-len``)
train for the same steps on the same ``seq_len``-token segments; each is then
evaluated on the whole validation split with its state carried, at its
training memory and at longer ones (Transformer-XL's evaluation protocol:
train with a short memory, evaluate with a longer one).

Writes ``benchmarks/results/xl-memory-<device>.{json,md}``.

    python benchmarks/xl_memory.py --data-dir DIR              # ptb-char and wikitext-2
    python benchmarks/xl_memory.py --data-dir DIR --corpora wikitext-2 --lr 1e-3 --mem-len 64 --tag=-wt2-mem64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lamina.config import load_config
from lamina.data import encode_split, load_corpus, metric_unit
from lamina.eval import evaluate, format_metric
from lamina.runtime import pick_device
from lamina.train import train

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--corpora", default="ptb-char,wikitext-2")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mem-len", type=int, default=128)
    parser.add_argument("--eval-mems", default="0,128,256,512", help="memory lengths tried at evaluation")
    parser.add_argument("--eval-tokens", type=int, default=0, help="validation tokens scored (0: all)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="model.dropout (without it both models overfit wikitext-2 and memory makes it worse)")
    parser.add_argument("--lr", type=float, default=None, help="train.lr (default: the xl preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every model (e.g. model.dropout=0.1)")
    parser.add_argument("--xl", default="", help="extra xl options for every model, as YAML flow pairs (clamp_len: 64)")
    parser.add_argument("--eval-every", type=int, default=0, help="also record validation every N steps (0: end only)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", default="/tmp/xl-memory")
    args = parser.parse_args()
    device = pick_device("auto")
    rows = []
    for corpus in args.corpora.split(","):
        for mem in (0, args.mem_len):
            cfg = load_config("xl", [
                f"data.corpus={corpus}", f"data.data_dir={args.data_dir}", f"model.mixers={{xl: {{heads: 4, mem_len: {mem}{', ' + args.xl if args.xl else ''}}}}}",
                f"train.steps={args.steps}", f"train.seq_len={args.seq_len}", f"train.batch_size={args.batch}",
                f"train.eval_every={args.eval_every or args.steps}", f"train.save_every={args.steps}",
                "train.sample_tokens=0", f"train.out_dir={args.out}/{corpus}-mem{mem}{args.tag}", f"model.dropout={args.dropout}",
                *([f"train.lr={args.lr}"] if args.lr else []), *args.set,
            ])
            start = time.time()
            result = train(cfg, log=lambda *_: None, overwrite=True)
            seconds = time.time() - start
            history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
            curve = [(h["step"], round(h["valid_loss"], 4)) for h in history if "valid_loss" in h]
            train_losses = [h["loss"] for h in history if "loss" in h][-10:]
            train_nats = sum(train_losses) / len(train_losses)
            print(f"{corpus:10} train mem {mem:4}: valid curve {curve}, train loss (last logs) {train_nats:.4f}", flush=True)
            corpus_data = load_corpus(corpus, args.data_dir)
            tokens = encode_split(result.tokenizer, corpus_data, "valid")
            unit = metric_unit(corpus_data, result.tokenizer)
            for eval_mem in map(int, args.eval_mems.split(",")):
                with result.model.memory(mem_len=eval_mem):
                    ev = evaluate(result.model, tokens, batch_size=8, tgt_len=args.seq_len, carry=True,
                                  max_tokens=args.eval_tokens, device=device, precision=cfg.train.precision, name=f"valid split of {corpus}")
                row = {"corpus": corpus, "train_mem_len": mem, "eval_mem_len": eval_mem, "nats": ev.nats,
                       "metric": format_metric(unit, ev.nats), "tokens": ev.tokens,
                       "parameters": result.model.num_parameters(), "train_seconds": seconds,
                       "train_nats": train_nats, "valid_curve": curve}
                rows.append(row)
                print(f"{corpus:10} train mem {mem:4} eval mem {eval_mem:4}: {row['metric']} "
                      f"({ev.nats:.4f} nats/token, {ev.tokens:,} tokens); {row['parameters']:,} parameters, "
                      f"trained {seconds:.0f} s", flush=True)
    name = "xl-memory-" + (torch.cuda.get_device_name().split()[1].lower() if device.type == "cuda" else "cpu") + args.tag
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "steps": args.steps,
            "seq_len": args.seq_len, "batch": args.batch, "torch": torch.__version__, "dropout": args.dropout, "lr": args.lr, "overrides": args.set, "xl": args.xl}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Transformer-XL memory on {meta['device']}", "",
             f"`xl` preset (4 layers, d_model 256, 4 heads), {args.steps} steps of {args.batch} x {args.seq_len} tokens, "
             f"torch {meta['torch']}; validation split, state carried, every position scored once.",
             f"Dropout {args.dropout}; lr {args.lr or 'of the preset'}; other overrides: {', '.join(args.set) or 'none'}; "
             f"xl options: {args.xl or 'none'}.", "",
             "| corpus | train mem_len | eval mem_len | validation | nats/token | train nats/token | parameters |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['corpus']} | {r['train_mem_len']} | {r['eval_mem_len']} | {r['metric']} | {r['nats']:.4f} | {r['train_nats']:.4f} | "
              f"{r['parameters']:,} |" for r in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
