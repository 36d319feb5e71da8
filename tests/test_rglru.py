"""RG-LRU recurrent block: every form against a float64 recurrent reference, and the paper's equations in float64."""

import pytest
import torch
import torch.nn.functional as F

from lamina.config import ModelConfig
from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.rglru import RGLRUOptions
from lamina.models import LM
from lamina.models.schedule import parse_layers
from lamina.ops import lru_normalizer
from mixer_harness import assert_all_fp32_close, assert_finite_stream, check_forms_agree, check_lm_carries_state

D = 16


def make(width=None, heads=2, conv_width=4, seed=0):
    """A block with random gate and conv parameters (not the near-zero init) so every path matters."""
    torch.manual_seed(seed)
    mixer = mixer_class("rglru")(D, RGLRUOptions(width=width, heads=heads, conv_width=conv_width))
    with torch.no_grad():
        for p in (mixer.gate_weight, mixer.gate_bias, mixer.conv_weight, mixer.conv_bias):
            p.normal_(std=0.7)
    return mixer


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


def random_state(mixer, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s.shape, generator=gen) for s in mixer.init_state(2))


@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("width,heads,conv_width", [(None, 2, 4), (12, 3, 2), (8, 1, 1)])
def test_forms_agree(T, width, heads, conv_width):
    check_forms_agree(make(width, heads, conv_width), data(T))


def paper_equations(mixer, x, state, dtype=torch.float64):
    """Section 2.4 in float64 with a_t in linear space, conv and recurrence as plain loops over time.

    (In fp32 with ``dtype``: the equations' own fp32 error sets the tolerance, see mixer_harness.)
    """
    p = {n: t.detach().to(dtype) for n, t in mixer.named_parameters()}
    h, conv_state = (s.to(dtype) for s in state)
    gelu_branch, u = (x.to(dtype) @ p["in_proj.weight"].T).chunk(2, dim=-1)
    K = p["conv_weight"].shape[1]
    padded = torch.cat([conv_state, u], dim=1)
    W_a = torch.block_diag(*p["gate_weight"][0])  # u @ W_a: each head's block maps its own channels
    W_x = torch.block_diag(*p["gate_weight"][1])
    a = torch.sigmoid(p["a_logit"])
    width = a.shape[0]
    hs = []
    for t in range(x.shape[1]):
        u_t = p["conv_bias"] + sum(p["conv_weight"][:, j] * padded[:, t + j] for j in range(K))
        r_t = torch.sigmoid(u_t @ W_a + p["gate_bias"][:width])
        i_t = torch.sigmoid(u_t @ W_x + p["gate_bias"][width:])
        a_t = a ** (8 * r_t)
        h = a_t * h + torch.sqrt(1 - a_t**2) * (i_t * u_t)
        hs.append(h)
    y = (F.gelu(gelu_branch) * torch.stack(hs, 1)) @ p["out.weight"].T
    return y, h, padded[:, padded.shape[1] - (K - 1) :]


@pytest.mark.parametrize("width,heads,conv_width", [(None, 2, 4), (12, 3, 2)])
def test_matches_paper_equations_in_float64(width, heads, conv_width):
    mixer = make(width, heads, conv_width)
    x = data(29)
    state = random_state(mixer)
    want = paper_equations(mixer, x, state)
    own = paper_equations(mixer, x, state, torch.float32)
    y, (h, conv) = mixer(x, state)
    assert_all_fp32_close([y, h, conv], want, own, ["outputs", "state", "conv inputs"], "rglru")


def test_lambda_init_gives_a_pow_c_uniform_in_paper_range():
    torch.manual_seed(0)
    mixer = mixer_class("rglru")(300, RGLRUOptions(heads=4))
    a_pow_c = torch.sigmoid(mixer.a_logit.double()) ** 8
    assert a_pow_c.min() >= 0.9 - 1e-9 and a_pow_c.max() <= 0.999 + 1e-9
    assert abs(a_pow_c.mean().item() - (0.9 + 0.999) / 2) < 0.01  # 400 draws: std of the mean 0.0014
    assert torch.equal(mixer.gate_bias, torch.zeros_like(mixer.gate_bias))


def test_width_and_state_size():
    mixer = mixer_class("rglru")(256, RGLRUOptions(heads=4))
    assert mixer.width == 344  # 4/3 * 256 = 341.3, rounded up to a multiple of 4 heads
    assert mixer.state_size() == 344 + (4 - 1) * 344  # width + (conv_width - 1) * width
    mixer = make(width=12, heads=3, conv_width=2)
    assert mixer.state_size() == 12 + 1 * 12
    h, conv = mixer.init_state(3, dtype=torch.bfloat16)
    assert h.shape == (3, 12) and conv.shape == (3, 1, 12)
    assert h.dtype == conv.dtype == torch.float32
    y, (h, conv) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and h.dtype == conv.dtype == torch.float32


def test_lru_normalizer_is_exact_and_keeps_gradients_finite():
    """fp32 ``sqrt(1 - a^2)`` to a few ulps wherever ``a`` is, even where ``1 - a^2`` is below fp32's epsilon."""
    g = -torch.logspace(-37, 2, 2000).double()  # exactly representable in fp32
    small = g[g > -1e-5]
    taylor = torch.sqrt(-2 * small - 2 * small**2 - 4 / 3 * small**3)  # 1 - e^(2g), error O(g^4)
    truth = torch.sqrt(-torch.expm1(2 * g))
    assert ((truth[g > -1e-5] - taylor).abs() / taylor).max() < 1e-14
    got = lru_normalizer(g.float()).double()
    assert ((got - truth).abs() / truth).max() < 1e-6
    for dtype in (torch.float32, torch.float64):
        g = torch.tensor([0.0, -1e-45, -1e-30, -1e-8, -1.0, -80.0], dtype=dtype, requires_grad=True)
        lru_normalizer(g).sum().backward()
        assert torch.isfinite(g.grad).all()


def test_saturated_gates_keep_everything_finite():
    """A recurrence gate at exactly 0 in fp32 (a_t = 1, 1 - a_t^2 = 0): no NaN or inf, forward or backward."""
    mixer = make()
    with torch.no_grad():
        mixer.gate_bias[: mixer.width].fill_(-200.0)  # the recurrence gate's half
    x = data(40).requires_grad_(True)
    y, (h, _) = mixer(x)
    (y.sum() + h.sum()).backward()
    grads = [x.grad] + [p.grad for p in mixer.parameters()]
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)


def test_stream_100k_tokens():
    assert_finite_stream(make(), D, chunk=25_000)  # few large calls: per-call overhead dominates at D = 16


def test_griffin_pattern_carries_state_across_segments():
    """RG-LRU (conv and recurrence state) with local attention (a window - 1 key/value ring) in one model."""
    torch.manual_seed(0)
    mixers = {"rglru": {"heads": 2}, "attn": {"heads": 2, "window": 8, "mem_len": 7}}
    model = LM(ModelConfig(d_model=32, layers=["rglru", "rglru", "attn"], mixers=mixers), 257).eval()
    check_lm_carries_state(model)


def test_rejects_bad_options():
    cls = mixer_class("rglru")
    for key, value in [("heads", 0), ("conv_width", 0), ("conv_width", 2.5)]:
        with pytest.raises(LaminaError, match=rf"^rglru\.{key} must be an integer >= 1"):
            cls(D, RGLRUOptions(**{key: value}))
    with pytest.raises(LaminaError, match=r"^rglru\.width must be an integer >= 1 or null"):
        cls(D, RGLRUOptions(width=0, heads=4))
    with pytest.raises(LaminaError, match=r"rglru: width must be a positive multiple of heads \(4\)"):
        cls(D, RGLRUOptions(width=10, heads=4))  # 10 does not split into 4 heads
    with pytest.raises(LaminaError, match="allowed keys.*width, heads, conv_width"):
        parse_layers([{"rglru": {"expand": 2}}])
    assert cls(D, RGLRUOptions(width=12, heads=4)).width == 12
