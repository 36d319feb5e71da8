"""minGRU and minLSTM: every form against a float64 recurrent reference, and the paper's equations in float64."""

import pytest
import torch

from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.minrnn import MinRNNOptions
from lamina.models.schedule import parse_layers
from lamina.ops import candidate_g, interpolation_gates, log_sigmoid, normalized_gates
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err

D = 16
NAMES = ["mingru", "minlstm"]


def make(name, expand_ratio=1, candidate="g", weight_scale=3.0, seed=0):
    """A mixer whose projection is scaled up so that gates reach well into (0, 0.05) and (0.95, 1)."""
    torch.manual_seed(seed)
    mixer = mixer_class(name)(D, MinRNNOptions(expand_ratio=expand_ratio, candidate=candidate))
    with torch.no_grad():
        mixer.proj.weight.mul_(weight_scale)
    return mixer


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("expand_ratio,candidate", [(1, "g"), (2, "linear")])
@pytest.mark.parametrize("name", NAMES)
def test_forms_agree(name, T, expand_ratio, candidate):
    check_forms_agree(make(name, expand_ratio, candidate), data(T))


def paper_equations(name, mixer, x, h0):
    """Section 3.1 / 3.2 written out in float64 with gates in linear space, a plain loop over time."""
    W = mixer.proj.weight.detach().double()
    pre = x.double() @ W.T
    parts = pre.chunk(mixer.n_gates + 1, dim=-1)
    lin_h = parts[-1]
    if mixer.options.candidate == "g":
        cand = torch.where(lin_h >= 0, lin_h + 0.5, torch.sigmoid(lin_h))
    else:
        cand = lin_h
    if name == "mingru":
        z = torch.sigmoid(parts[0])
        keep, take = 1 - z, z
    else:
        f, i = torch.sigmoid(parts[0]), torch.sigmoid(parts[1])
        keep, take = f / (f + i), i / (f + i)
    h, hs = h0.double(), []
    for t in range(x.shape[1]):
        h = keep[:, t] * h + take[:, t] * cand[:, t]
        hs.append(h)
    y = torch.stack(hs, 1) @ mixer.out.weight.detach().double().T
    return y, h


@pytest.mark.parametrize("weight_scale", [3.0, 40.0])  # 40: most gates saturate at 0 or 1 in fp32
@pytest.mark.parametrize("candidate", ["g", "linear"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_paper_equations_in_float64(name, candidate, weight_scale):
    mixer = make(name, expand_ratio=2, candidate=candidate, weight_scale=weight_scale)
    x = data(41)
    h0 = torch.randn(2, 2 * D, generator=torch.Generator().manual_seed(7))
    want_y, want_h = paper_equations(name, mixer, x, h0)
    y, (h,) = mixer(x, mixer.init_state(2)._replace(h=h0))
    assert rel_err(y, want_y) < 1e-5 and rel_err(h, want_h) < 1e-5


def test_gate_ops_match_linear_space_in_float64():
    gen = torch.Generator().manual_seed(3)
    a_f, a_i = (torch.randn(1000, generator=gen, dtype=torch.float64) * 20 for _ in range(2))
    assert rel_err(log_sigmoid(a_f), torch.nn.functional.logsigmoid(a_f)) < 1e-15
    log_keep, log_take = interpolation_gates(a_f)
    z = torch.sigmoid(a_f)
    assert rel_err(log_keep.exp(), 1 - z) < 1e-12 and rel_err(log_take.exp(), z) < 1e-12
    f, i = torch.sigmoid(a_f), torch.sigmoid(a_i)
    log_f, log_i = normalized_gates(a_f, a_i)
    assert rel_err(log_f.exp(), f / (f + i)) < 1e-12 and rel_err(log_i.exp(), i / (f + i)) < 1e-12
    # far past where sigmoid underflows in fp32, the fp32 gates stay finite and sum to 1
    big = torch.tensor([-200.0, -90.0, 0.0, 90.0, 200.0])
    log_f, log_i = normalized_gates(big, big.flip(0))
    assert torch.isfinite(log_f).all() and torch.allclose(log_f.exp() + log_i.exp(), torch.ones(5))
    v = torch.tensor([-3.0, -1e-3, 0.0, 1e-3, 3.0], dtype=torch.float64)
    assert torch.equal(candidate_g(v), torch.where(v >= 0, v + 0.5, torch.sigmoid(v)))


@pytest.mark.parametrize("name", NAMES)
def test_state_size_and_dtype(name):
    mixer = make(name, expand_ratio=3)
    assert mixer.state_size() == 3 * D  # expand_ratio * d_model
    (h,) = mixer.init_state(3, dtype=torch.bfloat16)
    assert h.shape == (3, 3 * D) and h.dtype == torch.float32
    y, (h,) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_stream_100k_tokens(name):
    assert_finite_stream(make(name), D, chunk=25_000)  # few large calls: per-call overhead dominates at D = 16


@pytest.mark.parametrize("name", NAMES)
def test_rejects_bad_options(name):
    cls = mixer_class(name)
    with pytest.raises(LaminaError, match=rf"{name}\.expand_ratio"):
        cls(D, MinRNNOptions(expand_ratio=0))
    with pytest.raises(LaminaError, match="candidate must be one of g, linear"):
        cls(D, MinRNNOptions(candidate="tanh"))
    with pytest.raises(LaminaError, match="candidate"):
        parse_layers([{name: {"candidate": "tanh"}}])
    with pytest.raises(LaminaError, match="allowed keys"):
        parse_layers([{name: {"expand": 2}}])
