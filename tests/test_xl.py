"""Transformer-XL attention against the paper's equations, written out in float64."""

import math

import pytest
import torch

from lamina.errors import LaminaError
from lamina.mixers import mixer_class, reset_state
from lamina.mixers.xl import XLOptions
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err, run_in_chunks

D = 32


def make(**options):
    torch.manual_seed(0)
    mixer = mixer_class("xl")(D, XLOptions(heads=4, **options))
    with torch.no_grad():  # u and v start at zero: make them count in the checks
        mixer.u.normal_()
        mixer.v.normal_()
    return mixer


def paper_reference(mixer, x, memory=None, valid_mem=None):
    """Section 3.3 term by term, one (query, key) pair at a time, in float64.

    ``memory [B, M, D]`` holds the previous hidden states (``valid_mem`` marks
    real ones); query ``i`` sits at position ``M + i`` of ``[memory; x]``.
    """
    x = x.double()
    B, T, _ = x.shape
    M = 0 if memory is None else memory.shape[1]
    hidden = x if memory is None else torch.cat([memory.double(), x], dim=1)
    valid_mem = torch.ones(B, M, dtype=torch.bool) if valid_mem is None else valid_mem
    H, Dh = mixer.heads, mixer.head_dim
    w_q, w_kv = mixer.q.weight.double(), mixer.kv.weight.double()
    w_r, w_o = mixer.r.weight.double(), mixer.out.weight.double()
    u, v_bias = mixer.u.double(), mixer.v.double()
    q = (x @ w_q.T).view(B, T, H, Dh)
    k, v = (hidden @ w_kv.T).view(B, M + T, 2, H, Dh).unbind(2)
    clamp, same_length = mixer.options.clamp_len, mixer.options.same_length
    span = mixer.mem_len  # under same_length: the query and the mem_len positions before it

    def R(d):  # the sinusoid of Vaswani et al.: sines then cosines
        freqs = torch.tensor([1.0 / 10000 ** (2 * n / D) for n in range(D // 2)], dtype=torch.float64)
        return torch.cat([torch.sin(d * freqs), torch.cos(d * freqs)])

    y = torch.zeros(B, T, H, Dh, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                scores, values = [], []
                for j in range(M + T):
                    d = M + i - j
                    if d < 0 or (j < M and not valid_mem[b, j]) or (same_length and d > span):
                        continue
                    wr = (w_r @ R(d if clamp is None else min(d, clamp))).view(H, Dh)[h]
                    qi, kj = q[b, i, h], k[b, j, h]
                    a = qi @ kj + qi @ wr + u[h] @ kj + v_bias[h] @ wr
                    scores.append(a / math.sqrt(Dh))
                    values.append(v[b, j, h])
                p = torch.stack(scores).softmax(0)
                y[b, i, h] = (p[:, None] * torch.stack(values)).sum(0)
    return y.reshape(B, T, H * Dh) @ w_o.T


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mem_len": 8},
        {"mem_len": 8, "clamp_len": 3},
        {"mem_len": 6, "same_length": True},
        {"mem_len": 7, "clamp_len": 4, "same_length": True},
    ],
)
def test_matches_paper_with_memory(options):
    mixer = make(**options)
    first, second = torch.randn(2, 5, D), torch.randn(2, 11, D)
    y1, state = mixer(first)  # with mem_len 6..8 the memory is partly empty after 5 tokens
    assert rel_err(y1, paper_reference(mixer, first)) < 1e-5
    memory, valid = state
    if mixer.mem_len:
        assert torch.equal(memory[:, -5:], first) and valid[:, -5:].all() and not valid[:, :-5].any()
    y2, _ = mixer(second, state)
    want = paper_reference(mixer, second, memory, valid)
    assert rel_err(y2, want) < 1e-5


@pytest.mark.parametrize("T", [1, 17, 40])
def test_full_sequence_matches_paper(T):
    mixer = make(mem_len=T, clamp_len=9)
    x = torch.randn(2, T, D)
    y, _ = mixer(x)
    empty = torch.zeros(2, T, D), torch.zeros(2, T, dtype=torch.bool)
    assert rel_err(y, paper_reference(mixer, x, *empty)) < 1e-5
    assert rel_err(y, paper_reference(mixer, x)) < 1e-5  # empty slots are never read


@pytest.mark.parametrize("options", [{"mem_len": 29}, {"mem_len": 29, "clamp_len": 5}, {"mem_len": 5, "same_length": True}])
def test_forms_agree(options):
    # a memory covering every chunk makes chunks and tokens exact; under same_length every
    # query's span is what the memory holds, so they are exact with any mem_len
    mixer = make(**options)
    check_forms_agree(mixer, torch.randn(2, 29, D), tol=1e-5, chunk=4)


def test_short_memory_is_the_papers_approximation():
    """With mem_len below the segment length, segments see only mem_len past states: not the full run."""
    mixer = make(mem_len=4)
    x = torch.randn(2, 20, D)
    chunked, _ = run_in_chunks(mixer, x, [10, 10])
    full, _ = mixer(x)
    assert rel_err(chunked[:, 10:], full[:, 10:]) > 1e-3
    assert rel_err(chunked[:, :10], full[:, :10]) < 1e-6
    want = paper_reference(mixer, x[:, 10:], memory=x[:, 6:10])
    assert rel_err(chunked[:, 10:], want) < 1e-5


def test_mem_len_zero_is_a_vanilla_transformer_per_segment():
    mixer = make(mem_len=0)
    x = torch.randn(1, 12, D)
    y, state = run_in_chunks(mixer, x, [6, 6])
    assert state[0].shape == (1, 0, D)
    assert rel_err(y[:, 6:], paper_reference(mixer, x[:, 6:])) < 1e-5


def test_mem_len_changed_at_evaluation():
    """LM.memory() sets mem_len: a carried memory of another length is left-padded or trimmed."""
    mixer = make(mem_len=4)
    x = torch.randn(2, 9, D)
    _, state = mixer(x[:, :6])
    mixer.mem_len = 10  # longer than trained: four real states, six empty slots
    y, longer = mixer(x[:, 6:], state)
    assert longer[0].shape == (2, 10, D) and longer[1].sum() == 2 * 7
    assert rel_err(y, paper_reference(mixer, x[:, 6:], memory=x[:, 2:6])) < 1e-5
    mixer.mem_len = 3  # shorter: the oldest states are dropped
    y, shorter = mixer(x[:, 6:], state)
    assert shorter[0].shape == (2, 3, D)
    assert rel_err(y, paper_reference(mixer, x[:, 6:], memory=x[:, 3:6])) < 1e-5
    assert mixer.init_state(1)[0].shape == (1, 3, D) and mixer.state_size() == 3 * D


def test_lm_memory_reaches_xl_layers():
    from lamina.config import from_dict
    from lamina.models.lm import LM, ModelConfig

    config = {"d_model": D, "layers": ["xl", "xl"], "mixers": {"xl": {"heads": 4, "mem_len": 8}}}
    model = LM(from_dict(ModelConfig, config, "model"), 256)
    assert [m.mem_len for m in model.memory_layers()] == [8, 8]
    with model.memory(mem_len=20):
        assert model.state_size() == 2 * 20 * D
    assert model.state_size() == 2 * 8 * D


def test_state_is_hidden_states_and_fixed_in_shape():
    mixer = make(mem_len=16)
    state = mixer.init_state(3)
    x = torch.randn(3, 5, D)
    _, new = mixer(x, state)
    assert [s.shape for s in new] == [s.shape for s in state]
    assert new[0].dtype == torch.float32 and new[1].sum() == 5 * 3
    assert torch.equal(new[0][:, 11:], x)
    assert mixer.state_size() == 16 * D  # mem_len * d_model floats


def test_reset_state_forgets():
    mixer = make(mem_len=8)
    x = torch.randn(2, 6, D)
    _, state = mixer(x)
    state = reset_state(state, torch.tensor([True, False]))
    y, _ = mixer(x, state)
    fresh, _ = mixer(x[1:])
    assert rel_err(y[1:], fresh) < 1e-6


@pytest.mark.parametrize(
    "options,word",
    [({"heads": 5}, "heads"), ({"mem_len": -1}, "mem_len"), ({"clamp_len": -2}, "clamp_len")],
)
def test_bad_options_are_named(options, word):
    with pytest.raises(LaminaError, match=word):
        mixer_class("xl")(D, XLOptions(**options))


def test_long_stream_finite():
    mixer = make(mem_len=64, clamp_len=200, same_length=True)
    assert_finite_stream(mixer, D, total=100_000, chunk=2048)
