"""The paper-table recipes: standard vocabularies and splits, parameter budgets, and the script end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.config import load_config
from lamina.data import build_tokenizer, encode_split, load_corpus
from lamina.models import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from recipes import RECIPES  # noqa: E402


@pytest.mark.parametrize("name, vocab, test_tokens", [("ptb-word", 10_000, 82_430), ("wikitext-2-word", 33_278, 245_569)])
def test_word_recipes_use_the_standard_vocabulary_and_stay_within_budget(shared_data, name, vocab, test_tokens):
    cfg = load_config(name)
    corpus = load_corpus(cfg.data.corpus, shared_data, download=False)
    tokenizer = build_tokenizer(cfg.data.tokenizer, corpus)
    assert tokenizer.vocab_size == vocab
    assert len(encode_split(tokenizer, corpus, "test")) == test_tokens  # the test split every paper scores
    parameters = build_model(cfg.model, tokenizer.vocab_size).num_parameters()
    assert parameters <= RECIPES[name].max_parameters


def test_scores_are_the_papers_units():
    nats = 4.5
    assert RECIPES["ptb-word"].score(nats) == pytest.approx(math.exp(nats))
    assert RECIPES["ptb-char"].score(nats) == pytest.approx(nats / math.log(2))
    assert RECIPES["shakespeare-char"].score(nats) == nats
    assert [RECIPES[n].split for n in RECIPES] == ["test", "test", "test", "valid"]


def test_recipes_script_trains_scores_and_reports(shared_data, tmp_path):
    tiny = ["model.d_model=32", "model.layers=[xl]", "model.mlp_hidden=64", "model.mixers={xl: {heads: 2, mem_len: 8}}",
            "train.steps=3", "train.eval_every=3", "train.batch_size=2", "train.seq_len=16", "train.eval_tokens=512"]
    args = [sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--data-dir", str(shared_data),
            "--recipes", "ptb-word", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path), "--tag=-t"]
    for override in tiny:
        args += ["--set", override]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    row = json.loads((tmp_path / "recipes-cpu-t.json").read_text())["rows"][0]
    assert row["recipe"] == "ptb-word" and row["steps"] == 3 and row["parameters"] <= row["max_parameters"]
    assert row["scored_tokens"] == 82_430 - 1  # every test token but the first is predicted: one stream
    assert 1 < row["ours"] < 2 * 10_000  # a perplexity, near a uniform guess after three steps
    assert "Transformer-XL (Dai et al. 2019) 54.5" in (tmp_path / "recipes-cpu-t.md").read_text()
    png = tmp_path / "recipes-cpu-t.png"
    assert png.stat().st_size > 1000
    png.unlink()
    redrawn = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--report",
                              str(tmp_path / "recipes-cpu-t.json")], capture_output=True, text=True, timeout=120)
    assert redrawn.returncode == 0, redrawn.stderr
    assert png.is_file()


def test_unknown_recipe_is_refused(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--data-dir", str(tmp_path),
                           "--recipes", "ptb-words"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown recipes ['ptb-words']" in done.stderr


def test_a_model_over_the_budget_is_refused_before_training(shared_data, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--data-dir", str(shared_data),
                           "--recipes", "ptb-word", "--set", "model.d_model=640", "--runs", str(tmp_path / "runs"),
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "over the 24,000,000 its published figures hold to" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained
