"""The Hierarchical Autoregressive Transformer: bytes -> words -> backbone -> bytes.

Neitemeier, Deiseroth, Eichenberg & Balles 2025, "Hierarchical Autoregressive
Transformers: Combining Byte- and Word-Level Processing for Robust, Adaptable
Language Models". A small byte-level encoder turns the bytes of each word into
one word vector, a large backbone runs over word vectors only (the sequence is
several times shorter than in bytes), and a small byte-level decoder spells
the next word from the backbone's output. Words are cut by the causal rule of
:mod:`lamina.data.words` (``model.hat.max_word_len``).

For a chunk of bytes ``x_1..x_T`` (all three stacks are lamina layer
schedules with carried state, see :class:`~lamina.models.lm.Stack`):

- encoder: ``e_t = Enc(embed(x_1..x_t))`` at width ``d_byte``, over the whole
  byte stream;
- word vector: word ``j`` is ``v_j = W_down e_last(j)``, the encoder output at
  its last byte. Word ``j`` is known to be over only when the first byte of
  word ``j+1`` arrives (:func:`~lamina.data.words.starts_word` needs the next
  byte), so ``v_j`` enters the backbone then;
- backbone: ``h_j = Backbone(v_1..v_j)`` at ``model.d_model`` (``model.layers``);
- decoder: byte ``t`` of word ``w`` reads ``e_t + W_up h_{w-1}``, the newest
  backbone output it may know (zeros before the first word ends), and
  ``Dec`` gives the logits of byte ``t+1`` through the (tied) byte head.

So the decoder spells bytes 2, 3, ... of word ``j+1`` and the byte after it
conditioned on ``h_j``; the first byte of word ``j+1`` is predicted at the last
byte of word ``j``, from ``h_{j-1}`` and the byte-level context, because at that
point nothing yet says that word ``j`` is over.

The loss. The returned logits are an ordinary next-byte distribution over
the byte tokenizer's 257 ids, so the trainer's cross-entropy is exactly
``-log P(bytes)`` and its bits per byte compare with any byte model's. No
end-of-word event is predicted: the splitter makes word ends a function of
the bytes, so predicting the next byte also predicts whether a word ends.

Departures from the paper, to stay a causal, streaming byte model: the paper
encodes each word on its own (the word vector is the output at a learned
``[CLS]`` position prepended to the word) and decodes the whole next word,
its first byte included, from the backbone output of the word before it.
Here the encoder is causal over the byte stream (a word vector also sees
the words before it, and a word can be encoded as its bytes arrive), and the
first byte of a word is predicted one backbone step earlier, as described
above: the paper's split is given by the text before the model runs, while
here the boundary after a word is only known when the next byte is read.

State (:class:`HATState`): the previous byte, the word length so far, ``e``
at the last byte read, the newest ``h``, and the encoder, backbone and
decoder layer states; the first two ``long``, the vectors in the parameters' dtype (fp32 under autocast). All zeros is the stream start, and a word
cut by a chunk boundary continues in the next call exactly, so one call,
any carried chunks and byte-by-byte generation compute the same function.
Padding and document-reset masks are not taken: documents are separated by
the tokenizer's ``eos_id``, which the splitter treats as punctuation (a word
of its own).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lamina.config import ModelConfig
from lamina.data.tokenizers import require_bytes
from lamina.data.words import word_starts
from lamina.mixers import KVMemoryMixer
from lamina.models.hat_options import HATOptions
from lamina.models.lm import SequenceModel, Stack, init_linear, init_residual, memory_layers


class HATState(NamedTuple):
    prev: torch.Tensor  # [B] long: the previous byte
    length: torch.Tensor  # [B] long: the current word's length (0: stream start)
    last_e: torch.Tensor  # [B, d_byte]: the encoder output at the last byte read
    newest_h: torch.Tensor  # [B, d_model]: the newest backbone output
    encoder: list  # layer states of the three stacks
    backbone: list
    decoder: list


class HAT(SequenceModel):
    """A byte LM with a word-level backbone (see the module docstring); the same interface as ``LM``."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        require_bytes(vocab_size, "hat")
        hat: HATOptions = config.hat
        self.config = config
        self.vocab_size = vocab_size
        self.max_word_len = hat.max_word_len
        self.embed = nn.Embedding(vocab_size, hat.d_byte)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.encoder = Stack(hat.encoder_layers, config, hat.d_byte, "model.hat.encoder_layers")
        self.backbone = Stack(config.layers, config, config.d_model, "model.layers", config.mlp_hidden)
        self.decoder = Stack(hat.decoder_layers, config, hat.d_byte, "model.hat.decoder_layers")
        self.specs = self.backbone.specs
        self.down = nn.Linear(hat.d_byte, config.d_model, bias=False)  # word vector
        self.up = nn.Linear(config.d_model, hat.d_byte, bias=False)  # backbone output into the decoder
        self.head = self.output_head(config, hat.d_byte, vocab_size)
        self.segment_memory = None
        init_linear(self)
        for stack in (self.encoder, self.backbone, self.decoder):
            init_residual(stack.blocks)

    # --- state API ----------------------------------------------------------------
    def init_state(self, batch: int, device=None, dtype=None) -> HATState:
        hat, vectors = self.config.hat, dtype or self.embed.weight.dtype
        stacks = (self.encoder, self.backbone, self.decoder)
        return HATState(
            torch.zeros(batch, dtype=torch.long, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
            torch.zeros(batch, hat.d_byte, device=device, dtype=vectors),
            torch.zeros(batch, self.config.d_model, device=device, dtype=vectors),
            *(s.init_state(batch, device, vectors) for s in stacks),
        )

    def state_size(self) -> int:
        """Floats carried per sequence: the three stacks' states, two vectors and two integers."""
        stacks = self.encoder.state_size() + self.backbone.state_size() + self.decoder.state_size()
        return stacks + self.config.hat.d_byte + self.config.d_model + 2

    def memory_layers(self) -> list[KVMemoryMixer]:
        """The attention layers of the encoder, backbone and decoder (the backbone's count words, not bytes)."""
        return [m for s in (self.encoder, self.backbone, self.decoder) for m in memory_layers(s.blocks)]

    # --- forward ------------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        state: HATState | None = None,
        *,
        valid: torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, HATState]:
        """``ids [B, T]`` (byte tokenizer ids) -> ``(next-byte logits [B, T, 257], new state)``."""
        self.refuse_masks(valid, resets, "a HAT model", "its words are cut from the byte stream itself; "
                          "separate documents with the tokenizer's eos id instead")
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        prev, length, last_e, newest_h = state.prev, state.length, state.last_e, state.newest_h
        if ids.shape[1] == 0:
            return self._logits(self.embed(ids)), state
        starts, prev, new_length = word_starts(ids, prev, length, self.max_word_len)
        e, enc_state = self.encoder(self.embed_dropout(self.embed(ids)), state.encoder)
        ended = starts.clone()  # a word ends just before every start but the stream's first
        ended[:, 0] &= length > 0
        before = torch.cat([last_e.to(e.dtype)[:, None], e[:, :-1]], dim=1)  # e at the byte before each
        context, newest_h, backbone_state = self._words(before, ended, newest_h, state.backbone)
        d, dec_state = self.decoder(e + self.up(context), state.decoder)
        new_state = HATState(prev, new_length, e[:, -1].to(last_e.dtype), newest_h.to(last_e.dtype),
                             enc_state, backbone_state, dec_state)
        return self._logits(d), new_state

    def _words(
        self, before: torch.Tensor, ended: torch.Tensor, newest_h: torch.Tensor, state: list
    ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Run the backbone on the words that ended in this chunk -> ``(h per byte, newest h, backbone state)``.

        Row ``b`` completes ``n_b`` words; they run as one ``[B, max n_b]``
        batch, the rows with fewer padded at the end (``valid`` masks leave
        their states alone). Byte ``t`` reads the output of the last word
        that ended at or before it, or the carried ``newest_h``.
        """
        B, T = ended.shape
        done = ended.cumsum(dim=1)  # words ended up to and including byte t
        count = done[:, -1]
        # The one read back to the host in a HAT call (a graph break under torch.compile): the backbone's length
        # is the most words any row ended, which only the bytes decide, and it runs without padding masks when
        # every row ended as many (with them, lamina.mixers.masks.run_masked reads where the padding starts).
        n, fewest = torch.stack([count.max(), count.min()]).tolist()
        table = newest_h.to(before.dtype)[:, None]
        if n:
            slot = torch.where(ended, done - 1, n)  # the word a byte ends, or n (a spare slot, dropped) if none
            words = before.new_zeros(B, n + 1, before.shape[-1]).scatter(1, slot[..., None].expand_as(before), before)
            valid = torch.arange(n, device=ended.device) < count[:, None]
            h, state = self.backbone(self.down(words[:, :n]), state, {} if fewest == n else {"valid": valid})
            table = torch.cat([table.to(h.dtype), h], dim=1)
        context = table.gather(1, done[..., None].expand(B, T, table.shape[-1]))
        newest = table[torch.arange(B, device=ended.device), count]
        return context, newest, state

    def describe(self) -> str:
        """Architecture, parameter count and state size, for printing."""
        hat = self.config.hat
        return "\n".join([
            f"layers {self.backbone.names()}",
            f"HAT: backbone over words of at most {hat.max_word_len} bytes at d_model {self.config.d_model}; "
            f"byte encoder {self.encoder.names()} and decoder {self.decoder.names()} at d_byte {hat.d_byte}",
            f"d_model {self.config.d_model}, vocab {self.vocab_size}, "
            f"parameters {self.num_parameters():,}, state {self.state_size():,} floats per sequence",
        ])
