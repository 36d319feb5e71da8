"""Hierarchical Memory Transformer: a float64 reference, any cut of the stream, BPTT, the cache, checkpoints, CLI."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lamina.cli import main
from lamina.config import ModelConfig, load_config
from lamina.errors import LaminaError
from lamina.eval import evaluate
from lamina.mixers import detach_state
from lamina.mixers.state import flatten_state, unflatten_state
from lamina.models import LM
from lamina.models.hmt_options import HMTOptions
from lamina.train import load_model
from mixer_harness import assert_fp32_close, float64_copy, float64_state, rel_err
from train_harness import check_greedy_decoding_is_teacher_forcing, check_resume_is_bit_exact

L, K, N = 6, 2, 3  # segment, sensory, cache


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two competing for shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hmt(layers=("hgrn", "attn"), mem_len=256, segment=L, sensory=K, cache=N, summary_len=None, d=32):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d, layers=list(layers), mixers={"attn": {"heads": 2, "mem_len": mem_len}},
                      hmt=HMTOptions(segment=segment, sensory=sensory, cache=cache, summary_len=summary_len))
    return LM(cfg, 257).eval()


def random_ids(length, batch=2, seed=1):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference(model, ids, dtype=torch.float64):
    """HMT written plainly from the equations, in float64: logits, the cache (oldest first), P and the layer states.

    Per segment: read ``[P ; embed(last k ids of the previous segment) ; embed(segment) ; P]`` with the layers'
    states carried; the final hidden state at the last position enters the cache; the summary
    ``S = norm(blocks([T ; embed(last j ids of the segment) ; T]))`` from empty states, read at its last position,
    recalls ``P = softmax((S W_q)(M W_k)^T / sqrt(d)) M`` for the next segment. (In fp32 with ``dtype``: the
    equations' own fp32 error sets the tolerance, see mixer_harness.)
    """
    ref = copy.deepcopy(model).to(dtype)
    mem = ref.segment_memory
    seg_len, k, n_cache, j = mem.segment_len, mem.sensory, mem.cache, mem.summary_len
    B, d = ids.shape[0], ref.config.d_model

    def blocks(x, states):
        out = []
        for block, state in zip(ref.blocks, states):
            x, state = block(x, state)
            out.append(state)
        return ref.norm(x), out

    def empty():
        return [block.mixer.init_state(B, dtype=dtype) for block in ref.blocks]

    layers, cache, previous, logits = empty(), [], None, []
    P = mem.initial.expand(B, 1, d)
    for s in range(0, ids.shape[1], seg_len):
        segment = ids[:, s : s + seg_len]
        read = [P] + ([ref.embed(previous[:, seg_len - k :])] if previous is not None and k else [])
        complete = segment.shape[1] == seg_len
        h, layers = blocks(torch.cat(read + [ref.embed(segment)] + ([P] if complete else []), dim=1), layers)
        r = sum(t.shape[1] for t in read)
        logits.append(h[:, r : r + segment.shape[1]] @ ref.embed.weight.T)
        if complete:
            cache = (cache + [h[:, -1]])[-n_cache:]
            T = mem.prompt.expand(B, 1, d)
            S = blocks(torch.cat([T, ref.embed(segment[:, seg_len - j :]), T], dim=1), empty())[0][:, -1]
            M = torch.stack(cache, dim=1)
            scores = torch.einsum("be,bne->bn", S @ mem.query.weight.T, M @ mem.key.weight.T) / math.sqrt(d)
            P = torch.einsum("bn,bne->be", scores.softmax(-1), M)[:, None]
            previous = segment
    return torch.cat(logits, dim=1), torch.stack(cache, dim=1), P, layers, ref


@pytest.mark.parametrize("layers, mem_len, sensory, summary_len", [
    (("hgrn", "attn"), 256, K, None),  # summary of j = L/2 = 3 tokens, sensory memory of 2
    (("attn", "attn"), 0, 4, 2),  # vanilla attention; the sensory window longer than the summary's
])
def test_matches_float64_reference(layers, mem_len, sensory, summary_len):
    """Four segments and a half (odd length): logits, cache, P, layer states and every gradient."""
    model = hmt(layers, mem_len, sensory=sensory, summary_len=summary_len).train()  # train mode keeps the graph
    with torch.no_grad():
        # Unit-scale weights: at the N(0, 0.02) initialisation every memory embedding is nearly the normalised P
        # read before it, so the recall's gradients are differences of near-equal terms, lost to fp32 rounding.
        for name, w in model.named_parameters():
            if w.dim() == 2:
                w.normal_(0, w.shape[1] ** -0.5)
            elif "norm" not in name and "shared" not in name:
                w.normal_(0, 1)
    ids = random_ids(4 * L + 3)
    logits, state = model(ids)
    want, cache, P, layers_want, ref = reference(model, ids)
    own, own_cache, own_P, layers_own, ref32 = reference(model, ids, torch.float32)
    assert_fp32_close(logits, want, own, "logits")
    (got_cache, valid, got_p, recent, filled, started), got_layers = state
    assert valid.all() and started.all() and filled.tolist() == [3, 3]
    assert_fp32_close(got_cache, cache, own_cache, "cache")
    assert_fp32_close(got_p, P, own_P, "P")
    assert torch.equal(recent, ids[:, -max(sensory, summary_len or L // 2) :])  # the last max(k, j) ids read
    own_layers = flatten_state(layers_own)
    for name, value in flatten_state(layers_want).items():
        got = flatten_state(got_layers)[name]
        if got.is_floating_point():
            assert_fp32_close(got, value, own_layers[name], name)
        else:
            assert torch.equal(got, value), name
    probe = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * probe).sum().backward()
    (want * probe.double()).sum().backward()
    (own * probe).sum().backward()
    ref_params, own_params = dict(ref.named_parameters()), dict(ref32.named_parameters())
    for name, p in model.named_parameters():
        if name.startswith("segment_memory") or p.grad is not None:  # (hgrn's lower bound for layer 0 is unused)
            assert p.grad.abs().sum() > 0, name
            assert_fp32_close(p.grad, ref_params[name].grad, own_params[name].grad, f"gradient of {name}")


def test_any_cut_equals_one_call_with_gradients():
    """One call, uneven pieces crossing segment ends, and single tokens: logits, state and gradients agree.

    Against the one call in float64, within the tolerance that the one call in fp32 gives (see mixer_harness).
    """
    model = hmt().train()
    ids = random_ids(4 * L + 5)
    probe = torch.randn(ids.shape + (model.vocab_size,), generator=torch.Generator().manual_seed(3))

    def run(m, cuts, state):
        m.zero_grad()
        bounds, pieces = [0, *cuts, ids.shape[1]], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            logits, state = m(ids[:, a:b], state)  # the state keeps its graph: gradients cross the cuts
            pieces.append(logits)
        logits = torch.cat(pieces, dim=1)
        (logits * probe.to(logits.dtype)).sum().backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        return logits.detach(), flatten_state(detach_state(state)), grads

    model64 = float64_copy(model)  # (it keeps the recalled P in fp32: 1e-9 off the float64 equations, no more)
    want, want_state, want_grads = run(model64, [], float64_state(model64.init_state(2)))
    own, own_state, own_grads = run(model, [], None)
    for cuts in ([4, 5, 17, 18, 25], list(range(1, ids.shape[1]))):
        got, got_state, got_grads = run(model, cuts, None)
        what = f"calls cut at {cuts}"
        assert_fp32_close(got, want, own, f"{what}: logits")
        for name, value in want_state.items():
            g = got_state[name]
            if g.is_floating_point():
                assert g.dtype == torch.float32 and own_state[name].dtype == torch.float32, name
                assert_fp32_close(g, value, own_state[name], f"{what}: {name}")
            else:
                assert torch.equal(g, value), f"{what}: {name}"
        assert got_grads.keys() == want_grads.keys() == own_grads.keys()
        for name, value in want_grads.items():
            assert_fp32_close(got_grads[name], value, own_grads[name], f"{what}: gradient of {name}")


def test_cache_is_fifo_and_sensory_holds_the_last_tokens():
    model = hmt(layers=("hgrn",))
    ids = random_ids(6 * L, seed=4)
    state, caches = None, []
    with torch.no_grad():
        for n in range(6):
            _, state = model(ids[:, n * L : (n + 1) * L], state)
            memory = state.memory
            cache, valid, recent, filled, started = (memory.cache, memory.cache_valid, memory.recent, memory.filled,
                                                      memory.started)
            assert valid.sum(1).tolist() == [min(n + 1, N)] * 2 and valid[:, N - min(n + 1, N) :].all()
            assert torch.equal(recent, ids[:, (n + 1) * L - 3 : (n + 1) * L]) and not filled.any() and started.all()
            if caches:  # one memory embedding in, the oldest out
                assert torch.equal(cache[:, :-1], caches[-1][:, 1:])
                assert not torch.equal(cache[:, -1], caches[-1][:, -1])
            caches.append(cache)
        prefix, mask = model.segment_memory.read(state.memory, model)
        assert mask is None and prefix.shape == (2, 1 + K, 32)
        assert torch.equal(prefix[:, 1:], model.embed(ids[:, -K:]))  # sensory memory: the last k tokens
        assert torch.equal(prefix[:, :1], state.memory.recalled)  # the recalled embedding


def test_empty_state_reads_the_initial_embedding_without_sensory_memory():
    model = hmt()
    prefix, mask = model.segment_memory.read(model.init_state(2).memory, model)
    assert mask is None and torch.equal(prefix, model.segment_memory.initial.expand(2, 1, 32))


def test_rows_at_different_stages_equal_rows_alone():
    """A row that has completed a segment and one that has not, in one batch, each as if alone."""
    model = hmt()
    ids = random_ids(2 * L + 4, batch=1, seed=5)
    fresh = random_ids(L + 4, batch=1, seed=6)
    with torch.no_grad():
        _, started = model(ids[:, :L])
        alone = [model(ids[:, L:], started)[0], model(fresh)[0]]
        rows = zip(flatten_state(started).values(), flatten_state(model.init_state(1)).values())
        template = model.init_state(2)
        mixed = unflatten_state(template, dict(zip(flatten_state(template), map(torch.cat, rows))))
        logits, _ = model(torch.cat([ids[:, L:], fresh]), mixed)
    assert rel_err(logits[:1], alone[0]) < 1e-5 and rel_err(logits[1:], alone[1]) < 1e-5


def _segment1_grad(model, detach_after: int | None) -> tuple[float, torch.Tensor | None]:
    """Gradient of segment 3's loss w.r.t. the embeddings made while reading segment 1 (and W_q's gradient)."""
    captured = []

    def keep(module, inputs, out):
        if out.requires_grad:
            out.retain_grad()
            captured.append(out)

    ids = random_ids(3 * L + 1, seed=7)
    model.zero_grad()
    handle = model.embed.register_forward_hook(keep)
    _, state = model(ids[:, :L])
    handle.remove()
    for n in (1, 2):
        if detach_after == n:
            state = detach_state(state)
        logits, state = model(ids[:, n * L : (n + 1) * L], state)
    F.cross_entropy(logits.flatten(0, 1), ids[:, 2 * L + 1 :].flatten()).backward()
    total = sum(float(t.grad.abs().sum()) for t in captured if t.grad is not None)
    return total, model.segment_memory.query.weight.grad


def test_gradient_reaches_segment_one_only_through_bptt():
    # vanilla attention carries nothing across segments, and k = 0: only the recalled memory links them
    model = hmt(layers=("attn", "attn"), mem_len=0, sensory=0).train()
    reached, query_grad = _segment1_grad(model, detach_after=None)  # train.bptt_segments = 3
    assert reached > 0 and query_grad.abs().sum() > 0
    assert _segment1_grad(model, detach_after=1)[0] == 0  # segments 1 | 2 3
    reached, query_grad = _segment1_grad(model, detach_after=2)  # segments 1 2 | 3: P_3 was recalled before the cut
    assert reached == 0 and (query_grad is None or query_grad.abs().sum() == 0)


def test_sensory_memory_learns_to_copy_the_previous_segment():
    """Segment 2 repeats segment 1 (random tokens): within segment 2 alone its next token is chance."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=["attn", "attn"], mixers={"attn": {"heads": 2}},
                      hmt=HMTOptions(segment=6, sensory=6, cache=1))
    model = LM(cfg, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)
    for _ in range(100):
        seg = torch.randint(0, 16, (32, 6), generator=data)
        _, state = model(seg)
        logits, _ = model(seg, state)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), seg[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * math.log(16)


@pytest.mark.parametrize("layers, mem_len", [(("hgrn", "hgrn"), 0), (("attn", "attn"), 0), (("hgrn", "attn"), 16)])
def test_greedy_generation_equals_teacher_forcing_and_state_is_bounded(layers, mem_len):
    # with attention, decoding's wider window must still see exactly what the segment-by-segment call sees
    model = hmt(layers=layers, mem_len=mem_len)
    check_greedy_decoding_is_teacher_forcing(model, random_ids(11, batch=1, seed=8)[0], 40, context=4, steps=3 * L + 2)


def test_state_layout_size_and_parameters():
    model = hmt(summary_len=4)
    (cache, valid, p, recent, filled, started), layers = model.init_state(3)
    assert cache.shape == (3, N, 32) and cache.dtype == torch.float32 and p.shape == (3, 1, 32)
    assert valid.shape == (3, N) and recent.shape == (3, 4) and filled.shape == started.shape == (3,)
    assert not any(t.any() for t in (cache, valid, p, recent, filled, started))
    assert model.state_size() == sum(blk.mixer.state_size() for blk in model.blocks) + (N + 1) * 32
    extra = sum(p.numel() for p in model.segment_memory.parameters())
    assert extra == 2 * 32 * 32 + 2 * 32
    plain = LM(ModelConfig(d_model=32, layers=["hgrn", "attn"], mixers={"attn": {"heads": 2, "mem_len": 256}}), 257)
    assert model.num_parameters() == plain.num_parameters() + extra
    assert "HMT" in model.describe() and "cache of 3" in model.describe()
    assert hmt().segment_memory.summary_len == L // 2  # the paper's j = L/2


def test_bad_options():
    with pytest.raises(LaminaError, match="only one can be used"):
        load_config("default", ["model.hmt={}", "model.memory_tokens=4"])
    for key, bad in (("segment", 0), ("sensory", -1), ("cache", 0), ("summary_len", 0)):
        with pytest.raises(LaminaError, match=f"model.hmt.{key}"):
            load_config("default", [f"model.hmt.{key}={bad}"])
    with pytest.raises(LaminaError, match="model.hmt.sensory = 40 is longer than a segment"):
        LM(load_config("default", ["model.hmt={segment: 32, sensory: 40}"]).model, 257)
    with pytest.raises(LaminaError, match="model.hmt.summary_len"):
        hmt(summary_len=L + 1)
    with pytest.raises(LaminaError, match="model.hmt.segment"):
        LM(ModelConfig(d_model=32, layers=["hgrn"], hmt=HMTOptions()), 257)
    with pytest.raises(LaminaError, match="unknown key 'model.hmt.sensor'"):
        load_config("default", ["model.hmt.sensor=4"])
    with pytest.raises(LaminaError, match="model.hmt=null"):
        hmt()(torch.zeros(1, 4, dtype=torch.long), valid=torch.ones(1, 4, dtype=torch.bool))
    cfg = load_config("default", ["model.hmt={}", "train.seq_len=64"])
    assert cfg.model.hmt == HMTOptions(segment=64, sensory=8, cache=32, summary_len=None)


HMT = ["model.hmt={sensory: 4, cache: 4}", "train.bptt_segments=2", "train.seq_len=16",
       "model.mixers={attn: {heads: 2, mem_len: 8}}"]


def test_checkpoint_round_trip_and_bit_exact_resume(tiny, tmp_path):
    run, want, saved = check_resume_is_bit_exact(tiny + HMT, tmp_path)
    assert {"segment_memory.prompt", "segment_memory.initial", "segment_memory.query.weight"} <= set(want)
    cache, valid = saved["state.memory.cache"], saved["state.memory.cache_valid"]
    assert cache.shape == (4, 4, 32) and valid.all() and saved["state.memory.started"].all()  # 16 segments filled it
    model, tokenizer, cfg = load_model(run)
    assert cfg.model.hmt.segment == 16
    tokens = torch.randint(0, 256, (800,), generator=torch.Generator().manual_seed(4))
    for tgt_len in (16, 48):  # one segment per call, three per call
        for carry in (True, False):
            result = evaluate(model, tokens, batch_size=4, tgt_len=tgt_len, carry=carry)
            assert result.tokens >= 790 and 0 < result.nats < 6


def test_cli_train_eval_generate_passkey_info(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "hmt", *tiny, *HMT, "train.steps=6", "train.eval_every=6", "train.save_every=6"]) == 0
    assert main(["eval", str(run), "--split", "valid", "--max-tokens", "2000", "--device", "cpu"]) == 0
    assert main(["eval", str(run), "--passkey", "120", "--passkey-trials", "1", "--device", "cpu"]) == 0
    assert main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "0",
                 "--device", "cpu"]) == 0
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "ROMEO:" in out and "length       120: " in out and "cache of 4 memory embeddings" in out
    assert main(["info", "hmt"]) == 0
    assert "layers (4): attn, attn, attn, attn" in capsys.readouterr().out
