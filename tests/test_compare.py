"""lamina compare: matched parameters, equal budgets, and the report directory it writes."""

import json
import sys

import pytest

from lamina.cli import main
from lamina.config import load_config
from lamina.tools.compare import Budget, count_parameters, plan, with_width
from lamina.errors import LaminaError

TOKENS = 4 * 32 * 6  # six steps of 4x32 tokens


@pytest.fixture
def small(text_corpus):
    return ["model.d_model=32", "train.batch_size=4", "train.seq_len=32", "train.eval_tokens=1024",
            f"data.corpus={text_corpus}", "model.mixers={attn: {heads: 2}}"]


def test_report_directory(small, tmp_path, capsys, one_thread):
    out = tmp_path / "report"
    code = main(["compare", "hgrn", "attn", "gru", *small, "--tokens", str(TOKENS), "--out", str(out),
                 "--device", "cpu", "--width-multiple", "8"])
    assert code == 0
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| architecture"))
    for column in ("parameters", "state (floats/sequence)", "valid bpb", "train tokens/s", "peak memory (MiB)",
                   "generate tokens/s"):
        assert column in header
    rows = [line for line in report.splitlines() if line.startswith(("| hgrn", "| attn", "| gru"))]
    assert len(rows) == 3
    assert "process peak RSS" in report
    results = json.loads((out / "results.json").read_text())
    archs = results["architectures"]
    assert [a["name"] for a in archs] == ["hgrn", "attn", "gru"]
    for a in archs:
        assert a["steps"] == 6 and a["tokens"] == TOKENS
        assert len(a["curve"]) >= 3  # several validation points
        assert a["curve"][-1]["tokens"] == TOKENS
        assert a["train_tokens_per_s"] > 0 and a["generate_tokens_per_s"] > 0 and a["peak_memory_bytes"] > 0
        assert abs(a["parameters"] / archs[0]["parameters"] - 1) < 0.15  # matched within 15%
    for name in ("valid_vs_tokens.png", "valid_vs_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "gru" / "metrics.jsonl").is_file()


def test_matched_width_is_the_nearest(small):
    """Each later architecture gets the width (among valid multiples of 8) whose count is nearest the first's."""
    archs = plan(["hgrn", "attn", "gru"], small, Budget(tokens=TOKENS), width_multiple=8)
    target = archs[0].parameters
    assert archs[0].config.model.d_model == 32
    for arch in archs[1:]:
        counts = {}
        for d in range(8, 257, 8):
            try:
                counts[d] = count_parameters(load_config(arch.name, with_width(small, d)), arch.vocab)
            except LaminaError:
                continue
        best = min(counts, key=lambda d: abs(counts[d] - target))
        assert arch.config.model.d_model == best
        assert arch.parameters == counts[best]
    assert archs[2].config.model.d_model > 32  # a two-layer GRU needs a wider model to match four HGRN layers
    assert all(a.config.train.steps == 6 for a in archs)


@pytest.mark.parametrize("argv, message", [
    (["nosuchmixer", "attn"], "unknown preset 'nosuchmixer'"),
    (["hgrn"], "at least two architectures"),
    (["hgrn", "hgrn"], "give each architecture once"),
    (["hgrn", "attn", "--tokens", "0"], "--tokens: must be >= 1"),
    (["hgrn", "attn", "--minutes", "-1"], "--minutes: must be > 0"),
])
def test_bad_input_is_a_clear_error(argv, message, small, tmp_path, capsys):
    assert main(["compare", *argv, *small, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lamina") and ": error:" in err and message in err and err.count("\n") == 1


def test_one_corpus_only(small):
    with pytest.raises(LaminaError, match="compare on one corpus"):
        plan(["hgrn", "shakespeare-char"], [o for o in small if not o.startswith("data.")], Budget(tokens=TOKENS))


def test_time_budget(small, tmp_path, one_thread):
    """--minutes gives each architecture the same wall time (training stops at the first step past it)."""
    out = tmp_path / "report"
    assert main(["compare", "attn", "hgrn", *small, "--minutes", "0.03", "--out", str(out), "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["budget"] == {"tokens": None, "minutes": 0.03}
    for a in results["architectures"]:
        assert a["steps"] >= 1
        assert a["tokens"] == a["steps"] * 4 * 32
        assert a["curve"][-1]["step"] == a["steps"]
        assert a["curve"][-1]["elapsed"] > 0.03 * 60  # stopped only once the budget had passed
    assert "0.03 minutes of training each" in (out / "report.md").read_text()


def test_missing_matplotlib_is_a_clear_error(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["compare", "hgrn", "attn", *small, "--out", str(tmp_path / "r")]) == 2
    assert "pip install 'lamina[plots]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was trained
