"""The paper-table recipes: train a preset, score it the way the paper does, print it beside the published figure.

Each recipe is a preset (``lamina train NAME`` runs the same training) sized to
train in under 10 minutes on one H100:

- ``ptb-word``: Penn Treebank, Mikolov's 10K vocabulary, at most 24M parameters;
  test perplexity (Transformer-XL 54.5, AWD-LSTM 57.3);
- ``wikitext-2-word``: WikiText-2, its 33,278-word vocabulary, at most 33M
  parameters; test perplexity (AWD-LSTM 65.8);
- ``ptb-char``: Penn Treebank characters; test bits/char (AWD-LSTM 1.175);
- ``shakespeare-char``: Tiny Shakespeare; validation loss in nats/char over
  256-character windows each read from scratch, as nanoGPT estimates it (1.4697).

Test splits are scored whole, one stream (batch 1), state carried across
segments, as the papers do. Writes ``benchmarks/results/recipes-<device><tag>.{json,md,png}``
after each recipe, so a stopped run keeps what it finished; a later run with the same
tag replaces the rows of the recipes it reruns and keeps the others.

    python benchmarks/recipes.py --data-dir DIR                       # all four
    python benchmarks/recipes.py --data-dir DIR --recipes ptb-word --set train.steps=100 --tag=-smoke
    python benchmarks/recipes.py --report benchmarks/results/recipes-cuda.json   # redraw the table and plot
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lamina.config import load_config
from lamina.data import build_tokenizer, encode_split, load_corpus
from lamina.eval import evaluate
from lamina.models import build_model
from lamina.plotting import pyplot
from lamina.runtime import pick_device
from lamina.train import train

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Recipe:
    preset: str
    metric: str  # "test perplexity", "test bits/char" or "valid nats/char"
    published: tuple[tuple[str, float], ...]  # (who, figure) in the same metric
    max_parameters: int | None = None  # the budget the published comparison holds to

    @property
    def split(self) -> str:
        return self.metric.split()[0]

    def score(self, nats: float) -> float:
        """The paper's number from a mean loss in nats per token."""
        if self.metric.endswith("perplexity"):
            return math.exp(nats)
        return nats / math.log(2) if "bits" in self.metric else nats


RECIPES = {
    "ptb-word": Recipe("ptb-word", "test perplexity",
                       (("Transformer-XL (Dai et al. 2019)", 54.5), ("AWD-LSTM (Merity et al. 2018)", 57.3)),
                       24_000_000),
    "wikitext-2-word": Recipe("wikitext-2-word", "test perplexity", (("AWD-LSTM (Merity et al. 2018)", 65.8),),
                              33_000_000),
    "ptb-char": Recipe("ptb-char", "test bits/char", (("AWD-LSTM (Merity et al. 2018)", 1.175),)),
    "shakespeare-char": Recipe("shakespeare-char", "valid nats/char", (("nanoGPT (Karpathy 2023)", 1.4697),)),
}


def score_split(recipe: Recipe, result, cfg, device: torch.device) -> tuple[float, int]:
    """The recipe's metric on its split: whole test stream with carried state, or nanoGPT's from-scratch windows."""
    corpus = load_corpus(cfg.data.corpus, cfg.data.data_dir, cfg.data.download)
    tokens = encode_split(result.tokenizer, corpus, recipe.split)
    from_scratch = recipe.split == "valid"  # nanoGPT: every window of seq_len read without the past
    scored = evaluate(
        result.model, tokens, batch_size=64 if from_scratch else 1, tgt_len=cfg.train.seq_len,
        carry=not from_scratch, device=device, precision=cfg.train.precision, name=f"{recipe.split} split",
    )
    return recipe.score(scored.nats), scored.tokens


def check_budget(name: str, recipe: Recipe, cfg) -> None:
    """Refuse, before any training, a model larger than the published comparison allows."""
    if recipe.max_parameters is None:
        return
    corpus = load_corpus(cfg.data.corpus, cfg.data.data_dir, cfg.data.download)
    vocab = cfg.model.vocab_size or build_tokenizer(cfg.data.tokenizer, corpus).vocab_size
    with torch.device("meta"):
        parameters = build_model(cfg.model, vocab).num_parameters()
    if parameters > recipe.max_parameters:
        raise SystemExit(f"recipes: error: {name} has {parameters:,} parameters, over the {recipe.max_parameters:,} "
                         "its published figures hold to; lower model.d_model, model.mlp_hidden or the layers")


def run_recipe(name: str, args) -> dict:
    recipe = RECIPES[name]
    cfg = load_config(recipe.preset, [f"train.out_dir={args.runs}/{name}", "train.sample_tokens=0", *args.set])
    cfg.data.data_dir = args.data_dir
    check_budget(name, recipe, cfg)
    device = pick_device(cfg.train.device)
    start = time.time()
    result = train(cfg, log=lambda line: print(f"[{name}] {line}", flush=True), overwrite=True)  # from scratch
    minutes = (time.time() - start) / 60
    parameters = result.model.num_parameters()
    value, tokens = score_split(recipe, result, cfg, device)
    curve = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "recipe": name, "metric": recipe.metric, "ours": value, "published": recipe.published,
        "parameters": parameters, "max_parameters": recipe.max_parameters,
        "steps": result.step, "train_minutes": minutes, "scored_tokens": tokens,
        "curve": [(row["elapsed"] / 60, recipe.score(row["valid_loss"])) for row in curve if "valid_loss" in row],
        "config": {"model": asdict(cfg.model), "train": asdict(cfg.train)},
    }


def table(rows: list[dict], machine: str, torch_version: str) -> str:
    lines = [
        f"# Paper-table recipes ({machine}, torch {torch_version})",
        "",
        "Each recipe is a preset trained once from scratch (`lamina train NAME --data-dir DIR`), then scored as the "
        "paper scores it: test splits whole, one stream with state carried; Tiny Shakespeare's validation loss "
        "over 256-character windows read from scratch, as nanoGPT estimates it.",
        "",
        "Reproduce: `python benchmarks/recipes.py --data-dir DIR [--recipes NAME,...]`; each row's JSON entry holds "
        "its full config and validation curve.",
        "",
        "| recipe | metric | ours | published | parameters | training | steps |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        published = "; ".join(f"{who} {figure:g}" for who, figure in r["published"])
        budget = f" (≤ {r['max_parameters'] / 1e6:g}M)" if r["max_parameters"] else ""
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['recipe']} | {r['metric']} | {r['ours']:.4g} | {published} | "
                     f"{r['parameters'] / 1e6:.1f}M{budget} | {r['train_minutes']:.1f} min{note} | {r['steps']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """One panel per recipe: the validation metric against training minutes, the published figures as lines."""
    plt = pyplot("the recipes' plot")
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rows):
        minutes, values = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot(minutes, values, marker="o", label="ours (valid)")
        for who, figure in r["published"]:
            ax.axhline(figure, linestyle="--", color="gray")
            ax.annotate(who.split(" (")[0], (0, figure), textcoords="offset points", xytext=(2, 2), fontsize=7)
        ax.set_title(r["recipe"])
        ax.set_xlabel("training minutes")
        ax.set_ylabel(r["metric"].split(" ", 1)[1])
        if r["metric"].endswith("perplexity"):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every recipe")
    parser.add_argument("--runs", default="runs/recipes", help="where the runs are saved")
    parser.add_argument("--tag", default="", help="appended to the results' file names")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the results are written")
    parser.add_argument("--report", metavar="JSON", help="only redraw the table and plot of a results JSON")
    args = parser.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        write_report(saved["rows"], saved["machine"], saved["torch"], Path(args.report).with_suffix(""))
        print(table(saved["rows"], saved["machine"], saved["torch"]))
        return
    if not args.data_dir:
        parser.error("--data-dir is required to train")
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    device = pick_device("auto")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    stem = args.results / f"recipes-{device.type}{args.tag}"
    args.results.mkdir(parents=True, exist_ok=True)
    json_path = stem.with_suffix(".json")
    rows = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    for name in names:
        r = run_recipe(name, args)
        rows = [row for row in rows if row["recipe"] != name] + [r]
        rows.sort(key=lambda row: list(RECIPES).index(row["recipe"]))
        published = ", ".join(f"{who} {figure:g}" for who, figure in r["published"])
        print(f"{name}: {r['metric']} {r['ours']:.4g} (published: {published}), "
              f"{r['parameters']:,} parameters, {r['train_minutes']:.1f} min", flush=True)
        json_path.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows}, indent=1))
        write_report(rows, machine, torch.__version__, stem)
    print(table(rows, machine, torch.__version__))


def write_report(rows: list[dict], machine: str, torch_version: str, stem: Path) -> None:
    stem.with_suffix(".md").write_text(table(rows, machine, torch_version))
    plot(rows, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
