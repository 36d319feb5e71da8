"""Registration refuses a mixer whose declared forms and methods disagree, before any layer of it is built."""

from dataclasses import dataclass

import pytest
import torch

from lamina.mixers import Mixer, mixer_class, mixer_names, register
from lamina.mixers.registry import check_forms


@dataclass
class NoOptions:
    pass


class Base(Mixer):
    Options = NoOptions

    def init_state(self, batch, device=None, dtype=None):
        return (torch.zeros(batch, self.d_model, device=device, dtype=dtype),)


def step(self, x_t, state):
    return x_t, state


def chunk(self, x, state):
    return x, state


def mixer(forms, **methods):
    return type("Probe", (Base,), {"forms": forms, **methods})


@pytest.mark.parametrize("forms, methods, problem", [
    (("recurrent",), {}, "declares the recurrent form but defines no step"),
    (("recurrent", "chunk"), {"step": step}, "declares the chunk form but defines no forward_chunk"),
    (("parallel",), {"step": step, "forward_parallel": chunk}, "defines step but does not declare the recurrent"),
    (("recurrent",), {"step": step, "forward_chunk": chunk}, "defines forward_chunk but does not declare the chunk"),
    (("recurrent", "blocked"), {"step": step}, "declares forms ('recurrent', 'blocked')"),
    ((), {}, "declares forms ()"),
])
def test_register_refuses_forms_without_their_methods(forms, methods, problem):
    with pytest.raises(TypeError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        register("probe_mixer")(mixer(forms, **methods))
    assert "probe_mixer" not in mixer_names()


@pytest.mark.parametrize("forms, methods", [
    (("recurrent",), {"step": step}),
    (("recurrent",), {"forward_recurrent": chunk}),  # its own token loop instead of a step
    (("recurrent", "chunk"), {"step": step, "forward_chunk": chunk}),
    (("parallel",), {"forward_parallel": chunk}),
])
def test_forms_with_their_methods_are_accepted(forms, methods):
    check_forms("probe_mixer", mixer(forms, **methods))


@pytest.mark.parametrize("name", mixer_names())
def test_every_registered_mixer_implements_exactly_its_forms(name):
    cls = mixer_class(name)
    check_forms(name, cls)
    assert all(callable(getattr(cls, "step" if f == "recurrent" else f"forward_{f}", None)) for f in cls.forms)
