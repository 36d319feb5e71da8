"""The Forgetting Transformer: every form against a float64 reference written from the paper's equations."""

import math

import pytest
import torch

from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.fox import FoxOptions
from lamina.ops.decay_bias import forget_bias
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err, run_in_chunks

D = 16


def make(**options):
    torch.manual_seed(0)
    mixer = mixer_class("fox")(D, FoxOptions(heads=2, **options))
    with torch.no_grad():  # spread the gates so that some heads forget fast and some slowly
        mixer.fgate.bias.copy_(torch.tensor([-1.0, 3.0]))
    return mixer


@torch.no_grad()
def paper_fox(mixer, x, window=None):
    """Lin et al. 2025, section 3, with explicit loops in float64:
    ``o_i = sum_j exp(q_i.k_j / sqrt(d) + sum_{l=j+1..i} log f_l) v_j / sum_j exp(...)``
    over ``j <= i`` (and ``i - j < window``), ``f_t = sigmoid(w_f . x_t + b_f)``."""
    x = x.double()
    B, T, _ = x.shape
    H, Dh = mixer.heads, mixer.head_dim
    q, k, v = (x @ mixer.qkv.weight.double().T).view(B, T, 3, H, Dh).unbind(2)
    f = torch.sigmoid(x @ mixer.fgate.weight.double().T + mixer.fgate.bias.double())  # [B, T, H]
    out = torch.zeros(B, T, H, Dh, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                keys = [j for j in range(i + 1) if window is None or i - j < window]
                scores = []
                for j in keys:
                    decay = sum(math.log(f[b, l, h]) for l in range(j + 1, i + 1))
                    scores.append(float(q[b, i, h] @ k[b, j, h]) / math.sqrt(Dh) + decay)
                weights = torch.tensor(scores, dtype=torch.float64).softmax(0)
                out[b, i, h] = sum(w * v[b, j, h] for w, j in zip(weights, keys))
    return out.reshape(B, T, H * Dh) @ mixer.out.weight.double().T


@pytest.mark.parametrize("T,window", [(1, None), (17, None), (19, 6)])
def test_matches_the_paper(T, window):
    mixer = make(window=window)
    x = torch.randn(2, T, D)
    y, _ = mixer(x)
    assert rel_err(y, paper_fox(mixer, x, window)) < 1e-5


@pytest.mark.parametrize("T,window", [(23, None), (25, 7)])
def test_forms_agree_with_memory(T, window):
    mixer = make(mem_len=T if window is None else window - 1, window=window)
    x = torch.randn(2, T, D)
    check_forms_agree(mixer, x, chunk=4)
    y, _ = run_in_chunks(mixer, x, [5, 1, 9, T - 15])
    assert rel_err(y, paper_fox(mixer, x, window)) < 1e-5


def test_decay_bias_is_exact_on_long_segments():
    """Spans are summed on their own: no cancellation between large cumulative sums in fp32."""
    log_f = -torch.rand(1, 3000, 1) * 4  # |F| reaches ~6000 over the segment
    got = forget_bias(log_f, torch.zeros(1, 0, 1))[0, 0]
    want = forget_bias(log_f.double(), torch.zeros(1, 0, 1, dtype=torch.float64))[0, 0]
    near = torch.ones(3000, 3000, dtype=torch.bool).tril() & ~torch.ones(3000, 3000, dtype=torch.bool).tril(-8)
    assert (got[near].double() - want[near]).abs().max() < 1e-5


def test_state_size_and_fixed_shape():
    mixer = make(mem_len=12)
    state = mixer.init_state(3)
    _, new = mixer(torch.randn(3, 5, D), state)
    assert [s.shape for s in new] == [s.shape for s in state]
    assert all(s.dtype in (torch.float32, torch.bool) for s in new)
    assert mixer.state_size() == 12 * (2 * D + 2)  # keys, values and one log decay per head per token


def test_bad_options_name_the_option():
    with pytest.raises(LaminaError, match="heads"):
        mixer_class("fox")(D, FoxOptions(heads=3))
    with pytest.raises(LaminaError, match=r"fox\.window"):
        mixer_class("fox")(D, FoxOptions(window=0))


def test_long_stream_finite():
    assert_finite_stream(make(mem_len=32, window=64), D, total=100_000, chunk=1024)
