"""Block-Recurrent Transformer against the paper's equations (Hutchins et al. 2022, section 3), in float64."""

import math

import pytest
import torch

from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.state import flatten_state, unflatten_state
from lamina.mixers.block_recurrent import BlockRecurrentOptions
from mixer_harness import (
    assert_all_fp32_close, assert_finite_stream, check_decode_gradients_match, check_forms_agree,
    check_memory_changes_at_segment_ends, rotate_vector, run_in_chunks,
)

D = 32


def make(segment=5, **options):
    torch.manual_seed(0)
    mixer = mixer_class("block_recurrent")(D, BlockRecurrentOptions(heads=4, n_state=3, segment=segment, **options))
    with torch.no_grad():  # make the gate biases count in the checks
        mixer.gate.bias.add_(0.3 * torch.randn(3 * D))
    return mixer



def attend(q, keys, values):
    """One query against a list of keys: softmax(q . k / sqrt(d)) weighted values."""
    scores = torch.stack([q @ k for k in keys]) / math.sqrt(q.shape[0])
    return scores.softmax(0) @ torch.stack(values)


def paper_reference(mixer, x, dtype=torch.float64):
    """Section 3 over the stream's blocks, one sequence, head and vector at a time, in float64
    (or ``dtype``: in fp32 its own error sets the tolerance, see mixer_harness).

    Returns the outputs, the final state vectors and the token keys and values of the unfinished last block.
    """
    H, Dh, N, W = mixer.heads, mixer.head_dim, mixer.options.n_state, mixer.options.segment
    P = {n: p.to(dtype) for n, p in mixer.named_parameters()}
    B = x.shape[0]
    c = torch.zeros(B, N, D, dtype=dtype)
    outputs = []
    for block in x.to(dtype).split(W, dim=1):
        T = block.shape[1]
        y = torch.zeros(B, T, D, dtype=dtype)
        new_c = c.clone()
        for b in range(B):
            s = c[b] + P["state_ids"]  # state vectors with their IDs
            tq, tkv = block[b] @ P["token_q.weight"].T, block[b] @ P["token_kv.weight"].T
            sq, skv = s @ P["state_q.weight"].T, s @ P["state_kv.weight"].T
            tok_self, tok_cross = torch.zeros(T, D, dtype=dtype), torch.zeros(T, D, dtype=dtype)
            st_self, st_cross = torch.zeros(N, D, dtype=dtype), torch.zeros(N, D, dtype=dtype)
            for h in range(H):
                head = slice(h * Dh, (h + 1) * Dh)
                q1, q2 = tq[:, head], tq[:, D + h * Dh : D + (h + 1) * Dh]
                kx, vx = tkv[:, head], tkv[:, D + h * Dh : D + (h + 1) * Dh]
                qs1, qs2 = sq[:, head], sq[:, D + h * Dh : D + (h + 1) * Dh]
                ks, vs = skv[:, head], skv[:, D + h * Dh : D + (h + 1) * Dh]
                pos = mixer.options.rope
                for i in range(T):
                    qi = rotate_vector(q1[i], i) if pos else q1[i]
                    keys = [rotate_vector(kx[j], j) if pos else kx[j] for j in range(i + 1)]
                    tok_self[i, head] = attend(qi, keys, list(vx[: i + 1]))
                    tok_cross[i, head] = attend(q2[i], list(ks), list(vs))
                for n in range(N):
                    st_self[n, head] = attend(qs1[n], list(ks), list(vs))
                    st_cross[n, head] = attend(qs2[n], list(kx), list(vx))
            y[b] = torch.cat([tok_self, tok_cross], -1) @ P["out.weight"].T
            if T == W:  # a complete block updates the state
                hidden = torch.cat([st_self, st_cross], -1) @ P["state_out.weight"].T
                g = hidden @ P["gate.weight"].T + P["gate.bias"]
                z, i_gate, f_gate = g[:, :D], g[:, D : 2 * D], g[:, 2 * D :]
                new_c[b] = c[b] * torch.sigmoid(f_gate) + torch.tanh(z) * torch.sigmoid(i_gate)
        c = new_c
        outputs.append(y)
    unfinished = block @ P["token_kv.weight"].T if T < W else block[:, :0] @ P["token_kv.weight"].T
    return torch.cat(outputs, dim=1), c, unfinished


@pytest.mark.parametrize("options", [{}, {"rope": False}, {"segment": 1}])
def test_matches_paper_under_any_split(options):
    """Blocks are counted from the stream's start: every split into calls is the paper's run over the stream."""
    mixer = make(**options)
    x = torch.randn(2, 22, D)
    with torch.no_grad():
        want, c0, kv0 = paper_reference(mixer, x)
        own, c_own, kv_own = paper_reference(mixer, x, torch.float32)  # the fp32 tolerance: see mixer_harness
    for sizes in ([22], [6, 1, 9, 6], [3, 4, 2, 13], [1] * 22):
        with torch.no_grad():
            y, (c, kv, filled) = run_in_chunks(mixer, x, sizes)
        n = kv0.shape[1]
        assert_all_fp32_close([y, c, kv[:, :n]], [want, c0, kv0], [own, c_own, kv_own],
                              ["outputs", "state vectors", "unfinished block's keys and values"], f"calls {sizes}")
        assert c.dtype == torch.float32
        assert filled.sum(1).tolist() == [n, n] and filled[:, :n].all()
        assert not kv[:, n:].any()


def test_gradients_match_paper():
    """Token by token (the decode path) back-propagates like the paper's equations over the stream."""
    check_decode_gradients_match(make(), paper_reference)


def test_state_changes_at_stream_block_ends():
    """Decoding one token at a time, the state vectors change exactly when the stream completes a block."""
    check_memory_changes_at_segment_ends(make(), memory=0, filled=2, segment=5)


def test_gate_starts_remembering():
    """Forget bias +1, input bias -1: at initialisation the gate keeps most of the old state."""
    mixer = mixer_class("block_recurrent")(D, BlockRecurrentOptions())
    b = mixer.gate.bias.detach()
    assert torch.all(b[2 * D :] == 1) and torch.all(b[D : 2 * D] == -1) and torch.all(b[:D] == 0)


def test_forms_and_gradients_against_float64():
    check_forms_agree(make(), torch.randn(2, 21, D), chunk=4)


def test_state_round_trip():
    mixer = make()
    x = torch.randn(2, 30, D)
    _, state = mixer(x[:, :18])  # ends inside a block
    loaded = unflatten_state(mixer.init_state(2), {k: v.clone() for k, v in flatten_state(state).items()})
    want, s1 = mixer(x[:, 18:], state)
    got, s2 = mixer(x[:, 18:], loaded)
    assert torch.equal(got, want) and all(torch.equal(a, b) for a, b in zip(s1, s2))
    floats = sum(t[0].numel() for t in state if t.is_floating_point())
    assert mixer.state_size() == 3 * D + 2 * 4 * D == floats


def test_streams_100k_tokens():
    assert_finite_stream(make(segment=64), D, total=100_000, chunk=2048)


@pytest.mark.parametrize(
    "options,match",
    [({"n_state": 0}, r"block_recurrent\.n_state"), ({"heads": 5}, r"block_recurrent: d_model \d+ must split"),
     ({"heads": 0}, r"block_recurrent\.heads"), ({"segment": 0}, r"block_recurrent\.segment")],
)
def test_bad_options(options, match):
    with pytest.raises(LaminaError, match=match):
        mixer_class("block_recurrent")(D, BlockRecurrentOptions(**options))
