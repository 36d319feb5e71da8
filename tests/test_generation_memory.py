"""Generation memory stays flat: a long decode neither grows the state nor the process.

Two measurements on a few thousand generated tokens: the bytes of the carried
state after every token (exact), and the resident memory of a fresh process
from an early point of the decode to its highest later reading (what a user sees).
A control run keeps a growing key/value cache of the same model size in the
same probe, to show that the probe sees such growth (the probe reads
``/proc/self/statm``: Linux, as CI).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lamina.config import ModelConfig
from lamina.mixers.state import flatten_state
from lamina.models import LM

MEMORY_MODELS = {
    "attn-sinks": {"layers": ["attn", "attn"], "mixers": {"attn": {"heads": 2, "mem_len": 16, "window": 16, "sinks": 2}}},
    "xl": {"layers": ["xl", "xl"], "mixers": {"xl": {"heads": 2, "mem_len": 16}}},
    "xl-compressive": {"layers": ["xl", "xl"], "mixers": {"xl": {"heads": 2, "mem_len": 8, "cmem_len": 4, "cmem_rate": 2}}},
    "fox": {"layers": ["fox", "fox"], "mixers": {"fox": {"heads": 2, "mem_len": 16}}},
    "infini": {"layers": ["infini", "infini"], "mixers": {"infini": {"heads": 2}}},
    "block_recurrent": {"layers": ["block_recurrent", "attn"], "mixers": {"attn": {"heads": 2, "mem_len": 16}}},
    "titans": {"layers": ["titans", "titans_mag"], "mixers": {"titans_mag": {"window": 16}}},
    "titans_mac": {"layers": ["titans_mac", "titans_mac"], "mixers": {"titans_mac": {"segment": 8}}},
    "rmt": {"layers": ["attn", "hgrn"], "mixers": {"attn": {"heads": 2, "mem_len": 16}}, "memory_tokens": 4,
            "memory_segment": 8},
    "hmt": {"layers": ["attn", "attn"], "mixers": {"attn": {"heads": 2, "mem_len": 16}},
            "hmt": {"segment": 8, "sensory": 2, "cache": 4}},
    "hgrn": {"layers": ["hgrn", "hgrn"]},
}


def state_bytes(state) -> int:
    return sum(v.numel() * v.element_size() for v in flatten_state(state).values())


@pytest.mark.parametrize("name", sorted(MEMORY_MODELS))
def test_state_bytes_are_constant_over_a_decode(name):
    torch.manual_seed(0)
    model = LM(ModelConfig(d_model=32, **MEMORY_MODELS[name]), 257).eval()
    context = 8
    sizes = []
    with torch.no_grad(), model.memory(extra=context - 1):  # as generate() decodes
        state = model.init_state(1)
        token = torch.tensor([[65]])
        for _ in range(300):
            logits, state = model(token, state)
            token = logits[:, -1].argmax(-1, keepdim=True)
            sizes.append(state_bytes(state))
    assert len(set(sizes)) == 1, f"{name}: state bytes changed during the decode: {sorted(set(sizes))}"


PROBE = r"""
import json, os, sys, torch
from lamina.config import ModelConfig
from lamina.eval.generate import generate
from lamina.models import LM

def rss_mib():  # resident set size now (Linux: /proc/self/statm counts pages)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

torch.manual_seed(0)
torch.set_num_threads(1)
spec, tokens, control = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "control"
model = LM(ModelConfig(**spec), 257).eval()
cache, samples = [], []
def on_token(_):
    if control:  # what an unbounded cache of keys and values would hold: 2 x d floats per layer per token
        cache.append(torch.ones(2 * len(model.blocks) * spec["d_model"]))
    samples.append(rss_mib())
generate(model, torch.tensor([65, 66, 67]), max_new_tokens=tokens, context=16, temperature=0, on_token=on_token)
early = samples[tokens // 8 - 1]
print(json.dumps({"early": early, "late": max(samples[tokens // 8 :])}))
"""


def _rss_growth(spec: dict, tokens: int, control: bool) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(spec), str(tokens), "control" if control else "plain"],
                         capture_output=True, text=True, check=True)
    marks = json.loads(out.stdout.strip().splitlines()[-1])
    return marks["late"] - marks["early"]


def test_resident_memory_is_flat_over_thousands_of_tokens():
    spec = {"d_model": 256, "layers": ["xl", "attn", "hgrn", "hgrn"],
            "mixers": {"xl": {"heads": 4, "mem_len": 32}, "attn": {"heads": 4, "mem_len": 32, "window": 32}}}
    tokens = 3000
    grown = _rss_growth(spec, tokens, control=False)
    control = _rss_growth(spec, tokens, control=True)
    unbounded_mib = 7 / 8 * tokens * 2 * 4 * 256 * 4 / 2**20  # the control's cache between the two marks
    assert control > 0.8 * unbounded_mib, f"the probe missed a {unbounded_mib:.0f} MiB growth (saw {control:.1f})"
    assert grown < 4, f"resident memory grew by {grown:.1f} MiB over {tokens} generated tokens"
