"""Tests of lamina.data: tokenizers, the corpus registry (lookup, verification, download), stream batching.

Real corpora are read from the shared benchmark copies (never copied into the
repository; their tests are skipped without them); lookup, verification and
downloads are tested on a small corpus the tests make and register, with
file:// URLs of temporary files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import platform
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from lamina.data import (
    CORPORA,
    SPLITS,
    ByteTokenizer,
    CorpusSpec,
    FileSpec,
    Source,
    SplitPart,
    StreamBatcher,
    WordTokenizer,
    build_tokenizer,
    corpus_names,
    encode_split,
    load_corpus,
    metric_unit,
    stdlib_split,
    tokenizer_from_dict,
)
from lamina.errors import LaminaError

TS_URL = CORPORA["tinyshakespeare"].sources[0].url
UNREACHABLE = "http://127.0.0.1:9/x"
TOY_URL = "https://example.org/toy/input.txt"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path) -> Path:
    """No data dir from the environment, a private cache, no proxy: returns the lamina cache dir."""
    monkeypatch.delenv("LAMINA_DATA_DIR", raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "lamina"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TOY_TEXT = b"".join(b"line %d of a small corpus the tests register\n" % i for i in range(2000))
TOY_SHA256 = sha256(TOY_TEXT)


@pytest.fixture
def toy(monkeypatch) -> CorpusSpec:
    """``toy``, registered like Tiny Shakespeare (one file ``input.txt``, byte ranges, a plain download)."""
    end = len(TOY_TEXT) * 9 // 10
    spec = CorpusSpec(
        name="toy", folder="toy", files=(FileSpec("input.txt", len(TOY_TEXT), TOY_SHA256),),
        sources=(Source(TOY_URL, (("input.txt", ""),)),), split_rule="byte-range",
        splits=(SplitPart("train", "input.txt", 0, end), SplitPart("valid", "input.txt", end, None),
                SplitPart("test", "input.txt", end, None)),
        tokenizer="bytes", unit="byte",
    )
    monkeypatch.setitem(CORPORA, "toy", spec)
    return spec


def toy_copy(dest_dir: Path, flat: bool = False) -> Path:
    """A good copy of the toy corpus file under dest_dir (in its folder unless ``flat``)."""
    dest = dest_dir / "input.txt" if flat else dest_dir / "toy" / "input.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(TOY_TEXT)
    return dest


def with_source(monkeypatch, name: str, url: str) -> None:
    """Point the registry entry ``name`` (single-file, plain download) at ``url``."""
    spec = CORPORA[name]
    monkeypatch.setitem(CORPORA, name, dataclasses.replace(spec, sources=(Source(url, spec.sources[0].members),)))


def leftovers(cache: Path) -> list[Path]:
    return list(cache.rglob("*.part")) if cache.exists() else []


# ---------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_arbitrary_bytes():
    tok = ByteTokenizer()
    g = torch.Generator().manual_seed(0)
    data = bytes(range(256)) + b"\xff\xfe\xc3(\x80" + bytes(torch.randint(0, 256, (5000,), generator=g).tolist())
    ids = tok.encode(data)
    assert ids.dtype == torch.long and ids.dim() == 1 and ids.numel() == len(data)
    assert ids[:256].tolist() == list(range(256))
    assert tok.decode(ids) == data
    assert tok.encode("π").tolist() == [0xCF, 0x80]
    assert tok.encode(b"").numel() == 0
    docs = tok.encode_documents([b"ab", b"", b"\x80"])
    assert docs.tolist() == [97, 98, 256, 256, 128, 256]
    assert tok.decode(docs) == b"ab\x80"
    assert (tok.vocab_size, tok.eos_id, tok.name) == (257, 256, "bytes")
    assert tokenizer_from_dict(tok.to_dict()) == tok


def test_word_tokenizer_fit_encode_decode():
    tok = WordTokenizer.fit("b a b c\nc b\n<unk> x")
    # <eos>, <unk> first, then by descending count, ties alphabetical.
    assert tok.vocab == ["<eos>", "<unk>", "b", "c", "a", "x"]
    assert (tok.eos_id, tok.unk_id, tok.vocab_size, tok.name) == (0, 1, 6, "words")
    ids = tok.encode("b zz  a\n\nc")  # blank line -> lone <eos>; last line without newline still ends in <eos>
    assert ids.tolist() == [2, 1, 4, 0, 0, 3, 0]
    assert tok.decode(ids) == b"b <unk> a\n\nc\n"
    assert tok.encode(b"b \xff\n").tolist() == [2, 1, 0]  # invalid UTF-8 -> U+FFFD -> <unk>
    assert tok.encode_documents([b"a\n", b"b"]).tolist() == [4, 0, 2, 0]
    assert tokenizer_from_dict(tok.to_dict()) == tok
    assert WordTokenizer.fit("b a\n").vocab == WordTokenizer.fit("a b\n").vocab == ["<eos>", "<unk>", "a", "b"]


@pytest.mark.parametrize(
    "bad",
    [None, {}, {"type": "bpe"}, {"type": "words"}, {"type": "words", "vocab": ["<eos>", "a"]},
     {"type": "words", "vocab": ["<eos>", "<unk>", "a", "a"]}],
)
def test_tokenizer_from_bad_dict(bad):
    with pytest.raises(LaminaError) as e:
        tokenizer_from_dict(bad)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- real corpora from the shared dir


def test_ptb_word_counts(shared_data):
    corpus = load_corpus("ptb", shared_data, download=False)
    tok = build_tokenizer(None, corpus)
    assert isinstance(tok, WordTokenizer) and tok.vocab_size == 10_000
    counts = {s: encode_split(tok, corpus, s).numel() for s in SPLITS}
    assert counts == {"train": 929_589, "valid": 73_760, "test": 82_430}
    # PTB has no out-of-vocabulary words: every <unk> id comes from a literal "<unk>" in the text.
    valid = encode_split(tok, corpus, "valid")
    assert int((valid == tok.unk_id).sum()) == corpus.documents("valid")[0].split().count(b"<unk>")
    assert metric_unit(corpus, tok) == "word"
    assert metric_unit(corpus, ByteTokenizer()) == "byte"


def test_wikitext2_word_counts(shared_data):
    corpus = load_corpus("wikitext-2", shared_data, download=False)
    tok = build_tokenizer(None, corpus)
    # The published 33,278 is the vocabulary over all splits; fitting on train alone gives the
    # same, because WikiText-2's vocabulary was defined on its train split (valid/test add no type).
    assert tok.vocab_size == 33_278
    for split in ("valid", "test"):
        words = set(b"".join(corpus.documents(split)).decode("utf-8").split())
        assert words <= set(tok.vocab)
    counts = {s: encode_split(tok, corpus, s).numel() for s in SPLITS}
    assert counts == {"train": 2_088_628, "valid": 217_646, "test": 245_569}


def test_ptb_char_loads_from_shared_dir(shared_data):
    corpus = load_corpus("ptb-char", shared_data, download=False)
    assert corpus.paths["ptb.char.valid.txt"] == shared_data / "ptb" / "ptb.char.valid.txt"
    tok = build_tokenizer(None, corpus)
    # 49 symbols in train (README) plus <eos> and <unk>; <unk> of PTB is spelled out here.
    assert tok.vocab_size == 49 + 2
    counts = {s: encode_split(tok, corpus, s).numel() for s in SPLITS}
    # Symbols (README) + one <eos> per line (README line counts) + 1: each file ends with "\n ", a last
    # line holding one space, which gets its <eos> as in AWD-LSTM's `for line in f` reader.
    assert counts == {"train": 4_975_414 + 42_068 + 1, "valid": 389_672 + 3_370 + 1, "test": 438_662 + 3_761 + 1}
    assert corpus.documents("valid")[0].endswith(b"\n ")
    assert metric_unit(corpus, tok) == "char"
    assert metric_unit(corpus, ByteTokenizer()) == "byte"


def test_tinyshakespeare_90_10_split(shared_data):
    corpus = load_corpus("tinyshakespeare", shared_data, download=False)
    raw = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()
    train, valid, test = (corpus.documents(s) for s in SPLITS)
    assert len(train) == len(valid) == 1
    assert len(train[0]) == 1_003_854 and len(valid[0]) == 111_540
    assert train[0] + valid[0] == raw
    assert test == valid
    assert "no official test split" in corpus.describe()
    assert encode_split(ByteTokenizer(), corpus, "train").numel() == 1_003_854 + 1
    assert metric_unit(corpus, build_tokenizer(None, corpus)) == "char"
    assert metric_unit(corpus, build_tokenizer("words", corpus)) == "word"


# ---------------------------------------------------------------- stdlib


def test_stdlib_split_is_deterministic_disjoint_and_follows_the_rule():
    a, b = load_corpus("stdlib"), load_corpus("stdlib")
    names = {s: a.document_names(s) for s in SPLITS}
    assert names == {s: b.document_names(s) for s in SPLITS}
    assert all(names[s] == sorted(names[s]) and names[s] for s in SPLITS)
    sets = [set(names[s]) for s in SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])

    root = Path(sysconfig.get_paths()["stdlib"])
    expected = {s: [] for s in SPLITS}
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if p.is_file() and not {"site-packages", "dist-packages"} & set(rel.parts):
            bucket = int.from_bytes(hashlib.sha256(rel.as_posix().encode()).digest()[:8], "big") % 100
            expected["train" if bucket < 90 else "valid" if bucket < 95 else "test"].append(rel.as_posix())
    assert {s: sorted(v) for s, v in expected.items()} == names
    # Pinned: changing the rule would silently change the default benchmark.
    assert [stdlib_split(p) for p in ("os.py", "ast.py", "typing.py", "json/__init__.py")] == [
        "valid", "test", "train", "train"]

    docs = a.documents("valid")
    assert docs == b.documents("valid")
    assert docs[0] == (root / names["valid"][0]).read_bytes()
    text = a.describe()
    assert f"Python {platform.python_version()}" in text and f"valid {len(names['valid']):,} files" in text


# ---------------------------------------------------------------- lookup, verification, errors


def test_lookup_order_data_dir_before_cache(toy, isolated, tmp_path, monkeypatch):
    good = toy_copy(tmp_path / "data")
    bad = toy_copy(isolated, flat=True)  # <cache>/input.txt: the flat layout is searched too
    with open(bad, "r+b") as f:
        f.write(b"X")
    assert load_corpus("toy", tmp_path / "data").paths["input.txt"] == good
    monkeypatch.setenv("LAMINA_DATA_DIR", str(tmp_path / "data"))
    assert load_corpus("toy").paths["input.txt"] == good
    monkeypatch.setenv("LAMINA_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(LaminaError, match="input.txt") as e:  # falls through to the corrupt cached copy
        load_corpus("toy")
    assert str(bad) in str(e.value)
    # the argument beats the environment
    assert load_corpus("toy", tmp_path / "data").paths["input.txt"] == good


def test_checksum_mismatch_is_a_clear_error(toy, tmp_path):
    path = toy_copy(tmp_path)
    data = bytearray(path.read_bytes())
    data[1000] ^= 1  # the right size, one bit wrong
    path.write_bytes(data)
    with pytest.raises(LaminaError) as e:
        load_corpus("toy", tmp_path, download=True)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("toy", str(path), TOY_SHA256, sha256(bytes(data)), "delete"):
        assert part in msg


def test_missing_corpus_offline_errors(tmp_path, isolated, monkeypatch):
    with pytest.raises(LaminaError) as e:
        load_corpus("tinyshakespeare", tmp_path / "data", download=False)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("'tinyshakespeare'", "input.txt", str(tmp_path / "data"), str(isolated), TS_URL,
                 "LAMINA_DATA_DIR", "--data-dir", "downloading is off"):
        assert part in msg

    with_source(monkeypatch, "tinyshakespeare", UNREACHABLE)
    with pytest.raises(LaminaError) as e:
        load_corpus("tinyshakespeare", download=True)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("'tinyshakespeare'", "input.txt", UNREACHABLE, "failed", str(isolated / "tinyshakespeare")):
        assert part in msg
    assert leftovers(isolated) == [] and not (isolated / "tinyshakespeare" / "input.txt").exists()


def test_unknown_corpus_and_split():
    with pytest.raises(LaminaError, match="registered corpora: stdlib, tinyshakespeare, ptb"):
        load_corpus("nope")
    assert corpus_names()[0] == "stdlib" and set(corpus_names()) == set(CORPORA)
    with pytest.raises(LaminaError, match="unknown split 'dev'"):
        load_corpus("stdlib").documents("dev")
    with pytest.raises(LaminaError, match="unknown tokenizer"):
        build_tokenizer("bpe3", load_corpus("stdlib"))


def test_empty_file_is_a_clear_error(tmp_path):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(b"")
    with pytest.raises(LaminaError, match="is empty"):
        load_corpus("tinyshakespeare", tmp_path)


def _toy_spec(files: dict[str, bytes], source: Source, name: str = "toy") -> CorpusSpec:
    return CorpusSpec(
        name=name, folder=name,
        files=tuple(FileSpec(n, len(b), sha256(b)) for n, b in files.items()),
        sources=(source,), split_rule="files",
        splits=tuple(SplitPart(s, f"{s}.txt") for s in SPLITS), tokenizer="words", unit="word",
    )


def test_empty_split_is_a_clear_error(tmp_path, monkeypatch):
    files = {"train.txt": b"a b\n", "valid.txt": b"", "test.txt": b"c\n"}
    monkeypatch.setitem(CORPORA, "toy", _toy_spec(files, Source(UNREACHABLE, ())))
    (tmp_path / "toy").mkdir()
    for n, b in files.items():
        (tmp_path / "toy" / n).write_bytes(b)
    with pytest.raises(LaminaError, match="empty"):
        load_corpus("toy", tmp_path, download=False)


# ---------------------------------------------------------------- downloads (file:// URLs)


def test_download_plain_file_into_cache(toy, tmp_path, isolated, monkeypatch):
    served = toy_copy(tmp_path / "served")
    with_source(monkeypatch, "toy", served.as_uri())
    corpus = load_corpus("toy", tmp_path / "empty-data-dir")
    target = isolated / "toy" / "input.txt"
    assert corpus.paths["input.txt"] == target
    assert target.read_bytes() == served.read_bytes()
    assert leftovers(isolated) == []
    # found in the cache from now on, with no network
    with_source(monkeypatch, "toy", UNREACHABLE)
    assert load_corpus("toy", download=False).paths["input.txt"] == target


def test_corrupt_download_is_not_installed(toy, tmp_path, isolated, monkeypatch):
    served = tmp_path / "input.txt"
    served.write_bytes(b"not the toy corpus\n")
    with_source(monkeypatch, "toy", served.as_uri())
    with pytest.raises(LaminaError) as e:
        load_corpus("toy")
    msg = str(e.value)
    assert served.as_uri() in msg and TOY_SHA256 in msg and sha256(b"not the toy corpus\n") in msg
    assert not (isolated / "toy" / "input.txt").exists() and leftovers(isolated) == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_download_archive_extracts_members(tmp_path, isolated, monkeypatch, kind):
    files = {f"{s}.txt": f"the {s} words\nmore {s}\n".encode() * 50 for s in SPLITS}
    members = {f"toy-v1/wiki.{s}.tokens": files[f"{s}.txt"] for s in SPLITS}
    members["toy-v1/README"] = b"not wanted\n"
    archive = tmp_path / f"toy.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for m, b in members.items():
                zf.writestr(m, b)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for m, b in members.items():
                info = tarfile.TarInfo("./" + m)  # like simple-examples.tgz
                info.size = len(b)
                tf.addfile(info, io.BytesIO(b))
    source = Source(archive.as_uri(), tuple((f"{s}.txt", f"toy-v1/wiki.{s}.tokens") for s in SPLITS), archive=kind)
    monkeypatch.setitem(CORPORA, "toy", _toy_spec(files, source))
    corpus = load_corpus("toy")
    assert sorted(os.listdir(isolated / "toy")) == ["test.txt", "train.txt", "valid.txt"]
    for s in SPLITS:
        assert corpus.documents(s) == [files[f"{s}.txt"]]
    tok = build_tokenizer(None, corpus)
    assert encode_split(tok, corpus, "valid").numel() == 50 * (3 + 1 + 2 + 1)  # words plus one <eos> per line
    assert leftovers(isolated) == []


# ---------------------------------------------------------------- stream batching


def test_stream_batcher_segments_continue_and_targets_shift():
    tokens = torch.arange(1003)
    b = StreamBatcher(tokens, batch_size=4, seq_len=10)
    n = (1003 - 1) // 4
    assert b.stream_len == n == 250 and len(b) == b.n_segments == 25
    prev = None
    for i, (x, y) in enumerate(b):
        assert x.shape == y.shape == (4, 10)
        assert torch.equal(y, x + 1)
        assert x[:, 0].tolist() == [s * n + i * 10 for s in range(4)]
        if prev is not None:
            assert torch.equal(x[:, 0], prev[:, -1] + 1)  # segment i continues segment i-1 in every stream
        prev = x
        assert torch.equal(x, b.segment(i)[0])
    with pytest.raises(IndexError):
        b.segment(25)


def test_stream_batcher_eval_covers_every_position_once():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 50, (1003,), generator=g)
    b = StreamBatcher(tokens, batch_size=4, seq_len=7, drop_last=False)
    n = 250
    assert len(b) == 36  # 35 full segments + one of 5
    xs, ys = zip(*(b.segment(i) for i in range(len(b))))
    assert ys[-1].shape == (4, 5)
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    for s in range(4):
        assert torch.equal(x[s], tokens[s * n : s * n + n])
        assert torch.equal(y[s], tokens[s * n + 1 : s * n + n + 1])
    assert sum(t.numel() for t in ys) == 4 * n
    assert len(StreamBatcher(tokens, 4, 7, drop_last=True)) == 35


def test_stream_batcher_too_small_split():
    with pytest.raises(LaminaError) as e:
        StreamBatcher(torch.arange(40), batch_size=4, seq_len=10, name="train split of toy")
    msg = str(e.value)
    assert "train split of toy" in msg and "40" in msg and "41" in msg and "smaller batch_size" in msg
    StreamBatcher(torch.arange(41), batch_size=4, seq_len=10)
    with pytest.raises(LaminaError, match="has 4 tokens"):
        StreamBatcher(torch.arange(4), batch_size=4, seq_len=10, drop_last=False)
    b = StreamBatcher(torch.arange(5), batch_size=4, seq_len=10, drop_last=False)
    assert len(b) == 1 and b.segment(0)[1].tolist() == [[1], [2], [3], [4]]
