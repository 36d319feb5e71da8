"""The one policy that picks a mixer's computation form.

Each mixer offers some of three forms that compute the same function:
``recurrent`` (one token at a time: the reference and the decode path),
``chunk`` (chunkwise parallel: training and prefill) and ``parallel`` (fully
parallel where it exists). Mixers never choose for themselves; they ask
:func:`choose_form`. Tests and benchmarks pin a form with :func:`use_form`.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

FORMS = ("recurrent", "chunk", "parallel")

_forced: ContextVar[str | None] = ContextVar("lamina_forced_form", default=None)


@contextmanager
def use_form(form: str) -> Iterator[None]:
    """Run every mixer in ``form`` (where it offers it) inside this block."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; forms are {', '.join(FORMS)}")
    token = _forced.set(form)
    try:
        yield
    finally:
        _forced.reset(token)


def choose_form(offered: tuple[str, ...], seq_len: int) -> str:
    """The form to run a call of ``seq_len`` tokens in, among those a mixer ``offered``.

    A single token is a decode step and runs recurrently; longer inputs run in
    the fastest form offered (parallel, then chunk). A form pinned by
    :func:`use_form` wins wherever the mixer offers it.
    """
    forced = _forced.get()
    if forced is not None and forced in offered:
        return forced
    if seq_len == 1 and "recurrent" in offered:
        return "recurrent"
    for form in ("parallel", "chunk", "recurrent"):
        if form in offered:
            return form
    raise ValueError(f"a mixer must offer at least one of {FORMS}")
