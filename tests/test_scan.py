"""The gated scan: every form against the float64 reference loop, values and gradients."""

import pytest
import torch

from lamina.ops import gated_scan, gated_scan_chunk, gated_scan_reference, gated_scan_step
from mixer_harness import assert_all_fp32_close, rel_err


def inputs(B, T, *channels, seed=0):
    """x, log gates spanning -40 .. 0 (exact zeros and -40 included), an initial state, output weights."""
    gen = torch.Generator().manual_seed(seed)
    shape = (B, T, *channels)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    near_zero = -torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(-12, 0, generator=gen))
    anywhere = -40 * torch.rand(shape, generator=gen, dtype=torch.float64)
    pick = torch.randint(0, 8, shape, generator=gen)
    g = torch.where(pick < 5, near_zero, anywhere)
    g = torch.where(pick == 6, torch.zeros_like(g), g)
    g = torch.where(pick == 7, torch.full_like(g, -40.0), g)
    h0 = torch.randn((B, *channels), generator=gen, dtype=torch.float64)
    weights = tuple(torch.randn(s, generator=gen, dtype=torch.float64) for s in (shape, h0.shape))
    return x, g, h0, weights


def run(fn, x, g, h0, weights, dtype, **kw):
    """Outputs, final state and gradients w.r.t. x, g and h0 of a fixed projection of both outputs."""
    leaves = [t.detach().to(dtype).requires_grad_(True) if t is not None else None for t in (x, g, h0)]
    out, last = fn(leaves[0], leaves[1], initial_state=leaves[2], output_final_state=True, **kw)
    loss = (out.double() * weights[0]).sum() + (last.double() * weights[1]).sum()
    loss.backward()
    return [out.detach(), last.detach()] + [t.grad for t in leaves if t is not None]


@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 200, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_matches_float64_reference(T, with_state):
    x, g, h0, weights = inputs(2, T, 3, 8, seed=T)
    h0 = h0 if with_state else None
    want = run(gated_scan_reference, x, g, h0, weights, torch.float64)
    own = run(gated_scan_reference, x, g, h0, weights, torch.float32)  # the fp32 tolerance: see mixer_harness
    names = ["out", "final state", "dx", "dg", "dh0"][: len(want)]
    for chunk_size in (8, 32, 1024):  # 1024: one chunk, the plain loop (gated_scan on wide CPU inputs)
        got = run(gated_scan_chunk, x, g, h0, weights, torch.float32, chunk_size=chunk_size)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
        assert_all_fp32_close(got, want, own, names, f"T={T} chunk {chunk_size}")


def test_final_state_only_on_request():
    x, g, _, _ = inputs(1, 5, 4)
    for fn in (gated_scan_reference, gated_scan_chunk, gated_scan):
        assert fn(x, g)[1] is None
        assert fn(x, g, output_final_state=True)[1].shape == (1, 4)


def test_empty_sequence_passes_the_state_through():
    h0 = torch.randn(2, 3, requires_grad=True)
    out, last = gated_scan(torch.zeros(2, 0, 3), torch.zeros(2, 0, 3), initial_state=h0, output_final_state=True)
    assert out.shape == (2, 0, 3) and torch.equal(last, h0)
    last.sum().backward()
    assert torch.equal(h0.grad, torch.ones(2, 3))


def test_carried_state_and_steps_equal_full():
    """Against the full call in float64, within the tolerance the full call in fp32 gives (mixer_harness)."""
    x, g, h0, weights = inputs(2, 200, 16, seed=1)
    x, g, h0 = (t.float().requires_grad_(True) for t in (x, g, h0))
    full, last = gated_scan(x, g, initial_state=h0, output_final_state=True)
    grads_full = torch.autograd.grad((full * weights[0].float()).sum(), (x, g, h0))
    ref = [t.detach().double().requires_grad_(True) for t in (x, g, h0)]
    full64, last64 = gated_scan(ref[0], ref[1], initial_state=ref[2], output_final_state=True)
    grads64 = torch.autograd.grad((full64 * weights[0].float().double()).sum(), ref)
    names = ["outputs", "final state", "dx", "dg", "dh0"]

    pieces, state, start = [], h0, 0
    for size in (1, 30, 33, 64, 72):  # uneven, covering 200
        piece = slice(start, start + size)
        out, state = gated_scan(x[:, piece], g[:, piece], initial_state=state, output_final_state=True)
        pieces.append(out)
        start += size
    chunked = torch.cat(pieces, 1)
    grads_chunked = torch.autograd.grad((chunked * weights[0].float()).sum(), (x, g, h0))
    assert_all_fp32_close([chunked, state, *grads_chunked], [full64, last64, *grads64], [full, last, *grads_full],
                          names, "carried chunks")

    state, steps = h0, []
    for t in range(x.shape[1]):
        state = gated_scan_step(x[:, t], g[:, t], state)
        steps.append(state)
    assert_all_fp32_close([torch.stack(steps, 1), state], [full64, last64], [full, last], names[:2], "steps")


def test_bf16_inputs_keep_an_fp32_state():
    x, g, h0, weights = inputs(2, 300, 32, seed=2)
    x, g = x.bfloat16().double(), g.bfloat16().double()  # the reference sees the same rounded inputs
    want = run(gated_scan_reference, x, g, h0, weights, torch.float64)
    got = run(gated_scan, x, g, h0, weights, torch.bfloat16)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for name, a, b in zip(["out", "final state", "dx", "dg", "dh0"], got, want):
        assert rel_err(a, b) < 1e-2, f"bf16 {name} differs by {rel_err(a, b):.2e}"
    assert gated_scan_step(x[:, 0].bfloat16(), g[:, 0].bfloat16(), h0.float()).dtype == torch.float32


def test_gradcheck_float64():
    x, g, h0, _ = inputs(1, 11, 3, seed=3)
    x, g, h0 = (t.requires_grad_(True) for t in (x, g, h0))
    assert torch.autograd.gradcheck(
        lambda x, g, h0: gated_scan_chunk(x, g, initial_state=h0, output_final_state=True, chunk_size=4), (x, g, h0)
    )


def test_100k_tokens_stay_finite():
    """Gates at -30 and exactly 0 (a pure running sum) over 100K tokens, streamed and in one call."""
    B, T, D = 1, 100_000, 64
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, T, D, generator=gen)
    g = torch.where(torch.rand(B, T, D, generator=gen) < 0.5, -30.0, 0.0)
    g[..., : D // 2] = -1e-4 * torch.rand(B, T, D // 2, generator=gen)  # half the channels decay very slowly

    state, pieces = None, []
    for start in range(0, T, 4096):
        piece = slice(start, start + 4096)
        out, state = gated_scan(x[:, piece], g[:, piece], initial_state=state, output_final_state=True)
        assert torch.isfinite(out).all() and torch.isfinite(state).all()
        pieces.append(out)

    x.requires_grad_(True)
    g.requires_grad_(True)
    full, last = gated_scan(x, g, output_final_state=True)
    assert torch.isfinite(full).all() and torch.isfinite(last).all()
    assert rel_err(torch.cat(pieces, 1), full) < 1e-5 and rel_err(state, last) < 1e-5
    full.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(g.grad).all()


def test_rejects_mismatched_shapes():
    x = torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="one shape"):
        gated_scan(x, torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="initial_state"):
        gated_scan(x, x, initial_state=torch.zeros(2, 3))
