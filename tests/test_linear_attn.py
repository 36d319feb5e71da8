"""Linear attention mixer: forms against a float64 recurrent reference, and the paper's causal parallel form."""

import pytest
import torch
import torch.nn.functional as F

from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.linear_attn import LinearAttnOptions
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err

D = 16


def make(seed=0, **options):
    torch.manual_seed(seed)
    return mixer_class("linear_attn")(D, LinearAttnOptions(**options))


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 13, 70])
@pytest.mark.parametrize("options", [{}, {"feature_map": "relu"}, {"feature_map": "identity", "normalize": False}])
def test_forms_agree(T, options):
    check_forms_agree(make(**options), data(T))


@pytest.mark.parametrize("normalize", [True, False])
def test_matches_causal_parallel_form_in_float64(normalize):
    """Section 3.2-3.3: V'_i = sum_{j<=i} phi(q_i).phi(k_j) v_j / sum_{j<=i} phi(q_i).phi(k_j), phi = elu + 1."""
    mixer = make(normalize=normalize)
    x = data(31)
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    q, k, v = ((x.double() @ p["qkv.weight"].T).chunk(3, -1))
    q, k, v = (t.unflatten(-1, (4, 4)) for t in (q, k, v))
    q, k = F.elu(q) + 1, F.elu(k) + 1
    T = x.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * torch.ones(T, T, dtype=torch.bool).tril()
    o = torch.einsum("bhij,bjhd->bihd", scores, v)
    if normalize:
        o = o / (scores.sum(-1).transpose(1, 2)[..., None] + 1e-6)
    else:
        o = o / 2  # 1 / sqrt(head width)
    want = o.flatten(-2) @ p["out.weight"].T
    y, (last,) = mixer(x)
    assert rel_err(y, want) < 1e-5
    if normalize:  # the last value column is the running sum of phi(k)
        assert rel_err(last[..., -1], k.sum(1)) < 1e-5


def test_state_size_and_dtype():
    assert make().state_size() == D * (D // 4 + 1)  # d_model * (d_model / heads + 1 normaliser column)
    mixer = make(heads=2, normalize=False)
    assert mixer.state_size() == D * D // 2 == sum(t[0].numel() for t in mixer.init_state(1))
    (S,) = mixer.init_state(3, dtype=torch.bfloat16)
    assert S.shape == (3, 2, 8, 8) and S.dtype == torch.float32
    y, (S,) = mixer.bfloat16()(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32


@pytest.mark.parametrize("options", [{}, {"feature_map": "identity", "normalize": False}])
def test_stream_100k_tokens(options):
    assert_finite_stream(make(**options), D)


@pytest.mark.parametrize(
    "options,match",
    [({"feature_map": "softmax"}, "feature_map"), ({"feature_map": "identity"}, "normalize"),
     ({"heads": 3}, "heads"), ({"eps": 0.0}, r"linear_attn\.eps")],
)
def test_rejects_bad_options(options, match):
    with pytest.raises(LaminaError, match=match):
        make(**options)
