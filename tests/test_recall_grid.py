"""benchmarks/recall_grid.py: Zoology's Fig. 2 grid of MQAR runs in worker processes, resumable."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "recall_grid.py"
TINY = ["--settings", "32:2", "--models", "attn,hgrn", "--widths", "16", "--lrs", "3e-3", "--vocab-size", "32",
        "--train-examples", "64", "--test-examples", "16", "--epochs", "1", "--batch-size", "32", "--tag", "t"]


def _grid(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def _load_script():
    spec = importlib.util.spec_from_file_location("recall_grid", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recall_grid_writes_results_and_resumes(tmp_path, capsys, one_thread):
    done = _grid(*TINY, "--jobs", "2", "--out", str(tmp_path))  # a process of its own: the workers are spawned
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "recall-grid-t.json").read_text())
    runs = {(r["model"], r["d_model"], r["lr"]): r for r in data["runs"]}
    assert set(runs) == {("attn", 16, 3e-3), ("hgrn", 16, 3e-3)}
    assert runs["attn", 16, 3e-3]["state_size"] == 2 * 2 * 32 * 16  # two layers' KV cache over 32 tokens
    assert all(0 <= r["accuracy"] <= 1 and r["seconds"] > 0 for r in runs.values())
    table = (tmp_path / "recall-grid-t.md").read_text()
    assert "## Length 32, 2 key-value pairs" in table and "| attn | 16 | 2,048 |" in table and "| hgrn | 16 |" in table
    assert (tmp_path / "recall-grid-t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second call with one more model trains only that model; the finished runs are kept as they were
    argv = [*TINY, "--out", str(tmp_path)]
    argv[argv.index("--models") + 1] = "attn,hgrn,gla"
    assert _load_script().main(argv) == 0
    out = capsys.readouterr().out
    assert "3 runs, 2 already in" in out and "training 1 on" in out
    data2 = json.loads((tmp_path / "recall-grid-t.json").read_text())
    assert data2["runs"][:2] == data["runs"] and data2["runs"][2]["model"] == "gla"
    assert "| gla | 16 |" in (tmp_path / "recall-grid-t.md").read_text()


def test_recall_grid_refuses_other_training_in_the_same_file(tmp_path, capsys):
    grid = _load_script()
    (tmp_path / "recall-grid-t.json").write_text(json.dumps({
        "task": {"vocab_size": 32}, "training": {"epochs": 9}, "runs": []}))
    assert grid.main([*TINY, "--out", str(tmp_path)]) == 2
    assert "holds runs of another task or training" in capsys.readouterr().err


@pytest.mark.parametrize("settings, message", [
    ("64", "--settings takes seq_len:kv_pairs pairs"),
    ("64:4,abc", "--settings takes seq_len:kv_pairs pairs"),
    ("64:0", "--settings takes seq_len:kv_pairs pairs"),
    ("8:4", "--settings 8:4: MQAR input_seq_len 8 is too short"),
    ("64:40", "--settings 64:40: "),  # 40 distinct keys need a vocabulary of more than 80
])
def test_recall_grid_bad_settings(tmp_path, capsys, settings, message):
    grid = _load_script()
    argv = [*TINY, "--out", str(tmp_path)]
    argv[argv.index("--settings") + 1] = settings
    assert grid.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recall_grid: error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing trained or written
