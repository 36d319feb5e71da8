"""Models, generation and evaluation reach key/value memory layers only through KVMemoryMixer's declared members."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import lamina
from lamina.config import ModelConfig, from_dict
from lamina.errors import LaminaError
from lamina.eval.generate import decoding_extra
from lamina.mixers import KVMemoryMixer, mixer_class, mixer_names
from lamina.models.lm import LM

D = 16


class LastState(NamedTuple):
    memory: torch.Tensor  # [B, M, D]
    valid: torch.Tensor  # [B, M]


@dataclass
class LastOptions:
    mem_len: int = 0


class MeanOfMemory(KVMemoryMixer):
    """A memory mixer that implements only the protocol: each token reads the mean of the valid memory before it."""

    Options = LastOptions
    forms = ("recurrent",)
    compressed = 0

    def __init__(self, d_model, options, layer_idx=0, n_layers=1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.trimmed = 0

    @property
    def compressed_len(self) -> int:
        return self.compressed

    def init_state(self, batch, device=None, dtype=None):
        return LastState(torch.zeros(batch, self.mem_len, self.d_model, device=device),
                         torch.zeros(batch, self.mem_len, dtype=torch.bool, device=device))

    def step(self, x, state):
        weights = state.valid.float()
        y = (state.memory * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
        memory = torch.cat([state.memory, x[:, None].float()], 1)[:, 1:]
        valid = torch.cat([state.valid, torch.ones_like(state.valid[:, :1])], 1)[:, 1:]
        return y.to(x.dtype) + x, LastState(memory, valid)

    def trim_state(self, state):
        self.trimmed += 1
        return super().trim_state(state)


def lm_with(mem_len: int, **config) -> LM:
    """An LM of two hgrn layers whose second is a :class:`MeanOfMemory` with ``mem_len``."""
    model = LM(from_dict(ModelConfig, {"d_model": D, "layers": ["hgrn", "hgrn"], **config}, "model"), 256)
    model.blocks[1].mixer = MeanOfMemory(D, LastOptions(mem_len), 1, 2)
    return model


def test_a_memory_mixer_of_the_protocol_alone_works_in_an_lm():
    model = lm_with(4)
    assert model.memory_layers() == [model.blocks[1].mixer]
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        logits, state = model(ids)
        assert logits.shape == (2, 9, 256) and state[1].memory.shape == (2, 4, D) and state[1].valid.all()
        with model.memory(mem_len=6, extra=2):
            assert model.blocks[1].mixer.mem_len == 8 and model.init_state(1)[1].memory.shape == (1, 8, D)
            assert model.state_size() == model.blocks[0].mixer.state_size() + 8 * (D + 1)
        assert model.blocks[1].mixer.mem_len == model.blocks[1].mixer.own_mem_len == 4


def test_a_segment_model_cuts_a_widened_memory_back_through_the_protocol():
    model = lm_with(3, memory_tokens=2, memory_segment=4)
    mixer = model.blocks[1].mixer
    with torch.no_grad(), model.memory(extra=decoding_extra(model, 4)):
        state = model.init_state(1)
        for token in torch.randint(0, 256, (9,)):
            _, state = model(token.view(1, 1), state)
    assert mixer.trimmed == 3  # once per segment start: tokens 0, 4 and 8
    assert int(state.layers[1].valid.sum()) <= 3 + decoding_extra(model, 4)
    with torch.no_grad():  # unwidened, trimming keeps the state as it is
        assert mixer.trim_state(state.layers[1]) is state.layers[1]


def test_decoding_refuses_a_compressed_memory_under_a_segment_memory():
    model = lm_with(3, memory_tokens=2, memory_segment=4)
    model.blocks[1].mixer.compressed = 2
    with pytest.raises(LaminaError, match="compress their memory"):
        decoding_extra(model, 4)


def test_every_memory_mixer_declares_the_protocol():
    """The mixers with a mem_len option are the KVMemoryMixers, and their state names its validity ``valid``."""
    for name in mixer_names():
        cls = mixer_class(name)
        has_mem_len = any(f == "mem_len" for f in cls.Options.__dataclass_fields__)
        assert issubclass(cls, KVMemoryMixer) == has_mem_len, name
        if has_mem_len:
            mixer = cls(32, cls.Options(mem_len=5))
            state = mixer.init_state(2)
            assert state.valid.shape == (2, 5) and mixer.own_mem_len == mixer.mem_len == 5
            with mixer.memory_length(extra=3):
                wide = mixer.init_state(2)._replace(valid=torch.ones(2, 8, dtype=torch.bool))
                assert mixer.trim_state(wide).valid.sum(1).tolist() == [5, 5]


def test_megabyte_fixes_its_local_memory_through_the_protocol():
    from lamina.models.megabyte import Megabyte

    config = {"d_model": 32, "layers": ["attn"], "mixers": {"attn": {"heads": 2, "mem_len": 64}},
              "megabyte": {"patch": 4, "local_d_model": 16, "local_layers": ["attn"],
                           "local_mixers": {"attn": {"heads": 2, "mem_len": 0}}}}
    model = Megabyte(from_dict(ModelConfig, config, "model"), 257)
    local = model.local_model.blocks[0].mixer
    assert local.mem_len == local.own_mem_len == 3
    with model.memory(mem_len=5):
        assert local.mem_len == 3 and [m.mem_len for m in model.memory_layers()] == [5]


def test_models_and_eval_reach_no_undeclared_memory_attribute():
    """No getattr/setattr on memory attributes, no assignment to a layer's mem_len (the protocol has methods)."""
    root = Path(lamina.__file__).parent
    reach = re.compile(r"(getattr|setattr|hasattr)\([^)]*(mem_len|cmem_len|mem_widened_by|memory_valid)|\.mem_len\s*=[^=]")
    for folder in ("models", "eval"):
        for path in (root / folder).glob("*.py"):
            assert not reach.search(path.read_text(encoding="utf-8")), path
