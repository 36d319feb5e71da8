"""HGRN2 mixer: forms against a float64 reference, the paper's equations, and the lower-bound table shared with HGRN."""

import copy

import pytest
import torch

from lamina.config import ModelConfig
from lamina.errors import LaminaError
from lamina.mixers import mixer_class, use_form
from lamina.mixers.hgrn2 import HGRN2Options
from lamina.mixers.parts.lower_bound import LOWER_BOUNDS
from lamina.models import LM
from mixer_harness import (
    assert_finite_stream, assert_fp32_close, check_forms_agree, rel_err, run_in_chunks, split_sizes,
    with_random_lower_bounds,
)

D, N_LAYERS = 16, 4


def make(layer_idx=2, expand_ratio=4, bind=True, seed=0):
    """An HGRN2 layer of a 4-layer model whose shared lower-bound table holds random values."""
    return with_random_lower_bounds("hgrn2", HGRN2Options(expand_ratio=expand_ratio), D, layer_idx, N_LAYERS, bind, seed)


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("layer_idx,expand_ratio", [(0, 4), (2, 4), (3, 8)])
def test_forms_agree(T, layer_idx, expand_ratio):
    # (With a single head and T = 1 the output is exactly invariant to q . k under the RMSNorm, so the
    # gradients of q and f are ~0 and their relative error is meaningless: at least two heads here.)
    check_forms_agree(make(layer_idx, expand_ratio), data(T))


def test_matches_equations_in_float64():
    """Section 3 written directly: S = diag(f) S + (1 - f)^T i, o = swish(x W_q) S, f lower-bounded as in HGRN."""
    mixer = make(layer_idx=2, expand_ratio=8)
    x = data(23)
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    gamma = mixer._shared[LOWER_BOUNDS].detach().double().softmax(0)[1:3].sum(0)
    xd = x.double()
    heads = lambda t: t.unflatten(-1, (2, 8))  # noqa: E731
    f = heads(gamma + (1 - gamma) * torch.sigmoid(xd @ p["f_proj.weight"].T))
    q = heads(torch.nn.functional.silu(xd @ p["q_proj.weight"].T))
    i = heads(xd @ p["i_proj.weight"].T)
    S, outs = torch.zeros(2, 2, 8, 8, dtype=torch.float64), []
    for t in range(x.shape[1]):
        S = f[:, t, :, :, None] * S + (1 - f[:, t, :, :, None]) * i[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S).flatten(-2))
    o = torch.stack(outs, 1)
    want = (o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * p["norm.weight"]) @ p["out.weight"].T
    y, (last,) = mixer(x)
    assert rel_err(y, want) < 1e-5 and rel_err(last, S) < 1e-5


def test_shared_table_gradient_matches_float64_reference():
    mixer = make(layer_idx=3)
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


def test_one_table_for_hgrn_and_hgrn2_layers_of_a_model():
    torch.manual_seed(0)
    model = LM(ModelConfig(d_model=D, layers=["hgrn", "hgrn2", "hgrn", "hgrn2"],
                           mixers={"hgrn2": {"expand_ratio": 8}}), 257)
    assert list(model.shared) == [LOWER_BOUNDS] and model.shared[LOWER_BOUNDS].shape == (4, D)
    with torch.no_grad():
        model.shared[LOWER_BOUNDS].normal_()
    bounds = [blk.mixer.lower_bound() for blk in model.blocks]
    assert bounds[0] is None and (bounds[1] < bounds[2]).all() and (bounds[2] < bounds[3]).all()
    ids = torch.randint(0, 257, (2, 40))
    logits, _ = model(ids)
    logits.sum().backward()
    assert model.shared[LOWER_BOUNDS].grad.abs().sum() > 0
    with torch.no_grad():
        a, state = model(ids[:, :15])
        b, _ = model(ids[:, 15:], state)
    assert rel_err(torch.cat([a, b], 1), logits) < 1e-5


def test_state_size_and_dtype():
    mixer = make(expand_ratio=8)
    assert mixer.state_size() == 8 * D == sum(t[0].numel() for t in mixer.init_state(1))  # expand_ratio * d_model
    assert mixer_class("hgrn2")(256, HGRN2Options()).state_size() == 128 * 256  # the paper's ratio by default
    (S,) = mixer.init_state(3, dtype=torch.bfloat16)
    assert S.shape == (3, 2, 8, 8) and S.dtype == torch.float32
    y, (S,) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32


def test_stream_100k_tokens():
    assert_finite_stream(make(layer_idx=3), D)


@pytest.mark.parametrize("ratio", [0, 3, 32])
def test_rejects_bad_expand_ratio(ratio):
    with pytest.raises(LaminaError, match="expand_ratio"):
        mixer_class("hgrn2")(D, HGRN2Options(expand_ratio=ratio))
