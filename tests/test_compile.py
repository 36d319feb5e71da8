"""torch.compile traces a whole LM: no graph break in the forward over a sequence or in a one-token step with
a carried state, for attention and every recurrent mixer, and the compiled model computes what the eager one does.

A mixer counts as recurrent here when it declares the recurrent form (its state advances token by token, so a
one-token call is a step) and is not cut into fixed segments of the stream (no ``segment`` option): the
segment mixers (Infini-attention, the Block-Recurrent Transformer, Titans MAC) cut each call where the
carried state says their current segment ends, a split read back from the state, so their graph breaks
there. ``attn`` is one of the recurrent set by this rule (it steps with its key/value memory).
"""

import dataclasses

import pytest
import torch
import torch._dynamo

from lamina.config import ModelConfig
from lamina.mixers import mixer_class, mixer_names
from lamina.models import LM, trace_settings


def recurrent(name: str) -> bool:
    cls = mixer_class(name)
    return "recurrent" in cls.forms and "segment" not in {f.name for f in dataclasses.fields(cls.Options)}


RECURRENT = [name for name in mixer_names() if recurrent(name)]


def test_the_recurrent_set_holds_attention_and_the_recurrences():
    assert {"attn", "xl", "hgrn", "gla", "mamba2", "gru", "titans"} <= set(RECURRENT)
    assert not {"infini", "block_recurrent", "titans_mac"} & set(RECURRENT)


def breaks(explained) -> list[str]:
    return [str(b.reason).splitlines()[0] for b in explained.break_reasons]


@pytest.mark.parametrize("name", RECURRENT)
def test_compiled_lm_traces_whole_and_matches_eager(name):
    torch.manual_seed(0)
    model = LM(ModelConfig(d_model=32, layers=[name, name]), 257).eval()
    ids = torch.randint(0, 257, (2, 12))
    with torch.no_grad(), torch._dynamo.config.patch(**trace_settings(model)):
        torch._dynamo.reset()
        logits, state = model(ids)
        step_logits, step_state = model(ids[:, :1], state)
        full = torch._dynamo.explain(model)(ids)
        step = torch._dynamo.explain(model)(ids[:, :1], state)
        compiled = torch.compile(model, backend="eager")
        compiled_logits, compiled_state = compiled(ids)
        compiled_step, _ = compiled(ids[:, :1], compiled_state)
    assert (full.graph_count, full.graph_break_count, breaks(full)) == (1, 0, [])
    assert (step.graph_count, step.graph_break_count, breaks(step)) == (1, 0, [])
    torch.testing.assert_close(compiled_logits, logits)
    torch.testing.assert_close(compiled_step, step_logits)


@pytest.mark.parametrize("name", ["hgrn", "titans"])
def test_compiled_chunked_training_step_matches_eager(name):
    """Longer than a scan chunk (32), through autograd: the compiled copies into the scan's output are exact."""
    torch.manual_seed(0)
    model = LM(ModelConfig(d_model=32, layers=[name, name]), 257)
    ids = torch.randint(0, 257, (2, 70))

    def loss_and_grads(forward):
        model.zero_grad()
        logits, _ = forward(ids)
        loss = logits.float().logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager_loss, eager_grads = loss_and_grads(model)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(ids)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, backend="aot_eager"))
    assert (explained.graph_break_count, breaks(explained)) == (0, [])
    torch.testing.assert_close(compiled_loss, eager_loss)
    assert len(compiled_grads) == len(eager_grads)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)
