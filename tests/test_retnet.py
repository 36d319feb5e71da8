"""RetNet mixer: every form against a float64 recurrent reference, and against the paper's parallel form."""

import pytest
import torch
import torch.nn.functional as F

from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.retnet import RetNetOptions
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err, run_in_chunks

D = 16


def make(seed=0, **options):
    torch.manual_seed(seed)
    mixer = mixer_class("retnet")(D, RetNetOptions(**options))
    with torch.no_grad():  # make the norm's affine part matter
        mixer.norm.weight.uniform_(0.5, 1.5)
        mixer.norm.bias.uniform_(-0.5, 0.5)
    return mixer


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
def test_forms_agree(T):
    check_forms_agree(make(), data(T))


def test_forms_agree_other_widths():
    check_forms_agree(make(heads=2, expand_k=0.5, expand_v=1.0), data(37))


def rotate(x, positions, base=10000.0):
    """RoFormer's rotation of channel pairs (i, i + d/2) by position * base^(-2i/d), in float64."""
    half = x.shape[-1] // 2
    angles = positions.double()[:, None] * base ** (-torch.arange(half, dtype=torch.float64) / half)
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def test_matches_parallel_retention_in_float64():
    """Sections 2.2-2.3: (Q K^T * D) V with D_nm = gamma^(n-m), GroupNorm, swish gate; positions absolute."""
    mixer = make()
    x = data(41)
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    xd = x.double()
    T, H = x.shape[1], 4
    q, k, v = (xd @ p["qkv.weight"].T).split([16, 16, 32], -1)
    q, k, v = (t.unflatten(-1, (H, -1)) for t in (q, k, v))
    pos = torch.arange(T)
    q, k = rotate(q, pos), rotate(k, pos)
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(H, dtype=torch.float64))
    dist = (pos[:, None] - pos[None, :]).double()
    decay = torch.where(dist >= 0, gamma[:, None, None] ** dist.clamp_min(0), 0.0)  # [H, n, m]
    scores = torch.einsum("bnhk,bmhk->bhnm", q, k) / 2 * decay
    o = torch.einsum("bhnm,bmhv->bnhv", scores, v)
    normed = (o - o.mean(-1, keepdim=True)) * torch.rsqrt(o.var(-1, unbiased=False, keepdim=True) + 1e-5)
    normed = normed.flatten(-2) * p["norm.weight"] + p["norm.bias"]
    want = (F.silu(xd @ p["g_proj.weight"].T) * normed) @ p["out.weight"].T
    y, _ = mixer(x)
    assert rel_err(y, want) < 1e-5
    y_chunked, _ = run_in_chunks(mixer, x, [1, 17, 23])  # positions continue across calls
    assert rel_err(y_chunked, want) < 1e-5


def test_decays_and_state_size():
    mixer = make(heads=2, expand_k=1.0, expand_v=2.0)
    gammas = mixer.log_decay(torch.float64).exp()
    assert torch.allclose(gammas, torch.tensor([1 - 1 / 32, 1 - 1 / 64], dtype=torch.float64))
    # d_model^2 * expand_k * expand_v / heads
    assert mixer.state_size() == D * D * 2 // 2 == sum(t[0].numel() for t in mixer.init_state(1))
    (S,) = mixer.init_state(3, dtype=torch.bfloat16)
    assert S.shape == (3, 2, 8, 16) and S.dtype == torch.float32
    y, (S,) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32


def test_stream_100k_tokens():
    assert_finite_stream(make(heads=8, expand_k=1.0, expand_v=1.0), D)  # gamma up to 1 - 2^-12


@pytest.mark.parametrize(
    "options,match", [({"heads": 3}, "heads"), ({"expand_k": 0.25}, "even"), ({"heads": 0}, r"retnet\.heads")]
)
def test_rejects_bad_options(options, match):
    with pytest.raises(LaminaError, match=match):
        make(**options)
