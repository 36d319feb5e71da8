"""Training end to end, checkpoints, bit-exact resume after SIGKILL, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lamina.cli import main
from lamina.config import load_config
from lamina.train import load_model, train
from train_harness import error_line


def test_train_learns_and_saves(tiny, tmp_path):
    cfg = load_config("default", tiny + ["train.steps=60", "train.eval_every=30", "train.save_every=30"])
    result = train(cfg, log=lambda *_: None)
    assert result.step == 60
    # well below a uniform guess: three seeds gave 0.53 of it on the Python text (0.62 on Tiny Shakespeare)
    assert result.valid_nats < 0.65 * torch.log(torch.tensor(257.0)).item()
    run = Path(cfg.train.out_dir)
    assert (run / "latest").read_text().strip() == "ckpt-0000060"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_loss" in r for r in rows) and any("tokens_per_s" in r for r in rows)
    model, tokenizer, saved = load_model(run)
    assert saved == cfg and model.num_parameters() == result.model.num_parameters()


def _cli(args, cwd, **kwargs):
    # one thread each: two runs share the cores, and OpenMP threads that wait on a busy core crawl
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "lamina", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_sigkill_then_resume_is_bit_exact(tiny, tmp_path):
    common = tiny + ["train.steps=120", "train.save_every=4", "train.eval_every=40", "model.dropout=0.1"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = _cli(["train", *common, f"train.out_dir={ref_dir}"], tmp_path)
    cut = _cli(["train", *common, f"train.out_dir={cut_dir}"], tmp_path)
    deadline = time.time() + 120
    latest = cut_dir / "latest"
    while time.time() < deadline:  # kill as soon as a checkpoint past step 8 exists
        if latest.exists() and int(latest.read_text().strip()[5:]) >= 8:
            break
        time.sleep(0.01)
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    killed_at = int(latest.read_text().strip()[5:])
    assert 8 <= killed_at < 120, "the run must really have been interrupted"
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    resumed = _cli(["train", "--resume", str(cut_dir)], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    want = load_file(ref_dir / "ckpt-0000120" / "model.safetensors")
    got = load_file(cut_dir / "ckpt-0000120" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), f"{name} differs after resume"


def test_ctrl_c_saves_and_exits_cleanly(tiny, tmp_path):
    run = tmp_path / "run"
    proc = _cli(["train", *tiny, "train.steps=100000", "train.save_every=100000"], tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    step = int((run / "latest").read_text().strip()[5:])
    assert 0 < step < 100000
    assert "--resume" in proc.stdout.read().decode()




def test_nan_loss_names_the_step(tiny, capsys):
    err = error_line(capsys, ["train", *tiny, "train.steps=50", "train.lr=1e30", "train.warmup_steps=1", "train.grad_clip=1e30"])
    assert "step" in err and "lr" in err


@pytest.mark.parametrize(
    "extra,words",
    [
        (["train.bogus=1"], ["unknown key", "train.bogus"]),
        (["model.layers=[attn, nosuch]"], ["unknown mixer", "nosuch"]),
        (["train.batch_size=big"], ["train.batch_size", "integer"]),
    ],
)
def test_bad_config_one_line(tiny, capsys, extra, words):
    err = error_line(capsys, ["train", *tiny, *extra])
    for word in words:
        assert word in err


def test_missing_corpus_offline(tmp_path, capsys):
    err = error_line(capsys, ["train", "data.corpus=ptb", f"data.data_dir={tmp_path}", "data.download=false"])
    assert "ptb" in err and "ptb.train.txt" in err


def test_checksum_mismatch(tiny, tmp_path, capsys):
    bad = tmp_path / "data" / "tinyshakespeare"
    bad.mkdir(parents=True)
    (bad / "input.txt").write_bytes(b"?" * 1_115_394)  # the right size, the wrong bytes
    err = error_line(capsys, ["train", *tiny, "data.corpus=tinyshakespeare", f"data.data_dir={tmp_path / 'data'}",
                               "data.download=false"])
    assert "sha256" in err and "input.txt" in err


def test_empty_corpus_file(tiny, tmp_path, capsys):
    empty = tmp_path / "data" / "tinyshakespeare"
    empty.mkdir(parents=True)
    (empty / "input.txt").write_bytes(b"")
    err = error_line(capsys, ["train", *tiny, "data.corpus=tinyshakespeare", f"data.data_dir={tmp_path / 'data'}",
                               "data.download=false"])
    assert "empty" in err and "input.txt" in err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, text_corpus):
    from conftest import TINY

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = load_config("default", TINY + [f"data.corpus={text_corpus}", f"train.out_dir={out}", "train.steps=20",
                                         "train.save_every=20"])
    train(cfg, log=lambda *_: None)
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest"])
def test_corrupt_checkpoint(trained_run, tmp_path, capsys, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = run / (run / "latest").read_text().strip()
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        weights.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    else:
        (ckpt / "manifest.json").write_text("{not json")
    for command in (["eval", str(run)], ["generate", str(run)], ["info", str(run)], ["train", "--resume", str(run)]):
        err = error_line(capsys, command)
        assert "corrupt" in err or "truncated" in err


def test_eval_generate_info(trained_run, capsys):
    assert main(["eval", str(trained_run), "--split", "valid", "--max-tokens", "3000", "--mem-len", "40", "--carry", "both"]) == 0
    out = capsys.readouterr().out
    assert "bits/byte" in out and "3,000 tokens" in out and "mem_len 40" in out
    assert "state carried" in out and "empty state" in out
    prompt = "ROMEO:\n".encode() + b"\xff\xfe"  # not valid UTF-8: taken as bytes
    assert main(["generate", str(trained_run), "--prompt", os.fsdecode(prompt), "--max-new-tokens", "40", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) > 20
    assert main(["info", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "state" in out and "MiB to train" in out


def test_a_fresh_run_never_replaces_a_saved_one_unless_asked(tiny, capsys):
    first = load_config("default", tiny + ["train.steps=4", "train.eval_every=2", "train.save_every=2"])
    train(first, log=lambda *_: None)
    run = Path(first.train.out_dir)
    saved = sorted(p.name for p in run.glob("ckpt-*"))
    again = tiny + ["train.steps=2", "train.eval_every=2", "train.save_every=2"]
    err = error_line(capsys, ["train", *again])
    assert str(run) in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in run.glob("ckpt-*")) == saved  # untouched
    assert main(["train", *again, "--overwrite"]) == 0
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-0000002"]  # nothing left of the first run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 2
    assert "only one of them" in error_line(capsys, ["train", "--resume", str(run), "--overwrite"])
