"""GRU and LSTM mixers against float64 loops written from their equations."""

import pytest
import torch

from lamina.mixers import mixer_class
from lamina.mixers.rnn import RNNOptions
from mixer_harness import assert_finite_stream, check_forms_agree, rel_err

D = 12


def make(name, hidden=None, seed=0):
    torch.manual_seed(seed)
    return mixer_class(name)(D, RNNOptions(hidden=hidden))


def gru_reference(p, x, state):
    """Cho et al. 2014 in PyTorch's layout: rows [r, z, n], r applied to (W_hn h + b_hn)."""
    (h,) = state
    w_ir, w_iz, w_in = p["rnn.weight_ih_l0"].chunk(3)
    w_hr, w_hz, w_hn = p["rnn.weight_hh_l0"].chunk(3)
    b_ir, b_iz, b_in = p["rnn.bias_ih_l0"].chunk(3)
    b_hr, b_hz, b_hn = p["rnn.bias_hh_l0"].chunk(3)
    ys = []
    for x_t in x.unbind(1):
        r = torch.sigmoid(x_t @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
        z = torch.sigmoid(x_t @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
        n = torch.tanh(x_t @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
        h = (1 - z) * n + z * h  # z keeps the old state (Cho's z with 1 - z swapped)
        ys.append(h)
    return torch.stack(ys, 1), (h,)


def lstm_reference(p, x, state):
    """The LSTM with a forget gate, rows [i, f, g, o]."""
    h, c = state
    w, u, b = p["rnn.weight_ih_l0"], p["rnn.weight_hh_l0"], p["rnn.bias_ih_l0"] + p["rnn.bias_hh_l0"]
    ys = []
    for x_t in x.unbind(1):
        i, f, g, o = (x_t @ w.T + h @ u.T + b).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys, 1), (h, c)


REFERENCES = {"gru": gru_reference, "lstm": lstm_reference}


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("hidden", [None, 20])
def test_matches_equations_in_float64(name, hidden):
    """Outputs, final states and gradients (input, initial state, every weight) from a nonzero state."""
    mixer = make(name, hidden)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 17, D, generator=gen)
    state0 = tuple(0.5 * torch.randn(s.shape, generator=gen) for s in mixer.init_state(3))
    weight = torch.randn(3, 17, D, generator=gen, dtype=torch.float64)

    def grads(fn, params, dtype):
        inp = x.to(dtype).requires_grad_(True)
        st = tuple(s.to(dtype).requires_grad_(True) for s in state0)
        y, last = fn(params, inp, st)
        loss = (y.double() * weight).sum() + sum(s.double().sum() for s in last)
        leaves = [inp, *st, *params.values()]
        return [y.detach(), *[s.detach() for s in last], *torch.autograd.grad(loss, leaves)]

    def reference(params, inp, st):
        y, last = REFERENCES[name](params, inp, st)
        return (y if "out.weight" not in params else y @ params["out.weight"].T), last

    ref_params = {n: p.detach().double().requires_grad_(True) for n, p in mixer.named_parameters()}
    want = grads(reference, ref_params, torch.float64)
    got = grads(lambda params, inp, st: mixer(inp, st), dict(mixer.named_parameters()), torch.float32)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) < 1e-5, f"{name}: item {i} differs by {rel_err(a, b):.2e}"


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("T", [1, 13, 70])
def test_forms_agree(name, T):
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(T))
    check_forms_agree(make(name, hidden=16), x)


@pytest.mark.parametrize("name,n_states", [("gru", 1), ("lstm", 2)])
def test_state_size_and_dtype(name, n_states):
    mixer = make(name, hidden=20)
    assert mixer.state_size() == n_states * 20
    state = mixer.init_state(2, dtype=torch.bfloat16)
    assert len(state) == n_states and all(s.shape == (2, 20) and s.dtype == torch.float32 for s in state)
    y, state = mixer.bfloat16()(torch.randn(2, 5, D, dtype=torch.bfloat16), state)
    assert y.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state)


def test_lstm_forget_bias_starts_at_one():
    rnn = make("lstm").rnn
    bias = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()
    assert torch.equal(bias[D : 2 * D], torch.ones(D))


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_stream_100k_tokens(name):
    assert_finite_stream(make(name), D)
