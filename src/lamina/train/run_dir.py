"""A run directory owned by one trainer at a time.

:class:`RunDir` is taken before anything is written: it creates the directory
(so a read-only or impossible ``train.out_dir`` is refused before any
compute), takes an exclusive ``flock`` on ``.lock`` holding the owner's PID
(a second trainer on the same directory gets a one-line error naming it; the
kernel drops the lock when the owner dies, however it dies), and removes the
temporary checkpoint directories that dead trainers left behind (a kill or a
full disk during a save), so a full disk does not stay full.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from lamina.errors import LaminaError, os_reason

try:
    import fcntl
except ImportError:  # not on POSIX: runs are not locked
    fcntl = None

LOCK = ".lock"
_TEMPORARY = re.compile(r"^\..*\.tmp-(\d+)$")  # what temporary_path makes: .ckpt-0000100.tmp-PID, .latest.tmp-PID


def temporary_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place; a dead writer's leftovers are found by name."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def write_error(path: Path, err: OSError, what: str) -> LaminaError:
    """The one-line error for a failed write under a run directory, naming the cause and the way out."""
    if err.errno == errno.ENOSPC:
        advice = "the disk is full: free some space (or lower train.keep_checkpoints), then resume the run"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "it is not writable: choose a writable train.out_dir"
    else:
        advice = "choose another train.out_dir"
    return LaminaError(f"cannot {what} {path} ({os_reason(err)}); {advice}")


class RunDir:
    """``with RunDir(path) as run:`` holds the run directory for one trainer (see the module docstring)."""

    def __init__(self, path: Path, log=print):
        self.path = Path(path)
        self.log = log
        self._fd: int | None = None

    def __enter__(self) -> "RunDir":
        lock = self.path / LOCK
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise write_error(self.path, err, "write to the run directory") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode("ascii", errors="replace").strip() or "unknown"
                os.close(fd)
                raise LaminaError(
                    f"{self.path} is in use by another lamina train (PID {holder}); wait for it to finish or stop it, "
                    "or give this run another train.out_dir"
                ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as err:
            os.close(fd)
            raise write_error(lock, err, "write") from None
        self._fd = fd
        self._remove_stale_temporaries()
        return self

    def _remove_stale_temporaries(self) -> None:
        """Temporary checkpoint files of trainers that are dead (we hold the lock, so none is writing)."""
        for entry in self.path.iterdir():
            match = _TEMPORARY.match(entry.name)
            if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            self.log(f"removed {entry.name}, left in {self.path} by a trainer that stopped during a save")

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
