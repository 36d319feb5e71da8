"""GRU and LSTM mixers against float64 loops written from their equations; their fp32 fallback under autocast."""

import os
import subprocess
import sys

import pytest
import torch

from lamina.mixers import mixer_class, rnn
from lamina.mixers.rnn import RNNOptions
from mixer_harness import assert_all_fp32_close, assert_finite_stream, check_forms_agree, rel_err

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

    def params(dtype):
        return {n: p.detach().to(dtype).requires_grad_(True) for n, p in mixer.named_parameters()}

    want = grads(reference, params(torch.float64), torch.float64)
    own = grads(reference, params(torch.float32), torch.float32)  # the equations in fp32: see mixer_harness
    got = grads(lambda params, inp, st: mixer(inp, st), dict(mixer.named_parameters()), torch.float32)
    names = ["outputs", *(f"final state {i}" for i in range(len(state0))), "d input",
             *(f"d initial state {i}" for i in range(len(state0))), *(f"d {n}" for n, _ in mixer.named_parameters())]
    assert_all_fp32_close(got, want, own, names, name)


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


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("hidden", [None, 20])
def test_autocast_falls_back_to_fp32_where_the_kernel_has_no_bf16(name, hidden, monkeypatch):
    """Forced on every CPU: the library call runs in fp32 and returns bf16, the state stays fp32, and it trains."""
    mixer = make(name, hidden)
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(4))
    state0 = tuple(0.5 * torch.randn(s.shape, generator=torch.Generator().manual_seed(5)) for s in mixer.init_state(2))

    monkeypatch.setattr(rnn, "autocast_kernel_runs", lambda module, inp: False)

    def run(autocast):
        mixer.zero_grad()
        inp = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y, state = mixer(inp, state0)
            y1, state = mixer(inp[:, :1], state)  # a step from the carried state
        (y.float().square().sum() + y1.float().sum()).backward()
        return y, y1, state, inp.grad, {n: p.grad.clone() for n, p in mixer.named_parameters()}

    y, y1, state, gx, grads = run(autocast=True)
    assert y.dtype == y1.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state)
    assert torch.isfinite(gx).all() and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
    y32, y1_32, state32, gx32, _ = run(autocast=False)
    if hidden is None:  # no projection after the call: exactly the fp32 call, rounded once to bf16
        assert torch.equal(y, y32.to(torch.bfloat16)) and torch.equal(y1, y1_32.to(torch.bfloat16))
        assert all(torch.equal(a, b) for a, b in zip(state, state32))
    else:  # the projection runs in bf16 under autocast
        assert rel_err(y.float(), y32) < 1e-2 and rel_err(gx, gx32) < 1e-2


def test_trying_the_bf16_kernel_is_cached_and_draws_no_random_numbers():
    rnn._AUTOCAST_KERNELS.clear()
    x = torch.randn(1, 3, D)
    before = torch.random.get_rng_state()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runs = rnn.autocast_kernel_runs(torch.nn.LSTM, x)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert list(rnn._AUTOCAST_KERNELS.values()) == [runs]
    rnn._AUTOCAST_KERNELS[next(iter(rnn._AUTOCAST_KERNELS))] = not runs  # remembered, not tried again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert rnn.autocast_kernel_runs(torch.nn.LSTM, x) is (not runs)
    rnn._AUTOCAST_KERNELS.clear()


def test_lstm_trains_under_bf16_autocast_on_a_cpu_without_bf16_kernels():
    """oneDNN capped at AVX2 (no bf16 instructions) has no bf16 LSTM: the mixer falls back and trains."""
    code = """
import torch
from lamina.mixers import mixer_class
from lamina.mixers.rnn import RNNOptions
mixer = mixer_class("lstm")(12, RNNOptions())
x = torch.randn(2, 7, 12, requires_grad=True)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y, state = mixer(x)
y.float().square().sum().backward()
assert y.dtype == torch.bfloat16 and torch.isfinite(x.grad).all() and state[0].dtype == torch.float32
print("ok")
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
