"""Sampling: chunked prefill, then one recurrent step per token.

The prompt runs through the model in segments (the chunk/parallel forms), then
each new token is a single-token call (the recurrent form), so a recurrent
model's memory stays constant however long it generates. Attention layers keep
a sliding key/value memory of ``mem_len + context - 1`` tokens: the most any
query saw in training.

A model with a segment memory (memory tokens or HMT,
:mod:`lamina.models.segments`) updates its memory each time a segment
completes: the prompt is prefilled in ``context``-token pieces, and decoded
tokens accumulate in the layers' states until the segment is full, when the
write embeddings run. Its attention window grows by the read and write
positions of a segment (``2m`` memory tokens; HMT's recalled embedding twice
and its sensory memory), so the write positions see the whole segment, and is
cut back to its own memory at each segment start
(:func:`lamina.models.lm.forget_widening`): every position then sees exactly
what the segment-by-segment call shows it. The decode state stays bounded.
"""

from __future__ import annotations

from typing import Callable

import torch

from lamina.errors import LaminaError


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token id per row of ``logits [B, V]``; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop tokens once the mass before them already reaches top_p (the first is always kept)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def decoding_extra(model, context: int) -> int:
    """Positions added to every attention layer's memory while decoding: the most any query saw in training
    (``context - 1`` earlier tokens of its segment), or with a segment memory the longest run of a segment
    with its read and write positions."""
    segment_memory = model.segment_memory
    span = context
    if segment_memory is not None:
        if any(m.compressed_len for m in model.memory_layers()):
            raise LaminaError(
                f"decoding token by token cannot reproduce a model with {segment_memory.name} whose xl layers "
                "compress their memory (states would leave it at other times than in the segment-by-segment "
                f"call); score it with lamina eval, or train it with cmem_len 0 or {segment_memory.off}"
            )
        span = max(context, segment_memory.segment_len) + segment_memory.extra_positions
    return span - 1


@torch.no_grad()
def generate(
    model,
    prompt: torch.Tensor,
    *,
    max_new_tokens: int,
    context: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Continue ``prompt`` (1-D ids, non-empty) by ``max_new_tokens`` tokens.

    ``context`` is the training segment length: the prefill chunk size, and the
    extra attention memory that lets generated tokens see as far back as in training.
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        with model.memory(extra=decoding_extra(model, context)):
            state = model.init_state(1, device)
            prompt = prompt.to(device)[None]
            for start in range(0, prompt.shape[1], context):
                logits, state = model(prompt[:, start : start + context], state)
            out = []
            for _ in range(max_new_tokens):
                token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
                out.append(int(token))
                if on_token is not None:
                    on_token(int(token))
                logits, state = model(token.view(1, 1), state)
            return out
    finally:
        model.train(was_training)
