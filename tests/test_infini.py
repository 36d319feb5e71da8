"""Infini-attention against the paper's equations (Munkhdalai et al. 2024, section 2), written out in float64."""

import math

import pytest
import torch

from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.state import flatten_state, unflatten_state
from lamina.mixers.infini import InfiniOptions
from mixer_harness import (
    assert_all_fp32_close, assert_finite_stream, assert_fp32_close, check_decode_gradients_match, check_forms_agree,
    check_memory_changes_at_segment_ends, rotate_vector, run_in_chunks,
)

D = 32


def make(segment=5, **options):
    torch.manual_seed(0)
    mixer = mixer_class("infini")(D, InfiniOptions(heads=4, segment=segment, **options))
    with torch.no_grad():  # beta starts at zero: make the gate differ per head
        mixer.beta.normal_()
    return mixer


def sigma(x):
    return torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1



def paper_reference(mixer, x, dtype=torch.float64):
    """Equations (1)-(10) of section 2 over the stream's segments, one head and token at a time, in float64
    (or ``dtype``: in fp32 its own error sets the tolerance, see mixer_harness).

    Returns the outputs, the final memory ``(M, z)`` and the raw keys and values of the unfinished last segment.
    """
    H, Dh, N = mixer.heads, mixer.head_dim, mixer.options.segment
    w_qkv, w_o = mixer.qkv.weight.to(dtype), mixer.out.weight.to(dtype)
    gate = torch.sigmoid(mixer.beta.to(dtype))
    B = x.shape[0]
    M = torch.zeros(B, H, Dh, Dh, dtype=dtype)
    z = torch.zeros(B, H, Dh, dtype=dtype)
    outputs = []
    for segment in x.to(dtype).split(N, dim=1):
        T = segment.shape[1]
        q, k, v = (segment @ w_qkv.T).view(B, T, 3, H, Dh).unbind(2)
        A = torch.zeros(B, T, H, Dh, dtype=dtype)
        M_new, z_new = M.clone(), z.clone()
        for b in range(B):
            for h in range(H):
                for i in range(T):
                    # local dot-product attention, causal inside the segment
                    qi = rotate_vector(q[b, i, h], i) if mixer.options.rope else q[b, i, h]
                    scores = torch.stack([
                        qi @ (rotate_vector(k[b, j, h], j) if mixer.options.rope else k[b, j, h]) / math.sqrt(Dh)
                        for j in range(i + 1)
                    ])
                    a_dot = scores.softmax(0) @ v[b, : i + 1, h]
                    # memory retrieval with the memory of the previous segments
                    sq = sigma(q[b, i, h])
                    den = sq @ z[b, h]
                    a_mem = (sq @ M[b, h]) / den if den > 0 else torch.zeros(Dh, dtype=dtype)
                    A[b, i, h] = gate[h] * a_mem + (1 - gate[h]) * a_dot
                # memory update with the whole segment, once it is complete
                for t in range(T if T == N else 0):
                    sk = sigma(k[b, t, h])
                    target = v[b, t, h]
                    if mixer.options.update == "delta" and sk @ z[b, h] > 0:
                        target = target - (sk @ M[b, h]) / (sk @ z[b, h])
                    M_new[b, h] += torch.outer(sk, target)
                    z_new[b, h] += sk
        M, z = M_new, z_new
        outputs.append(A.reshape(B, T, H * Dh) @ w_o.T)
    unfinished = (k, v) if T < N else (k[:, :0], v[:, :0])
    return torch.cat(outputs, dim=1), (M, z), unfinished


def assert_state_matches(state, memory, unfinished, own_memory, own_unfinished, what=""):
    """The state against the reference's float64 ``memory`` and ``unfinished``, within the tolerance that the
    reference's fp32 ``own_memory`` and ``own_unfinished`` give (see mixer_harness)."""
    M, z, k_seg, v_seg, filled = state
    n = unfinished[0].shape[1]
    assert_all_fp32_close([M, z, k_seg[:, :n], v_seg[:, :n]], [*memory, *unfinished], [*own_memory, *own_unfinished],
                          ["M", "z", "unfinished keys", "unfinished values"], what)
    assert filled.sum(1).tolist() == [n] * filled.shape[0] and filled[:, :n].all()
    assert not k_seg[:, n:].any() and not v_seg[:, n:].any(), "empty slots hold zeros"
    assert M.dtype == torch.float32 and k_seg.dtype == torch.float32


@pytest.mark.parametrize(
    "options", [{}, {"update": "delta"}, {"rope": False}, {"update": "delta", "rope": False}, {"segment": 1}]
)
def test_matches_paper_under_any_split(options):
    """Segments are counted from the stream's start: every split into calls is the paper's run over the stream."""
    mixer = make(**options)
    x = torch.randn(2, 23, D)
    with torch.no_grad():
        want, memory, unfinished = paper_reference(mixer, x)
        own, own_memory, own_unfinished = paper_reference(mixer, x, torch.float32)  # the fp32 tolerance
    for sizes in ([23], [7, 1, 12, 3], [3, 4, 2, 14], [1] * 23):
        with torch.no_grad():
            y, state = run_in_chunks(mixer, x, sizes)
        assert_fp32_close(y, want, own, f"calls {sizes}: outputs")
        assert_state_matches(state, memory, unfinished, own_memory, own_unfinished, f"calls {sizes}")


def test_gradients_match_paper():
    """Token by token (the decode path) back-propagates like the paper's equations over the stream."""
    check_decode_gradients_match(make(update="delta"), paper_reference)


def test_memory_is_written_at_stream_segment_ends():
    """Decoding one token at a time, the memory changes exactly when the stream completes a segment."""
    check_memory_changes_at_segment_ends(make(), memory=1, filled=4, segment=5)


def test_first_segment_is_local_attention_only():
    """An empty memory reads as zeros: the first segment is (1 - sigmoid(beta)) times local attention."""
    mixer = make()
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        mixer.beta.fill_(-30.0)
        local, _ = mixer(x)
        mixer.beta.fill_(30.0)
        memory_only, _ = mixer(x)
    assert local.abs().sum() > 0 and memory_only[:, :5].abs().max() < 1e-6
    assert memory_only[:, 5:].abs().min() > 0, "the second segment reads the first from the memory"


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_forms_and_gradients_against_float64(update):
    check_forms_agree(make(update=update), torch.randn(2, 23, D), chunk=4)


def test_state_round_trip():
    """A state saved flat and loaded back continues the stream exactly; a detached one too."""
    mixer = make(update="delta")
    x = torch.randn(2, 30, D)
    _, state = mixer(x[:, :18])  # ends inside a segment
    flat = {k: v.clone() for k, v in flatten_state(state).items()}
    loaded = unflatten_state(mixer.init_state(2), flat)
    want, s1 = mixer(x[:, 18:], state)
    got, s2 = mixer(x[:, 18:], loaded)
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(s1, s2))
    floats = sum(t[0].numel() for t in state if t.is_floating_point())
    assert mixer.state_size() == D * (D // 4 + 1) + 2 * 4 * D == floats


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_streams_100k_tokens(update):
    assert_finite_stream(make(segment=64, update=update), D, total=100_000, chunk=2048)


@pytest.mark.parametrize(
    "options,match",
    [({"update": "hebbian"}, "infini: update must be one of"), ({"heads": 5}, r"infini: d_model \d+ must split"),
     ({"heads": 0}, r"infini\.heads"), ({"segment": 0}, r"infini\.segment")],
)
def test_bad_options(options, match):
    with pytest.raises(LaminaError, match=match):
        mixer_class("infini")(D, InfiniOptions(**options))
