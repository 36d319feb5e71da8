"""DeltaNet and Gated DeltaNet: every form against a float64 recurrent reference, and the papers' equations."""

import math

import pytest
import torch
import torch.nn.functional as F

from lamina.config import ModelConfig
from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.models import LM
from lamina.models.schedule import parse_layers
from mixer_harness import assert_all_fp32_close, assert_finite_stream, check_forms_agree, check_lm_carries_state

D = 16
NAMES = ["deltanet", "gated_deltanet"]


def make(name, seed=0, **options):
    """A mixer with 2 heads (K = 8) and a random (not unit) output-norm weight."""
    torch.manual_seed(seed)
    cls = mixer_class(name)
    mixer = cls(D, cls.Options(**{"heads": 2, **options}))
    with torch.no_grad():
        mixer.norm.weight.uniform_(0.5, 1.5)
    return mixer


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("name", NAMES)
def test_forms_agree(name, T):
    check_forms_agree(make(name), data(T))


@pytest.mark.parametrize("options", [
    {"use_conv": False},
    {"head_dim": 4, "expand_v": 1.5, "conv_width": 2},
    {"use_gate": True},
    {"use_gate": False, "conv_width": 1},
])
@pytest.mark.parametrize("name", NAMES)
def test_forms_agree_with_options(name, options):
    check_forms_agree(make(name, **options), data(29))


def paper_forward(mixer, x, dtype=torch.float64):
    """The layer written from the papers' equations in float64: ``(y, S_T, conv inputs kept)``.

    (In fp32 with ``dtype``: the equations' own fp32 error sets the tolerance, see mixer_harness.)
    """
    p = {n: t.detach().to(dtype) for n, t in mixer.named_parameters()}
    H, K, V = mixer.heads, mixer.key_dim, mixer.value_dim
    x = x.to(dtype)
    B, T, _ = x.shape
    z = x @ p["qkv.weight"].T  # [B, T, H (2K + V)]
    W = p["conv_weight"]
    width = W.shape[1]
    zp = torch.cat([z.new_zeros(B, width - 1, z.shape[-1]), z], 1)
    conv = torch.stack([sum(W[:, j] * zp[:, t + j] for j in range(width)) for t in range(T)], 1)
    q, k, v = F.silu(conv).split([H * K, H * K, H * V], -1)
    q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    beta = torch.sigmoid(x @ p["beta_proj.weight"].T)
    if "A_log" in p:  # Gated DeltaNet: alpha = exp(-A softplus(x W_a + dt_bias)), A = exp(A_log)
        alpha = torch.exp(-p["A_log"].exp() * F.softplus(x @ p["a_proj.weight"].T + p["dt_bias"]))
    else:
        alpha = torch.ones_like(beta)
    S = x.new_zeros(B, H, K, V)
    eye = torch.eye(K, dtype=dtype)
    outputs = []
    for t in range(T):
        kt, bt, at = k[:, t], beta[:, t, :, None, None], alpha[:, t, :, None, None]
        S = at * (eye - bt * kt[..., :, None] * kt[..., None, :]) @ S + bt * kt[..., :, None] * v[:, t, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S) / math.sqrt(K))
    o = torch.stack(outputs, 1)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * p["norm.weight"]
    if "g_proj.weight" in p:
        o = o * F.silu(x @ p["g_proj.weight"].T).view(B, T, H, V)
    return o.reshape(B, T, H * V) @ p["out.weight"].T, S, zp[:, T:]


@pytest.mark.parametrize("use_gate", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_matches_equations_in_float64(name, use_gate):
    mixer = make(name, use_gate=use_gate)
    x = data(90)  # more than one chunk of 64
    want = paper_forward(mixer, x)
    own = paper_forward(mixer, x, torch.float32)
    y, (S, conv) = mixer(x)
    assert_all_fp32_close([y, S, conv], want, own, ["outputs", "state", "conv inputs"], name)


@pytest.mark.parametrize("name", NAMES)
def test_state_size_formula(name):
    # H K V for the matrix, (conv_width - 1) H (2K + V) for the convolution's last inputs
    for options, K, V in [({}, 8, 8 * (2 if name == "gated_deltanet" else 1)),
                          ({"head_dim": 4, "expand_v": 3, "conv_width": 3}, 4, 12)]:
        mixer = make(name, **options)
        conv = options.get("conv_width", 4) - 1
        assert mixer.state_size() == 2 * K * V + conv * 2 * (2 * K + V)
        assert mixer.state_size() == sum(t[0].numel() for t in mixer.init_state(1))
    flat = make(name, use_conv=False)
    assert flat.init_state(1).conv is None and flat.state_size() == 2 * 8 * flat.value_dim


@pytest.mark.parametrize("name", NAMES)
def test_state_dtype(name):
    mixer = make(name)
    S, conv = mixer.init_state(3, dtype=torch.bfloat16)
    assert S.dtype == conv.dtype == torch.float32
    mixer = mixer.bfloat16()
    y, state = mixer(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and state.S.dtype == state.conv.dtype == torch.float32
    y, state = mixer(data(1).bfloat16(), state)
    assert y.dtype == torch.bfloat16 and state.S.dtype == state.conv.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_stream_100k_tokens(name):
    assert_finite_stream(make(name), D)


def test_lm_carries_state_and_keeps_the_decay_initialisation():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=["deltanet", "gated_deltanet"],
                      mixers={"deltanet": {"heads": 2}, "gated_deltanet": {"heads": 2}})
    model = LM(cfg, 257).eval()
    gated = model.blocks[1].mixer
    A = gated.A_log.exp()
    dt = F.softplus(gated.dt_bias)
    assert ((A >= 1) & (A <= 16)).all() and ((dt >= 1e-3 - 1e-9) & (dt <= 0.1 + 1e-9)).all()
    check_lm_carries_state(model)


@pytest.mark.parametrize("name", NAMES)
def test_rejects_bad_options(name):
    cls = mixer_class(name)
    for options, key in [({"heads": 0}, rf"{name}\.heads"), ({"heads": 3}, f"{name}: .*heads"),
                         ({"head_dim": 0}, rf"{name}\.head_dim"), ({"expand_v": 0}, rf"{name}\.expand_v"),
                         ({"expand_v": 0.3}, f"{name}: .*expand_v"), ({"conv_width": 0}, rf"{name}\.conv_width")]:
        with pytest.raises(LaminaError, match=key):
            cls(D, cls.Options(**options))
    with pytest.raises(LaminaError, match="allowed keys"):
        parse_layers([{name: {"heads": 2, "chunk": 64}}])
