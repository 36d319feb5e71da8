"""The short causal convolution: fast form and steps against the float64 loop, state carried."""

import pytest
import torch

from lamina.ops import causal_conv, causal_conv_reference, causal_conv_step
from mixer_harness import assert_all_fp32_close, assert_fp32_close, rel_err


def inputs(B, T, C, W, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, C, generator=gen, dtype=torch.float64),
            torch.randn(C, W, generator=gen, dtype=torch.float64),
            torch.randn(C, generator=gen, dtype=torch.float64),
            torch.randn(B, W - 1, C, generator=gen, dtype=torch.float64))


def grads(fn, x, w, b, s0, dtype):
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (x, w, b, s0)]
    y, last = fn(*leaves[:3], initial_state=leaves[3], output_final_state=True)
    gen = torch.Generator().manual_seed(9)
    (y.double() * torch.randn(y.shape, generator=gen, dtype=torch.float64)).sum().backward(retain_graph=True)
    (last.double() * torch.randn(last.shape, generator=gen, dtype=torch.float64)).sum().backward()
    return [y.detach(), last.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("T,W", [(1, 4), (2, 4), (3, 4), (37, 4), (37, 2), (50, 1)])
def test_fast_form_matches_float64_loop(T, W):
    args = inputs(2, T, 6, W, seed=T + W)
    want = grads(causal_conv_reference, *args, torch.float64)
    own = grads(causal_conv_reference, *args, torch.float32)  # the fp32 tolerance: see mixer_harness
    got = grads(causal_conv, *args, torch.float32)
    assert_all_fp32_close(got, want, own, ["y", "state", "dx", "dweight", "dbias", "dstate"], f"T={T} W={W}")


def test_chunks_and_steps_equal_full():
    x, w, b, s0 = (t.float() for t in inputs(3, 41, 5, 4, seed=1))
    full, last = causal_conv(x, w, b, initial_state=s0, output_final_state=True)
    full64, _ = causal_conv(x.double(), w.double(), b.double(), initial_state=s0.double())  # see mixer_harness
    pieces, state, start = [], s0, 0
    for size in (1, 2, 7, 31):
        y, state = causal_conv(x[:, start : start + size], w, b, initial_state=state, output_final_state=True)
        pieces.append(y)
        start += size
    assert_fp32_close(torch.cat(pieces, 1), full64, full, "chunks")
    assert torch.equal(state, last)
    state, steps = s0, []
    for t in range(x.shape[1]):
        y, state = causal_conv_step(x[:, t], w, b, state)
        steps.append(y)
    assert_fp32_close(torch.stack(steps, 1), full64, full, "steps")
    assert torch.equal(state, last)


def test_empty_state_is_zero_history():
    x, w, b, _ = inputs(2, 9, 3, 4)
    y0, _ = causal_conv(x, w, b)
    y1, _ = causal_conv(x, w, b, initial_state=torch.zeros(2, 3, 3, dtype=torch.float64))
    assert torch.equal(y0, y1)
    assert rel_err(y0[:, 0], x[:, 0] * w[:, -1] + b) < 1e-12  # the first token sees only itself


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="weight"):
        causal_conv(torch.zeros(2, 5, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv(torch.zeros(2, 5, 4), torch.zeros(4, 4), initial_state=torch.zeros(2, 2, 4))
