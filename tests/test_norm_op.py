"""The gated RMSNorm op: values and gradients against the composed formula in float64, and gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from lamina.ops import gated_rms_norm
from mixer_harness import rel_err

EPS = 1e-5


def composed(x, weight, gate, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight * F.silu(gate)


def inputs(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    x, gate, grad = (torch.randn(shape, generator=gen, dtype=torch.float64) * s for s in (3.0, 4.0, 1.0))
    weight = torch.randn(shape[-1], generator=gen, dtype=torch.float64)
    return x, weight, gate, grad


def run(fn, x, weight, gate, grad, dtype):
    """The output and the gradients w.r.t. x, weight and gate of ``(y * grad).sum()``."""
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (x, weight, gate)]
    y = fn(*leaves, EPS)
    (y.double() * grad).sum().backward()
    return [y.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("shape", [(2, 7, 16), (3, 32), (1, 1, 5)])
def test_matches_composed_formula_in_float64(shape):
    args = inputs(shape, seed=len(shape))
    want = run(composed, *args, torch.float64)
    got = run(gated_rms_norm, *args, torch.float32)
    for name, a, b in zip(["y", "dx", "dweight", "dgate"], got, want):
        assert a.dtype == torch.float32 and rel_err(a, b) < 1e-5, f"{shape}: {name} differs by {rel_err(a, b):.2e}"


def test_gradcheck_float64():
    x, weight, gate, _ = (t.requires_grad_(True) for t in inputs((2, 3, 6), seed=1))
    assert torch.autograd.gradcheck(lambda x, w, g: gated_rms_norm(x, w, g, EPS), (x, weight, gate))


def test_bf16_inputs_are_computed_in_fp32():
    x, weight, gate, grad = (t.bfloat16() for t in inputs((2, 5, 8), seed=2))
    want = run(composed, *(t.double() for t in (x, weight, gate, grad)), torch.float64)
    got = run(gated_rms_norm, x, weight, gate, grad.double(), torch.bfloat16)
    assert got[0].dtype == torch.float32
    assert [t.dtype for t in got[1:]] == [torch.bfloat16] * 3
    assert rel_err(got[0], want[0]) < 1e-5
    for a, b in zip(got[1:], want[1:]):
        assert rel_err(a, b) < 1e-2


def test_rejects_mismatched_shapes():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="gate"):
        gated_rms_norm(x, torch.ones(4), torch.zeros(2, 3, 5), EPS)
    with pytest.raises(ValueError, match="weight"):
        gated_rms_norm(x, torch.ones(3), x, EPS)
