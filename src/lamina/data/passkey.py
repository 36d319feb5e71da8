"""Passkey retrieval prompts (Mohtashami & Jaggi 2023, "Landmark Attention", §4.2 and appendix).

A prompt is filler text ("The grass is green. ..." repeated), one line
"The pass key is NNNNN. Remember it. NNNNN is the pass key." at a random
depth, and the question "What is the pass key? The pass key is" at the end;
the answer is the key, read back by greedy decoding. Lengths are in tokens of
the model's tokenizer and are met exactly: the filler's start is cut mid-unit
if needed, and the key line sits between two filler units.

The task is meant for byte models: a word tokenizer maps the key (and any
filler word outside its vocabulary) to ``<unk>``, so it can only test whether
``<unk>`` comes back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from lamina.errors import LaminaError

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"


@dataclass
class PasskeyPrompt:
    ids: torch.Tensor  # 1-D prompt token ids, exactly the requested length
    answer: torch.Tensor  # 1-D ids the model should continue with (" NNNNN" for bytes)
    key: str  # the five digits
    depth: float  # fraction of the filler that comes before the key line


def _encode(tokenizer, text: str) -> torch.Tensor:
    """Ids of ``text`` as part of one line: a word tokenizer's closing ``<eos>`` is dropped."""
    ids = tokenizer.encode(text)
    if tokenizer.name == "words" and len(ids) and int(ids[-1]) == tokenizer.eos_id:
        ids = ids[:-1]
    return ids


def min_length(tokenizer) -> int:
    """The shortest prompt: the key line and the question with no filler."""
    return len(_encode(tokenizer, KEY_LINE.format(key="12345"))) + len(_encode(tokenizer, QUESTION))


def passkey_prompt(tokenizer, length: int, seed: int = 0) -> PasskeyPrompt:
    """The prompt of ``length`` tokens for ``seed``: the same key and depth every time for the same arguments."""
    if length < min_length(tokenizer):
        raise LaminaError(f"passkey length {length} is too short: the key line and question alone take "
                          f"{min_length(tokenizer)} tokens")
    rng = random.Random(f"passkey:{seed}:{length}")
    key = str(rng.randint(10000, 99999))
    key_ids = _encode(tokenizer, KEY_LINE.format(key=key))
    question = _encode(tokenizer, QUESTION)
    unit = _encode(tokenizer, FILLER)
    n_filler = length - len(key_ids) - len(question)
    filler = unit.repeat(n_filler // len(unit) + 1)[len(unit) - n_filler % len(unit):]  # ends on a unit boundary
    # the key line goes at a unit boundary: at the start, or after the partial first unit and k >= 1 whole units
    k = rng.randint(0, n_filler // len(unit))
    cut = 0 if k == 0 else n_filler % len(unit) + k * len(unit)
    ids = torch.cat([filler[:cut], key_ids, filler[cut:], question])
    answer = _encode(tokenizer, (" " if tokenizer.name == "bytes" else "") + key)
    return PasskeyPrompt(ids, answer, key, cut / max(n_filler, 1))
