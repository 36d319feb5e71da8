"""Mamba2 mixer: forms against a float64 recurrent reference, the SSD recurrence written out, and its initialisation."""

import math

import pytest
import torch
import torch.nn.functional as F

from lamina.config import ModelConfig
from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.mamba2 import Mamba2Options
from lamina.models import LM
from mixer_harness import assert_all_fp32_close, assert_finite_stream, check_forms_agree

D = 16
SMALL = {"head_dim": 8, "d_state": 8}


def make(seed=0, **options):
    torch.manual_seed(seed)
    return mixer_class("mamba2")(D, Mamba2Options(**{**SMALL, **options}))


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("options", [{}, {"groups": 2, "conv_width": 3}])
def test_forms_agree(T, options):
    check_forms_agree(make(**options), data(T))


def ssd_equations(mixer, x, dtype=torch.float64):
    """Section 7 written directly, in float64 (or ``dtype``): outputs, the final state and the conv inputs kept."""
    p = {n: t.detach().to(dtype) for n, t in mixer.named_parameters()}
    T, H, P, N, G = x.shape[1], 4, 8, 8, 2
    z, xBC, dt = (x.to(dtype) @ p["in_proj.weight"].T).split([32, 32 + 2 * G * N, H], -1)
    padded = F.pad(xBC, (0, 0, 3, 0))
    conv = torch.stack([(padded[:, t : t + 4] * p["conv_weight"].T).sum(1) for t in range(T)], 1) + p["conv_bias"]
    xs, Bs, Cs = F.silu(conv).split([32, G * N, G * N], -1)
    dt = F.softplus(dt + p["dt_bias"])
    A = -torch.exp(p["A_log"])
    S, ys = torch.zeros(2, H, N, P, dtype=dtype), []
    for t in range(T):
        for h in range(H):
            grp = h // (H // G)
            b = Bs[:, t, grp * N : (grp + 1) * N]
            xh = xs[:, t, h * P : (h + 1) * P]
            decay = torch.exp(dt[:, t, h] * A[h])[:, None, None]
            S[:, h] = decay * S[:, h] + (dt[:, t, h, None] * b)[:, :, None] * xh[:, None]
        y = torch.einsum("bhn,bhnp->bhp", Cs[:, t].unflatten(-1, (G, N)).repeat_interleave(2, 1), S)
        ys.append(y.flatten(-2) + p["D"].repeat_interleave(P) * xs[:, t])
    gated = (torch.stack(ys, 1) * F.silu(z)).unflatten(-1, (G, -1))
    normed = (gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2) * p["norm_weight"]
    return normed @ p["out.weight"].T, S, xBC[:, -3:]


def test_matches_ssd_recurrence_in_float64():
    """Section 7 written directly: conv + silu, S = exp(dt A) S + dt B^T x, y = C S + D x, RMSNorm(y * silu(z)).

    Within the tolerance that the same equations in fp32 give (see mixer_harness).
    """
    mixer = make(groups=2)
    x = data(19)
    y, (last, conv_state) = mixer(x)
    want, own = ssd_equations(mixer, x), ssd_equations(mixer, x, torch.float32)
    assert_all_fp32_close([y, last, conv_state], want, own, ["outputs", "state", "conv inputs"], "mamba2")


def test_initialisation_survives_the_model_init():
    torch.manual_seed(0)
    model = LM(ModelConfig(d_model=32, layers=["mamba2"], mixers={"mamba2": SMALL}), 257)
    m = model.blocks[0].mixer
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all()
    A = m.A_log.exp()
    assert ((A >= 1) & (A <= 16)).all() and torch.equal(m.D, torch.ones_like(m.D))
    assert m.conv_weight.abs().max() <= 1 / math.sqrt(4) and m.conv_weight.std() > 0.1
    assert abs(m.in_proj.weight.std().item() - 0.02) < 2e-3


def test_state_size_and_dtype():
    mixer = make(groups=2)
    inner, conv_dim = 2 * D, 2 * D + 2 * 2 * 8
    # d_model * expand * d_state + (conv_width - 1) * (d_model * expand + 2 * groups * d_state)
    assert mixer.state_size() == inner * 8 + 3 * conv_dim == sum(t[0].numel() for t in mixer.init_state(1))
    ssm, conv = mixer.init_state(3, dtype=torch.bfloat16)
    assert ssm.shape == (3, 4, 8, 8) and conv.shape == (3, 3, conv_dim)
    assert ssm.dtype == conv.dtype == torch.float32
    y, (ssm, conv) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and ssm.dtype == conv.dtype == torch.float32


def test_stream_100k_tokens():
    mixer = make()
    with torch.no_grad():
        mixer.dt_bias[:2] = 50.0  # dt ~ 50: a_t = exp(-50 A), the state is wiped every token
        mixer.dt_bias[2:] = -50.0  # dt ~ 2e-22: a_t = 1, nothing decays
    assert_finite_stream(mixer, D)


@pytest.mark.parametrize(
    "options,match",
    [({"head_dim": 5}, "head_dim"), ({"groups": 3}, "groups"), ({"dt_min": 0.5}, "dt_min"),
     ({"conv_width": 0}, r"mamba2\.conv_width")],
)
def test_rejects_bad_options(options, match):
    with pytest.raises(LaminaError, match=match):
        make(**options)
