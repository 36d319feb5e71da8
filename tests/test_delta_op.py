"""The delta rule op: chunk form and steps against the float64 loop, values and every gradient."""

import pytest
import torch
import torch.nn.functional as F

from lamina.ops import delta_rule, delta_rule_chunk, delta_rule_reference, delta_rule_step
from mixer_harness import assert_all_fp32_close, rel_err

NAMES = ["out", "final state", "dq", "dk", "dv", "dbeta", "dg", "dh0"]


def inputs(B, T, H, K, V, gated=True, seed=0):
    """q, unit-or-shorter keys, v, beta in (0, 1), log gates from -1000 to 0 (or None), h0, output weights."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(shape, generator=gen, dtype=torch.float64)

    q, v = randn(B, T, H, K), randn(B, T, H, V)
    k = F.normalize(randn(B, T, H, K), dim=-1) * torch.where(rand(B, T, H, 1) < 0.5, 1.0, rand(B, T, H, 1))
    beta = torch.where(rand(B, T, H) < 0.2, 0.999, rand(B, T, H))
    g = None
    if gated:
        near_zero = -torch.exp(-12 * rand(B, T, H))
        pick = torch.randint(0, 10, (B, T, H), generator=gen)
        g = torch.where(pick < 6, near_zero, -5 * rand(B, T, H))
        g = torch.where(pick == 8, torch.zeros_like(g), g)
        g = torch.where(pick == 9, torch.full_like(g, -1000.0), g)
    h0 = randn(B, H, K, V)
    weights = (randn(B, T, H, V), randn(B, H, K, V))
    return (q, k, v, beta, g, h0), weights


def run(fn, args, weights, dtype, **kw):
    """Outputs, final state and gradients w.r.t. every input of a fixed projection of both outputs."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_(True) for t in args]
    q, k, v, beta, g, h0 = leaves
    out, last = fn(q, k, v, beta, g, initial_state=h0, output_final_state=True, **kw)
    loss = (out.double() * weights[0]).sum() + (last.double() * weights[1]).sum()
    loss.backward()
    return [out.detach(), last.detach()] + [None if t is None else t.grad for t in leaves]


def assert_all_close(got, want, tol, what):
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None
            continue
        assert rel_err(a, b) < tol, f"{what}: {name} differs by {rel_err(a, b):.2e}"


@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 200])
@pytest.mark.parametrize("gated", [False, True])
def test_chunk_matches_float64_reference(T, gated):
    args, weights = inputs(2, T, 2, 8, 6, gated, seed=T)
    want = run(delta_rule_reference, args, weights, torch.float64)
    own = run(delta_rule_reference, args, weights, torch.float32)  # the fp32 tolerance: see mixer_harness
    for chunk_size in (16, 64):
        got = run(delta_rule_chunk, args, weights, torch.float32, chunk_size=chunk_size)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
        assert_all_fp32_close(got, want, own, NAMES, f"T={T} gated={gated} chunk {chunk_size}")


def test_without_initial_state():
    (q, k, v, beta, g, _), weights = inputs(2, 70, 2, 8, 6, seed=1)
    want = run(delta_rule_reference, (q, k, v, beta, g, None), weights, torch.float64)
    own = run(delta_rule_reference, (q, k, v, beta, g, None), weights, torch.float32)
    got = run(delta_rule, (q, k, v, beta, g, None), weights, torch.float32)
    assert_all_fp32_close(got, want, own, NAMES, "no initial state")


def test_zero_gates_are_deltanet():
    (q, k, v, beta, _, h0), _ = inputs(1, 40, 2, 4, 4, gated=False, seed=2)
    plain = delta_rule_chunk(q, k, v, beta, initial_state=h0, output_final_state=True, chunk_size=16)
    gated = delta_rule_chunk(q, k, v, beta, torch.zeros_like(beta), initial_state=h0, output_final_state=True,
                             chunk_size=16)
    assert rel_err(gated[0], plain[0]) < 1e-12 and rel_err(gated[1], plain[1]) < 1e-12


def test_explicit_scale():
    (q, k, v, beta, g, h0), _ = inputs(1, 20, 2, 4, 3, seed=3)
    want, _ = delta_rule_reference(q, k, v, beta, g, scale=0.7, initial_state=h0)
    got, _ = delta_rule_chunk(q, k, v, beta, g, scale=0.7, initial_state=h0, chunk_size=8)
    assert rel_err(got, want) < 1e-12
    default, _ = delta_rule_reference(q, k, v, beta, g, initial_state=h0)
    assert rel_err(default * 0.7 / 4**-0.5, want) < 1e-12  # default scale is K ** -0.5


def test_final_state_only_on_request():
    (q, k, v, beta, g, _), _ = inputs(1, 5, 2, 4, 3)
    for fn in (delta_rule_reference, delta_rule_chunk, delta_rule):
        assert fn(q, k, v, beta, g)[1] is None
        assert fn(q, k, v, beta, g, output_final_state=True)[1].shape == (1, 2, 4, 3)


@pytest.mark.parametrize("fn", [delta_rule_reference, delta_rule_chunk])
def test_empty_sequence_passes_the_state_through(fn):
    h0 = torch.randn(2, 3, 4, 5, requires_grad=True)
    q = torch.zeros(2, 0, 3, 4)
    out, last = fn(q, q, torch.zeros(2, 0, 3, 5), torch.zeros(2, 0, 3), torch.zeros(2, 0, 3),
                   initial_state=h0, output_final_state=True)
    assert out.shape == (2, 0, 3, 5) and torch.equal(last, h0)
    last.sum().backward()
    assert torch.equal(h0.grad, torch.ones_like(h0))


@pytest.mark.parametrize("gated", [False, True])
def test_carried_state_and_steps_equal_full(gated):
    args, weights = inputs(2, 150, 2, 8, 6, gated, seed=4)
    leaves = [None if t is None else t.float().requires_grad_(True) for t in args]
    q, k, v, beta, g, h0 = leaves
    inputs_ = [t for t in leaves if t is not None]
    w_out = weights[0].float()
    full, last = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True)
    grads_full = torch.autograd.grad((full * w_out).sum(), inputs_)
    ref = [None if t is None else t.detach().double().requires_grad_(True) for t in leaves]  # see mixer_harness
    full64, last64 = delta_rule(*ref[:5], initial_state=ref[5], output_final_state=True)
    grads64 = torch.autograd.grad((full64 * w_out.double()).sum(), [t for t in ref if t is not None])
    names = ["outputs", "final state"] + [n for n, t in zip(NAMES[2:], leaves) if t is not None]

    def part(x, piece):
        return None if x is None else x[:, piece]

    pieces, state, start = [], h0, 0
    for size in (1, 30, 33, 64, 22):  # uneven, covering 150
        piece = slice(start, start + size)
        out, state = delta_rule(*(part(x, piece) for x in (q, k, v, beta, g)), initial_state=state,
                                output_final_state=True)
        pieces.append(out)
        start += size
    chunked = torch.cat(pieces, 1)
    grads_chunked = torch.autograd.grad((chunked * w_out).sum(), inputs_)
    assert_all_fp32_close([chunked, state, *grads_chunked], [full64, last64, *grads64], [full, last, *grads_full],
                          names, "carried chunks")

    state, steps = h0, []
    for t in range(q.shape[1]):
        o, state = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], None if g is None else g[:, t], state)
        steps.append(o)
    steps = torch.stack(steps, 1)
    grads_steps = torch.autograd.grad((steps * w_out).sum(), inputs_)
    assert_all_fp32_close([steps, state, *grads_steps], [full64, last64, *grads64], [full, last, *grads_full],
                          names, "steps")


@pytest.mark.parametrize("gated", [False, True])
def test_bf16_inputs_keep_an_fp32_state(gated):
    args, weights = inputs(2, 150, 2, 16, 16, gated, seed=5)
    args = tuple(None if t is None else t.bfloat16().double() for t in args[:5]) + args[5:]  # the same rounding
    want = run(delta_rule_reference, args, weights, torch.float64)
    got = run(delta_rule, args, weights, torch.bfloat16)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    assert_all_close(got, want, 1e-2, f"bf16 gated={gated}")
    q, k, v, beta, g, h0 = args
    o, s = delta_rule_step(q[:, 0].bfloat16(), k[:, 0].bfloat16(), v[:, 0].bfloat16(), beta[:, 0].bfloat16(),
                           None if g is None else g[:, 0].bfloat16(), h0.float())
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32


def test_gradcheck_float64():
    (q, k, v, beta, g, h0), _ = inputs(1, 9, 1, 3, 2, seed=6)
    leaves = tuple(t.requires_grad_(True) for t in (q, k, v, beta, g, h0))
    assert torch.autograd.gradcheck(
        lambda q, k, v, beta, g, h0: delta_rule_chunk(q, k, v, beta, g, initial_state=h0, output_final_state=True,
                                                      chunk_size=4),
        leaves,
    )


@pytest.mark.parametrize("gated", [False, True])
def test_100k_tokens_stay_finite(gated):
    """100K tokens streamed in fp32 (no decay at all, or gates from -30 to exactly 0), then in one call."""
    B, T, H, K, V = 1, 100_000, 2, 8, 8
    gen = torch.Generator().manual_seed(7)
    q, v = torch.randn(B, T, H, K, generator=gen), 10 * torch.randn(B, T, H, V, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    beta = torch.rand(B, T, H, generator=gen)
    g = None
    if gated:
        g = torch.where(torch.rand(B, T, H, generator=gen) < 0.5, -30 * torch.rand(B, T, H, generator=gen), 0.0)
        g[..., 0] = -1e-4 * torch.rand(B, T, generator=gen)  # one head decays very slowly

    state, pieces = None, []
    with torch.no_grad():
        for start in range(0, T, 4096):
            piece = slice(start, start + 4096)
            out, state = delta_rule(q[:, piece], k[:, piece], v[:, piece], beta[:, piece],
                                    None if g is None else g[:, piece], initial_state=state, output_final_state=True)
            assert torch.isfinite(out).all() and torch.isfinite(state).all()
            pieces.append(out)

    # one call over all of it, with gradients where the gates make them delicate (exp of masked exponents)
    leaves = [t.requires_grad_(True) for t in (v, beta) + (() if g is None else (g,))]
    with torch.set_grad_enabled(gated):
        full, last = delta_rule(q, k, v, beta, g, output_final_state=True)
    assert torch.isfinite(full).all() and torch.isfinite(last).all()
    assert rel_err(torch.cat(pieces, 1), full) < 1e-5 and rel_err(state, last) < 1e-5
    if gated:
        (full.sum() + last.sum()).backward()
        assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_rejects_bad_shapes():
    q = torch.zeros(2, 5, 3, 4)
    v, beta = torch.zeros(2, 5, 3, 6), torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="q and k"):
        delta_rule(q, torch.zeros(2, 5, 3, 5), v, beta)
    with pytest.raises(ValueError, match="beta"):
        delta_rule(q, q, v, torch.zeros(2, 5, 3, 6))
    with pytest.raises(ValueError, match="g must"):
        delta_rule(q, q, v, beta, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="initial_state"):
        delta_rule(q, q, v, beta, initial_state=torch.zeros(2, 3, 6, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule_chunk(q, q, v, beta, chunk_size=0)
