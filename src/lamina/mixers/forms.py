"""The one policy that picks a mixer's computation form.

Each mixer offers some of three forms that compute the same function:
``recurrent`` (one token at a time: the reference and the decode path),
``chunk`` (chunkwise parallel: training and prefill) and ``parallel`` (fully
parallel where it exists). Mixers never choose for themselves; they ask
:func:`choose_form`. Tests and benchmarks pin a form with :func:`use_form`.

The pin is a plain module attribute rather than a ``ContextVar``: ``torch.compile``
(Dynamo) cannot trace ``ContextVar.get`` and would break a compiled model's graph
at every layer, while it reads a module attribute as a constant of the traced
graph and guards on it (a compiled model recompiles when the pin changes). The
pin is therefore process-wide, not per thread: set it around whole calls.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

FORMS = ("recurrent", "chunk", "parallel")

_pinned: str | None = None  # the form use_form pins, None: the default policy


@contextmanager
def use_form(form: str) -> Iterator[None]:
    """Run every mixer in ``form`` (where it offers it) inside this block."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; forms are {', '.join(FORMS)}")
    global _pinned
    saved, _pinned = _pinned, form
    try:
        yield
    finally:
        _pinned = saved


def choose_form(offered: tuple[str, ...], seq_len: int) -> str:
    """The form to run a call of ``seq_len`` tokens in, among those a mixer ``offered``.

    A single token is a decode step and runs recurrently; longer inputs run in
    the fastest form offered (parallel, then chunk). A form pinned by
    :func:`use_form` wins wherever the mixer offers it.
    """
    if _pinned is not None and _pinned in offered:
        return _pinned
    if seq_len == 1 and "recurrent" in offered:
        return "recurrent"
    for form in ("parallel", "chunk", "recurrent"):
        if form in offered:
            return form
    raise ValueError(f"a mixer must offer at least one of {FORMS}")
