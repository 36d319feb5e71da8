"""GRU and LSTM as mixers, through ``torch.nn.GRU`` / ``torch.nn.LSTM`` (cuDNN on GPU).

GRU: Cho et al. 2014, "Learning Phrase Representations using RNN
Encoder-Decoder" (section 2.3), in PyTorch's convention
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``.
LSTM: Hochreiter & Schmidhuber 1997 with a forget gate (Gers et al. 2000),
``c' = f c + i g``, ``h' = o tanh(c')``.

One implementation serves both: the whole sequence is one library call with
the carried state (the chunk form) and a step is the same call on one token.
The state (GRU ``(h,)``, LSTM ``(h, c)``, each ``[B, hidden]``) is kept in fp32
(or wider), like every lamina state, and converted to the activations' dtype
at each call, which is what the library kernels need. With ``hidden !=
d_model`` an output projection ``out`` maps back to ``d_model``.

Under autocast the library call runs in the autocast dtype (bf16) where the
device has a kernel for it. PyTorch sends a CPU LSTM under bf16 autocast to
oneDNN, which has no bf16 LSTM on CPUs without bf16 instructions and fails to
build it ("could not create a primitive descriptor"). So the first such call of
each kind on a device runs a tiny instance first, and where that fails the
calls run the library kernel in fp32 instead (autocast off for that call only)
and return the dtype autocast would have given: the model trains on every CPU.

Initialisation: PyTorch's uniform(-1/sqrt(hidden), 1/sqrt(hidden)) for the
recurrent weights (the model re-initialises only ``nn.Linear`` layers), and
for the LSTM a forget-gate bias of 1 (Gers et al. 2000; Jozefowicz et al. 2015),
so that memory is kept by default at the start of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch
from torch import nn

from lamina.mixers.base import Mixer
from lamina.mixers.registry import register
from lamina.mixers.state import HiddenState, State



class LSTMState(NamedTuple):
    h: torch.Tensor  # [B, hidden]
    c: torch.Tensor  # [B, hidden], the cell


@dataclass
class RNNOptions:
    hidden: Optional[int] = None  # recurrent width (None: d_model)


# (module, device, autocast dtype, input dtype, grad mode) -> whether the library kernel runs there under autocast
_AUTOCAST_KERNELS: dict[tuple, bool] = {}


def autocast_kernel_runs(module: type[nn.RNNBase], x: torch.Tensor) -> bool:
    """Whether ``module``'s library kernel runs under the autocast now active on ``x``'s device (tried once).

    A tiny fp32 instance runs on valid inputs in the same autocast and grad mode: a ``RuntimeError`` there can
    only mean that the device has no kernel for the autocast dtype, so it is remembered rather than raised.
    (Built on the meta device, then zeroed: trying draws nothing from the random generator.)
    """
    device = x.device.type
    key = (module, x.device, torch.get_autocast_dtype(device), x.dtype, torch.is_grad_enabled())
    if key not in _AUTOCAST_KERNELS:
        probe = module(2, 2, batch_first=True, device="meta").to_empty(device=x.device)
        with torch.no_grad():
            for p in probe.parameters():
                p.zero_()
        try:
            probe(torch.zeros(1, 2, 2, device=x.device, dtype=x.dtype))
            _AUTOCAST_KERNELS[key] = True
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            _AUTOCAST_KERNELS[key] = False
    return _AUTOCAST_KERNELS[key]


class _LibraryRNN(Mixer):
    """A single-layer ``torch.nn`` recurrence; subclasses name the module and its state's named tuple."""

    Options = RNNOptions
    forms = ("recurrent", "chunk")
    module: ClassVar[type[nn.RNNBase]]
    state_type: ClassVar[type]  # a NamedTuple of [B, hidden] tensors, in the library's order
    dynamo_config = {"allow_rnn": True}  # else torch.compile breaks the graph at every torch.nn.GRU/LSTM call

    def __init__(self, d_model: int, options: RNNOptions, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self.hidden = d_model if options.hidden is None else options.hidden
        self.rnn = self.module(d_model, self.hidden, batch_first=True)
        self.out = nn.Linear(self.hidden, d_model, bias=False) if self.hidden != d_model else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The recurrent weights' initialisation (the model calls it after its own)."""
        self.rnn.reset_parameters()

    def init_state(self, batch: int, device=None, dtype=None) -> State:
        dtype = torch.promote_types(dtype or torch.float32, torch.float32)
        zeros = (torch.zeros(batch, self.hidden, device=device, dtype=dtype) for _ in self.state_type._fields)
        return self.state_type._make(zeros)

    def forward_chunk(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        device = x.device.type
        fp32 = self.rnn.weight_ih_l0.dtype == torch.float32  # what autocast casts; the fallback needs it
        if fp32 and torch.is_autocast_enabled(device) and not autocast_kernel_runs(self.module, x):
            # no kernel for the autocast dtype on this device (see the module docstring): fp32 for this call
            with torch.autocast(device, enabled=False):
                y, new = self._library_call(x.float(), state)
            y = y.to(torch.get_autocast_dtype(device))
        else:
            y, new = self._library_call(x, state)
        if self.out is not None:
            y = self.out(y)
        return y, self.state_type._make(n.squeeze(0).to(s.dtype) for n, s in zip(new, state))

    def _library_call(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``self.rnn`` over ``x`` from ``state``: outputs and the new state, each ``[1, B, hidden]``."""
        hx = tuple(s.to(x.dtype).unsqueeze(0) for s in state)  # [num_layers = 1, B, hidden]
        y, new = self.rnn(x, hx if len(hx) > 1 else hx[0])
        return y, (new if len(hx) > 1 else (new,))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self.forward_chunk(x_t.unsqueeze(1), state)
        return y[:, 0], state


@register("gru")
class GRU(_LibraryRNN):
    module = nn.GRU
    state_type = HiddenState


@register("lstm")
class LSTM(_LibraryRNN):
    module = nn.LSTM
    state_type = LSTMState

    def reset_parameters(self) -> None:
        """PyTorch's, then forget-gate bias 1 (rows ``[H, 2H)`` of the ``[i, f, g, o]`` layout)."""
        super().reset_parameters()
        with torch.no_grad():
            self.rnn.bias_ih_l0[self.hidden : 2 * self.hidden].fill_(1.0)
            self.rnn.bias_hh_l0[self.hidden : 2 * self.hidden].zero_()
