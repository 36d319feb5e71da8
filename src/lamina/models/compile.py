"""``torch.compile`` for lamina models, with the Dynamo settings their mixers declare they need.

A mixer that calls something Dynamo traces only when allowed (``torch.nn.GRU``
and ``torch.nn.LSTM`` need ``allow_rnn``) lists the settings in its
``dynamo_config``; without them the compiled model would break its graph at
every such layer. Dynamo reads its settings when it traces, at the first call
of the compiled model, so :func:`compile_model` sets them process-wide.
"""

from __future__ import annotations

import torch
from torch import nn

from lamina.mixers import Mixer


def trace_settings(model: nn.Module) -> dict[str, object]:
    """The ``torch._dynamo.config`` settings the mixers in ``model`` need (e.g. for ``torch._dynamo.config.patch``)."""
    settings: dict[str, object] = {}
    for mixer in model.modules():
        if isinstance(mixer, Mixer):
            settings.update(type(mixer).dynamo_config)
    return settings


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` after turning on the Dynamo settings of :func:`trace_settings`."""
    import torch._dynamo  # a second to import: only when a model is compiled

    for key, value in trace_settings(model).items():
        setattr(torch._dynamo.config, key, value)
    return torch.compile(model)
