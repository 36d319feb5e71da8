"""The one exception type that the CLI turns into a one-line message.

Raise :class:`LaminaError` for anything a user can fix (a bad config key, a
missing corpus, a corrupt checkpoint): the message must name the problem and
say what to do. Anything else is a bug and keeps its traceback.
"""


class LaminaError(Exception):
    """A user-facing error: its message is printed alone, without a traceback."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(str(text).split())


def os_reason(error: OSError) -> str:
    """Why an operating-system call failed, in a few words (``permission denied``, ``No such file or directory``)."""
    return "permission denied" if isinstance(error, PermissionError) else one_line(error.strerror or error)


def format_bytes(n: float) -> str:
    """A size in binary units with one decimal: ``512 B``, ``1.5 KiB``, ``3.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
