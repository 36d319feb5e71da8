"""The generic LM: carried state, generation, memory override."""

import torch

from lamina.config import ModelConfig
from lamina.eval import generate, sample_next
from lamina.mixers.state import flatten_state
from lamina.models import LM
from mixer_harness import check_lm_carries_state
from train_harness import check_decoding_is_one_call


def tiny_lm(layers=("hgrn", "gru", "attn"), mem_len=64):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, layers=list(layers), mixers={"attn": {"heads": 2, "mem_len": mem_len}})
    return LM(cfg, 257).eval()


def test_full_equals_carried_segments():
    model = tiny_lm()
    check_lm_carries_state(model)


def test_state_size_and_description():
    model = tiny_lm()
    sizes = [blk.mixer.state_size() for blk in model.blocks]
    assert model.state_size() == sum(sizes)
    assert sizes[0] == 32 and sizes[1] == 32 and sizes[2] == 2 * 64 * 32
    text = model.describe()
    assert f"{model.num_parameters():,}" in text and "hgrn, gru, attn" in text


def test_residual_projections_are_scaled():
    torch.manual_seed(0)
    model = LM(ModelConfig(d_model=256, layers=["attn"] * 8), 257)
    std_in = model.blocks[0].mixer.qkv.weight.std().item()
    std_out = model.blocks[0].mlp.down.weight.std().item()
    assert abs(std_in - 0.02) < 1e-3
    assert abs(std_out - 0.02 / 4) < 1e-3  # 0.02 / sqrt(2 * 8)


def test_greedy_generation_equals_teacher_forcing():
    model = tiny_lm(mem_len=0)  # vanilla attention: generation keeps a window of the context
    check_decoding_is_one_call(model, torch.randint(0, 256, (7,)), 12, context=32)
    assert model.memory_layers()[0].mem_len == 0  # the generation memory was temporary


def test_segment_models_generate_what_they_were_trained_as():
    """Infini-attention and the Block-Recurrent Transformer: segments span calls, so decoding equals teacher forcing."""
    torch.manual_seed(0)
    mixers = {"infini": {"heads": 2, "segment": 8}, "block_recurrent": {"heads": 2, "n_state": 4, "segment": 8}}
    model = LM(ModelConfig(d_model=32, layers=["infini", "block_recurrent"], mixers=mixers), 257).eval()
    check_lm_carries_state(model, length=45, cuts=(5, 6, 20))  # calls 5, 1, 14, 25: inside and across segments
    check_decoding_is_one_call(model, torch.randint(0, 256, (11,)), 20, context=8)


def test_generation_state_stays_constant():
    model = tiny_lm(layers=("hgrn", "gru"))
    sizes = []

    def watch(_):
        sizes.append(1)

    generate(model, torch.tensor([1, 2, 3]), max_new_tokens=300, context=16, temperature=1.0, seed=0, on_token=watch)
    assert len(sizes) == 300
    state = model.init_state(1)
    with torch.no_grad():
        for t in range(50):
            _, state = model(torch.tensor([[t]]), state)
    assert sum(v.numel() for v in flatten_state(state).values()) == model.state_size()


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, 1, 1.0, gen)) for _ in range(20)}
    assert picks == {2}
    picks = {int(sample_next(logits, 1.0, 0, 0.5, gen)) for _ in range(20)}
    assert picks == {2}  # the top token alone holds more than half the mass
    picks = {int(sample_next(logits, 1.0, 2, 1.0, gen)) for _ in range(200)}
    assert picks == {2, 3}
    assert int(sample_next(logits, 0.0, 0, 1.0, None)) == 2
