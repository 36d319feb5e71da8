"""Corpora of your own files: ``data.corpus=PATH`` for a file, a directory or a glob, of any bytes.

What is read:

- a file: that file, whatever its bytes (binary and non-UTF-8 included);
- a directory: every file below it, recursively;
- a glob (``'notes/*.md'``, ``'src/**/*.py'``, ``**`` spanning folders): every
  file it matches, and every file below a directory it matches.

Hidden files and folders (a name starting with ``.``) are skipped below a
given directory or by a glob's wildcards, as the shell does; a hidden path
named explicitly is read. Symbolic links to files are read, links to folders
are not followed, empty files are skipped (and counted), and anything that is
not a regular file (a pipe, a socket, a device) is left out.

Every file is named by its POSIX path relative to the root: the directory
given, the folder part of a glob before its first wildcard, or the folder of
a single file. Files are taken in the sorted order of these names, so nothing
depends on the order the OS lists a folder in, nor on where the folder is: a
copy elsewhere splits the same.

How the files are split into train/valid/test (:data:`SPLIT_RULE`):

- ``BY_FILE_MIN_FILES`` (10) files or more: by file, with the stdlib rule
  (:func:`~lamina.data.corpora.stdlib_split`): the first 8 bytes of the
  sha256 of the relative path, big-endian, mod 100 give a bucket; 0-89 train,
  90-94 valid, 95-99 test. A split left empty takes one file from the split
  with the most files: the one whose bucket is nearest to its range, ties to
  the first path. The move is printed.
- fewer files: by bytes of the files concatenated in path order: train is the
  first 90% (cut at ``size * 90 // 100``), valid the next 5% (cut at
  ``size * 95 // 100``), test the rest; each cut moves forward to the next line
  start (just after a newline) or to the end of a file, whichever comes first,
  if one is within 1% of the size.

A corpus of files reports bits per byte and is read with the byte tokenizer
unless ``data.tokenizer=words``.
"""

from __future__ import annotations

import glob
import os
import stat
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from lamina.data.corpora import (
    CORPORA,
    SPLITS,
    Corpus,
    CorpusSpec,
    _Part,
    corpus_names,
    path_bucket,
    stdlib_split,
)
from lamina.errors import LaminaError, format_bytes, os_reason

BY_FILE_MIN_FILES = 10
_BUCKETS = {"train": (0, 90), "valid": (90, 95), "test": (95, 100)}
_GLOB_CHARS = frozenset("*?[")

SPLIT_RULE = (
    f"{BY_FILE_MIN_FILES} files or more: each file goes to the split of its path relative to the root "
    "(sha256 of the POSIX path, first 8 bytes big-endian, mod 100: 0-89 train, 90-94 valid, 95-99 test; an "
    "empty split takes the file whose bucket is nearest its range from the split with the most files); fewer "
    "files: the bytes of the files in path order, first 90% train, next 5% valid, last 5% test, each cut moved "
    "to the next line start or file end within 1% of the size"
)


def is_glob(text: str) -> bool:
    """Whether ``text`` holds a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(c in _GLOB_CHARS for c in text)


def _glob_root(pattern: str) -> tuple[str, str]:
    """``'src/**/*.py'`` -> ``('src', '**/*.py')``: the folders before the first wildcard, and the rest."""
    parts = pattern.split(os.sep)
    first = next(i for i, part in enumerate(parts) if is_glob(part))
    root = os.sep.join(parts[:first])
    if not root:
        root = os.sep if pattern.startswith(os.sep) else "."
    return root, os.sep.join(parts[first:])


def canonical_path(path: str | os.PathLike) -> str:
    """``path`` (a file, directory or glob) made absolute against the current directory, ``~`` expanded.

    A glob stays a glob, rooted at an absolute folder; a trailing ``/`` is kept.
    """
    text = os.path.expanduser(os.fspath(path))
    if is_glob(text) and not os.path.lexists(text):
        root, pattern = _glob_root(text)
        return os.path.join(os.path.abspath(root), pattern)
    out = os.path.abspath(text)
    return out + os.sep if text.endswith(os.sep) and out != os.sep else out


def canonical_corpus(name: str) -> str:
    """What ``data.corpus`` should hold in a saved run: a registered name as it is, a path made absolute.

    A registered name wins over a file of the same name (write ``./ptb`` for the file). Call it when a run
    starts, so that ``lamina eval RUN`` finds the same files again from any directory.
    """
    return name if name in CORPORA else canonical_path(name)


@dataclass(frozen=True)
class FileSet:
    """The files a path, directory or glob names, as found: ``files`` are ``(relative name, path, size)``."""

    given: str
    root: Path
    kind: str  # "file", "directory" or "glob"
    files: tuple[tuple[str, Path, int], ...]
    skipped_empty: int

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.files)

    def title(self) -> str:
        n = len(self.files)
        skipped = f", {self.skipped_empty:,} empty skipped" if self.skipped_empty else ""
        return f"{self.given} ({n:,} file{'s' if n != 1 else ''}, {format_bytes(self.size)}{skipped})"


def _unreadable(path: Path | str, e: OSError, what: str = "file") -> LaminaError:
    fix = "make it readable (chmod) or leave it out of data.corpus (e.g. with a glob)"
    return LaminaError(f"cannot read the corpus {what} {path} ({os_reason(e)}); {fix}")


def _not_found(given: str, path: str, as_corpus: bool) -> LaminaError:
    """The error for a path that does not exist (for ``data.corpus``: a name that is not registered either)."""
    probe = Path(path.rstrip(os.sep) or os.sep)
    why = f"{path} does not exist"
    for parent in probe.parents:
        if parent.exists():
            if not parent.is_dir():
                why = f"{parent} is a file, not a directory"
            break
    if os.path.islink(probe):
        why = f"{probe} is a broken symbolic link"
    if not as_corpus:
        return LaminaError(f"{given} names no file, directory or glob ({why}); give an existing one")
    return LaminaError(
        f"unknown corpus {given!r}: neither a registered name (registered corpora: {', '.join(corpus_names())}) "
        f"nor an existing file, directory or glob ({why}); set data.corpus=NAME to a registered name, or "
        "data.corpus=PATH to a file, a directory or a quoted glob such as 'notes/*.md'"
    )


def _walk(directory: Path, prefix: str, out: dict[str, Path]) -> None:
    """Every regular file below ``directory`` (hidden names and links to folders skipped) into ``out``."""
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as e:
        raise _unreadable(directory, e, "directory") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel = prefix + entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                _walk(Path(entry.path), rel + "/", out)
            elif entry.is_file():
                out[rel] = Path(entry.path)
        except OSError as e:
            raise _unreadable(entry.path, e) from None


def _regular_size(path: Path) -> int | None:
    """The size of ``path`` if it is a regular file (links followed), else None."""
    st = path.stat()
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _check_readable(path: Path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise _unreadable(path, e) from None


def find_files(path: str | os.PathLike, as_corpus: bool = False) -> FileSet:
    """The files that ``path`` names (a file, a directory, recursively, or a glob), checked to be readable.

    Errors (:class:`LaminaError`, one line) for a path that does not exist, a glob that matches no file, an
    empty file or a directory without a non-empty file, a file where a directory is meant (``file.txt/``),
    something that is not a regular file, and a file or folder that cannot be read. ``as_corpus``: ``path``
    came from ``data.corpus``, so the error for a missing path also lists the registered corpora.
    """
    if not os.fspath(path).strip():
        what = "data.corpus" if as_corpus else "the path"
        raise LaminaError(f"{what} is empty; give a registered corpus name, or a file, a directory or a glob")
    given = canonical_path(path)
    literal = given.rstrip(os.sep) or os.sep
    found: dict[str, Path] = {}
    if os.path.lexists(literal) or not is_glob(literal):
        target = Path(literal)
        if not target.exists():
            raise _not_found(os.fspath(path), given, as_corpus)
        if target.is_dir():
            root, kind = target, "directory"
            _walk(target, "", found)
        else:
            if given.endswith(os.sep):
                raise LaminaError(f"{literal} is a file, not a directory; drop the trailing '/' to read the file")
            try:
                size = _regular_size(target)
            except OSError as e:
                raise _unreadable(target, e) from None
            if size is None:
                raise LaminaError(
                    f"{target} is not a regular file (a pipe, socket or device); give a file, directory or glob"
                )
            root, kind = target.parent, "file"
            found[target.name] = target
    else:
        root_text, pattern = _glob_root(literal)
        root, kind = Path(root_text), "glob"
        if not root.is_dir():
            why = "does not exist" if not root.exists() else "is a file, not a directory"
            raise LaminaError(f"the glob {given} matches no file ({root} {why}); check its folder part")
        try:
            matches = glob.glob(pattern, root_dir=root, recursive=True)
        except OSError as e:
            raise _unreadable(root, e, "directory") from None
        for match in matches:
            rel = Path(match).as_posix()
            full = root / match
            if full.is_dir():
                _walk(full, "" if rel in ("", ".") else rel + "/", found)
            elif full.is_file():
                found[rel] = full
        if not found:
            raise LaminaError(
                f"the glob {given} matches no file; check the pattern (hidden files are matched only by a "
                "pattern that names the dot), and quote it so that the shell does not expand it"
            )
    files, empty = [], 0
    for rel in sorted(found):
        p = found[rel]
        try:
            size = p.stat().st_size
        except OSError as e:
            raise _unreadable(p, e) from None
        _check_readable(p)
        if size == 0:
            empty += 1
        else:
            files.append((rel, p, size))
    if not files:
        if kind == "file":
            raise LaminaError(f"the corpus file {given} is empty; give a file with something in it")
        if empty:
            raise LaminaError(f"every file of {given} is empty ({empty:,} files); give files with something in them")
        raise LaminaError(
            f"the corpus directory {given} holds no files (hidden files and folders are skipped); "
            "give a directory with files in it"
        )
    return FileSet(given, root, kind, tuple(files), empty)


# ---------------------------------------------------------------- splitting


def _user_spec(name: str, split_rule: str) -> CorpusSpec:
    return CorpusSpec(
        name=name, folder="", files=(), sources=(), split_rule=split_rule, splits=(), tokenizer="bytes", unit="byte",
        note="your own files: bits per byte, byte tokenizer unless data.tokenizer=words",
    )


def _split_by_file(fs: FileSet) -> tuple[dict[str, list[_Part]], str]:
    groups: dict[str, list[str]] = {s: [] for s in SPLITS}
    info = {rel: (path, size) for rel, path, size in fs.files}
    for rel in info:
        groups[stdlib_split(rel)].append(rel)
    moves = []
    for split in SPLITS:
        if groups[split]:
            continue
        donor = max(SPLITS, key=lambda s: (len(groups[s]), -SPLITS.index(s)))
        lo, hi = _BUCKETS[split]

        def distance(rel: str) -> tuple[int, str]:
            bucket = path_bucket(rel)
            return max(lo - bucket, bucket - (hi - 1), 0), rel

        rel = min(groups[donor], key=distance)
        groups[donor].remove(rel)
        groups[split] = [rel]
        moves.append(f"{split} was empty, so {rel} (bucket {path_bucket(rel)}) moved there from {donor}")
    parts = {s: [_Part(info[rel][0], 0, info[rel][1], rel) for rel in sorted(groups[s])] for s in SPLITS}
    rule = (
        f"split by file: sha256 of each path relative to {fs.root}, first 8 bytes mod 100: "
        "0-89 train, 90-94 valid, 95-99 test"
    )
    return parts, "; ".join([rule, *moves])


def _next_line_start(fs: FileSet, offsets: list[int], cut: int, window: int) -> int:
    """``cut`` moved forward to just after a newline, or to the end of its file, if one is within ``window``."""
    i = bisect_right(offsets, cut) - 1
    rel, path, size = fs.files[i]
    inside = cut - offsets[i]
    if inside == 0:
        return cut
    try:
        with open(path, "rb") as f:
            f.seek(inside - 1)
            ahead = f.read(window + 1)
    except OSError as e:
        raise _unreadable(path, e) from None
    newline = ahead.find(b"\n")
    if newline >= 0:
        return cut + newline
    return offsets[i] + size if size - inside <= window else cut


def _split_by_bytes(fs: FileSet) -> tuple[dict[str, list[_Part]], str]:
    offsets = [0]
    for _, _, size in fs.files:
        offsets.append(offsets[-1] + size)
    total = offsets[-1]
    window = total // 100
    c1 = _next_line_start(fs, offsets, total * 90 // 100, window)
    c2 = _next_line_start(fs, offsets, total * 95 // 100, window)
    if not 0 < c1 < c2 < total:
        raise LaminaError(
            f"the corpus {fs.given} has {total:,} bytes, too few to split into train (90%), valid (5%) and test "
            "(5%) with none empty; give a longer file or more files"
        )
    bounds = {"train": (0, c1), "valid": (c1, c2), "test": (c2, total)}
    parts: dict[str, list[_Part]] = {s: [] for s in SPLITS}
    for (rel, path, size), start in zip(fs.files, offsets):
        for split, (a, b) in bounds.items():
            lo, hi = max(a, start), min(b, start + size)
            if lo < hi:
                parts[split].append(_Part(path, lo - start, hi - start, rel))
    what = "the file" if len(fs.files) == 1 else "the files in path order"
    rule = (
        f"split by bytes of {what}: first 90% train, next 5% valid, last 5% test, "
        "each cut moved to the next line start (or file end) within 1% of the size"
    )
    return parts, rule


def load_user_corpus(name: str) -> Corpus:
    """The corpus of the file, directory or glob ``name``, split by :data:`SPLIT_RULE`; its unit is the byte."""
    fs = find_files(name, as_corpus=True)
    by_file = len(fs.files) >= BY_FILE_MIN_FILES
    parts, rule = _split_by_file(fs) if by_file else _split_by_bytes(fs)
    spec = _user_spec(fs.given, "path-hash" if by_file else "byte-range")
    return Corpus(spec, parts, {rel: path for rel, path, _ in fs.files}, fs.title(), rule=rule)


def load_files(path: str | os.PathLike) -> Corpus:
    """Every byte of the files that ``path`` names (a file, a directory, recursively, or a glob), unsplit.

    For scoring a model on files of your own: each of the ``train``, ``valid`` and ``test`` splits of the
    returned corpus is all the files, one document per file in sorted path order, so
    ``encode_split(tokenizer, corpus, "test")`` scores every byte. ``path`` is always a path, never a
    registered corpus name. Its unit is the byte (bits per byte), or the word with a word tokenizer.
    """
    fs = find_files(path)
    every = [_Part(p, 0, size, rel) for rel, p, size in fs.files]
    spec = _user_spec(fs.given, "none")
    return Corpus(spec, {s: list(every) for s in SPLITS}, {rel: p for rel, p, _ in fs.files}, fs.title(),
                  rule="not split: every split is all of it")
