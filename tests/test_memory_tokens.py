"""Memory tokens (Recurrent Memory Transformer): segments, BPTT, checkpoints, generation, CLI."""


import pytest
import torch
import torch.nn.functional as F

from lamina.cli import main
from lamina.config import ModelConfig, load_config
from lamina.errors import LaminaError
from lamina.eval import evaluate, generate
from lamina.mixers import detach_state
from lamina.mixers.state import flatten_state
from lamina.models import LM
from lamina.train import load_model
from mixer_harness import rel_err
from train_harness import check_greedy_decoding_is_teacher_forcing, check_resume_is_bit_exact


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster than two competing


def rmt(layers=("hgrn", "attn"), mem_len=256, m=4, segment=8, d=32):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=d, layers=list(layers), mixers={"attn": {"heads": 2, "mem_len": mem_len}},
                      memory_tokens=m, memory_segment=segment)
    return LM(cfg, 257).eval()


def test_any_cut_equals_one_call():
    """Whole segments, uneven pieces and single tokens give the same logits and state."""
    model = rmt()
    ids = torch.randint(0, 256, (2, 45), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, want = model(ids)
        for cuts in ([3, 20, 21], list(range(1, 45))):
            bounds, state, pieces = [0, *cuts, 45], None, []
            for a, b in zip(bounds[:-1], bounds[1:]):
                logits, state = model(ids[:, a:b], state)
                pieces.append(logits)
            assert rel_err(torch.cat(pieces, 1), full) < 1e-5
            for name, value in flatten_state(want).items():
                got = flatten_state(state)[name]
                assert torch.equal(got, value) if not got.is_floating_point() else rel_err(got, value) < 1e-5


def test_state_layout_and_size():
    model = rmt()
    state = model.init_state(3)
    (memory, filled, started), layers = state
    assert memory.shape == (3, 4, 32) and memory.dtype == torch.float32
    assert not filled.any() and not started.any() and len(layers) == 2
    sizes = [blk.mixer.state_size() for blk in model.blocks]
    assert model.state_size() == sum(sizes) + 4 * 32
    floats = [v for v in flatten_state(rmt(layers=("hgrn", "gru")).init_state(1)).values() if v.is_floating_point()]
    assert sum(v.numel() for v in floats) == 2 * 32 + 4 * 32
    assert "memory tokens 4" in model.describe()


def test_memory_is_written_at_segment_ends():
    model = rmt(layers=("hgrn",))
    with torch.no_grad():
        _, state = model(torch.zeros(1, 5, dtype=torch.long))
        assert int(state.memory.filled[0]) == 5 and not state.memory.started.any()  # mid-segment: not written yet
        _, state = model(torch.zeros(1, 3, dtype=torch.long), state)
        assert int(state.memory.filled[0]) == 0 and state.memory.started.all() and state.memory.memory.abs().sum() > 0


def _seg2_grad_wrt_seg1(model, cut_graph: bool) -> torch.Tensor:
    """Gradient of the second segment's loss with respect to the first segment's input embeddings."""
    captured = []
    handle = model.embed.register_forward_hook(lambda mod, inp, out: captured.append(out) or out.retain_grad())
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(2))
    _, state = model(ids[:, :8])
    if cut_graph:
        state = detach_state(state)
    logits, _ = model(ids[:, 8:16], state)
    F.cross_entropy(logits.flatten(0, 1), ids[:, 9:17].flatten()).backward()
    handle.remove()
    grad = captured[0].grad
    return torch.zeros_like(captured[0]) if grad is None else grad


def test_gradient_flows_through_memory_only_across_bptt_segments():
    # vanilla attention (mem_len 0) carries nothing: the memory tokens are the only way across segments
    model = rmt(layers=("attn", "attn"), mem_len=0).train()
    assert _seg2_grad_wrt_seg1(model, cut_graph=False).abs().sum() > 0  # bptt_segments = 2
    assert torch.equal(_seg2_grad_wrt_seg1(model, cut_graph=True), torch.zeros(2, 8, 32))  # bptt_segments = 1
    plain = LM(ModelConfig(d_model=32, layers=["attn", "attn"], mixers={"attn": {"heads": 2}}), 257).train()
    assert torch.equal(_seg2_grad_wrt_seg1(plain, cut_graph=False), torch.zeros(2, 8, 32))


@pytest.mark.parametrize("layers, mem_len", [(("hgrn", "hgrn"), 0), (("attn", "attn"), 0), (("hgrn", "attn"), 16)])
def test_greedy_generation_equals_teacher_forcing_and_state_is_bounded(layers, mem_len):
    # with attention, decoding's wider window must still see exactly what the segment-by-segment call sees
    model = rmt(layers=layers, mem_len=mem_len)
    prompt = torch.randint(0, 256, (11,), generator=torch.Generator().manual_seed(3))
    check_greedy_decoding_is_teacher_forcing(model, prompt, 200, context=8, steps=40)


@pytest.mark.parametrize("mixer", ["xl", "fox"])
def test_decoding_other_memory_layers_equals_one_call(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=[mixer, "hgrn"], mixers={mixer: {"heads": 2, "mem_len": 8}},
                      memory_tokens=4, memory_segment=8)
    prompt = torch.randint(0, 256, (11,), generator=torch.Generator().manual_seed(5))
    check_greedy_decoding_is_teacher_forcing(LM(cfg, 257).eval(), prompt, 40, context=8, steps=20)


def test_decoding_refuses_compressive_memory_inside_segments():
    cfg = ModelConfig(d_model=32, layers=["xl"], mixers={"xl": {"heads": 2, "mem_len": 8, "cmem_len": 4}},
                      memory_tokens=4, memory_segment=8)
    with pytest.raises(LaminaError, match="compress their memory.*model.memory_tokens=0"):
        generate(LM(cfg, 257).eval(), torch.tensor([1, 2, 3]), max_new_tokens=2, context=8)


def test_bad_options():
    with pytest.raises(LaminaError, match="model.memory_tokens"):
        load_config("default", ["model.memory_tokens=-1"])
    with pytest.raises(LaminaError, match="train.bptt_segments"):
        load_config("default", ["train.bptt_segments=0"])
    with pytest.raises(LaminaError, match="model.memory_segment"):
        LM(ModelConfig(d_model=32, layers=["hgrn"], memory_tokens=2), 257)
    assert load_config("default", ["model.memory_tokens=8", "train.seq_len=64"]).model.memory_segment == 64
    model = rmt()
    with pytest.raises(LaminaError, match="memory_tokens"):
        model(torch.zeros(1, 4, dtype=torch.long), valid=torch.ones(1, 4, dtype=torch.bool))


RMT = ["model.memory_tokens=4", "train.bptt_segments=2", "train.seq_len=16", "model.mixers={attn: {heads: 2, mem_len: 8}}"]


def test_checkpoint_round_trip_and_bit_exact_resume(tiny, tmp_path):
    run, want, saved = check_resume_is_bit_exact(tiny + RMT, tmp_path)
    assert "segment_memory.initial" in want
    assert saved["state.memory.memory"].shape == (4, 4, 32) and saved["state.memory.started"].all()  # carried memory
    model, tokenizer, cfg = load_model(run)
    assert cfg.model.memory_segment == 16
    tokens = torch.randint(0, 256, (800,), generator=torch.Generator().manual_seed(4))
    for tgt_len in (16, 48):  # one memory segment per call, three per call
        for carry in (True, False):
            result = evaluate(model, tokens, batch_size=4, tgt_len=tgt_len, carry=carry)
            assert result.tokens >= 790 and 0 < result.nats < 6


def test_cli_train_eval_generate(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "default", *tiny, *RMT, "model.memory_tokens=8", "train.steps=6", "train.eval_every=6",
                 "train.save_every=6"]) == 0
    assert main(["eval", str(run), "--split", "valid", "--max-tokens", "2000", "--device", "cpu"]) == 0
    assert main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "0",
                 "--device", "cpu"]) == 0
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "ROMEO:" in out and "memory tokens 8" in out


def _copy_task_loss(m: int, steps: int = 150) -> float:
    """Train on 'repeat the previous segment': only the memory links the copy to its source."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=["attn", "attn"], mixers={"attn": {"heads": 2}},
                      memory_tokens=m, memory_segment=6 if m else None)
    model = LM(cfg, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        seg = torch.randint(0, 16, (32, 6), generator=data)
        _, state = model(seg)  # segment 1; segment 2 repeats it (gradients flow across both)
        logits, _ = model(seg, state)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), seg[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_memory_carries_a_segment_to_the_next():
    chance = torch.log(torch.tensor(16.0)).item()
    assert _copy_task_loss(0) > 0.95 * chance  # vanilla attention cannot see the previous segment
    assert _copy_task_loss(4) < 0.6 * chance  # four memory tokens carry most of six random tokens
