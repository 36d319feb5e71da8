"""Every registered mixer, with its default options: one function in every form, inert padding,
document resets, and a state size that matches its state."""

import pytest
import torch

from lamina.mixers import mixer_names
from lamina.mixers.state import state_tensors
from mixer_harness import check_forms_agree, check_masks_are_exact, make_mixer

D = 64
# attention's (and Transformer-XL's) chunks equal the full run only while its memory covers them; HGRN2 with
# one head normalises q.k away at T = 1 (zero gradients carry no information), so four heads; short segments
# make the sequences below cross several segment boundaries, inside calls and between them
OPTIONS = {
    "attn": {"mem_len": 64},
    "fox": {"mem_len": 64},
    "hgrn2": {"expand_ratio": 16},
    "xl": {"mem_len": 64},
    "infini": {"segment": 6},
    "block_recurrent": {"segment": 8},
    "titans_mac": {"segment": 8},
}


def build(name):
    return make_mixer(name, D, OPTIONS.get(name))


def data(B, T, seed):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", mixer_names())
@pytest.mark.parametrize("T", [1, 19])
def test_forms_agree(name, T):
    check_forms_agree(build(name), data(2, T, seed=T))


@pytest.mark.parametrize("name", mixer_names())
def test_padding_never_changes_the_state(name):
    valid = torch.ones(4, 23, dtype=torch.bool)
    valid[0, 17:] = False  # right padding
    valid[1, :6] = False  # left padding
    valid[2, 5:9] = False  # a hole
    valid[3, :] = False  # all padding: the state stays empty
    check_masks_are_exact(build(name), data(4, 23, seed=1), valid)


@pytest.mark.parametrize("name", mixer_names())
def test_document_starts_empty_the_state(name):
    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[2, 15:] = False
    resets = torch.zeros(3, 21, dtype=torch.bool)
    resets[0, 7] = resets[0, 8] = True  # a one-token document
    resets[1, 13] = True
    resets[2, 18] = True  # inside the padding: the final state is empty
    check_masks_are_exact(build(name), data(3, 21, seed=2), valid, resets)


@pytest.mark.parametrize("name", mixer_names())
def test_state_size_counts_the_state(name):
    mixer = build(name)
    state = mixer.init_state(1)
    floats = sum(t.numel() for t in state_tensors(state) if t.is_floating_point())
    assert floats > 0 and mixer.state_size() == floats
    assert all(t.dtype in (torch.float32, torch.bool) for t in state_tensors(state)), "states are kept in fp32"


@pytest.mark.parametrize("name", mixer_names())
def test_bf16_autocast_trains_with_an_fp32_state(name):
    """Under bf16 autocast (the CUDA training default) forward and backward run, close to fp32."""
    mixer, x = build(name), data(2, 37, seed=3)
    want, _ = mixer(x)
    x = x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mixer(x)
        y1, state = mixer(x[:, :1], state)
    (y.float().square().sum() + y1.float().sum()).backward()
    assert torch.isfinite(x.grad).all()
    fp32 = all(t.dtype in (torch.float32, torch.bool) for t in state_tensors(state))
    assert fp32, "the state stays fp32 under autocast"
    err = ((y.float() - want).norm() / want.norm()).item()
    assert err < 5e-2, f"bf16 autocast output differs from fp32 by {err:.2e}"



def test_xl_compressive_memory_generic_checks():
    """Transformer-XL with a compressive memory (same_length: exact in every form) through the same checks."""
    options = {"mem_len": 5, "cmem_len": 3, "cmem_rate": 2, "same_length": True}
    mixer = make_mixer("xl", D, options)
    check_forms_agree(mixer, data(2, 19, seed=19))
    valid = torch.ones(3, 23, dtype=torch.bool)
    valid[0, 17:] = False
    valid[1, :6] = False
    valid[2, 5:9] = False
    resets = torch.zeros(3, 23, dtype=torch.bool)
    resets[1, 13] = True
    check_masks_are_exact(mixer, data(3, 23, seed=1), valid, resets)
    state = mixer.init_state(1)
    assert mixer.state_size() == sum(t.numel() for t in state_tensors(state) if t.is_floating_point())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mixer(data(2, 37, seed=3))
    assert torch.isfinite(y).all() and all(t.dtype in (torch.float32, torch.bool) for t in state_tensors(state))
