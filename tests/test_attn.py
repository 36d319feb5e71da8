"""Attention with a key/value memory: every form against a float64 reference."""

import math

import pytest
import torch

from lamina.mixers import mixer_class
from lamina.mixers.attn import AttnOptions
from lamina.mixers.state import rows_of_state, state_tensors
from lamina.ops.rotary import rotary
from mixer_harness import (
    assert_finite_stream, assert_fp32_close, check_forms_agree, float64_copy, float64_state, rel_err, run_in_chunks,
)

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
    check_forms_agree(mixer, x, chunk=4)
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
    assert [s.shape for s in state_tensors(new)] == [s.shape for s in state_tensors(state)]
    assert new.valid.sum() == 5 * 3  # five real tokens per sequence so far
    assert mixer.state_size() == 2 * 16 * D


def test_reset_state_forgets():
    from lamina.mixers import reset_state

    mixer = make(mem_len=8)
    x = torch.randn(2, 6, D)
    _, state = mixer(x)
    state = reset_state(state, torch.tensor([True, False]))
    y, _ = mixer(x, state)
    fresh, _ = mixer(x[1:])
    mixer64 = float64_copy(mixer)  # the fp32 tolerance: see mixer_harness
    assert_fp32_close(y[1:], mixer64(x[1:].double())[0], fresh, "the row whose state was reset")
    kept, _ = mixer(x[:1], rows_of_state(state, slice(0, 1)))
    kept64, _ = mixer64(x[:1].double(), float64_state(rows_of_state(state, slice(0, 1))))
    assert_fp32_close(y[:1], kept64, kept, "the row whose state was kept")


def test_long_stream_finite():
    mixer = make(mem_len=64, window=128)
    assert_finite_stream(mixer, D, total=100_000, chunk=4096)


@torch.no_grad()
def naive_sinks(mixer, x, sinks, window):
    """Float64 StreamingLLM attention, query by query: keys ``j <= i`` with ``j < sinks`` or ``i - j < window``,
    at their positions within the cache (sinks at their index, then the window; the query after its keys)."""
    x = x.double()
    B, T, _ = x.shape
    H, Dh = mixer.heads, mixer.head_dim
    q, k, v = (x @ mixer.qkv.weight.double().T).view(B, T, 3, H, Dh).unbind(2)
    out = torch.zeros(B, T, H, Dh, dtype=torch.float64)
    for i in range(T):
        keys = [j for j in range(i + 1) if j < sinks or i - j < window]
        positions = torch.arange(len(keys))  # the cache: sinks, then the window in order
        qi = rotary(q[:, i : i + 1], positions[-1:])
        ki = rotary(k[:, keys], positions)
        scores = torch.einsum("bhd,bshd->bhs", qi[:, 0], ki) / math.sqrt(Dh)
        out[:, i] = torch.einsum("bhs,bshd->bhd", scores.softmax(-1), v[:, keys])
    return out.reshape(B, T, H * Dh) @ mixer.out.weight.double().T


@pytest.mark.parametrize("sinks,window,T", [(1, 4, 23), (3, 6, 29)])
def test_sinks_match_streaming_reference_in_every_form(sinks, window, T):
    mixer = make(mem_len=window - 1, window=window, sinks=sinks)
    x = torch.randn(2, T, D)
    want = naive_sinks(mixer, x, sinks, window)
    y, _ = mixer(x)
    assert rel_err(y, want) < 1e-5
    for sizes in ([2, 5, 1, 7, T - 15], [1] * T):
        y, _ = run_in_chunks(mixer, x, sizes)
        assert rel_err(y, want) < 1e-5, sizes
    check_forms_agree(mixer, x, chunk=3)


def test_sinks_need_a_window():
    from lamina.errors import LaminaError

    with pytest.raises(LaminaError, match="attn: sinks = 4"):
        make(sinks=4)
    with pytest.raises(LaminaError, match=r"attn\.sinks"):
        make(sinks=-1, window=8)


def test_sink_state_is_fixed_and_counts_its_slots():
    mixer = make(mem_len=7, window=8, sinks=3)
    state = mixer.init_state(2)
    assert mixer.state_size() == 2 * (7 + 3) * D
    _, new = mixer(torch.randn(2, 2, D), state)
    assert [s.shape for s in state_tensors(new)] == [s.shape for s in state_tensors(state)]
    assert new.sink_valid.sum(1).tolist() == [2, 2]  # two of three sink slots filled
    _, new = mixer(torch.randn(2, 5, D), new)
    assert new.sink_valid.sum(1).tolist() == [3, 3]


def test_generation_with_sinks_keeps_constant_memory():
    from lamina.config import ModelConfig
    from lamina.eval import generate
    from lamina.models import LM

    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=["attn"], mixers={"attn": {"heads": 2, "mem_len": 15, "window": 16, "sinks": 4}})
    model = LM(cfg, 257).eval()
    sizes = []
    model.blocks[0].mixer.register_forward_hook(lambda m, args, out: sizes.append(sum(t.numel() for t in out[1])))
    tokens = generate(model, torch.randint(0, 257, (20,)), max_new_tokens=300, context=8, seed=0)
    assert len(tokens) == 300 and len(sizes) == 3 + 300
    assert len(set(sizes)) == 1  # the state never grows


def test_sinks_under_padding_resets_and_bf16():
    from mixer_harness import check_masks_are_exact

    mixer = make(mem_len=5, window=6, sinks=2)
    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[0, :4] = False
    valid[2, 9:12] = False
    resets = torch.zeros(3, 21, dtype=torch.bool)
    resets[1, 8] = resets[2, 14] = True  # later documents get their own sinks
    check_masks_are_exact(mixer, torch.randn(3, 21, D), valid, resets)
    x = torch.randn(2, 17, D)
    want, _ = mixer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mixer(x)
    assert all(t.dtype in (torch.float32, torch.bool) for t in state)
    assert rel_err(y.float(), want) < 5e-2
