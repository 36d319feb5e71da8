"""Loss by position bucket: exact sums, each target once, document positions from eos ids."""

import pytest
import torch

from lamina.config import ModelConfig
from lamina.errors import LaminaError
from lamina.eval import evaluate, loss_by_position, score
from lamina.eval.evaluate import document_positions
from lamina.models import LM

EOS = 256


def tiny_lm(layers=("hgrn", "hgrn")):
    torch.manual_seed(0)
    return LM(ModelConfig(d_model=16, layers=list(layers)), 257)


def stream(doc_lengths, seed=0):
    """Documents of the given lengths (eos included), random bytes, eos-separated."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for n in doc_lengths:
        parts += [torch.randint(0, 256, (n - 1,), generator=g), torch.tensor([EOS])]
    return torch.cat(parts)


def reference_positions(tokens):
    """Position of every token within its document, by a plain loop."""
    out, p = [], 0
    for t in tokens.tolist():
        out.append(p)
        p = 0 if t == EOS else p + 1
    return out


@pytest.mark.parametrize("carry", [True, False])
@pytest.mark.parametrize("positions", ["document", "stream"])
def test_buckets_sum_to_overall_loss(carry, positions):
    model, tokens = tiny_lm(), stream([50, 7, 130, 1, 40, 300, 90])
    kw = dict(batch_size=3, tgt_len=16, carry=carry)
    overall = evaluate(model, tokens, **kw)
    buckets = loss_by_position(model, tokens, [4, 32, 128], eos_id=EOS, positions=positions, **kw)
    assert buckets.total.tokens == overall.tokens == 3 * ((len(tokens) - 1) // 3)
    assert buckets.total.nats == pytest.approx(overall.nats, rel=1e-9)
    weighted = sum(n * c for n, c in zip(buckets.nats(), buckets.counts) if c)
    assert weighted / sum(buckets.counts) == pytest.approx(overall.nats, rel=1e-9)


@pytest.mark.parametrize("batch_size,tgt_len", [(1, 1000), (1, 29), (3, 16), (4, 5)])
def test_document_bucket_counts_match_a_hand_count(batch_size, tgt_len):
    lengths = [50, 7, 130, 1, 40, 300, 90]
    tokens = stream(lengths)
    edges = [1, 8, 64, 128]
    got = loss_by_position(tiny_lm(), tokens, edges, eos_id=EOS, batch_size=batch_size, tgt_len=tgt_len)
    n = (len(tokens) - 1) // batch_size
    targets = reference_positions(tokens)[1 : batch_size * n + 1]  # the scored targets: tokens 1..B*n
    want = [0] * (len(edges) + 1)
    for p in targets:
        want[sum(p >= e for e in edges)] += 1
    assert got.counts == want
    if batch_size == 1:  # the whole stream in order: counts follow from the document lengths alone
        assert want[0] == len(lengths) - 1  # every document's first token but the first document's
        assert sum(want) == len(tokens) - 1


def test_document_positions_carry_across_segments():
    tokens = stream([5, 12, 3, 20])
    ref = reference_positions(tokens)
    previous = torch.tensor([0])
    got = []
    for start in range(0, len(tokens) - 1, 4):
        pos = document_positions(tokens[None, start : min(start + 4, len(tokens) - 1)], EOS, previous)
        previous = pos[:, -1]
        got += pos[0].tolist()
    assert got == ref[1:]


def test_stream_positions_count_tokens_read():
    tokens = stream([200])
    got = loss_by_position(tiny_lm(), tokens, [10, 100], eos_id=EOS, positions="stream", batch_size=2, tgt_len=16)
    # two streams of 99 targets at positions 1..99 each
    assert got.counts == [2 * 9, 2 * 90, 0]


@pytest.mark.parametrize("edges", [[], [0, 5], [5, 5], [10, 3]])
def test_bad_edges(edges):
    with pytest.raises(LaminaError, match="increasing"):
        loss_by_position(tiny_lm(), stream([40]), edges, eos_id=EOS, batch_size=1, tgt_len=8)


def test_streaming_keeps_no_graph():
    """The carried state and the per-target losses hold no autograd graph, even when called with grad enabled."""
    from lamina.eval.evaluate import _segment_losses

    model, tokens = tiny_lm(), stream([300])
    for _, i, _, losses in _segment_losses(model, tokens, batch_size=2, tgt_len=16, carry=True, max_tokens=0,
                                           device=torch.device("cpu"), precision="auto", name="test"):
        assert not losses.requires_grad


def test_score_passes_in_the_modes_asked():
    """``lamina eval``'s passes: one per carry mode, in order, each the plain evaluation (by position if asked)."""
    model, tokens = tiny_lm(), stream([30, 50, 20])
    common = dict(batch_size=2, tgt_len=8, device="cpu")
    plain = list(score(model, tokens, [True, False], **common))
    assert [p.carry for p in plain] == [True, False] and all(p.buckets is None for p in plain)
    for p in plain:
        assert p.result == evaluate(model, tokens, carry=p.carry, **common)
    assert plain[0].result.nats != plain[1].result.nats  # the carried state changes the loss
    (by_position,) = score(model, tokens, [True], edges=[4, 16], eos_id=EOS, **common)
    assert by_position.buckets.counts and sum(by_position.buckets.counts) == plain[0].result.tokens
    assert by_position.result.nats == pytest.approx(plain[0].result.nats, rel=1e-6)
