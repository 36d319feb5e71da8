"""Runs that are never lost: one trainer per run directory, resuming writes where it is told, stale temporaries
removed, a broken ``latest`` falls back, a full disk or a read-only directory is a clear error, Ctrl-C and
SIGTERM stop within seconds even during a long evaluation, and progress is visible in a log."""

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lamina.train.checkpoint as checkpoint
from lamina.cli import main
from lamina.train.run_dir import RunDir
from train_harness import error_line

FAST = ["train.steps=4", "train.save_every=2", "train.eval_every=2", "train.eval_tokens=512", "train.keep_checkpoints=5"]


def _tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its sha256 and mtime: what must not change."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() + f"@{p.stat().st_mtime_ns}"
            for p in sorted(path.rglob("*")) if p.is_file()}




@pytest.fixture
def saved_run(tiny, tmp_path, capsys):
    """A 4-step run with checkpoints at steps 2 and 4."""
    assert main(["train", *tiny, *FAST]) == 0
    capsys.readouterr()
    return tmp_path / "run"


def test_resuming_a_copy_writes_into_the_copy_only(saved_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(saved_run, copy)
    original = _tree(saved_run)
    assert main(["train", "--resume", str(copy), "train.steps=8", "train.keep_checkpoints=1"]) == 0
    assert "run saved in " + str(copy) in capsys.readouterr().out
    assert _tree(saved_run) == original, "the original run directory was written to"
    assert (copy / "latest").read_text().strip() == "ckpt-0000008"
    assert sorted(p.name for p in copy.glob("ckpt-*")) == ["ckpt-0000008"]


def test_resuming_into_a_named_out_dir_leaves_the_source_alone(saved_run, tmp_path, capsys):
    original = _tree(saved_run)
    other = tmp_path / "elsewhere"
    assert main(["train", "--resume", str(saved_run / "ckpt-0000002"), f"train.out_dir={other}", "train.steps=6"]) == 0
    assert _tree(saved_run) == original
    assert (other / "latest").read_text().strip() == "ckpt-0000006"


def test_a_second_trainer_on_one_run_directory_is_refused(saved_run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lamina.train.run_dir import RunDir\n"
         "with RunDir(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(saved_run)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _tree(saved_run)
        err = error_line(capsys, ["train", "--resume", str(saved_run), "train.steps=6"])
        assert "in use" in err and f"PID {holder.pid}" in err
        err = error_line(capsys, ["train", "--overwrite", f"train.out_dir={saved_run}"])
        assert f"PID {holder.pid}" in err
        assert _tree(saved_run) == before, "a refused trainer wrote into the run directory"
    finally:
        holder.kill()
        holder.wait()
    assert main(["train", "--resume", str(saved_run), "train.steps=6"]) == 0  # the kernel dropped the dead holder's lock


def test_stale_temporaries_of_dead_trainers_are_removed(saved_run, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = saved_run / f".ckpt-0000006.tmp-{pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    (saved_run / f".latest.tmp-{pid}").write_text("ckpt-0000006\n")
    alive = saved_run / f".ckpt-0000006.tmp-{os.getppid()}"  # a live process's: it cannot be proven dead
    alive.mkdir()
    with RunDir(saved_run, log=lambda *_: None):
        pass
    assert not stale.exists() and not (saved_run / f".latest.tmp-{pid}").exists()
    assert alive.is_dir()
    assert (saved_run / "ckpt-0000004").is_dir()


@pytest.mark.parametrize("breakage", ["empty", "missing", "names-nothing", "corrupt-newest", "truncated-newest"])
def test_a_broken_latest_falls_back_to_the_newest_intact_checkpoint(saved_run, capsys, breakage):
    latest, newest = saved_run / "latest", saved_run / "ckpt-0000004"
    expect = "ckpt-0000004"
    if breakage == "empty":
        latest.write_text("")
    elif breakage == "missing":
        latest.unlink()
    elif breakage == "names-nothing":
        latest.write_text("ckpt-0000099\n")
    else:
        weights = newest / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[:-100] if breakage == "truncated-newest" else data[:-1] + bytes([data[-1] ^ 1]))
        expect = "ckpt-0000002"
    assert main(["generate", str(saved_run), "--max-new-tokens", "5", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert f"using the newest intact checkpoint, {saved_run / expect}" in err
    assert main(["train", "--resume", str(saved_run), "train.steps=6"]) == 0
    assert (saved_run / "latest").read_text().strip() == "ckpt-0000006"


def test_no_intact_checkpoint_is_one_line(saved_run, capsys):
    for ckpt in saved_run.glob("ckpt-*"):
        (ckpt / "trainer.pt").write_bytes(b"garbage")
    err = error_line(capsys, ["eval", str(saved_run)])
    assert "no intact checkpoint" in err and "trainer.pt" in err


def test_a_full_disk_during_a_save_loses_nothing(saved_run, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    err = error_line(capsys, ["train", "--resume", str(saved_run), "train.steps=6"])
    assert "No space left" in err and "disk is full" in err
    assert not [p for p in saved_run.iterdir() if ".tmp-" in p.name], "the partial checkpoint was left behind"
    assert (saved_run / "latest").read_text().strip() == "ckpt-0000004"
    checkpoint.verify_checkpoint(saved_run / "ckpt-0000004")


def test_an_unwritable_out_dir_is_refused_before_any_compute(tiny, tmp_path, monkeypatch, capsys):
    import lamina.train.setup as setup

    monkeypatch.setattr(setup, "load_corpus", lambda *a, **k: pytest.fail("the corpus was loaded"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = error_line(capsys, ["train", *tiny, f"train.out_dir={blocker / 'run'}"])
    assert str(blocker) in err and "train.out_dir" in err


def test_nan_loss_without_a_checkpoint_does_not_advise_resume(tiny, capsys):
    err = error_line(capsys, ["train", *tiny, "train.steps=50", "train.lr=1e30", "train.warmup_steps=1",
                              "train.grad_clip=1e30", "train.save_every=1000"])
    assert "no checkpoint was saved" in err and "--resume" not in err


def _spawn(args, cwd, **env):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env)
    return subprocess.Popen([sys.executable, "-m", "lamina", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_long_evaluation_stops_within_seconds(tiny, tmp_path, sig):
    run = tmp_path / "run"
    # the first evaluation scores the stdlib's whole validation split at batch 1: many minutes on two cores
    proc = _spawn(["train", *tiny, "data.corpus=stdlib", "train.steps=3", "train.eval_every=2", "train.save_every=1000", "train.eval_tokens=0",
                   "train.batch_size=1", "train.seq_len=16"], tmp_path, LAMINA_PROGRESS_SECONDS="0")
    deadline = time.time() + 120
    for line in proc.stderr:
        if "scoring the valid split" in line or time.time() > deadline:
            break
    assert time.time() < deadline, "the evaluation never started"
    sent = time.time()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 130
    assert time.time() - sent < 10
    assert (run / "latest").read_text().strip() == "ckpt-0000002", "the training state was not saved first"


def test_progress_lines_when_stderr_is_not_a_terminal(tiny, monkeypatch, capsys):
    monkeypatch.setenv("LAMINA_PROGRESS_SECONDS", "0")
    assert main(["train", *tiny, *FAST, "train.log_every=1"]) == 0
    err = capsys.readouterr().err
    assert "training: 2/4 steps (50%)" in err and "ETA" in err and "tok/s" in err
    assert "scoring the valid split" in err and "tokens/s" in err
