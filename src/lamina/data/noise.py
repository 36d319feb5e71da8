"""Typing noise for robustness evaluation: keyboard-neighbour substitutions, drops, doubles and swaps.

``corrupt(text, rate, seed)`` picks each character of ``text`` (bytes, decoded
as UTF-8 with undecodable bytes kept as they are) with probability ``rate``
and applies one of four edits, chosen uniformly: replace it with a neighbour
on a QWERTY keyboard (letters and digits; any other character is dropped
instead), drop it, type it twice, or swap it with the next character. Case is
kept on substitution. The result is a deterministic function of
``(text, rate, seed)``, and the fraction of characters edited is ``rate`` in
expectation, as in the character-noise setups of robustness studies of
byte-level models (e.g. Xue et al. 2022, ByT5, section 6).
"""

from __future__ import annotations

import random

from lamina.errors import LaminaError

ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
EDITS = ("substitute", "drop", "double", "swap")


def _neighbours() -> dict[str, str]:
    """Each key's horizontal and vertical neighbours on a QWERTY keyboard (rows offset as on a real one)."""
    where = {c: (r, i) for r, row in enumerate(ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in where.items():
        near = []
        for dr, di in ((0, -1), (0, 1), (-1, 0), (-1, 1), (1, -1), (1, 0)):
            rr, ii = r + dr, i + di
            if 0 <= rr < len(ROWS) and 0 <= ii < len(ROWS[rr]):
                near.append(ROWS[rr][ii])
        out[c] = "".join(near)
    return out


NEIGHBOURS = _neighbours()


def corrupt(text: bytes, rate: float, seed: int = 0) -> bytes:
    """``text`` with about ``rate`` of its characters edited (see the module docstring)."""
    if not 0 <= rate <= 1:
        raise LaminaError(f"the corruption rate must be between 0 and 1, got {rate}")
    rng = random.Random(f"noise:{seed}")
    chars = list(text.decode("utf-8", errors="surrogateescape"))
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if rng.random() >= rate:
            out.append(c)
            i += 1
            continue
        edit = rng.choice(EDITS)
        if edit == "substitute" and c.lower() in NEIGHBOURS:
            sub = rng.choice(NEIGHBOURS[c.lower()])
            out.append(sub.upper() if c.isupper() else sub)
        elif edit == "double":
            out += [c, c]
        elif edit == "swap" and i + 1 < len(chars):
            out += [chars[i + 1], c]
            i += 1
        elif edit == "swap":
            out.append(c)  # the last character has nothing to swap with
        # "drop", and "substitute" of a character with no keyboard neighbours, write nothing
        i += 1
    return "".join(out).encode("utf-8", errors="surrogateescape")


def corrupt_documents(documents, rate: float, seed: int = 0) -> list[bytes]:
    """Every document through :func:`corrupt`, each with its own seed drawn from ``seed`` and its index, so one
    document's noise does not depend on the others'."""
    return [corrupt(doc, rate, seed=seed * 1_000_003 + i) for i, doc in enumerate(documents)]
