"""Corpora of your own files: data.corpus=PATH for a file, a directory or a glob, how they split, and errors."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from lamina.cli import main
from lamina.data import (
    SPLITS,
    ByteTokenizer,
    WordTokenizer,
    build_tokenizer,
    canonical_corpus,
    encode_split,
    load_corpus,
    load_files,
    metric_unit,
    path_bucket,
    stdlib_split,
)
from lamina.data import files as files_module
from lamina.errors import LaminaError

# Eleven files in nested folders with mixed extensions whose path hashes fill every split
# (f4 lands in valid, a/b/c/f42.txt in test, the rest in train): see test_directory_nested_mixed_extensions.
NATURAL = ["a/f0.py", "a/b/f1.md", "a/b/c/f2.txt", "d/f3.bin", "f4", "a/f5.py", "a/b/f6.md", "a/b/c/f7.txt",
           "d/f8.bin", "f9", "a/b/c/f42.txt"]


def lines(seed: int, n: int) -> bytes:
    """``n`` lines of pseudo-words, reproducible."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "state", "memory", "token", "split"]
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) + "\n" for _ in range(n)).encode()


def make_tree(root: Path, names: list[str], seed: int = 0) -> dict[str, bytes]:
    out = {}
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        out[name] = lines(seed + i, 20 + i)
        path.write_bytes(out[name])
    return out


def split_names(corpus) -> dict[str, list[str]]:
    return {s: corpus.document_names(s) for s in SPLITS}


def all_names(corpus) -> list[str]:
    """Every file read (a file cut by the byte rule is a document of two splits)."""
    return sorted({n for s in SPLITS for n in corpus.document_names(s)})


def one_line_error(call) -> str:
    with pytest.raises(LaminaError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and "--corpus" not in msg, msg
    return msg


# ---------------------------------------------------------------- what is read, how it splits


def test_a_file_splits_90_5_5_at_line_starts(tmp_path):
    raw = lines(1, 2000)
    path = tmp_path / "notes.txt"
    path.write_bytes(raw)
    corpus = load_corpus(str(path))
    train, valid, test = (corpus.documents(s) for s in SPLITS)
    assert len(train) == len(valid) == len(test) == 1
    assert train[0] + valid[0] + test[0] == raw  # every byte once, in order
    n = len(raw)
    for doc, cut in ((train[0], n * 90 // 100), (train[0] + valid[0], n * 95 // 100)):
        end = len(doc)
        assert cut <= end <= cut + n // 100 and raw[end - 1 : end] == b"\n"  # the next line start, within 1%
        assert b"\n" not in raw[cut - 1 : end - 1]  # and the first one
    assert corpus.name == str(path) and corpus.unit == "byte" and corpus.default_tokenizer == "bytes"
    text = corpus.describe()
    assert str(path) in text and "first 90% train, next 5% valid, last 5% test" in text and "unit byte" in text
    assert f"notes.txt bytes 0-{len(train[0]):,}" in text
    assert metric_unit(corpus, build_tokenizer(None, corpus)) == "byte"
    words = build_tokenizer("words", corpus)
    assert isinstance(words, WordTokenizer) and words.vocab_size == 8 + 2
    assert metric_unit(corpus, words) == "word"
    assert encode_split(words, corpus, "valid").numel() == len(valid[0].split()) + valid[0].count(b"\n")


def test_directory_nested_mixed_extensions(tmp_path):
    data = make_tree(tmp_path / "tree", NATURAL)
    (tmp_path / "tree" / ".hidden").write_bytes(b"secret\n")  # hidden file and folder: skipped
    (tmp_path / "tree" / ".git").mkdir()
    (tmp_path / "tree" / ".git" / "HEAD").write_bytes(b"ref\n")
    (tmp_path / "tree" / "a" / "empty.txt").write_bytes(b"")  # skipped, and counted
    corpus = load_corpus(str(tmp_path / "tree"))
    names = split_names(corpus)
    expected = {s: sorted(n for n in NATURAL if stdlib_split(n) == s) for s in SPLITS}
    assert names == expected and expected["valid"] == ["f4"] and expected["test"] == ["a/b/c/f42.txt"]
    for s in SPLITS:
        assert corpus.documents(s) == [data[n] for n in names[s]]  # one document per file, whole
    text = corpus.describe()
    assert f"{tmp_path / 'tree'} (11 files" in text and "1 empty skipped" in text
    assert f"sha256 of each path relative to {tmp_path / 'tree'}" in text and "0-89 train, 90-94 valid, 95-99 test" in text
    assert "was empty" not in text


def test_an_empty_split_takes_the_nearest_file_and_says_so(tmp_path):
    names = NATURAL[:10]  # f4 (bucket 94) is valid; no file hashes into test
    assert [stdlib_split(n) for n in names].count("test") == 0
    make_tree(tmp_path / "tree", names)
    corpus = load_corpus(str(tmp_path / "tree"))
    train = [n for n in names if stdlib_split(n) == "train"]
    moved = max(train, key=path_bucket)  # nearest to test's buckets 95-99
    assert moved == "a/b/f6.md" and path_bucket(moved) == 80
    assert split_names(corpus) == {"train": sorted(set(train) - {moved}), "valid": ["f4"], "test": [moved]}
    assert "test was empty, so a/b/f6.md (bucket 80) moved there from train" in corpus.describe()


def test_few_files_split_by_bytes_in_path_order(tmp_path):
    data = make_tree(tmp_path / "three", ["b.md", "a.txt", "sub/c.py"], seed=5)
    corpus = load_corpus(str(tmp_path / "three"))
    whole = data["a.txt"] + data["b.md"] + data["sub/c.py"]
    docs = [d for s in SPLITS for d in corpus.documents(s)]
    assert b"".join(docs) == whole
    assert corpus.document_names("train")[:2] == ["a.txt", "b.md"] and corpus.document_names("test") == ["sub/c.py"]
    assert "split by bytes of the files in path order" in corpus.describe()


def test_a_glob_reads_the_files_it_matches(tmp_path, monkeypatch):
    make_tree(tmp_path / "src", [n for n in NATURAL] + ["x/y.py", "z.py"])
    corpus = load_corpus(str(tmp_path / "src" / "**" / "*.py"))
    got = all_names(corpus)
    assert got == ["a/f0.py", "a/f5.py", "x/y.py", "z.py"]  # relative to src, the folder before the wildcard
    assert corpus.name == f"{tmp_path / 'src'}/**/*.py"
    monkeypatch.chdir(tmp_path / "src")
    here = load_corpus("a/b/*.md")
    assert here.name == f"{tmp_path / 'src'}/a/b/*.md"
    assert all_names(here) == ["f1.md", "f6.md"]
    everything = load_corpus(str(tmp_path / "src" / "*"))  # folders a glob matches are read whole
    assert all_names(everything) == sorted(NATURAL + ["x/y.py", "z.py"])


def test_binary_and_non_utf8_bytes(tmp_path):
    g = torch.Generator().manual_seed(0)
    raw = bytes(range(256)) + b"\xff\xfe\xc3(\x80" + bytes(torch.randint(0, 256, (20_000,), generator=g).tolist())
    path = tmp_path / "blob.bin"
    path.write_bytes(raw)
    corpus = load_corpus(str(path))
    tok = build_tokenizer(None, corpus)
    assert isinstance(tok, ByteTokenizer)
    ids = torch.cat([encode_split(tok, corpus, s) for s in SPLITS])
    assert tok.decode(ids) == raw and int((ids == tok.eos_id).sum()) == 3
    words = build_tokenizer("words", corpus)  # decoded with replacement characters
    assert encode_split(words, corpus, "valid").numel() > 0


# ---------------------------------------------------------------- the split is stable


def test_split_is_the_same_for_a_copy_elsewhere_and_any_listing_order(tmp_path, monkeypatch):
    make_tree(tmp_path / "one" / "tree", NATURAL)
    shutil.copytree(tmp_path / "one" / "tree", tmp_path / "two" / "deeper" / "copy")
    first = split_names(load_corpus(str(tmp_path / "one" / "tree")))
    assert split_names(load_corpus(str(tmp_path / "two" / "deeper" / "copy"))) == first
    assert split_names(load_corpus(str(tmp_path / "two" / "deeper" / "copy" / "**" / "*"))) == first
    monkeypatch.chdir(tmp_path / "two" / "deeper")
    assert split_names(load_corpus("copy")) == first

    real_scandir = os.scandir

    class Reversed:
        def __init__(self, path):
            self.inner = real_scandir(path)

        def __enter__(self):
            return reversed(list(self.inner))

        def __exit__(self, *exc):
            self.inner.close()

        def __iter__(self):
            return reversed(list(self.inner))

    monkeypatch.setattr(os, "scandir", Reversed)
    assert split_names(load_corpus(str(tmp_path / "one" / "tree"))) == first
    assert split_names(load_corpus(str(tmp_path / "one" / "tree" / "**" / "*"))) == first


def test_canonical_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert canonical_corpus("stdlib") == "stdlib" and canonical_corpus("ptb") == "ptb"  # a registered name wins
    assert canonical_corpus("notes.txt") == str(tmp_path / "notes.txt")
    assert canonical_corpus("../x/notes") == str(tmp_path.parent / "x" / "notes")
    assert canonical_corpus("dir/") == f"{tmp_path / 'dir'}/"
    assert canonical_corpus("~/n.md") == str(tmp_path / "home" / "n.md")
    assert canonical_corpus("notes/*.md") == f"{tmp_path / 'notes'}/*.md"
    assert canonical_corpus("*.md") == f"{tmp_path}/*.md"
    assert canonical_corpus("src/**/*.py") == f"{tmp_path / 'src'}/**/*.py"
    assert canonical_corpus("/abs/a/b*/c") == "/abs/a/b*/c"
    (tmp_path / "ptb").write_bytes(lines(0, 100))  # a file named like a registered corpus: ./ptb reads it
    assert load_corpus("./ptb").name == str(tmp_path / "ptb")
    (tmp_path / "odd[1].txt").write_bytes(lines(0, 100))  # an existing name is a path even with glob characters
    assert load_corpus("odd[1].txt").document_names("train") == ["odd[1].txt"]


def test_load_files_scores_every_byte(tmp_path, monkeypatch):
    data = make_tree(tmp_path / "tree", NATURAL)
    corpus = load_files(tmp_path / "tree")
    want = [data[n] for n in sorted(NATURAL)]
    for s in SPLITS:
        assert corpus.documents(s) == want and corpus.document_names(s) == sorted(NATURAL)
    tokens = encode_split(ByteTokenizer(), corpus, "test")
    assert tokens.numel() == sum(map(len, want)) + len(want)
    assert "not split" in corpus.describe() and metric_unit(corpus, ByteTokenizer()) == "byte"
    small = tmp_path / "one.txt"
    small.write_bytes(b"x")  # too short to split, but a single byte can be scored
    assert load_files(str(small)).documents("test") == [b"x"]
    (tmp_path / "stdlib").write_bytes(b"abc\n")
    monkeypatch.chdir(tmp_path)
    assert load_files("stdlib").documents("test") == [b"abc\n"]  # always a path, never a registered name
    msg = one_line_error(lambda: load_files(tmp_path / "nope"))
    assert str(tmp_path / "nope") in msg and "registered" not in msg


# ---------------------------------------------------------------- errors


def test_unknown_name_lists_the_corpora_and_says_a_path_works(tmp_path):
    msg = one_line_error(lambda: load_corpus("tinyshakespear"))
    for part in ("unknown corpus 'tinyshakespear'", "stdlib, tinyshakespeare, ptb", "does not exist",
                 "data.corpus=PATH", "a file, a directory or a quoted glob"):
        assert part in msg
    msg = one_line_error(lambda: load_corpus(str(tmp_path / "missing" / "notes.txt")))
    assert f"{tmp_path / 'missing' / 'notes.txt'} does not exist" in msg


def test_an_empty_name_reads_nothing(tmp_path):
    assert "data.corpus is empty" in one_line_error(lambda: load_corpus(""))
    assert "the path is empty" in one_line_error(lambda: load_files(" "))


def test_a_glob_matching_nothing(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_bytes(b"a\n")
    msg = one_line_error(lambda: load_corpus(str(tmp_path / "notes" / "*.md")))
    assert f"the glob {tmp_path / 'notes'}/*.md matches no file" in msg and "quote it" in msg
    msg = one_line_error(lambda: load_corpus(str(tmp_path / "nowhere" / "*.md")))
    assert f"{tmp_path / 'nowhere'} does not exist" in msg


def test_empty_file_directory_and_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "is empty" in one_line_error(lambda: load_corpus(str(tmp_path / "empty.txt")))
    (tmp_path / "nothing" / "sub").mkdir(parents=True)
    (tmp_path / "nothing" / ".hidden").write_bytes(b"x\n")
    msg = one_line_error(lambda: load_corpus(str(tmp_path / "nothing")))
    assert "holds no files" in msg and "hidden" in msg
    (tmp_path / "blank").mkdir()
    for i in range(3):
        (tmp_path / "blank" / f"{i}.txt").write_bytes(b"")
    assert "every file of" in one_line_error(lambda: load_corpus(str(tmp_path / "blank")))


def _deny(monkeypatch, denied: Path, kind: str) -> None:
    """Make ``denied`` unreadable: chmod where that works, else (running as root) a refusing open/scandir."""
    if os.geteuid() != 0:
        denied.chmod(0)
        return
    if kind == "file":
        real_open = open

        def refusing_open(path, *args, **kwargs):
            if Path(path) == denied:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(files_module, "open", refusing_open, raising=False)
    else:
        real_scandir = os.scandir

        def refusing_scandir(path="."):
            if Path(path) == denied:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", refusing_scandir)


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_unreadable_file_or_directory(tmp_path, monkeypatch, kind):
    make_tree(tmp_path / "tree", NATURAL)
    denied = tmp_path / "tree" / ("a/b/f1.md" if kind == "file" else "a/b")
    _deny(monkeypatch, denied, kind)
    try:
        msg = one_line_error(lambda: load_corpus(str(tmp_path / "tree")))
    finally:
        denied.chmod(0o755)
    assert f"cannot read the corpus {kind} {denied} (permission denied)" in msg and "chmod" in msg


def test_file_and_directory_mixed_up(tmp_path):
    (tmp_path / "notes.txt").write_bytes(lines(0, 50))
    msg = one_line_error(lambda: load_corpus(f"{tmp_path / 'notes.txt'}/"))
    assert "is a file, not a directory" in msg and "trailing '/'" in msg
    msg = one_line_error(lambda: load_corpus(str(tmp_path / "notes.txt" / "inside.md")))
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in msg
    msg = one_line_error(lambda: load_corpus(str(tmp_path / "notes.txt" / "*.md")))
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in msg
    os.mkfifo(tmp_path / "pipe")
    assert "not a regular file" in one_line_error(lambda: load_corpus(str(tmp_path / "pipe")))
    (tmp_path / "dir").mkdir()
    for i in range(12):
        (tmp_path / "dir" / f"{i}.txt").write_bytes(lines(i, 5))
    os.mkfifo(tmp_path / "dir" / "pipe")  # in a directory: left out, never read (it would block)
    assert sum(len(load_corpus(str(tmp_path / "dir")).document_names(s)) for s in SPLITS) == 12


def test_too_short_to_split(tmp_path):
    (tmp_path / "short.txt").write_bytes(b"0123456789")
    msg = one_line_error(lambda: load_corpus(str(tmp_path / "short.txt")))
    assert str(tmp_path / "short.txt") in msg and "10 bytes, too few to split" in msg and "give a longer file" in msg
    (tmp_path / "twenty.txt").write_bytes(b"x" * 20)  # the smallest that splits: 18, 1 and 1 bytes
    corpus = load_corpus(str(tmp_path / "twenty.txt"))
    assert [len(corpus.documents(s)[0]) for s in SPLITS] == [18, 1, 1]


def test_too_short_for_a_training_segment_names_the_corpus(tmp_path, capsys):
    path = tmp_path / "small.txt"
    path.write_bytes(lines(0, 10))
    code = main(["train", f"data.corpus={path}", f"train.out_dir={tmp_path / 'run'}", "train.steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert f"train split of {path}" in err and "smaller batch_size or seq_len" in err


def test_data_dir_that_is_a_file(tmp_path, monkeypatch):
    afile = tmp_path / "data.txt"
    afile.write_bytes(b"x")
    msg = one_line_error(lambda: load_corpus("ptb", afile, download=False))
    assert f"the data directory {afile} (from data.data_dir or --data-dir) is a file, not a directory" in msg
    monkeypatch.setenv("LAMINA_DATA_DIR", str(afile))
    msg = one_line_error(lambda: load_corpus("ptb", download=False))
    assert "$LAMINA_DATA_DIR" in msg and "is a file, not a directory" in msg
    monkeypatch.delenv("LAMINA_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir()
    (tmp_path / "xdg" / "lamina").write_bytes(b"x")  # the cache itself is a file
    msg = one_line_error(lambda: load_corpus("ptb", tmp_path / "nowhere", download=False))
    assert f"{tmp_path / 'nowhere'} (does not exist)" in msg and f"{tmp_path / 'xdg' / 'lamina'} (is a file" in msg


def test_no_data_message_recommends_a_corpus_flag():
    """There is no --corpus flag; the config key is data.corpus=NAME|PATH."""
    for path in Path(files_module.__file__).parent.glob("*.py"):
        assert "--corpus" not in path.read_text(encoding="utf-8"), path


# ---------------------------------------------------------------- end to end


def test_train_then_evaluate_on_own_files(tmp_path, capsys, monkeypatch):
    from conftest import TINY

    from lamina.eval import evaluate
    from lamina.train import load_model

    make_tree(tmp_path / "tree", NATURAL)
    big = tmp_path / "tree" / "big.txt"
    big.write_bytes(lines(99, 1500))
    run = tmp_path / "run"
    corpus_arg = str(tmp_path / "tree" / "**" / "*")
    argv = ["train", f"data.corpus={corpus_arg}", *TINY, "train.steps=4", "train.eval_every=4", f"train.out_dir={run}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'tree'}/**/* (12 files" in out and "bits/byte" in out
    model, tokenizer, cfg = load_model(run)
    assert cfg.data.corpus == corpus_arg and isinstance(tokenizer, ByteTokenizer)
    monkeypatch.chdir(tmp_path / "tree" / "a")  # eval from elsewhere finds the same files
    assert main(["eval", str(run), "--max-tokens", "500"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    scored = load_files(tmp_path / "tree" / "a")
    tokens = encode_split(tokenizer, scored, "test")
    result = evaluate(model, tokens, batch_size=2, tgt_len=32)
    assert result.tokens == 2 * ((tokens.numel() - 1) // 2)
    assert 0 < result.nats < 1.5 * torch.log(torch.tensor(257.0)).item()


def test_a_relative_path_is_saved_absolute_and_found_from_elsewhere(tmp_path, monkeypatch, capsys):
    from conftest import TINY

    from lamina.train import load_model

    (tmp_path / "work" / "notes").mkdir(parents=True)
    (tmp_path / "work" / "notes" / "a.txt").write_bytes(lines(3, 1500))
    monkeypatch.chdir(tmp_path / "work")
    run = tmp_path / "run"
    argv = ["train", "data.corpus=notes/*.txt", *TINY, "train.steps=2", "train.eval_every=2", f"train.out_dir={run}"]
    assert main(argv) == 0
    assert load_model(run)[2].data.corpus == f"{tmp_path / 'work' / 'notes'}/*.txt"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(run), "--max-tokens", "300"]) == 0
    assert "bits/byte" in capsys.readouterr().out
