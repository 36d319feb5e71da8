"""Attention with a key/value memory: every form against a float64 reference."""

import math

import pytest
import torch

from lamina.mixers import mixer_class
from lamina.mixers.attn import AttnOptions
from lamina.ops.rotary import rotary
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err, run_in_chunks

D = 32


def make(**options):
    torch.manual_seed(0)
    return mixer_class("attn")(D, AttnOptions(heads=4, **options))


def naive_attention(mixer, x, window=None):
    """Float64 softmax attention over the whole sequence, written out."""
    x = x.double()
    B, T, _ = x.shape
    H, Dh = mixer.heads, mixer.head_dim
    w_qkv, w_out = mixer.qkv.weight.double(), mixer.out.weight.double()
    q, k, v = (x @ w_qkv.T).view(B, T, 3, H, Dh).unbind(2)
    pos = torch.arange(T)
    q, k = rotary(q, pos), rotary(k, pos)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(Dh)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = j <= i if window is None else (j <= i) & (i - j < window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(B, T, H * Dh)
    return y @ w_out.T


@pytest.mark.parametrize("T", [1, 13, 40])
def test_vanilla_matches_naive_reference(T):
    mixer = make()
    x = torch.randn(2, T, D)
    y, _ = mixer(x)
    assert rel_err(y, naive_attention(mixer, x)) < 1e-5


@pytest.mark.parametrize("T,window", [(29, None), (31, 8)])
def test_forms_agree_with_memory(T, window):
    # a memory that covers the whole history (or the window) makes chunks and tokens exact
    mem_len = T if window is None else window - 1
    mixer = make(mem_len=mem_len, window=window)
    x = torch.randn(2, T, D)
    check_forms_agree(mixer, x, tol=1e-5, chunk=4)
    y, _ = mixer(x)
    assert rel_err(y, naive_attention(mixer, x, window)) < 1e-5


def test_memory_sees_previous_segment_and_mem_len_zero_does_not():
    x = torch.randn(1, 20, D)
    with_mem, without = make(mem_len=10), make(mem_len=0)
    y_mem, _ = run_in_chunks(with_mem, x, [10, 10])
    y_none, _ = run_in_chunks(without, x, [10, 10])
    full = naive_attention(with_mem, x)
    assert rel_err(y_mem, full) < 1e-5  # memory 10 covers the first segment entirely
    assert rel_err(y_none[:, 10:], full[:, 10:]) > 1e-2  # vanilla: the second segment starts blind
    assert rel_err(y_none[:, 10:], naive_attention(without, x[:, 10:])) < 1e-5


def test_state_shape_fixed_and_size():
    mixer = make(mem_len=16)
    state = mixer.init_state(3)
    _, new = mixer(torch.randn(3, 5, D), state)
    assert [s.shape for s in new] == [s.shape for s in state]
    assert new[2].sum() == 5 * 3  # five real tokens per sequence so far
    assert mixer.state_size() == 2 * 16 * D


def test_reset_state_forgets():
    from lamina.mixers import reset_state

    mixer = make(mem_len=8)
    x = torch.randn(2, 6, D)
    _, state = mixer(x)
    state = reset_state(state, torch.tensor([True, False]))
    y, _ = mixer(x, state)
    fresh, _ = mixer(x[1:])
    assert rel_err(y[1:], fresh) < 1e-6
    kept, _ = mixer(x[:1], tuple(s[:1] for s in state))
    assert rel_err(y[:1], kept) < 1e-6


def test_long_stream_finite():
    mixer = make(mem_len=64, window=128)
    assert_finite_stream(mixer, D, total=100_000, chunk=4096)
