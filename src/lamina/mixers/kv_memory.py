"""The declared interface of mixers whose state is a key/value memory of past positions (attention).

Models change such a memory only through :class:`KVMemoryMixer`'s members:
a longer memory to evaluate (``lamina eval --mem-len``), a wider one to
decode, a memory length fixed by the model (MEGABYTE's patch), and the
state cut back to the unwidened memory at a segment memory's segment
starts. The tensor bookkeeping of such memories is :mod:`lamina.ops.kv_memory`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from lamina.mixers.base import Mixer
from lamina.mixers.state import State
from lamina.ops.kv_memory import keep_newest


class KVMemoryMixer(Mixer):
    """The declared interface of a mixer whose state is a memory of the last ``mem_len`` positions.

    Its ``Options`` have ``mem_len``, and its state is a named tuple with a
    ``valid`` field: the memory's ``[B, M]`` validity, newest slot last. The
    memory length may change between calls (a longer memory to evaluate, a
    wider one to decode); a carried memory of another length is refused or
    fitted by the mixer (see its docstring). Models use only these members.
    """

    def __init__(self, d_model: int, options, layer_idx: int = 0, n_layers: int = 1):
        super().__init__(d_model, options, layer_idx, n_layers)
        self._own_mem_len = options.mem_len
        self._mem_len = options.mem_len
        self._widened_by = 0

    @property
    def mem_len(self) -> int:
        """Positions the memory keeps now."""
        return self._mem_len

    @property
    def own_mem_len(self) -> int:
        """Positions the memory keeps outside :meth:`memory_length`."""
        return self._own_mem_len

    @property
    def compressed_len(self) -> int:
        """Slots of a compressed memory fed by positions leaving the memory (0: none)."""
        return 0

    def set_memory_length(self, mem_len: int) -> None:
        """Keep ``mem_len`` positions from now on: for a model that fixes it (MEGABYTE's patch)."""
        self._own_mem_len = self._mem_len = mem_len

    @contextmanager
    def memory_length(self, mem_len: int | None = None, extra: int = 0) -> Iterator[None]:
        """Inside this block keep ``mem_len`` positions (default: the own length) plus ``extra``.

        ``extra`` widens the memory for one purpose (a segment memory's read
        and write positions while decoding); :meth:`trim_state` cuts it back.
        """
        saved = self._mem_len, self._widened_by
        self._mem_len = (self._own_mem_len if mem_len is None else mem_len) + extra
        self._widened_by = extra
        try:
            yield
        finally:
            self._mem_len, self._widened_by = saved

    def trim_state(self, state: State) -> State:
        """``state`` with only the memory it would hold unwidened still valid (the newest positions).

        The buffer keeps its size, so positions keep their distances; outside a
        widening the state is returned as it is.
        """
        if not self._widened_by:
            return state
        return state._replace(valid=keep_newest(state.valid, self._mem_len - self._widened_by))
