"""States are named structures; the generic state operations and checkpoints work on them by name."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lamina.cli import main
from lamina.config import ModelConfig, from_dict
from lamina.errors import LaminaError
from lamina.mixers import mixer_class, mixer_names
from lamina.mixers.state import (
    detach_state,
    flatten_state,
    map_state,
    reset_state,
    restore_state,
    rows_of_state,
    select_state,
    state_tensors,
)
from lamina.models import build_model
from train_harness import error_line


def positional(state):
    """``state`` in the positional layout of older lamina versions: plain tuples and lists, Nones dropped."""
    if isinstance(state, torch.Tensor):
        return state
    items = [positional(s) for s in state if s is not None]
    return items if isinstance(state, list) else tuple(items)


@pytest.mark.parametrize("name", mixer_names())
def test_every_mixer_state_is_named(name):
    cls = mixer_class(name)
    state = cls(32, cls.Options()).init_state(2)
    assert hasattr(state, "_fields"), f"{name}: the state is not a named tuple"
    for key in flatten_state(state):
        assert not any(part.isdigit() for part in key.split(".")), f"{name}: {key} is named by position"


@pytest.mark.parametrize("model", [
    {"layers": ["hgrn", "attn"], "memory_tokens": 2, "memory_segment": 8},
    {"layers": ["hgrn"], "hmt": {"segment": 8, "cache": 2}},
    {"layers": ["hgrn"], "hat": {"d_byte": 16, "encoder_layers": ["hgrn"], "decoder_layers": ["hgrn"]}},
    {"layers": ["hgrn"], "megabyte": {"patch": 4, "local_d_model": 16, "local_layers": ["hgrn"]}},
])
def test_model_states_are_named_and_the_generic_operations_keep_them(model):
    net = build_model(from_dict(ModelConfig, {"d_model": 32, **model}, "model"), 257)
    _, state = net(torch.randint(0, 257, (2, 11)))
    assert hasattr(state, "_fields")
    names = flatten_state(state)
    assert all(k.split(".")[1] in state._fields for k in names)
    for same in (detach_state(state), reset_state(state, torch.tensor([True, False])),
                 select_state(torch.tensor([False, True]), state, state), map_state(torch.clone, state)):
        assert type(same) is type(state) and flatten_state(same).keys() == names.keys()
    assert [t.shape[0] for t in state_tensors(rows_of_state(state, slice(1, 2)))] == [1] * len(names)
    kept = reset_state(state, torch.tensor([True, False]))
    assert all(torch.equal(a[0], b[0]) and not b[1].any() for a, b in zip(state_tensors(state), state_tensors(kept)))
    restored = restore_state({k: v.clone() for k, v in names.items()}, net.init_state(2))
    assert all(torch.equal(a, b) for a, b in zip(state_tensors(restored), state_tensors(state)))


def test_a_positional_state_gives_the_one_line_error():
    net = build_model(from_dict(ModelConfig, {"d_model": 32, "layers": ["attn", "hgrn"]}, "model"), 257)
    _, state = net(torch.randint(0, 257, (2, 5)))
    with pytest.raises(LaminaError, match=r"^saved state state\.0\.keys is missing or has the wrong shape$"):
        restore_state(positional(state), net.init_state(2))
    with pytest.raises(LaminaError, match="not part of this model's state"):
        restore_state({**flatten_state(state), "state.2.h": torch.zeros(2, 32)}, net.init_state(2))


def test_resuming_a_checkpoint_with_an_old_layout_state_is_one_line(tiny, tmp_path, capsys):
    assert main(["train", *tiny, "train.steps=2", "train.save_every=2", "train.eval_every=2"]) == 0
    capsys.readouterr()
    ckpt = tmp_path / "run" / "ckpt-0000002"
    trainer = torch.load(ckpt / "trainer.pt", weights_only=True)
    saved = trainer["stream_state"]
    assert saved and all(isinstance(v, torch.Tensor) for v in saved.values())  # by name, loadable weights_only
    net = build_model(from_dict(ModelConfig, {"d_model": 32, "layers": ["attn", "attn"],
                                              "mixers": {"attn": {"heads": 2, "mem_len": 16}}}, "model"), 257)
    trainer["stream_state"] = positional(restore_state(saved, net.init_state(4)))
    torch.save(trainer, ckpt / "trainer.pt")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    data = (ckpt / "trainer.pt").read_bytes()
    manifest["files"]["trainer.pt"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    err = error_line(capsys, ["train", "--resume", str(tmp_path / "run"), "train.steps=4"])
    assert "cannot resume its carried state: saved state state.0.keys is missing or has the wrong shape" in err
