"""Progress a person can see, on a terminal or in a log.

On a terminal :class:`Progress` is a tqdm bar; otherwise (``make train``
piped to a file, a batch job) it prints a plain line on stderr at most every
``every`` seconds (``$LAMINA_PROGRESS_SECONDS``, default 30), with the rate,
the elapsed time and an estimate of the time left, and a last line when it
closes if the loop took longer than that.
"""

from __future__ import annotations

import math
import os
import sys
import time

from tqdm import tqdm

EVERY_ENV = "LAMINA_PROGRESS_SECONDS"


def _default_every() -> float:
    try:
        every = float(os.environ.get(EVERY_ENV, "30"))
    except ValueError:
        every = 30.0
    return every if math.isfinite(every) and every >= 0 else 30.0


def clock(seconds: float) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """``total`` units of work named ``what``; ``update(n, **figures)`` after each piece.

    ``figures`` (loss, tokens/s, ...) are shown beside the count. ``tokens_per_unit`` adds a tokens/s figure.
    ``show=False`` shows nothing (a worker whose caller reports instead).
    """

    def __init__(self, total: int, what: str, *, unit: str = "step", initial: int = 0, tokens_per_unit: int = 0,
                 leave: bool = True, every: float | None = None, stream=None, show: bool = True):
        self.total, self.what, self.unit, self.done, self.initial = total, what, unit, initial, initial
        self.shown = initial  # units done when the last plain line was printed
        self.tokens_per_unit = tokens_per_unit
        self.stream = stream or sys.stderr
        self.every = math.inf if not show else _default_every() if every is None else every
        self.start = self.last_line = time.time()
        self.figures: dict[str, str] = {}
        self.bar = None
        if show and self.stream.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=what, unit=unit, leave=leave, dynamic_ncols=True,
                            file=self.stream)

    def update(self, n: int = 1, **figures: str) -> None:
        self.done += n
        self.figures.update(figures)
        if self.bar is not None:
            if figures:
                self.bar.set_postfix(self.figures, refresh=False)
            self.bar.update(n)
        elif time.time() - self.last_line >= self.every:
            self._line()

    def _line(self) -> None:
        now = time.time()
        elapsed = now - self.start
        parts = [f"{self.what}: {self.done:,}/{self.total:,} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%)"]
        parts += [f"{key} {value}" for key, value in self.figures.items()]
        if self.tokens_per_unit and elapsed > 0:
            parts.append(f"{self.done_here * self.tokens_per_unit / elapsed:,.0f} tokens/s")
        parts.append(f"elapsed {clock(elapsed)}")
        if 0 < self.done_here and self.done < self.total:
            parts.append(f"ETA {clock(elapsed / self.done_here * (self.total - self.done))}")
        print(", ".join(parts), file=self.stream, flush=True)
        self.last_line, self.shown = now, self.done

    @property
    def done_here(self) -> int:
        """Units done since this progress started (a resumed run starts at ``initial``)."""
        return self.done - self.initial

    def close(self) -> None:
        """Close the bar, or print the final count if the loop took long enough to have shown progress."""
        if self.bar is not None:
            self.bar.close()
        elif time.time() - self.start >= self.every and self.shown != self.done:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
