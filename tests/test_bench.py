"""lamina bench: the three output files, the out-of-memory and time caps, bad arguments, and cache against state."""

import json
import multiprocessing

import pytest
import torch

from lamina.tools import bench
from lamina.tools.bench import DEFAULTS, Item, Settings
from lamina.cli import main

SMALL = ["--device", "cpu", "--d-model", "32", "--threads", "1", "--decode-steps", "4", "--repeats", "1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "attn", "hgrn", "--lengths", "64,512", "--out", str(out), *SMALL]) == 0
    return out, json.loads((out / "results.json").read_text())["rows"]


def test_writes_table_json_and_plot(report):
    out, rows = report
    assert [(r["arch"], r["T"], r["mode"]) for r in rows] == [
        (arch, T, mode) for arch in ("attn", "hgrn") for T in (64, 512) for mode in ("train", "decode")]
    for r in rows:
        assert r["status"] == "ok"
        assert r["tokens_per_s"] > 0 and r["peak_bytes"] > 0
    table = (out / "bench.md").read_text()
    assert "d_model 32" in table and "torch " in table and "fp32" in table and "layers: attn 2; hgrn 2" in table
    assert "| arch | T | train tokens/s | train peak MiB | decode tokens/s | decode peak MiB |" in table
    assert sum(line.startswith(("| attn |", "| hgrn |")) for line in table.splitlines()) == 4
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_cache_grows_and_a_recurrent_state_does_not(report):
    _, rows = report
    state = {(r["arch"], r["T"]): r["state_bytes"] for r in rows if r["mode"] == "decode"}
    assert state[("attn", 512)] > 4 * state[("attn", 64)]  # keys and values of every prompt token
    assert state[("hgrn", 512)] == state[("hgrn", 64)]
    assert state[("hgrn", 512)] < state[("attn", 64)]


@pytest.mark.parametrize("cap, status", [
    (["--max-memory", "0.0001"], "OOM"),
    (["--max-seconds", "0.001"], "skipped (over --max-seconds 0.001)"),
])
def test_a_capped_item_is_recorded_and_longer_lengths_skipped(cap, status, tmp_path):
    out = tmp_path / "capped"
    assert main(["bench", "hgrn", "--lengths", "32,64,128", "--out", str(out), *SMALL, *cap]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    first = [r for r in rows if r["T"] == 32]
    assert [r["status"] for r in first] == [status, status]
    why = "OOM" if status == "OOM" else "over --max-seconds 0.001"
    assert [r["status"] for r in rows if r["T"] > 32] == [f"skipped ({why} at T=32)"] * 4
    table = (out / "bench.md").read_text()
    assert table.count(f"skipped ({why} at T=32)") == 4


def test_worker_reports_cuda_style_out_of_memory(monkeypatch):
    """torch.OutOfMemoryError inside an item becomes an OOM row, not a crash."""
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")

    monkeypatch.setattr(bench, "train_speed", out_of_memory)
    receive, send = multiprocessing.Pipe(duplex=False)
    bench._worker(Item("hgrn", (), "train", 16), Settings(device="cpu", d_model=16, layers=1, batch=1), send)
    assert receive.recv()[0] == "start"
    assert receive.recv() == ("OOM", "CUDA out of memory. Tried to allocate 1 GiB")


@pytest.mark.parametrize("argv, message", [
    (["nosuchmixer"], "unknown preset 'nosuchmixer'"),
    ([], "give at least one architecture"),
    (["hgrn", "hgrn"], "give each architecture once"),
    (["hgrn", "model.d_model=64"], "with --d-model"),
    (["hgrn", "--lengths", "abc"], "--lengths takes positive integers"),
    (["hgrn", "--lengths", "0"], "--lengths takes positive integers"),
    (["hgrn", "--max-memory", "-1"], "--max-memory: must be > 0"),
    (["hgrn", "--max-seconds", "0"], "--max-seconds: must be > 0"),
    (["hgrn", "--decode-steps", "-2"], "--decode-steps: must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["bench", *argv, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lamina") and ": error:" in err and message in err and err.count("\n") == 1
    assert not out.exists()


def test_prompt_memory_keeps_the_prompt_or_the_window():
    """Decoding reads the whole prompt through full attention, a sliding window's worth through windowed attention."""
    cfg = Settings(device="cpu", d_model=16, layers=2, batch=1).config(
        "attn", ["model.layers=[attn, {attn: {window: 8}}]", "model.mixers={attn: {heads: 2}}"])
    model = bench.build_model(cfg.model, bench.vocab_size(cfg))
    full, windowed = model.memory_layers()
    with bench.prompt_memory(model, 100):
        assert (full.mem_len, windowed.mem_len) == (100, 7)
        state = model(torch.randint(0, 257, (1, 30)))[1]
        assert bench.state_bytes(state[1]) < bench.state_bytes(state[0])
    with bench.prompt_memory(model, 5):
        assert (full.mem_len, windowed.mem_len) == (5, 5)
    assert (full.mem_len, windowed.mem_len) == (0, 0)


def test_settings_take_the_device_defaults_for_what_is_not_given():
    cpu = Settings.for_device("cpu", d_model=8, repeats=2)
    assert (cpu.d_model, cpu.layers, cpu.batch, cpu.repeats) == (8, DEFAULTS["cpu"]["layers"], DEFAULTS["cpu"]["batch"], 2)
    assert 0 < cpu.max_memory_gb < 2**20  # half of this machine's memory
    cuda = Settings.for_device("cuda", batch=3)
    assert (cuda.d_model, cuda.layers, cuda.batch) == (DEFAULTS["cuda"]["d_model"], DEFAULTS["cuda"]["layers"], 3)
    assert cuda.max_memory_gb is None  # on CUDA the allocator reports running out
