"""GLA mixer: every form against a float64 recurrent reference, and against the paper's equations."""

import pytest
import torch
import torch.nn.functional as F

from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.gla import GLAOptions
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err

D = 16


def make(seed=0, **options):
    torch.manual_seed(seed)
    return mixer_class("gla")(D, GLAOptions(**options))


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
def test_forms_agree(T):
    check_forms_agree(make(), data(T))


def test_forms_agree_other_widths():
    check_forms_agree(make(heads=2, expand_k=1.0, expand_v=0.5, gate_rank=4), data(37))


def test_matches_equations_in_float64():
    """Section 4.4 written directly: alpha = sigmoid(x W1 W2 + b)^(1/16), S = diag(alpha) S + k^T v."""
    mixer = make()
    with torch.no_grad():
        mixer.gate_up.bias.uniform_(-3, 3)
    x = data(29)
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    xd = x.double()
    heads = lambda t: t.unflatten(-1, (4, -1))  # noqa: E731
    q, k, v = (heads(xd @ p[f"{n}_proj.weight"].T) for n in "qkv")
    alpha = heads(torch.sigmoid(xd @ p["gate_down.weight"].T @ p["gate_up.weight"].T + p["gate_up.bias"]) ** (1 / 16))
    S, outs = torch.zeros(2, 4, 2, 4, dtype=torch.float64), []
    for t in range(x.shape[1]):
        S = alpha[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / 2**0.5)
    o = torch.stack(outs, 1)
    normed = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * p["norm.weight"]
    want = (normed.flatten(-2) * F.silu(xd @ p["r_proj.weight"].T)) @ p["out.weight"].T
    y, (last,) = mixer(x)
    assert rel_err(y, want) < 1e-5 and rel_err(last, S) < 1e-5


def test_state_size_and_dtype():
    mixer = make(heads=2, expand_k=0.5, expand_v=2.0)
    # d_model^2 * expand_k * expand_v / heads
    assert mixer.state_size() == D * D * 0.5 * 2.0 / 2 == sum(t[0].numel() for t in mixer.init_state(1))
    (S,) = mixer.init_state(3, dtype=torch.bfloat16)
    assert S.shape == (3, 2, 4, 16) and S.dtype == torch.float32
    y, (S,) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32


def test_stream_100k_tokens():
    mixer = make()
    with torch.no_grad():
        mixer.gate_up.bias[::2] = 40.0  # alpha = 1 on some channels (a pure running sum)
        mixer.gate_up.bias[1::2] = -40.0  # and log alpha = -2.5 per token on the others
    assert_finite_stream(mixer, D)


@pytest.mark.parametrize(
    "options,match",
    [({"expand_k": 0.3}, "expand_k"), ({"heads": 3}, "heads"), ({"expand_v": -1.0}, r"gla\.expand_v"),
     ({"heads": 0}, r"gla\.heads"), ({"gate_rank": 0}, r"gla\.gate_rank"),
     ({"gate_temperature": 0.0}, r"gla\.gate_temperature")],
)
def test_rejects_bad_options(options, match):
    with pytest.raises(LaminaError, match=match):
        make(**options)
