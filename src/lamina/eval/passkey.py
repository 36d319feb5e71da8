"""Passkey retrieval accuracy (Mohtashami & Jaggi 2023, "Landmark Attention"): prompts from :mod:`lamina.data.passkey`."""

from __future__ import annotations

import torch

from lamina.data.passkey import passkey_prompt
from lamina.eval.generate import generate


@torch.no_grad()
def passkey_accuracy(model, tokenizer, length: int, trials: int, context: int, seed: int = 0) -> tuple[int, int]:
    """``(correct, trials)``: greedy continuations that equal the key exactly.

    Each prompt runs through the model in ``context``-token segments with the
    state carried (:func:`lamina.eval.generate`'s chunked prefill), so memory is
    bounded by the model's state, not by ``length``.
    """
    correct = 0
    for trial in range(trials):
        prompt = passkey_prompt(tokenizer, length, seed * 1_000_003 + trial)
        out = generate(model, prompt.ids, max_new_tokens=len(prompt.answer), context=context, temperature=0)
        correct += out == prompt.answer.tolist()
    return correct, trials
