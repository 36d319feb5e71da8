"""Typing noise: deterministic, about the requested rate, each edit of the documented kind, any bytes accepted."""

import pytest

from lamina.cli import main
from lamina.data.noise import NEIGHBOURS, corrupt, corrupt_documents
from lamina.errors import LaminaError

TEXT = ("The quick brown fox jumps over the lazy dog while 42 zebras watch. " * 60).encode()


def test_deterministic_and_seeded():
    assert corrupt(TEXT, 0.05, seed=1) == corrupt(TEXT, 0.05, seed=1)
    assert corrupt(TEXT, 0.05, seed=1) != corrupt(TEXT, 0.05, seed=2)
    assert corrupt(TEXT, 0.0) == TEXT


def test_rate_is_about_right():
    """Edits change the length by -1 (drop, or substitute of a key-less character), +1 (double) or 0."""
    out = corrupt(TEXT, 0.05, seed=3)
    changed = sum(a != b for a, b in zip(out, TEXT))
    assert 0 < abs(len(out) - len(TEXT)) < 0.05 * len(TEXT)
    assert changed > 0.01 * len(TEXT)  # the text is edited from early on (shifts count as changes after the first)
    assert len(corrupt(TEXT, 1.0, seed=3)) != len(TEXT)


def test_single_edits_are_of_the_documented_kinds():
    """One character at rate 1 is a keyboard neighbour, dropped, doubled or (last, nothing to swap) kept."""
    seen = {corrupt(b"a", 1.0, seed=seed).decode() for seed in range(200)}
    neighbours = set(NEIGHBOURS["a"])
    assert seen <= neighbours | {"", "aa", "a"}
    assert {"", "aa", "a"} <= seen and seen & neighbours
    assert "ba" in {corrupt(b"ab", 1.0, seed=seed).decode() for seed in range(200)}  # a swap


def test_keeps_case_and_any_bytes():
    for seed in range(50):
        out = corrupt(b"Q", 1.0, seed=seed).decode()
        assert out in {"", "QQ", "Q"} or (out.lower() in NEIGHBOURS["q"] and (out.isupper() or out.isdigit()))
    noisy = bytes(range(256)) * 4
    assert isinstance(corrupt(noisy, 0.5, seed=0), bytes)  # invalid UTF-8 passes through edits unharmed
    assert corrupt(noisy, 0.0, seed=0) == noisy


def test_documents_are_corrupted_each_with_its_own_seed():
    docs = [b"the same text, twice over", b"the same text, twice over"]
    out = corrupt_documents(docs, 0.5, seed=3)
    assert out == [corrupt(docs[0], 0.5, seed=3_000_009), corrupt(docs[1], 0.5, seed=3_000_010)]
    assert out[0] != out[1] and out == corrupt_documents(docs, 0.5, seed=3)


def test_bad_rate():
    with pytest.raises(LaminaError, match="rate"):
        corrupt(TEXT, 1.5)


def test_eval_corrupt_scores_worse(tmp_path, capsys):
    run = tmp_path / "run"
    small = ["model.d_model=32", "train.steps=30", "train.batch_size=4", "train.seq_len=32", "train.eval_tokens=512",
             "train.sample_tokens=0", f"train.out_dir={run}"]
    assert main(["train", "default", *small]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "valid", "--max-tokens", "4000", "--carry", "yes"]) == 0
    clean = float(capsys.readouterr().out.split("bits/byte")[0].split()[-1])
    assert main(["eval", str(run), "--split", "valid", "--max-tokens", "4000", "--carry", "yes", "--corrupt", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "20.0% of its characters corrupted" in out
    assert float(out.split("bits/byte")[0].split()[-1]) > clean
