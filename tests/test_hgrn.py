"""HGRN: every form against a float64 recurrent reference, with a bound lower-bound table."""

import copy

import pytest
import torch
from torch import nn

from lamina.errors import LaminaError
from lamina.mixers import mixer_class, use_form
from lamina.mixers.hgrn import LOWER_BOUNDS, HGRN, HGRNOptions
from mixer_harness import (
    assert_finite_stream, assert_fp32_close, check_forms_agree, rel_err, run_in_chunks, split_sizes,
    with_random_lower_bounds,
)

D, N_LAYERS = 16, 4


def make(layer_idx=2, expand_ratio=1, bind=True, seed=0):
    """An HGRN layer of a 4-layer model whose shared lower-bound table holds random values."""
    return with_random_lower_bounds("hgrn", HGRNOptions(expand_ratio=expand_ratio), D, layer_idx, N_LAYERS, bind, seed)


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("layer_idx,expand_ratio", [(0, 1), (2, 1), (3, 2)])
def test_forms_agree(T, layer_idx, expand_ratio):
    check_forms_agree(make(layer_idx, expand_ratio), data(T))


def test_matches_equations_in_float64():
    """The paper's gates written directly (lambda, not its log), against the mixer in fp32."""
    mixer = make(layer_idx=2, expand_ratio=2)
    x = data(23)
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    weights = mixer._shared[LOWER_BOUNDS].detach().double().softmax(0)
    gamma = weights[1:3].sum(0).repeat_interleave(2)
    xd = x.double()
    lam = gamma + (1 - gamma) * torch.sigmoid(xd @ p["f_proj.weight"].T)
    inp = torch.nn.functional.silu(xd @ p["i_proj.weight"].T) * (1 - lam)
    h, hs = torch.zeros(2, 2 * D, dtype=torch.float64), []
    for t in range(x.shape[1]):
        h = lam[:, t] * h + inp[:, t]
        hs.append(h)
    hs = torch.stack(hs, 1)
    normed = hs * torch.rsqrt(hs.pow(2).mean(-1, keepdim=True) + 1e-5) * p["norm.weight"]
    want = (normed * torch.nn.functional.silu(xd @ p["g_proj.weight"].T)) @ p["out.weight"].T
    y, (last,) = mixer(x)
    assert rel_err(y, want) < 1e-5 and rel_err(last, h) < 1e-5


def test_unbound_mixer_has_no_lower_bound():
    mixer = make(bind=False)
    assert mixer.lower_bound() is None
    check_forms_agree(mixer, data(13))


def test_shared_table_gradient_matches_float64_reference():
    """The harness sees only the mixer's own parameters, so the shared table is checked here."""
    mixer = make(layer_idx=3, expand_ratio=2)
    x = data(37)
    weight = torch.randn(2, 37, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def table_grad(m, inp, run):
        table = m._shared[LOWER_BOUNDS]
        table.grad = None
        (run(m, inp)[0] * weight.to(inp.dtype)).sum().backward()
        return table.grad

    ref = copy.deepcopy(mixer).double()
    ref.bind_shared(copy.deepcopy(mixer._shared).double())

    def recurrent(m, inp):
        with use_form("recurrent"):
            return m(inp)

    want = table_grad(ref, x.double(), recurrent)
    assert want.abs().sum() > 0
    own = table_grad(mixer, x, recurrent)  # the fp32 tolerance: see mixer_harness
    full = table_grad(mixer, x, lambda m, inp: m(inp))
    chunked = table_grad(mixer, x, lambda m, inp: run_in_chunks(m, inp, split_sizes(37, 4)))
    assert_fp32_close(full, want, own, "full sequence: gradient of the shared table")
    assert_fp32_close(chunked, want, own, "carried chunks: gradient of the shared table")


def test_lower_bounds_rise_with_depth():
    table = nn.ParameterDict({LOWER_BOUNDS: nn.Parameter(torch.randn(6, D))})
    bounds = []
    for layer in range(6):
        mixer = mixer_class("hgrn")(D, HGRNOptions(), layer, 6)
        mixer.bind_shared(table)
        bound = mixer.lower_bound()
        bounds.append(torch.zeros(D) if bound is None else bound)
    bounds = torch.stack(bounds)
    assert torch.equal(bounds[0], torch.zeros(D))
    assert (bounds[1:] > bounds[:-1]).all() and (bounds < 1).all()
    weights = table[LOWER_BOUNDS].softmax(0)
    assert torch.allclose(bounds, weights.cumsum(0) - weights[0])  # fla's formula
    # zeros (the model's initialisation) give gamma_l = l / L
    zero = nn.ParameterDict({LOWER_BOUNDS: nn.Parameter(HGRN.shared_parameters[LOWER_BOUNDS](6, D))})
    mixer = mixer_class("hgrn")(D, HGRNOptions(expand_ratio=3), 4, 6)
    mixer.bind_shared(zero)
    assert torch.allclose(mixer.lower_bound(), torch.full((3 * D,), 4 / 6))
    off = mixer_class("hgrn")(D, HGRNOptions(use_lower_bound=False), 4, 6)
    off.bind_shared(table)
    assert off.lower_bound() is None


def test_state_size_and_dtype():
    mixer = make(expand_ratio=2)
    assert mixer.state_size() == 2 * D
    (h,) = mixer.init_state(3, dtype=torch.bfloat16)
    assert h.shape == (3, 2 * D) and h.dtype == torch.float32
    y, (h,) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


def test_stream_100k_tokens():
    assert_finite_stream(make(layer_idx=3), D)


def test_rejects_bad_expand_ratio():
    with pytest.raises(LaminaError, match="expand_ratio"):
        mixer_class("hgrn")(D, HGRNOptions(expand_ratio=0))
