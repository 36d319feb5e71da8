"""Shared model-level checks: an interrupted run resumes bit-exactly; greedy decoding is teacher forcing."""

from __future__ import annotations

import re

import torch
from safetensors.torch import load_file

from lamina.config import load_config
from lamina.eval import generate
from lamina.eval.generate import decoding_extra
from lamina.mixers.state import flatten_state
from lamina.train import train


def error_line(capsys, argv: list[str]) -> str:
    """Run ``lamina ARGV``: it must fail with status 2 and one line on stderr, ``lamina[ VERB]: error: ...``,
    which is returned."""
    from lamina.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert re.match(r"lamina( \w+)?: error: ", err) and "\n" not in err, err
    return err


def check_resume_is_bit_exact(overrides: list[str], tmp_path):
    """Train 8 steps, resume a copy from step 4, and compare step 8's weights and carried state.

    Returns ``(run_dir, weights, stream_state)`` of the uninterrupted run for model-specific checks.
    """
    common = overrides + ["train.steps=8", "train.save_every=4", "train.eval_every=4", "train.keep_checkpoints=3",
                          "train.eval_tokens=512"]
    run = train(load_config("default", common), log=lambda *_: None).run_dir
    resumed_cfg = load_config("default", common + [f"train.out_dir={tmp_path / 'resumed'}"])
    train(resumed_cfg, resume=str(run / "ckpt-0000004"), log=lambda *_: None)
    want = load_file(run / "ckpt-0000008" / "model.safetensors")
    got = load_file(tmp_path / "resumed" / "ckpt-0000008" / "model.safetensors")
    for name in want:
        assert torch.equal(want[name], got[name]), f"{name} differs after resume"
    saved = torch.load(run / "ckpt-0000008" / "trainer.pt", weights_only=True)["stream_state"]
    resumed = torch.load(tmp_path / "resumed" / "ckpt-0000008" / "trainer.pt", weights_only=True)["stream_state"]
    assert saved.keys() == resumed.keys() and saved, "the carried state was not saved by name"
    for name, value in saved.items():
        assert torch.equal(resumed[name], value), f"carried {name} differs after resume"
    return run, want, saved


def check_decoding_is_one_call(model, prompt: torch.Tensor, new_tokens: int, context: int) -> None:
    """Greedy generation equals the argmax of one teacher-forced call, and decoding's logits (its window, its
    chunked prefill, then one token per call) equal that call's: an argmax alone can hide a wrong window."""
    out = generate(model, prompt, max_new_tokens=new_tokens, context=context, temperature=0)
    seq = torch.cat([prompt, torch.tensor(out)])
    with torch.no_grad():
        logits, _ = model(seq[None, :-1])
        assert out == logits[0, len(prompt) - 1 :].argmax(-1).tolist()
        with model.memory(extra=decoding_extra(model, context)):
            state, decoded = model.init_state(1), []
            for start in range(0, len(prompt), context):
                piece, state = model(prompt[None, start : start + context], state)
                decoded.append(piece)
            for token in out[:-1]:
                piece, state = model(torch.tensor([[token]]), state)
                decoded.append(piece)
        decoded = torch.cat(decoded, dim=1)
    assert ((decoded - logits).abs().max() / logits.abs().max()).item() < 1e-4


def check_greedy_decoding_is_teacher_forcing(model, prompt: torch.Tensor, new_tokens: int, context: int, steps: int):
    """:func:`check_decoding_is_one_call`, and ``steps`` single-token calls keep the state's floats at
    ``model.state_size()``."""
    check_decoding_is_one_call(model, prompt, new_tokens, context)
    state = model.init_state(1)
    with torch.no_grad():
        for t in range(steps):
            _, state = model(torch.tensor([[t]]), state)
            floats = [v for v in flatten_state(state).values() if v.is_floating_point()]
            assert sum(v.numel() for v in floats) == model.state_size()
