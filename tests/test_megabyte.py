"""MEGABYTE: a float64 loop over patches, streaming in any split, causality, generation, config and CLI."""

import pytest
import torch
import torch.nn.functional as F

from lamina.cli import main
from lamina.config import ModelConfig, load_config
from lamina.errors import LaminaError
from lamina.mixers.state import flatten_state
from lamina.models import LM, Megabyte, build_model
from lamina.train import load_model, train
from mixer_harness import rel_err
from train_harness import check_decoding_is_one_call

V = 257


def tiny(patch=4, local_layers=("attn", "hgrn"), seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        d_model=32, layers=["hgrn", "attn"], mixers={"attn": {"heads": 2, "mem_len": 64}},
        megabyte={"patch": patch, "local_d_model": 16, "local_layers": list(local_layers),
                  "local_mixers": {"attn": {"heads": 2}}},
    )
    model = build_model(cfg, V).eval()
    assert isinstance(model, Megabyte)
    return model


def reference_logits(model: Megabyte, ids: torch.Tensor) -> torch.Tensor:
    """Section 2 of the paper, patch by patch: logits predicting bytes s = 1..T of ``ids`` (``[B, T]``)."""
    B, T = ids.shape
    P, D = model.patch, model.local_pad.shape[0]
    K = T // P + 1  # patches holding positions s = 0..T
    inputs = [model.global_pad.reshape(1, -1).expand(B, -1)]
    for k in range(1, K):
        inputs.append(model.global_embed(ids[:, (k - 1) * P : k * P]).reshape(B, P * D))
    h = model.global_in(torch.stack(inputs, dim=1))
    for block in model.global_model.blocks:  # all patches in one call, from the empty state
        h, _ = block(h, None)
    g = model.global_out(model.global_model.norm(h)).view(B, K, P, D)
    logits = []
    for k in range(K):
        local = []
        for i in range(P):
            s = k * P + i
            if s > T:
                break
            byte = model.local_pad.expand(B, D) if i == 0 else model.local_embed(ids[:, s - 1])
            local.append(g[:, k, i] + byte)
        x = torch.stack(local, dim=1)
        for block in model.local_model.blocks:  # each patch from the empty state
            x, _ = block(x, None)
        logits.append(model.local_model.norm(x) @ model.local_embed.weight.T)
    return torch.cat(logits, dim=1)[:, 1:]  # byte 0 is never predicted


@pytest.mark.parametrize("patch,length", [(4, 23), (3, 17), (5, 5)])
def test_matches_float64_reference_loop(patch, length):
    model = tiny(patch).double()
    ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, _ = model(ids)
        want = reference_logits(model, ids)
    assert got.shape == (2, length, V)
    assert rel_err(got, want) < 1e-10


def run_pieces(model, ids, cuts):
    bounds = [0, *cuts, ids.shape[1]]
    pieces, state = [], None
    for a, b in zip(bounds[:-1], bounds[1:]):
        logits, state = model(ids[:, a:b], state)
        pieces.append(logits)
    return torch.cat(pieces, dim=1), state


def assert_same_state(got, want):
    got, want = flatten_state(got), flatten_state(want)
    assert got.keys() == want.keys()
    for k in want:
        assert rel_err(got[k].double(), want[k].double()) < 1e-5, k


@pytest.mark.parametrize("cuts", [(3,), (4, 8), (1, 2, 3, 5, 9, 14), (7, 11, 12, 13), tuple(range(1, 23))])
def test_full_equals_chunks_and_token_by_token(cuts):
    """Calls of any sizes, patch boundaries inside calls or between them, one byte at a time: logits and state."""
    model = tiny()
    ids = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, full_state = model(ids)
        pieces, state = run_pieces(model, ids, cuts)
    assert rel_err(pieces, full) < 1e-5
    assert_same_state(state, full_state)
    ahead = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # the carried states continue alike
        assert rel_err(model(ahead, state)[0], model(ahead, full_state)[0]) < 1e-5


def test_empty_call_keeps_the_state():
    model = tiny()
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        _, state = model(ids)
        logits, same = model(ids[:, :0], state)
    assert logits.shape == (2, 0, V)
    assert_same_state(same, state)


def test_gradients_full_equal_chunks_with_graph_kept():
    model = tiny().train()
    ids = torch.randint(0, 256, (2, 22), generator=torch.Generator().manual_seed(4))
    targets = torch.randint(0, 256, (2, 22), generator=torch.Generator().manual_seed(5))

    def grads(run):
        model.zero_grad()
        logits, _ = run()
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full = grads(lambda: model(ids))
    chunked = grads(lambda: run_pieces(model, ids, (5, 6, 13)))
    unused = {"global_model.shared.hgrn_lower_bounds"}  # the global model's one HGRN layer has lower bound 0
    assert full.keys() == chunked.keys() == {n for n, _ in model.named_parameters()} - unused
    for name in full:
        assert rel_err(chunked[name], full[name]) < 1e-4, name


def test_causal():
    model = tiny()
    ids = torch.randint(0, 256, (1, 21), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        base, _ = model(ids)
        for t in (0, 3, 4, 9, 20):
            changed = ids.clone()
            changed[0, t] = (changed[0, t] + 1) % 256
            logits, _ = model(changed)
            assert torch.equal(logits[:, :t], base[:, :t]), t
            assert not torch.allclose(logits[:, t], base[:, t]), t  # byte t itself is read at position t


def test_greedy_generation_equals_teacher_forcing():
    model = tiny(local_layers=("attn",))
    check_decoding_is_one_call(model, torch.randint(0, 256, (7,)), 14, context=8)
    assert model.memory_layers()[0].mem_len == 64  # the generation memory was temporary


def test_state_size_and_memory():
    model = tiny()
    with torch.no_grad():
        _, state = model(torch.randint(0, 256, (1, 10)))
    floats = sum(v.numel() for v in flatten_state(state).values() if v.is_floating_point())
    assert floats == model.state_size()
    local_attn = model.local_model.blocks[0].mixer
    assert local_attn.mem_len == model.patch - 1  # the whole patch, however it is split
    with model.memory(mem_len=5):
        assert model.global_model.blocks[1].mixer.mem_len == 5 and local_attn.mem_len == model.patch - 1
    text = model.describe()
    assert "patches of 4 bytes" in text and f"{model.num_parameters():,}" in text and "attn, hgrn" in text


def test_factory_builds_the_lm_without_megabyte():
    assert type(build_model(ModelConfig(d_model=16, layers=["hgrn"]), V)) is LM


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["model.megabyte={patch: 1}"], ["model.megabyte.patch", ">= 2"]),
        (["model.megabyte={local_d_model: 0}"], ["model.megabyte.local_d_model"]),
        (["model.megabyte={pach: 4}"], ["unknown key", "model.megabyte.pach", "patch"]),
        (["model.megabyte={}", "model.hmt={}"], ["model.megabyte", "model.hmt=null"]),
        (["model.megabyte={}", "model.memory_tokens=4"], ["model.megabyte", "memory_tokens=0"]),
        (["model.megabyte={}", "data.tokenizer=words"], ["model.megabyte", "data.tokenizer=bytes"]),
        (["model.megabyte={}", "model.hat={}"], ["model.hat", "model.megabyte=null"]),
        (["model.megabyte={local_layers: [atn]}"], ["unknown mixer", "atn"]),
        (["model.megabyte={local_mixers: {attn: {haeds: 2}}}"], ["haeds", "heads"]),
    ],
)
def test_bad_config_is_named(overrides, words):
    with pytest.raises(LaminaError) as err:
        build_model(load_config("default", overrides).model, V)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_python_mapping_and_masks_rejected():
    with pytest.raises(LaminaError, match="model.megabyte has unknown keys"):
        ModelConfig(megabyte={"patches": 4})
    model = tiny()
    ids = torch.randint(0, 256, (1, 5))
    with pytest.raises(LaminaError, match="padding or reset masks"):
        model(ids, valid=torch.ones(1, 5, dtype=torch.bool))


def test_words_corpus_is_refused_at_training(tmp_path, word_corpus, capsys):
    args = ["train", "megabyte", *word_corpus, "data.tokenizer=null",
            "train.steps=1", f"train.out_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    assert "data.tokenizer=bytes" in capsys.readouterr().err


def test_train_checkpoint_eval_and_generate(tmp_path, capsys):
    """Trained through the trainer, reloaded from its checkpoint, evaluated and sampled through the CLI."""
    run = tmp_path / "run"
    small = ["model.d_model=32", "model.megabyte.local_d_model=16", "train.steps=3", "train.batch_size=2",
             "train.seq_len=22", "train.warmup_steps=1", "train.eval_tokens=200", "train.sample_tokens=0",
             f"train.out_dir={run}"]
    result = train(load_config("megabyte", small), log=lambda *a: None)
    model, tokenizer, cfg = load_model(run)
    assert isinstance(model, Megabyte) and cfg.model.megabyte.patch == 4
    ids = tokenizer.encode(b"import os\nimport sys\n")[None]
    fresh = build_model(cfg.model, tokenizer.vocab_size).eval()
    with torch.no_grad():
        want = result.model.eval()(ids)[0]
        assert torch.equal(model(ids)[0], want)
        assert not torch.allclose(fresh(ids)[0], want)
    assert main(["eval", str(run), "--max-tokens", "300", "--batch-size", "2"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert main(["generate", str(run), "--prompt", "def ", "--max-new-tokens", "9", "--seed", "0"]) == 0
    assert capsys.readouterr().out.strip()
