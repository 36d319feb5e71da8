"""Gated linear attention: every form against the float64 reference loop, values and gradients."""

import pytest
import torch

from lamina.ops import gla, gla_chunk, gla_reference, gla_step
from mixer_harness import assert_all_fp32_close, rel_err

NAMES = ["out", "final state", "dq", "dk", "dv", "dg", "dh0"]


def log_gates(shape, gen):
    """Log decays spanning -40 .. 0: mostly near 0, some anywhere, exact zeros and -40 included."""
    near_zero = -torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(-12, 0, generator=gen))
    anywhere = -40 * torch.rand(shape, generator=gen, dtype=torch.float64)
    pick = torch.randint(0, 8, shape, generator=gen)
    g = torch.where(pick < 5, near_zero, anywhere)
    g = torch.where(pick == 6, torch.zeros_like(g), g)
    return torch.where(pick == 7, torch.full_like(g, -40.0), g)


def inputs(B, T, H, K, V, scalar, seed=0):
    """q, k, v, g, an initial state and output weights, all float64."""
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    g = log_gates((B, T, H) if scalar else (B, T, H, K), gen)
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    weights = tuple(torch.randn(s, generator=gen, dtype=torch.float64) for s in ((B, T, H, V), h0.shape))
    return q, k, v, g, h0, weights


def run(fn, q, k, v, g, h0, weights, dtype, **kw):
    """Outputs, final state and gradients w.r.t. q, k, v, g and h0 of a fixed projection of both outputs."""
    leaves = [t.detach().to(dtype).requires_grad_(True) if t is not None else None for t in (q, k, v, g, h0)]
    out, last = fn(*leaves[:4], scale=0.7, initial_state=leaves[4], output_final_state=True, **kw)
    loss = (out.double() * weights[0]).sum() + (last.double() * weights[1]).sum()
    loss.backward()
    return [out.detach(), last.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 200])
@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero", "h0"])
def test_chunk_matches_float64_reference(T, scalar, with_state):
    q, k, v, g, h0, weights = inputs(2, T, 2, 8, 6, scalar, seed=T)
    h0 = h0 if with_state else None
    want = run(gla_reference, q, k, v, g, h0, weights, torch.float64)
    own = run(gla_reference, q, k, v, g, h0, weights, torch.float32)  # the fp32 tolerance: see mixer_harness
    for chunk_size in (8, 64):
        got = run(gla_chunk, q, k, v, g, h0, weights, torch.float32, chunk_size=chunk_size)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
        assert_all_fp32_close(got, want, own, NAMES[: len(want)], f"T={T} chunk {chunk_size}")


def test_large_gates_elsewhere_cost_no_precision():
    """Gates of -30 early in a chunk, then near 0: spans are summed over their own gates only.

    No precision is lost: the chunk form is as close to float64 as the plain loop in fp32 (within the harness's
    headroom of it), not merely within the typical 1e-5.
    """
    q, k, v, g, h0, weights = inputs(1, 64, 2, 8, 4, False, seed=11)
    g[:, :20] = -30.0
    g[:, 20:] = -1e-3 * torch.rand(g[:, 20:].shape, dtype=torch.float64)
    want = run(gla_reference, q, k, v, g, h0, weights, torch.float64)
    own = run(gla_reference, q, k, v, g, h0, weights, torch.float32)
    got = run(gla_chunk, q, k, v, g, h0, weights, torch.float32)
    assert_all_fp32_close(got, want, own, NAMES, "large gates", typical=0)


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_gradcheck_float64(scalar):
    q, k, v, g, h0, _ = inputs(1, 9, 1, 3, 2, scalar, seed=3)
    leaves = tuple(t.requires_grad_(True) for t in (q, k, v, g, h0))
    assert torch.autograd.gradcheck(
        lambda q, k, v, g, h0: gla_chunk(q, k, v, g, initial_state=h0, output_final_state=True, chunk_size=4),
        leaves,
    )


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_bf16_inputs_keep_an_fp32_state(scalar):
    q, k, v, g, h0, weights = inputs(2, 150, 2, 16, 8, scalar, seed=2)
    q, k, v, g = (t.bfloat16().double() for t in (q, k, v, g))  # the reference sees the same rounded inputs
    want = run(gla_reference, q, k, v, g, h0, weights, torch.float64)
    got = run(gla, q, k, v, g, h0, weights, torch.bfloat16)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for name, a, b in zip(NAMES, got, want):
        assert rel_err(a, b) < 1e-2, f"bf16 {name} differs by {rel_err(a, b):.2e}"
    o, s = gla_step(*(t[:, 0].bfloat16() for t in (q, k, v, g)), h0.float())
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_carried_state_and_steps_equal_full(scalar):
    q, k, v, g, h0, weights = inputs(2, 200, 2, 8, 8, scalar, seed=1)
    leaves = [t.float().requires_grad_(True) for t in (q, k, v, g, h0)]
    q, k, v, g, h0 = leaves
    full, last = gla(q, k, v, g, initial_state=h0, output_final_state=True)
    grads_full = torch.autograd.grad((full * weights[0].float()).sum(), leaves)
    ref = [t.detach().double().requires_grad_(True) for t in leaves]  # the fp32 tolerance: see mixer_harness
    full64, last64 = gla(*ref[:4], initial_state=ref[4], output_final_state=True)
    grads64 = torch.autograd.grad((full64 * weights[0].float().double()).sum(), ref)
    names = ["outputs", "final state", "dq", "dk", "dv", "dg", "dh0"]

    pieces, state, start = [], h0, 0
    for size in (1, 30, 33, 64, 72):  # uneven, covering 200
        piece = slice(start, start + size)
        out, state = gla(q[:, piece], k[:, piece], v[:, piece], g[:, piece], initial_state=state,
                         output_final_state=True)
        pieces.append(out)
        start += size
    chunked = torch.cat(pieces, 1)
    grads_chunked = torch.autograd.grad((chunked * weights[0].float()).sum(), leaves)
    assert_all_fp32_close([chunked, state, *grads_chunked], [full64, last64, *grads64], [full, last, *grads_full],
                          names, "carried chunks")

    state, steps = h0, []
    for t in range(q.shape[1]):
        o, state = gla_step(q[:, t], k[:, t], v[:, t], g[:, t], state)
        steps.append(o)
    assert_all_fp32_close([torch.stack(steps, 1), state], [full64, last64], [full, last], names[:2], "steps")


def test_scalar_gate_equals_vector_gate_broadcast():
    q, k, v, g, h0, _ = inputs(2, 77, 2, 8, 4, True, seed=5)
    a = gla(q, k, v, g, initial_state=h0, output_final_state=True)
    b = gla(q, k, v, g[..., None].expand(q.shape), initial_state=h0, output_final_state=True)
    assert rel_err(a[0], b[0]) < 1e-12 and rel_err(a[1], b[1]) < 1e-12


def test_final_state_only_on_request_and_default_scale():
    q, k, v, g, _, _ = inputs(1, 5, 2, 4, 3, False)
    for fn in (gla_reference, gla_chunk, gla):
        assert fn(q, k, v, g)[1] is None
        assert fn(q, k, v, g, output_final_state=True)[1].shape == (1, 2, 4, 3)
    assert rel_err(gla(q, k, v, g)[0], gla(q, k, v, g, scale=4**-0.5)[0]) == 0


def test_empty_sequence_passes_the_state_through():
    h0 = torch.randn(2, 3, 4, 5, requires_grad=True)
    q = torch.zeros(2, 0, 3, 4)
    out, last = gla(q, q, torch.zeros(2, 0, 3, 5), torch.zeros(2, 0, 3), initial_state=h0, output_final_state=True)
    assert out.shape == (2, 0, 3, 5) and torch.equal(last, h0)
    last.sum().backward()
    assert torch.equal(h0.grad, torch.ones_like(h0))


@pytest.mark.parametrize("scalar", [False, True], ids=["vector", "scalar"])
def test_100k_tokens_stay_finite(scalar):
    """Gates of -30 and exactly 0 (a running sum) over 100K tokens, streamed and in one call, with gradients."""
    B, T, H, K, V = 1, 100_000, 2, 4, 4
    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(B, T, H, K, generator=gen) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=gen)
    shape = (B, T, H) if scalar else (B, T, H, K)
    g = torch.where(torch.rand(shape, generator=gen) < 0.5, -30.0, 0.0)
    g[:, :, 0] = 0.0  # one head (vector: one key channel of each head) never decays
    if not scalar:
        g[..., 1] = -30.0  # and one channel always forgets

    state, pieces = None, []
    for start in range(0, T, 25_000):
        piece = slice(start, start + 25_000)
        out, state = gla(q[:, piece], k[:, piece], v[:, piece], g[:, piece], initial_state=state,
                         output_final_state=True)
        assert torch.isfinite(out).all() and torch.isfinite(state).all()
        pieces.append(out)

    leaves = [t.requires_grad_(True) for t in (q, k, v, g)]
    full, last = gla(*leaves, output_final_state=True)
    assert torch.isfinite(full).all() and torch.isfinite(last).all()
    assert rel_err(torch.cat(pieces, 1), full) < 1e-5 and rel_err(state, last) < 1e-5
    full.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_rejects_mismatched_shapes():
    q = torch.zeros(2, 5, 3, 4)
    with pytest.raises(ValueError, match="q and k of shape"):
        gla(q, torch.zeros(2, 5, 3, 3), torch.zeros(2, 5, 3, 2), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="g of shape"):
        gla(q, q, torch.zeros(2, 5, 3, 2), torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="initial_state"):
        gla(q, q, torch.zeros(2, 5, 3, 2), torch.zeros(2, 5, 3), initial_state=torch.zeros(2, 3, 4, 3))
    with pytest.raises(ValueError, match="power of two"):
        gla_chunk(q, q, torch.zeros(2, 5, 3, 2), torch.zeros(2, 5, 3), chunk_size=48)
