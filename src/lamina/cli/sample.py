"""Printing a model's continuation of a prompt as it is generated (``lamina generate``, and the sample at the end
of ``lamina train``)."""

from __future__ import annotations

import codecs
import sys


class _Streamer:
    """Writes generated tokens to stdout as they come, decoding UTF-8 across token boundaries."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.words = tokenizer.name == "words"

    def __call__(self, token: int) -> None:
        piece = self.tokenizer.decode([token])
        if self.words and piece != b"\n":
            piece += b" "
        sys.stdout.write(self.decoder.decode(piece))
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.write(self.decoder.decode(b"", final=True) + "\n")
        sys.stdout.flush()


def print_sample(model, tokenizer, prompt: bytes, context: int, max_new_tokens: int, temperature: float,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> None:
    """Print ``prompt`` and its continuation (:func:`lamina.eval.generate` reading ``context``-token segments);
    an empty prompt starts at a line start."""
    import torch

    from lamina.eval import generate

    ids = tokenizer.encode(prompt)
    if len(ids) == 0:  # start at a line start: a newline byte, or a word model's end-of-line token
        ids = tokenizer.encode(b"\n") if tokenizer.name == "bytes" else torch.tensor([tokenizer.eos_id])
    streamer = _Streamer(tokenizer)
    sys.stdout.write(prompt.decode("utf-8", errors="replace"))
    generate(
        model, ids, max_new_tokens=max_new_tokens, context=context, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, on_token=streamer,
    )
    streamer.close()
