"""Transformer-XL attention, and its compressive memory, against the papers' equations written out in float64."""

import math

import pytest
import torch

from lamina.errors import LaminaError
from lamina.mixers import mixer_class, reset_state
from lamina.mixers.xl import XLOptions
from lamina.mixers.state import flatten_state, state_tensors
from mixer_harness import (
    assert_finite_stream, assert_fp32_close, check_forms_agree, check_lm_carries_state, float64_copy, rel_err,
    run_in_chunks,
)

D = 32


def make(**options):
    torch.manual_seed(0)
    mixer = mixer_class("xl")(D, XLOptions(heads=4, **options))
    with torch.no_grad():  # u and v start at zero: make them count in the checks
        mixer.u.normal_()
        mixer.v.normal_()
    return mixer


def paper_reference(mixer, x, memory=None, valid_mem=None, cmem=None):
    """Section 3.3 term by term, one (query, key) pair at a time, in float64.

    ``memory [B, M, D]`` holds the previous hidden states (``valid_mem`` marks
    real ones) and ``cmem [B, C, D]`` compressed ones before them (Rae et al.
    2020: one position per slot); query ``i`` sits at position ``C + M + i`` of
    ``[cmem; memory; x]``. ``same_length`` limits the span of uncompressed keys.
    """
    x = x.double()
    B, T, _ = x.shape
    M = 0 if memory is None else memory.shape[1]
    C = 0 if cmem is None else cmem.shape[1]
    hidden = torch.cat([t.double() for t in (cmem, memory, x) if t is not None], dim=1)
    valid_mem = torch.ones(B, M, dtype=torch.bool) if valid_mem is None else valid_mem
    valid_mem = torch.cat([torch.ones(B, C, dtype=torch.bool), valid_mem], dim=1)
    H, Dh = mixer.heads, mixer.head_dim
    w_q, w_kv = mixer.q.weight.double(), mixer.kv.weight.double()
    w_r, w_o = mixer.r.weight.double(), mixer.out.weight.double()
    u, v_bias = mixer.u.double(), mixer.v.double()
    q = (x @ w_q.T).view(B, T, H, Dh)
    k, v = (hidden @ w_kv.T).view(B, C + M + T, 2, H, Dh).unbind(2)
    clamp, same_length = mixer.options.clamp_len, mixer.options.same_length
    span = mixer.mem_len  # under same_length: the query and the mem_len positions before it

    def R(d):  # the sinusoid of Vaswani et al.: sines then cosines
        freqs = torch.tensor([1.0 / 10000 ** (2 * n / D) for n in range(D // 2)], dtype=torch.float64)
        return torch.cat([torch.sin(d * freqs), torch.cos(d * freqs)])

    y = torch.zeros(B, T, H, Dh, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                scores, values = [], []
                for j in range(C + M + T):
                    d = C + M + i - j
                    if d < 0 or (j < C + M and not valid_mem[b, j]) or (same_length and j >= C and d > span):
                        continue
                    wr = (w_r @ R(d if clamp is None else min(d, clamp))).view(H, Dh)[h]
                    qi, kj = q[b, i, h], k[b, j, h]
                    a = qi @ kj + qi @ wr + u[h] @ kj + v_bias[h] @ wr
                    scores.append(a / math.sqrt(Dh))
                    values.append(v[b, j, h])
                p = torch.stack(scores).softmax(0)
                y[b, i, h] = (p[:, None] * torch.stack(values)).sum(0)
    return y.reshape(B, T, H * Dh) @ w_o.T


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mem_len": 8},
        {"mem_len": 8, "clamp_len": 3},
        {"mem_len": 6, "same_length": True},
        {"mem_len": 7, "clamp_len": 4, "same_length": True},
    ],
)
def test_matches_paper_with_memory(options):
    mixer = make(**options)
    first, second = torch.randn(2, 5, D), torch.randn(2, 11, D)
    y1, state = mixer(first)  # with mem_len 6..8 the memory is partly empty after 5 tokens
    assert rel_err(y1, paper_reference(mixer, first)) < 1e-5
    memory, valid = state.memory, state.valid
    if mixer.mem_len:
        assert torch.equal(memory[:, -5:], first) and valid[:, -5:].all() and not valid[:, :-5].any()
    y2, _ = mixer(second, state)
    want = paper_reference(mixer, second, memory, valid)
    assert rel_err(y2, want) < 1e-5


@pytest.mark.parametrize("T", [1, 17, 40])
def test_full_sequence_matches_paper(T):
    mixer = make(mem_len=T, clamp_len=9)
    x = torch.randn(2, T, D)
    y, _ = mixer(x)
    empty = torch.zeros(2, T, D), torch.zeros(2, T, dtype=torch.bool)
    assert rel_err(y, paper_reference(mixer, x, *empty)) < 1e-5
    assert rel_err(y, paper_reference(mixer, x)) < 1e-5  # empty slots are never read


@pytest.mark.parametrize("options", [{"mem_len": 29}, {"mem_len": 29, "clamp_len": 5}, {"mem_len": 5, "same_length": True}])
def test_forms_agree(options):
    # a memory covering every chunk makes chunks and tokens exact; under same_length every
    # query's span is what the memory holds, so they are exact with any mem_len
    mixer = make(**options)
    check_forms_agree(mixer, torch.randn(2, 29, D), chunk=4)


def test_short_memory_is_the_papers_approximation():
    """With mem_len below the segment length, segments see only mem_len past states: not the full run."""
    mixer = make(mem_len=4)
    x = torch.randn(2, 20, D)
    chunked, _ = run_in_chunks(mixer, x, [10, 10])
    full, _ = mixer(x)
    assert rel_err(chunked[:, 10:], full[:, 10:]) > 1e-3
    full64, _ = float64_copy(mixer)(x.double())  # the fp32 tolerance: see mixer_harness
    assert_fp32_close(chunked[:, :10], full64[:, :10], full[:, :10], "the first segment")
    want = paper_reference(mixer, x[:, 10:], memory=x[:, 6:10])
    assert rel_err(chunked[:, 10:], want) < 1e-5


def test_mem_len_zero_is_a_vanilla_transformer_per_segment():
    mixer = make(mem_len=0)
    x = torch.randn(1, 12, D)
    y, state = run_in_chunks(mixer, x, [6, 6])
    assert state.memory.shape == (1, 0, D)
    assert rel_err(y[:, 6:], paper_reference(mixer, x[:, 6:])) < 1e-5


def test_mem_len_changed_at_evaluation():
    """memory_length() sets mem_len: a carried memory of another length is left-padded or trimmed."""
    mixer = make(mem_len=4)
    x = torch.randn(2, 9, D)
    _, state = mixer(x[:, :6])
    with mixer.memory_length(10):  # longer than trained: four real states, six empty slots
        y, longer = mixer(x[:, 6:], state)
        assert longer.memory.shape == (2, 10, D) and longer.valid.sum() == 2 * 7
        assert rel_err(y, paper_reference(mixer, x[:, 6:], memory=x[:, 2:6])) < 1e-5
    with mixer.memory_length(3):  # shorter: the oldest states are dropped
        y, shorter = mixer(x[:, 6:], state)
        assert shorter.memory.shape == (2, 3, D)
        assert rel_err(y, paper_reference(mixer, x[:, 6:], memory=x[:, 3:6])) < 1e-5
        assert mixer.init_state(1).memory.shape == (1, 3, D) and mixer.state_size() == 3 * D
    assert mixer.mem_len == mixer.own_mem_len == 4


def test_lm_memory_reaches_xl_layers():
    from lamina.config import from_dict
    from lamina.models.lm import LM, ModelConfig

    config = {"d_model": D, "layers": ["xl", "xl"], "mixers": {"xl": {"heads": 4, "mem_len": 8}}}
    model = LM(from_dict(ModelConfig, config, "model"), 256)
    assert [m.mem_len for m in model.memory_layers()] == [8, 8]
    with model.memory(mem_len=20):
        assert model.state_size() == 2 * 20 * D
    assert model.state_size() == 2 * 8 * D


def test_state_is_hidden_states_and_fixed_in_shape():
    mixer = make(mem_len=16)
    state = mixer.init_state(3)
    x = torch.randn(3, 5, D)
    _, new = mixer(x, state)
    assert (new.memory.shape, new.valid.shape) == (state.memory.shape, state.valid.shape) and new.compressed is None
    assert new.memory.dtype == torch.float32 and new.valid.sum() == 5 * 3
    assert torch.equal(new.memory[:, 11:], x)
    assert mixer.state_size() == 16 * D  # mem_len * d_model floats


def test_reset_state_forgets():
    mixer = make(mem_len=8)
    x = torch.randn(2, 6, D)
    _, state = mixer(x)
    state = reset_state(state, torch.tensor([True, False]))
    y, _ = mixer(x, state)
    fresh, _ = mixer(x[1:])
    fresh64, _ = float64_copy(mixer)(x[1:].double())  # the fp32 tolerance: see mixer_harness
    assert_fp32_close(y[1:], fresh64, fresh, "the row whose state was reset")


@pytest.mark.parametrize(
    "options,word",
    [
        ({"heads": 5}, "heads"),
        ({"mem_len": -1}, r"xl\.mem_len"),
        ({"clamp_len": -2}, r"xl\.clamp_len"),
        ({"mem_len": 4, "cmem_len": -1}, r"xl\.cmem_len"),
        ({"cmem_len": 4}, "xl: cmem_len needs mem_len > 0"),
        ({"mem_len": 4, "cmem_len": 2, "cmem_rate": 0}, r"xl\.cmem_rate"),
        ({"mem_len": 4, "cmem_len": 2, "compress": "conv"}, "compress must be one of mean, max"),
    ],
)
def test_bad_options_are_named(options, word):
    with pytest.raises(LaminaError, match=word):
        mixer_class("xl")(D, XLOptions(**options))


def test_long_stream_finite():
    mixer = make(mem_len=64, clamp_len=200, same_length=True)
    assert_finite_stream(mixer, D, total=100_000, chunk=2048)


# ------------------------------------------------------------------ compressive memory (Rae et al. 2020)


def compressive_reference(mixer, x, sizes):
    """Rae et al. 2020, section 3 (algorithm 1) for one layer, segment by segment, in float64.

    Each segment attends over ``[cmem; memory; segment]`` (:func:`paper_reference`);
    then the states before the last ``mem_len`` leave the memory, in order,
    wait until ``c`` of them are there, and every ``c`` are pooled into one
    compressed memory, which keeps its last ``cmem_len``. Returns the outputs
    and the final ``(memory, cmem, pending)``, each ``[B, n, D]``.
    """
    c, C, M = mixer.options.cmem_rate, mixer.compressed_len, mixer.mem_len
    x = x.double()
    B, _, D = x.shape
    memory, cmem, pending = (x.new_zeros(B, 0, D) for _ in range(3))
    outputs, start = [], 0
    for size in sizes:
        segment = x[:, start : start + size]
        start += size
        outputs.append(paper_reference(mixer, segment, memory, cmem=cmem))
        joined = torch.cat([memory, segment], 1)
        pending = torch.cat([pending, joined[:, : max(0, joined.shape[1] - M)]], 1)
        memory = joined[:, -M:]
        while pending.shape[1] >= c:
            group = pending[:, :c]
            pooled = group.sum(1) / c if mixer.options.compress == "mean" else group.max(1).values
            cmem = torch.cat([cmem, pooled[:, None]], 1)[:, -C:]
            pending = pending[:, c:]
    return torch.cat(outputs, 1), (memory, cmem, pending)


def real_entries(state):
    """(memory, compressed memory, pending) of a compressive xl state: the real entries of each, ``[B, n, D]``."""
    B, D = state.memory.shape[0], state.memory.shape[-1]
    c = state.compressed
    return tuple(t[valid].view(B, -1, D) for t, valid in
                 ((state.memory, state.valid), (c.memory, c.valid), (c.pending, c.pending_valid)))


def assert_matches_reference(mixer, x, y, state, sizes):
    """Outputs, final state and input gradients against :func:`compressive_reference` under ``sizes``."""
    want, want_state = compressive_reference(mixer, x, sizes)
    assert rel_err(y, want) < 1e-5
    for got, ref in zip(real_entries(state), want_state):
        assert got.shape == ref.shape and rel_err(got, ref) < 1e-6
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad, = torch.autograd.grad((y * weight.float()).sum(), x)
    grad_ref, = torch.autograd.grad((want * weight).sum(), x)
    assert rel_err(grad, grad_ref) < 1e-5


CMEM = [
    {"cmem_rate": 2},
    {"cmem_rate": 3, "compress": "max"},
    {"cmem_rate": 1, "clamp_len": 6},
    {"cmem_rate": 4, "compress": "max", "clamp_len": 9},
]


@pytest.mark.parametrize("options", CMEM)
def test_compressive_matches_reference(options):
    """Uneven segments, odd lengths: the memory overflows into groups that wait, fill and overflow cmem_len."""
    mixer = make(mem_len=4, cmem_len=3, **options)
    x = torch.randn(2, 26, D, requires_grad=True)
    sizes = [5, 3, 1, 7, 4, 6]
    y, state = run_in_chunks(mixer, x, sizes)
    assert state.compressed.valid.all()  # the compressed memory is full
    assert_matches_reference(mixer, x, y, state, sizes)


@pytest.mark.parametrize("options", CMEM)
def test_compressive_same_length_is_one_token_segments(options):
    """Under same_length one call computes what one-token segments of the paper's algorithm compute."""
    mixer = make(mem_len=3, cmem_len=2, same_length=True, **options)
    x = torch.randn(2, 17, D, requires_grad=True)
    y, state = mixer(x)
    assert_matches_reference(mixer, x, y, state, [1] * 17)


@pytest.mark.parametrize("options", CMEM)
def test_compressive_forms_agree(options):
    """Full == uneven chunks == token by token (outputs, states, gradients) with states compressed inside calls."""
    check_forms_agree(make(mem_len=4, cmem_len=3, same_length=True, **options), torch.randn(2, 29, D), chunk=4)


def test_compressive_lm_carries_state():
    from lamina.config import from_dict
    from lamina.models.lm import LM, ModelConfig

    options = {"heads": 4, "mem_len": 5, "cmem_len": 3, "cmem_rate": 2, "same_length": True}
    model = LM(from_dict(ModelConfig, {"d_model": D, "layers": ["xl", "xl"], "mixers": {"xl": options}}, "model"), 256)
    check_lm_carries_state(model, length=31, cuts=(12, 13))


@pytest.mark.parametrize("compress", ["mean", "max"])
def test_compressed_memory_holds_pooled_states(compress):
    mixer = make(mem_len=4, cmem_len=3, cmem_rate=2, compress=compress)
    x = torch.randn(2, 15, D)

    def pooled(*starts):
        groups = [x[:, a : a + 2] for a in starts]
        return torch.stack([g.mean(1) if compress == "mean" else g.amax(1) for g in groups], 1)

    with torch.no_grad():
        _, state = mixer(x[:, :12])  # states 0..7 leave the memory: (0, 1) .. (6, 7), the last three kept
        c = state.compressed
        assert torch.equal(state.memory, x[:, 8:12]) and c.valid.all() and not c.pending_valid.any()
        assert rel_err(c.memory, pooled(2, 4, 6)) < 1e-7
        _, state = mixer(x[:, 12:], state)  # 8, 9 and 10 leave: (8, 9) is compressed, 10 waits for 11
        c = state.compressed
        assert rel_err(c.memory, pooled(4, 6, 8)) < 1e-7
        assert torch.equal(c.pending[:, 0], x[:, 10]) and c.pending_valid.all()


def test_compressed_memory_is_read():
    """Compressed slots change the outputs: pooled states the memory no longer holds are attended to."""
    x = torch.randn(2, 20, D)
    with torch.no_grad():
        y, _ = run_in_chunks(make(mem_len=4, cmem_len=3, cmem_rate=2), x, [10, 10])
        y_plain, _ = run_in_chunks(make(mem_len=4), x, [10, 10])
        want, _ = run_in_chunks(float64_copy(make(mem_len=4)), x.double(), [10, 10])  # see mixer_harness
    assert_fp32_close(y[:, :10], want[:, :10], y_plain[:, :10], "nothing compressed yet")
    assert rel_err(y[:, 10:], y_plain[:, 10:]) > 1e-3


def test_cmem_len_zero_changes_nothing():
    x = torch.randn(2, 13, D)
    with torch.no_grad():
        y, state = run_in_chunks(make(mem_len=5), x, [6, 7])
        other = make(mem_len=5, cmem_len=0, cmem_rate=4, compress="max")
        y_other, state_other = run_in_chunks(other, x, [6, 7])
    assert torch.equal(y, y_other) and state_other.compressed is None
    assert all(torch.equal(a, b) for a, b in zip(state_tensors(state), state_tensors(state_other)))
    assert other.state_size() == 5 * D


def test_compressive_state_is_fixed_in_shape_and_counted():
    mixer = make(mem_len=6, cmem_len=4, cmem_rate=3)
    state = mixer.init_state(3)
    flat = flatten_state(state)
    assert {name: tuple(t.shape) for name, t in flat.items()} == {
        "state.memory": (3, 6, D), "state.valid": (3, 6), "state.compressed.memory": (3, 4, D),
        "state.compressed.valid": (3, 4), "state.compressed.pending": (3, 2, D), "state.compressed.pending_valid": (3, 2),
    }
    _, new = mixer(torch.randn(3, 11, D), state)
    assert {name: (t.shape, t.dtype) for name, t in flatten_state(new).items()} == {
        name: (t.shape, t.dtype) for name, t in flat.items()
    }
    assert mixer.state_size() == (6 + 4 + 2) * D  # memory, compressed memory and pending states


def test_mem_len_changed_at_evaluation_keeps_the_compressed_memory():
    mixer = make(mem_len=4, cmem_len=3, cmem_rate=2)
    x = torch.randn(2, 15, D)
    with torch.no_grad():
        _, state = mixer(x[:, :12])  # memory 8..11, compressed (2, 3), (4, 5), (6, 7), nothing pending
        cmem = state.compressed.memory
        with mixer.memory_length(6):  # two empty slots, counted as positions: the memory fills up, then 8 leaves
            y, longer = mixer(x[:, 12:], state)
            memory = torch.cat([torch.zeros(2, 2, D), x[:, 8:12]], 1)
            valid = torch.tensor([False, False, True, True, True, True]).expand(2, 6)
            assert rel_err(y, paper_reference(mixer, x[:, 12:], memory, valid, cmem=cmem)) < 1e-5
            assert torch.equal(longer.compressed.memory, cmem) and torch.equal(longer.compressed.pending[:, 0], x[:, 8])
        with mixer.memory_length(3):  # shorter: 8 is dropped, not compressed; 9 and 10 are, 11 waits
            y, shorter = mixer(x[:, 12:], state)
            assert rel_err(y, paper_reference(mixer, x[:, 12:], x[:, 9:12], cmem=cmem)) < 1e-5
            c = shorter.compressed
            assert rel_err(c.memory[:, -1], x[:, 9:11].mean(1)) < 1e-7 and torch.equal(c.pending[:, 0], x[:, 11])


def test_lm_memory_keeps_cmem_len():
    from lamina.config import from_dict
    from lamina.models.lm import LM, ModelConfig

    options = {"heads": 4, "mem_len": 8, "cmem_len": 6, "cmem_rate": 3}
    model = LM(from_dict(ModelConfig, {"d_model": D, "layers": ["xl"], "mixers": {"xl": options}}, "model"), 256)
    with model.memory(mem_len=20):
        assert model.state_size() == (20 + 6 + 2) * D
    assert model.state_size() == (8 + 6 + 2) * D


def test_groups_follow_the_valid_entries_in_order():
    """Rows at different places in their groups, with empty slots between real entries, as masks and refits leave."""
    from lamina.ops import kv_memory
    from lamina.ops import pool_groups

    stream = torch.arange(1.0, 8.0).view(1, 7, 1).expand(2, 7, 1)
    valid = torch.tensor([[0, 1, 0, 1, 1, 1, 0], [1, 1, 0, 0, 1, 0, 0]], dtype=torch.bool)
    (grouped,), complete, (rest,), rest_valid = kv_memory.split_groups((stream,), valid, 2)
    assert complete.tolist() == [[True, True, False], [True, False, False]]
    assert pool_groups(grouped, 2, "mean")[..., 0][complete].tolist() == [3.0, 5.5, 1.5]
    assert pool_groups(grouped, 2, "max")[..., 0][complete].tolist() == [4.0, 6.0, 2.0]
    assert rest[..., 0].tolist() == [[0.0], [5.0]] and rest_valid.tolist() == [[False], [True]]
    (memory,), kept = kv_memory.push((torch.ones(2, 2, 1),), torch.tensor([[False, True]] * 2), (rest,), rest_valid)
    assert memory[..., 0].tolist() == [[0.0, 1.0], [1.0, 5.0]] and kept.tolist() == [[False, True], [True, True]]


@pytest.mark.slow
def test_long_stream_finite_with_compressed_memory():
    mixer = make(mem_len=64, cmem_len=32, cmem_rate=3, clamp_len=200, same_length=True)
    assert_finite_stream(mixer, D, total=100_000, chunk=512)
