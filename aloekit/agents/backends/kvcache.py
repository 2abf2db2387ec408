"""A KV cache for the static engine's decoding that appends in place instead of copying itself every step.

transformers' ``DynamicCache`` appends a step's keys and values with ``torch.cat``, which copies the whole
cache: on a CPU, for 8 rows of a 600-token prompt, that is a quarter of every decoding step of SmolLM2-135M.
Its ``StaticCache`` preallocates, but attends over its full length, padding included. A
:func:`growing_cache` keeps each full-attention layer's keys and values in buffers with room to spare and
hands attention views of the filled part, so a step writes only its own token. A buffer's spare room is half
what it holds (at least 64 positions), never more than the batch may still generate: a buffer that fills
is replaced by a longer one, so memory stays within 1.5 times what ``DynamicCache`` would hold.
"""

from __future__ import annotations

import functools
from typing import Any

MIN_SPARE = 64
"""Spare positions a new buffer has at least, where the batch may generate that many."""


def growing_cache(config: Any, room: int) -> Any:
    """transformers' ``DynamicCache`` for ``config`` with each plain full-attention layer replaced by one that
    appends in place, for a batch that generates at most ``room`` more tokens; sliding-window and other layer
    kinds are kept as transformers made them."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    growing = _growing_layer_class()
    cache.layers = [growing(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@functools.cache
def _growing_layer_class() -> type:
    """:class:`GrowingLayer`, defined on first use (torch is imported lazily: the CLI starts without it)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose ``keys`` and ``values`` are views of longer buffers. Whatever replaces
        them (``crop``, ``reorder_cache``, ``batch_select_indices`` of the parent class) is honoured: the
        next update finds they no longer view the buffers and starts new ones from them."""

        key_buffer: Any = None
        value_buffer: Any = None

        def __init__(self, room: int) -> None:
            super().__init__()
            self.room = room

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start = self.get_seq_length()
            end = start + key_states.shape[-2]
            if not self._appendable(key_states, end):
                self.key_buffer, self.value_buffer = (
                    self._buffer(self.keys, key_states, end),
                    self._buffer(self.values, value_states, end),
                )
            self.key_buffer[..., start:end, :] = key_states
            self.value_buffer[..., start:end, :] = value_states
            self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
            return self.keys, self.values

        def _appendable(self, key_states: Any, end: int) -> bool:
            """Whether the buffers still hold ``keys``/``values`` and have room up to ``end``."""
            buffer = self.key_buffer
            return (
                buffer is not None
                and self.keys.data_ptr() == buffer.data_ptr()
                and self.values.data_ptr() == self.value_buffer.data_ptr()
                and buffer.shape[:2] == key_states.shape[:2]
                and end <= buffer.shape[-2]
            )

        def _buffer(self, filled: Any, new: Any, end: int) -> Any:
            """A buffer for ``end`` positions and spare room, holding ``filled`` (empty before the first update)."""
            spare = min(self.room, max(MIN_SPARE, end // 2))
            shape = (*new.shape[:-2], end + spare, new.shape[-1])
            buffer = new.new_empty(shape)
            if filled.numel():
                buffer[..., : filled.shape[-2], :] = filled
            return buffer

    return GrowingLayer
