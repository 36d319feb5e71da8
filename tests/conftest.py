"""Shared fixtures: where the benchmark corpora live, and a tiny model config."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the shared mixer harness

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """For tiny models run as many small steps: one thread is faster than two competing for shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def find_shared_data() -> Path | None:
    """``shared/data`` beside the repository (or $LAMINA_SHARED_DATA)."""
    env = os.environ.get("LAMINA_SHARED_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo.parent / "shared" / "data", repo / "shared" / "data"]
    return next((c for c in candidates if (c / "tinyshakespeare").is_dir()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = find_shared_data()
    if path is None:
        pytest.fail("the benchmark corpora (shared/data beside the repository) are missing; set LAMINA_SHARED_DATA")
    return path


# A model and run small enough for a test: seconds on two cores.
TINY = [
    "model.d_model=32",
    "model.layers=[attn, attn]",
    "model.mixers={attn: {heads: 2, mem_len: 16}}",
    "train.batch_size=4",
    "train.seq_len=32",
    "train.warmup_steps=5",
    "train.eval_tokens=2048",
    "train.log_every=5",
    "train.sample_tokens=0",
]


@pytest.fixture
def tiny(shared_data, tmp_path):
    """Overrides for a tiny run on Tiny Shakespeare, writing under tmp_path."""
    return TINY + [
        "data.corpus=tinyshakespeare",
        f"data.data_dir={shared_data}",
        f"train.out_dir={tmp_path / 'run'}",
    ]
