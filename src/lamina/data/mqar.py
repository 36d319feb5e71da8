"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient
Language Models", §3 and appendix E.1).

An example of ``input_seq_len`` tokens is ``num_kv_pairs`` key-value pairs, then queries::

    Key  Val  Key  Val  ...  Query ...       Query ...
    Inputs:   2    8    4    7    r    4    r    r    r    2    r
    Labels: -100 -100 -100 -100 -100  7 -100 -100 -100    8 -100

* keys are distinct tokens of the lower half of the vocabulary, ``1 .. vocab_size // 2 - 1`` (0 is the blank);
  values are distinct tokens of the upper half, ``vocab_size // 2 .. vocab_size - 1``;
* every key is queried exactly once after the pairs: with ``space = (input_seq_len - context) // 2`` slots of
  two tokens after the ``context`` tokens of pairs, the i-th key is put at ``context + 2 * gap_i``, the gaps
  drawn without replacement with probability ``p(g) ∝ power_a * (g + 1) ** (power_a - 1)``: a power law
  (small ``power_a``) puts queries mostly soon after the pairs, as repeated bigrams in text recur soon;
  ``power_a = 1`` is uniform;
* the label at a query's position is the value paired with that key (the model predicts it as the next token);
  every other label is -100 (ignored by the loss and the accuracy);
* the remaining blanks are random tokens of the whole vocabulary when ``random_non_queries`` (so a filler token
  may equal a key or a value, as in Zoology), else 0.

``num_passes`` repeats the block of pairs that many times, same pairs in the same order, before the queries: the
"just read twice" prompting of Arora et al. 2024 (JRT, arXiv 2407.05483), which Zoology's generator names but does
not build correctly for more than one pass (its pair block gets repeated ``num_passes ** 2`` times); here
``context = 2 * num_kv_pairs * num_passes``.

Departures from Zoology's generator, which draws from NumPy's global seed: this one draws from a
``torch.Generator``, so the same seed gives the same examples here on any machine, but not Zoology's examples;
the statistics are the same. Zoology also asserts ``vocab_size > input_seq_len`` and an even length; neither is
needed to build an example, so only what is (enough keys, values and query slots) is checked.

A :class:`RecallTask` names one setting and its two example sets (the test set drawn with another seed, as in
Zoology); :func:`shuffle_labels` builds the control in which keys no longer predict their values.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

from lamina.errors import LaminaError

IGNORE = -100


def gap_distribution(space: int, power_a: float) -> torch.Tensor:
    """Zoology's query-gap probabilities over ``space`` slots: ``p(g) ∝ power_a * (g + 1) ** (power_a - 1)``."""
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return p / p.sum()


def _check(vocab_size: int, input_seq_len: int, num_kv_pairs: int, power_a: float, num_passes: int) -> None:
    for name, value in (("vocab_size", vocab_size), ("input_seq_len", input_seq_len),
                        ("num_kv_pairs", num_kv_pairs), ("num_passes", num_passes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LaminaError(f"MQAR {name} must be a positive integer, got {value!r}")
    if not power_a > 0:
        raise LaminaError(f"MQAR power_a must be positive (1 is uniform, Zoology uses 0.01), got {power_a}")
    if num_kv_pairs > vocab_size // 2 - 1:
        raise LaminaError(f"MQAR needs {num_kv_pairs} distinct keys but vocab_size {vocab_size} has only "
                          f"{max(vocab_size // 2 - 1, 0)} (tokens 1 .. vocab_size // 2 - 1); raise vocab_size")
    context = 2 * num_kv_pairs * num_passes
    need = context + 2 * num_kv_pairs
    if input_seq_len < need:
        raise LaminaError(f"MQAR input_seq_len {input_seq_len} is too short for {num_kv_pairs} pairs x {num_passes} "
                          f"pass(es) and their queries: it needs at least {need} tokens")


def _distinct(choices: torch.Tensor, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, k]``: for each row, ``k`` distinct entries of ``choices`` drawn uniformly: those of the ``k`` smallest
    of ``len(choices)`` uniform draws (``topk``, not a full sort: 20 times faster at Zoology's vocabulary of 8192)."""
    order = torch.rand(n, len(choices), generator=gen).topk(k, dim=1, largest=False).indices
    return choices[order]


def mqar(
    num_examples: int,
    vocab_size: int = 8192,
    input_seq_len: int = 64,
    num_kv_pairs: int = 8,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    num_passes: int = 1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``, both ``[num_examples, input_seq_len]`` int64: the same tensors for the same arguments."""
    _check(vocab_size, input_seq_len, num_kv_pairs, power_a, num_passes)
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise LaminaError(f"MQAR num_examples must be a positive integer, got {num_examples!r}")
    gen = torch.Generator().manual_seed(seed)
    n, k, half = num_examples, num_kv_pairs, vocab_size // 2
    keys = _distinct(torch.arange(1, half), n, k, gen)
    values = _distinct(torch.arange(half, vocab_size), n, k, gen)

    context = 2 * k * num_passes
    inputs = torch.zeros(n, input_seq_len, dtype=torch.long)
    pairs = torch.stack([keys, values], dim=2).reshape(n, 2 * k)
    inputs[:, :context] = pairs.repeat(1, num_passes)

    space = (input_seq_len - context) // 2
    p = gap_distribution(space, power_a)
    gaps = torch.multinomial(p.expand(n, space), k, replacement=False, generator=gen)
    positions = context + 2 * gaps
    inputs.scatter_(1, positions, keys)
    labels = torch.full((n, input_seq_len), IGNORE, dtype=torch.long)
    labels.scatter_(1, positions, values)

    if random_non_queries:
        filler = torch.randint(vocab_size, (n, input_seq_len), generator=gen)
        blank = inputs == 0
        inputs[blank] = filler[blank]
    return inputs, labels


@dataclass(frozen=True)
class RecallTask:
    """Zoology's MQAR parameters (see :func:`mqar`) and the sizes of the train and test example sets."""

    vocab_size: int = 64
    input_seq_len: int = 32
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True
    num_passes: int = 1
    train_examples: int = 4000
    test_examples: int = 500

    def examples(self, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of ``split``; test examples use seed ``seed + 10`` (Zoology's offset)."""
        params = {k: v for k, v in asdict(self).items() if not k.endswith("_examples")}
        n = self.train_examples if split == "train" else self.test_examples
        return mqar(n, **params, seed=seed if split == "train" else seed + 10)


@functools.lru_cache(maxsize=4)
def cached_examples(task: RecallTask, split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``task.examples(split, seed)``, kept for the next run of the same task: a sweep trains many models on the
    same examples, and building 20,000 of them takes seconds. Callers must not modify the tensors."""
    return task.examples(split, seed)


def shuffle_labels(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A control: the query labels permuted across all examples, so a key no longer predicts its value."""
    out = labels.clone()
    query = out != IGNORE
    values = out[query]
    out[query] = values[torch.randperm(len(values), generator=gen)]
    return out
