"""Titans' neural memory: the op against the paper's equations (autograd on the memory's loss), its chunked
form, and the ``titans`` (MAL), ``titans_mag`` and ``titans_mac`` mixers in every form."""

import math

import pytest
import torch
import torch.nn.functional as F

from lamina.config import ModelConfig
from lamina.errors import LaminaError
from lamina.mixers import mixer_class
from lamina.mixers.state import state_tensors
from lamina.models import LM
from lamina.models.schedule import parse_layers
from lamina.ops.neural_memory import neural_memory_chunk, neural_memory_reference
from lamina.ops.rotary import rotary
from mixer_harness import assert_finite_stream, check_forms_agree, check_lm_carries_state, rel_err, run_in_chunks

D = 16


def op_inputs(B=3, T=23, H=2, K=4, V=5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), F.normalize(r(B, T, H, K), dim=-1), r(B, T, H, V)
    theta = 0.5 * torch.sigmoid(r(B, T, H))
    log_eta, log_keep = F.logsigmoid(r(B, T, H) + 1), F.logsigmoid(r(B, T, H) + 3)
    return q, k, v, theta, log_eta, log_keep


def paper_memory(q, k, v, theta, log_eta, log_keep, b, state=None, offset=None):
    """Eqs. 12-15 per token, the surprise by autograd on ||M(k) - v||^2 at the memory entering the chunk."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if state is None:
        state = tuple(q.new_zeros(B, H, K, V) for _ in range(3))
    M, S, anchor = (s.clone() for s in state)
    offset = [0] * B if offset is None else list(offset)
    outputs = torch.zeros(B, T, H, V, dtype=q.dtype)
    for i in range(B):
        for h in range(H):
            m, s, a = M[i, h], S[i, h], anchor[i, h]
            pos = offset[i]
            for t in range(T):
                if pos == 0:
                    a = m  # a new chunk: its gradients are taken here
                w = a.detach().clone().requires_grad_(True)
                loss = (k[i, t, h] @ w - v[i, t, h]).square().sum()
                (grad,) = torch.autograd.grad(loss, w)
                s = log_eta[i, t, h].exp() * s - theta[i, t, h] * grad
                m = (1 - (1 - log_keep[i, t, h].exp())) * m + s  # (1 - alpha_t) M_{t-1} + S_t
                outputs[i, t, h] = q[i, t, h] @ m
                pos = (pos + 1) % b
            if pos == 0:
                a = m
            M[i, h], S[i, h], anchor[i, h] = m, s, a
    return outputs, (M, S, anchor)


@pytest.mark.parametrize("b", [1, 3, 8])
def test_op_matches_the_papers_equations(b):
    inputs = op_inputs()
    want, want_state = paper_memory(*inputs, b)
    for op in (neural_memory_reference, neural_memory_chunk):
        out, state = op(*inputs, chunk_size=b, output_final_state=True)
        assert rel_err(out, want) < 1e-12
        for s, s0 in zip(state, want_state):
            assert rel_err(s, s0) < 1e-12


def test_chunk_size_one_is_the_exact_per_token_rule_and_larger_chunks_differ():
    """b = 1 takes every gradient at M_{t-1}; b > 1 is the paper's approximation, a different function."""
    inputs = op_inputs(T=16)
    exact, _ = paper_memory(*inputs, 1)
    one, _ = neural_memory_chunk(*inputs, chunk_size=1)
    four, _ = neural_memory_chunk(*inputs, chunk_size=4)
    assert rel_err(one, exact) < 1e-12 and rel_err(four, exact) > 1e-3


@pytest.mark.parametrize("b", [1, 4, 5])
def test_op_carries_chunks_across_calls_with_offsets_and_gradients(b):
    """Per-sequence offsets into the current chunk and a carried anchor: any cut gives the same function."""
    inputs = [x.requires_grad_(True) for x in op_inputs(T=19, seed=1)]
    gen = torch.Generator().manual_seed(2)
    M, S, anchor = (torch.randn(3, 2, 4, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    offset = torch.tensor([0, 1, b - 1]) % b
    anchor = torch.where((offset == 0).view(-1, 1, 1, 1), M, anchor)  # at a boundary the anchor is M
    state = tuple(s.requires_grad_(True) for s in (M, S, anchor))
    want, want_state = paper_memory(*[x.detach() for x in inputs], b, [s.detach() for s in state], offset.tolist())
    results = {}
    for op in (neural_memory_reference, neural_memory_chunk):
        out, final = op(*inputs, chunk_size=b, initial_state=state, offset=offset, output_final_state=True)
        assert rel_err(out, want) < 1e-12
        for s, s0 in zip(final, want_state):
            assert rel_err(s, s0) < 1e-12
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        loss = (out * weight).sum() + sum((f * f).sum() for f in final)
        results[op] = torch.autograd.grad(loss, [*inputs, *state])
    for g_ref, g_chunk in zip(*results.values()):
        assert rel_err(g_chunk, g_ref) < 1e-10
    # cutting the call in two (offsets and the anchor carried) equals one call
    a, b_ = [x[:, :7] for x in inputs], [x[:, 7:] for x in inputs]
    with torch.no_grad():
        out1, mid = neural_memory_chunk(*a, chunk_size=b, initial_state=state, offset=offset, output_final_state=True)
        out2, end = neural_memory_chunk(*b_, chunk_size=b, initial_state=mid, offset=(offset + 7) % b,
                                        output_final_state=True)
    assert rel_err(torch.cat([out1, out2], 1), want) < 1e-12
    for s, s0 in zip(end, want_state):
        assert rel_err(s, s0) < 1e-12


# ------------------------------------------------------------------------------------------------ the mixer


def make(seed=0, **options):
    torch.manual_seed(seed)
    cls = mixer_class("titans")
    mixer = cls(D, cls.Options(**{"heads": 2, **options}))
    with torch.no_grad():  # random gates and norm weights, so that every term matters
        mixer.memory.gate_bias.add_(torch.randn_like(mixer.memory.gate_bias))
        mixer.norm.weight.uniform_(0.5, 1.5)
    return mixer


def data(T, seed=1):
    return torch.randn(2, T, D, generator=torch.Generator().manual_seed(seed))


# (at T = 1 from an empty memory the output norm divides theta out: its gradient is rounding noise;
# test_all_mixers covers T = 1 with the default options)
@pytest.mark.parametrize("T", [2, 13, 40])
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_forms_agree(chunk_size, T):
    check_forms_agree(make(chunk_size=chunk_size, theta_max=0.5), data(T))


def paper_memory_inputs(mixer, x):
    """The memory's ``q, k, v``, ``theta``, ``log eta``, ``log(1 - alpha)`` for float64 ``x`` (sections 3.1, 4.4)."""
    p = {n: t.detach().double() for n, t in mixer.memory.named_parameters()}
    H, K = mixer.memory.heads, mixer.memory.head_dim
    B, T, _ = x.shape
    q, k, v = F.silu(x @ p["qkv.weight"].T).view(B, T, 3, H, K).unbind(2)
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    z = (x @ p["gates.weight"].T).view(B, T, 3, H) + p["gate_bias"]
    eta, alpha = torch.sigmoid(z[:, :, 1]), torch.sigmoid(z[:, :, 2])
    theta = mixer.memory.theta_max * torch.sigmoid(z[:, :, 0]) * (1 - eta)
    return q, k, v, theta, eta.log(), (1 - alpha).log()


def rms(o, weight):
    return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * weight


def paper_layer(mixer, x):
    """MAL written out in float64 from the paper (sections 3.1, 3.2, 4.3, 4.4): ``(y, M, S)``."""
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    H, K, b = mixer.memory.heads, mixer.memory.head_dim, mixer.memory.chunk_size
    x = x.double()
    B, T, _ = x.shape
    o, (M, S, _) = paper_memory(*paper_memory_inputs(mixer, x), b)
    o = rms(o, p["norm.weight"]) * F.silu(x @ p["g_proj.weight"].T).view(B, T, H, K)
    return o.reshape(B, T, H * K) @ p["out.weight"].T, M, S


@pytest.mark.parametrize("chunk_size", [1, 16])
def test_matches_equations_in_float64(chunk_size):
    mixer = make(chunk_size=chunk_size, theta_max=0.5)
    x = data(37)
    want_y, want_M, want_S = paper_layer(mixer, x)
    y, (M, S, anchor, pos) = mixer(x)
    assert rel_err(y, want_y) < 1e-5 and rel_err(M, want_M) < 1e-5 and rel_err(S, want_S) < 1e-5
    assert pos.tolist() == [[37 % chunk_size]] * 2


def test_state_size_formula():
    for options, K in [({}, 8), ({"head_dim": 3, "chunk_size": 5}, 3)]:
        mixer = make(**options)
        assert mixer.state_size() == 3 * 2 * K * K + 1  # M, S and the anchor per head, and the position
        assert mixer.state_size() == sum(t[0].numel() for t in state_tensors(mixer.init_state(1)))


def test_state_stays_fp32_in_bf16():
    mixer = make().bfloat16()
    y, state = mixer(data(9).bfloat16())
    assert y.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state)
    y, state = mixer(data(1).bfloat16(), state)
    assert y.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state)


def test_stream_100k_tokens():
    assert_finite_stream(make(), D)


def test_stream_exact_rule():
    """chunk_size 1: one loop step per token, slow on CPU, so a shorter stream."""
    assert_finite_stream(make(chunk_size=1), D, total=25_000)


def test_lm_carries_state():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=["titans", "titans"], mixers={"titans": {"heads": 2, "chunk_size": 8}})
    model = LM(cfg, 257).eval()
    assert model.blocks[0].mixer.memory.gate_bias[2].tolist() == [-4.0, -4.0]  # the model keeps the gate init
    check_lm_carries_state(model, cuts=(5, 6))


def test_rejects_bad_options():
    cls = mixer_class("titans")
    for options, key in [({"heads": 0}, r"titans\.heads"), ({"heads": 3}, "titans: .*heads"),
                         ({"head_dim": 0}, r"titans\.head_dim"), ({"chunk_size": 0}, r"titans\.chunk_size"),
                         ({"theta_max": 0.0}, r"titans\.theta_max")]:
        with pytest.raises(LaminaError, match=key):
            cls(D, cls.Options(**options))
    with pytest.raises(LaminaError, match="allowed keys"):
        parse_layers([{"titans": {"heads": 2, "chunk": 64}}])


# ------------------------------------------------------------------------------------ memory as a gate (MAG)


def make_attending(name, seed, options):
    """A Titans layer with attention (MAG, MAC) whose gate bias, persistent slots and norm weights are moved off
    their initial values, so every one of them shows in the checks."""
    torch.manual_seed(seed)
    cls = mixer_class(name)
    mixer = cls(D, cls.Options(**options))
    with torch.no_grad():
        mixer.memory.gate_bias.add_(torch.randn_like(mixer.memory.gate_bias))
        mixer.persistent_kv.normal_()
        for norm in ("attn_norm", "mem_norm", "y_norm"):
            if hasattr(mixer, norm):
                getattr(mixer, norm).weight.uniform_(0.5, 1.5)
    return mixer


def make_mag(seed=0, **options):
    return make_attending("titans_mag", seed, {"heads": 2, "window": 6, "persistent": 3, **options})


@pytest.mark.parametrize("T", [2, 13, 40])
@pytest.mark.parametrize("options", [{}, {"chunk_size": 1, "window": 1, "persistent": 0}, {"window": 50}])
def test_mag_forms_agree(options, T):
    check_forms_agree(make_mag(theta_max=0.5, **options), data(T))


def paper_mag(mixer, x):
    """MAG in float64 (section 4.2): o = norm(SW-Attn*(x)) * sigmoid(norm(M(x))), attention written per query."""
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    H, K, W = mixer.memory.heads, mixer.memory.head_dim, mixer.options.window
    x = x.double()
    B, T, _ = x.shape
    y_mem, _ = paper_memory(*paper_memory_inputs(mixer, x), mixer.memory.chunk_size)

    qa, ka, va = (x @ p["qkv.weight"].T).view(B, T, 3, H, K).unbind(2)
    pos = torch.arange(T)
    qr, kr = rotary(qa, pos, mixer.options.rope_base), rotary(ka, pos, mixer.options.rope_base)
    pk, pv = p["persistent_kv"]
    y_attn = torch.zeros(B, T, H, K, dtype=torch.float64)
    for t in range(T):
        lo = max(0, t - W + 1)
        scores = torch.cat([torch.einsum("bhk,phk->bhp", qa[:, t], pk),  # persistent: no position
                            torch.einsum("bhk,bshk->bhs", qr[:, t], kr[:, lo:t + 1])], -1) / math.sqrt(K)
        weights = scores.softmax(-1)
        values = torch.cat([pv[None].expand(B, *pv.shape), va[:, lo:t + 1]], 1)
        y_attn[:, t] = torch.einsum("bhs,bshk->bhk", weights, values)

    o = rms(y_attn, p["attn_norm.weight"]) * torch.sigmoid(rms(y_mem, p["mem_norm.weight"]))
    return o.reshape(B, T, H * K) @ p["out.weight"].T


def test_mag_matches_equations_in_float64():
    mixer = make_mag(chunk_size=4, theta_max=0.5)
    x = data(29)
    y, _ = mixer(x)
    assert rel_err(y, paper_mag(mixer, x)) < 1e-5


def test_mag_state_size_formula():
    mixer = make_mag(window=7)
    assert mixer.state_size() == 3 * 2 * 8 * 8 + 1 + 2 * 6 * 2 * 8  # memory, then the window's keys and values
    assert mixer.state_size() == sum(t[0].numel() for t in state_tensors(mixer.init_state(1)) if t.is_floating_point())


def test_mag_stream_100k_tokens():
    assert_finite_stream(make_mag(), D)


def test_mag_lm_carries_state_and_rejects_bad_options():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=["titans_mag", "titans"],
                      mixers={"titans_mag": {"heads": 2, "window": 4}, "titans": {"heads": 2}})
    check_lm_carries_state(LM(cfg, 257).eval(), cuts=(5, 6))
    cls = mixer_class("titans_mag")
    for options, key in [({"window": 0}, r"titans_mag\.window"), ({"persistent": -1}, r"titans_mag\.persistent"),
                         ({"head_dim": 3}, "titans_mag: the head width"),
                         ({"chunk_size": 0}, r"titans_mag\.chunk_size")]:
        with pytest.raises(LaminaError, match=key):
            cls(D, cls.Options(**{"heads": 2, **options}))


# --------------------------------------------------------------------------------- memory as context (MAC)


def make_mac(seed=0, **options):
    return make_attending("titans_mac", seed, {"heads": 2, "segment": 6, "persistent": 3, **options})


@pytest.mark.parametrize("options, T", [({}, 2), ({}, 13), ({}, 40), ({"segment": 1, "persistent": 0}, 2),
                                        ({"segment": 1, "persistent": 0}, 13), ({"segment": 50}, 13)])
def test_mac_forms_agree(options, T):
    check_forms_agree(make_mac(theta_max=0.5, **options), data(T))


def paper_mac(mixer, x):
    """MAC in float64 (section 4.1), one segment at a time: ``(y, M)``.

    h = M*(q) with the memory before the segment; attention per query over the persistent slots and
    h_j, x_j for j <= i (rotary positions from the stream's start); y's memory update token by token
    with the segment as the chunk (paper_memory); the output gate per head with the updated memory.
    """
    p = {n: t.detach().double() for n, t in mixer.named_parameters()}
    H, K, C, base = mixer.memory.heads, mixer.memory.head_dim, mixer.options.segment, mixer.options.rope_base
    x = x.double()
    B, T, _ = x.shape
    pk, pv = p["persistent_kv"]
    memory = None  # (M, S, anchor): empty
    outputs = []
    for start in range(0, T, C):
        xs = x[:, start:start + C]
        n, pos = xs.shape[1], torch.arange(start, start + xs.shape[1])
        M = torch.zeros(B, H, K, K, dtype=torch.float64) if memory is None else memory[0]
        h = torch.einsum("bthk,bhkv->bthv", paper_memory_inputs(mixer, xs)[0], M)  # h_t = M*_{t-1}(q_t)
        hk, hv = (h.reshape(B, n, H * K) @ p["memory_kv.weight"].T).view(B, n, 2, H, K).unbind(2)
        q, xk, xv = (xs @ p["qkv.weight"].T).view(B, n, 3, H, K).unbind(2)
        qr, hk, xk = rotary(q, pos, base), rotary(hk, pos, base), rotary(xk, pos, base)
        y_attn = torch.zeros(B, n, H, K, dtype=torch.float64)
        for i in range(n):
            scores = torch.cat([torch.einsum("bhk,phk->bhp", q[:, i], pk),  # persistent: no position
                                torch.einsum("bhk,bshk->bhs", qr[:, i], hk[:, :i + 1]),
                                torch.einsum("bhk,bshk->bhs", qr[:, i], xk[:, :i + 1])], -1) / math.sqrt(K)
            values = torch.cat([pv[None].expand(B, *pv.shape), hv[:, :i + 1], xv[:, :i + 1]], 1)
            y_attn[:, i] = torch.einsum("bhs,bshk->bhk", scores.softmax(-1), values)
        y = rms(y_attn.reshape(B, n, H * K) @ p["attn_out.weight"].T, p["y_norm.weight"])
        y_mem, memory = paper_memory(*paper_memory_inputs(mixer, y), C, memory)  # M_t, read per token
        outputs.append(rms(y_attn, p["attn_norm.weight"]) * torch.sigmoid(rms(y_mem, p["mem_norm.weight"])))
    return torch.cat(outputs, 1).reshape(B, T, H * K) @ p["out.weight"].T, memory[0]


@pytest.mark.parametrize("segment", [1, 5])
def test_mac_matches_equations_in_float64(segment):
    mixer = make_mac(segment=segment, theta_max=0.5)
    x = data(23)
    want_y, want_M = paper_mac(mixer, x)
    y, state = mixer(x)
    assert rel_err(y, want_y) < 1e-5 and rel_err(state.memory.memory, want_M) < 1e-5
    assert state.memory.position.tolist() == [[23 % segment]] * 2
    with torch.no_grad():  # decoding reads the memory at the segment's start, not the one updated since
        y, _ = run_in_chunks(mixer, x, [1] * 23)
    assert rel_err(y, want_y) < 1e-5


def test_mac_is_causal_and_reads_earlier_segments():
    """A change at token 9 leaves earlier outputs alone, and reaches the next segment through the memory only."""
    mixer = make_mac(segment=6, theta_max=0.5)
    x = data(18)
    x2 = x.clone()
    x2[:, 9] += 1
    with torch.no_grad():
        y, _ = mixer(x)
        y2, _ = mixer(x2)
    assert torch.equal(y[:, :9], y2[:, :9]) and rel_err(y2[:, 12:], y[:, 12:]) > 1e-3
    with torch.no_grad():  # with the memory's write switched off, the next segment does not see token 9
        mixer.memory.gate_bias[0].fill_(-1e4)  # theta = 0
        y, _ = mixer(x)
        y2, _ = mixer(x2)
    assert rel_err(y2[:, 12:], y[:, 12:]) == 0 and rel_err(y2[:, 9:12], y[:, 9:12]) > 1e-3


def test_mac_state_size_formula():
    mixer = make_mac(segment=7)
    assert mixer.state_size() == 3 * 2 * 8 * 8 + 1 + 4 * 6 * 2 * 8  # memory, then the segment's h and x keys, values
    assert mixer.state_size() == sum(t[0].numel() for t in state_tensors(mixer.init_state(1)))


def test_mac_stream_100k_tokens(one_thread):
    """The default segment; a call runs segment by segment, many small steps, faster on one thread."""
    assert_finite_stream(make_mac(segment=64), D)


def test_mac_lm_carries_state_and_rejects_bad_options():
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=["titans_mac", "titans"],
                      mixers={"titans_mac": {"heads": 2, "segment": 4}, "titans": {"heads": 2}})
    check_lm_carries_state(LM(cfg, 257).eval(), cuts=(5, 6))
    cls = mixer_class("titans_mac")
    for options, key in [({"segment": 0}, r"titans_mac\.segment"), ({"persistent": -1}, r"titans_mac\.persistent"),
                         ({"head_dim": 3}, "titans_mac: the head width"),
                         ({"theta_max": -1.0}, r"titans_mac\.theta_max")]:
        with pytest.raises(LaminaError, match=key):
            cls(D, cls.Options(**{"heads": 2, **options}))
    with pytest.raises(LaminaError, match="allowed keys"):
        parse_layers([{"titans_mac": {"chunk_size": 8}}])
