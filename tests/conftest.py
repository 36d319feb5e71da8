"""Shared fixtures: every test in a fresh directory and environment, small corpora the tests make, where the
benchmark corpora live (tests that need them are skipped without them), and a tiny model config."""

import hashlib
import os
import sys
import sysconfig
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


@pytest.fixture(autouse=True)
def fresh_directory_and_environment(tmp_path_factory, monkeypatch):
    """Each test runs in a fresh empty directory, with its own download cache and no $LAMINA_DATA_DIR, so no
    test reads or writes the directory pytest was started in, or a data directory or cache of the user's."""
    home = tmp_path_factory.mktemp("isolated")
    (home / "cwd").mkdir()
    monkeypatch.chdir(home / "cwd")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("LAMINA_DATA_DIR", raising=False)


def find_shared_data() -> Path | None:
    """The benchmark corpora: $LAMINA_SHARED_DATA if set (and only it), else ``shared/data`` beside the repository."""
    env = os.environ.get("LAMINA_SHARED_DATA")
    repo = Path(__file__).resolve().parents[1]
    candidates = [Path(env)] if env else [repo.parent / "shared" / "data", repo / "shared" / "data"]
    return next((c for c in candidates if (c / "tinyshakespeare").is_dir()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """For the tests that need the real benchmark corpora (checksums, standard vocabularies, recipes)."""
    path = find_shared_data()
    if path is None:
        where = os.environ.get("LAMINA_SHARED_DATA") or "shared/data beside the repository"
        pytest.skip(f"the benchmark corpora ({where}) are absent; set LAMINA_SHARED_DATA=DIR to run this test")
    return path


TEXT_BYTES = 1_000_000


def stdlib_text(size: int) -> bytes:
    """About ``size`` bytes of real text: this Python's top-level standard-library modules in name order,
    whole files concatenated until there are ``size`` bytes, cut after the last newline before ``size``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for path in sorted(root.glob("*.py")):
        out += path.read_bytes()
        if len(out) >= size:
            return bytes(out[: out.rindex(b"\n", 0, size) + 1])
    raise RuntimeError(f"the standard library in {root} holds fewer than {size:,} bytes of top-level modules")


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A 1 MB text file for tests that need some corpus: ``data.corpus=<this path>`` (bits per byte)."""
    path = tmp_path_factory.mktemp("corpus") / "python.txt"
    path.write_bytes(stdlib_text(TEXT_BYTES))
    return path


@pytest.fixture(scope="session")
def symbol_corpus(tmp_path_factory) -> Path:
    """Text written as space-separated symbols, ``_`` for a space (the PTB-char layout), about 400 kB: a small
    vocabulary for ``data.tokenizer=words``."""
    lines = stdlib_text(200_000).decode("utf-8", errors="replace").splitlines()
    symbols = (["_" if c == " " else c for c in line if c == " " or not c.isspace()] for line in lines)
    text = "".join(" ".join(line) + "\n" for line in symbols)
    path = tmp_path_factory.mktemp("corpus") / "symbols.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def word_corpus(symbol_corpus, tmp_path, monkeypatch) -> list[str]:
    """Overrides for ``toy-words``, registered for this test like PTB-char (three files, word tokenizer by
    default, bits per character) and made of the symbol text: a corpus whose default tokenizer is words."""
    from lamina.data import CORPORA, SPLITS, CorpusSpec, FileSpec, Source, SplitPart

    text = symbol_corpus.read_bytes()
    cuts = [0, text.index(b"\n", len(text) * 90 // 100) + 1, text.index(b"\n", len(text) * 95 // 100) + 1, len(text)]
    folder = tmp_path / "word-data" / "toy-words"
    folder.mkdir(parents=True)
    files = []
    for split, a, b in zip(SPLITS, cuts, cuts[1:]):
        (folder / f"{split}.txt").write_bytes(text[a:b])
        files.append(FileSpec(f"{split}.txt", b - a, hashlib.sha256(text[a:b]).hexdigest()))
    spec = CorpusSpec(name="toy-words", folder="toy-words", files=tuple(files),
                      sources=(Source("http://127.0.0.1:9/", ()),), split_rule="files",
                      splits=tuple(SplitPart(s, f"{s}.txt") for s in SPLITS), tokenizer="words", unit="char")
    monkeypatch.setitem(CORPORA, "toy-words", spec)
    return ["data.corpus=toy-words", f"data.data_dir={folder.parent}", "data.download=false"]


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
def tiny(text_corpus, tmp_path):
    """Overrides for a tiny run on the 1 MB text corpus, writing under tmp_path."""
    return TINY + [f"data.corpus={text_corpus}", f"train.out_dir={tmp_path / 'run'}"]
