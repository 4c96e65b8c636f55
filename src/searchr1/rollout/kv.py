"""A KV cache for continuous batching: one slot per live row, preallocated, grown by doubling.

transformers' `DynamicCache` concatenates each layer's whole cache with every new token (one copy
of the cache per token) and keeps every row at one common length. A pool of episodes needs rows of
different lengths that join and leave while the others decode. Here each layer holds its keys and
values as [slots, kv_heads, capacity, head_dim]; the row in slot s keeps its tokens at
[0, length[s]) of that slot. New keys are written in place; a layer returns views.

Before each forward pass the engine says what the pass covers (`plan_prefill`, `plan_decode`):

    prefill  one slot, n new tokens written at [start, start + n): a prompt, or the tokens the
             environment appended; attention reads slot s's [0, start + n).
    decode   slots [0, B), one token each, slot b's written at position[b]; attention reads
             [0, kv_len) of every slot, and the caller's 2D attention mask hides what lies beyond
             each row's own length.

Live rows always occupy slots [0, live): `move` fills a released slot with the last live row (a
copy of one row), and `swap` lets the engine keep generating rows in front of waiting ones, so a
decode pass reads plain slices [0, B), never a gathered copy.
Capacity (tokens per slot, and slots) doubles when a pass needs more: one copy, amortised.

Full attention only: a model with sliding-window or linear-attention layers is refused up front
(`check_model`), since this layout keeps every token of every layer.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


def check_model(model) -> None:
    """Refuse models whose layers are not all full attention (the slot cache keeps every token)."""
    types = getattr(getattr(model, "config", None), "layer_types", None) or []
    other = sorted({t for t in types if t != "full_attention"})
    if other:
        raise NotImplementedError(f"the rollout engine's KV cache holds full-attention layers only; this model has "
                                  f"{', '.join(other)} layers")


@dataclass
class _Plan:
    q_offset: int = 0  # position of the pass's first query (what causal masking compares against)
    kv_len: int = 0  # keys each query row sees (before the padding mask)
    slot: int | None = None  # prefill: the one slot written; None: decode over slots [0, rows)
    start: int = 0  # prefill: where the new tokens go
    rows: int = 0  # decode: slots covered
    positions: torch.Tensor | None = None  # decode: long[rows], where each row's token goes


def _grown(size: int, need: int) -> int:
    while size < need:
        size *= 2
    return size


class SlotLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, cache: "weakref.ref[SlotCache]") -> None:
        super().__init__()
        self._cache = cache

    @property
    def cache(self) -> "SlotCache":
        return self._cache()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        c = self.cache
        self.device = key_states.device
        # Under autocast the cache holds the compute dtype: rotary embeddings promote the keys to fp32
        # there, and a cache taking the first write's dtype would hold 1.5x the memory and recast the
        # keys at every pass.
        dtype = (torch.get_autocast_dtype(self.device.type) if torch.is_autocast_enabled(self.device.type)
                 else key_states.dtype)
        self.keys = key_states.new_zeros((c.slots, key_states.shape[1], c.capacity, key_states.shape[3]), dtype=dtype)
        self.values = value_states.new_zeros((c.slots, value_states.shape[1], c.capacity, value_states.shape[3]),
                                             dtype=dtype)
        self.is_initialized = True

    def resize(self, slots: int, capacity: int) -> None:
        if not self.is_initialized or self.keys.shape[0] == slots and self.keys.shape[2] == capacity:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((slots, old.shape[1], capacity, old.shape[3]))
            new[: old.shape[0], :, : old.shape[2]] = old
            setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states / value_states: [rows, kv_heads, new tokens, head_dim] -> views of what attention reads."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        p = self.cache.plan
        key_states, value_states = key_states.to(self.keys.dtype), value_states.to(self.values.dtype)
        if p.slot is not None:
            s, end = p.slot, p.start + key_states.shape[2]
            self.keys[s, :, p.start:end] = key_states[0]
            self.values[s, :, p.start:end] = value_states[0]
            return self.keys[s:s + 1, :, :end], self.values[s:s + 1, :, :end]
        rows = torch.arange(p.rows, device=self.keys.device)
        self.keys[rows, :, p.positions] = key_states[:, :, 0]
        self.values[rows, :, p.positions] = value_states[:, :, 0]
        return self.keys[: p.rows, :, : p.kv_len], self.values[: p.rows, :, : p.kv_len]

    def move(self, src: int, dst: int, length: int) -> None:
        if self.is_initialized:
            self.keys[dst, :, :length] = self.keys[src, :, :length]
            self.values[dst, :, :length] = self.values[src, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        if self.is_initialized:
            both = torch.tensor([a, b], device=self.keys.device)
            for t in (self.keys, self.values):
                t[both, :, :length] = t[both.flip(0), :, :length]  # the right side is gathered (copied) first

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.plan.kv_len, 0

    def get_seq_length(self) -> int:
        return self.cache.plan.q_offset

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """The cache object a transformers causal LM is called with (`cache=` / `past_key_values=`)."""

    def __init__(self, slots: int = 4, capacity: int = 256) -> None:
        # The layers (and the factory that makes them) reach their cache by a weak reference: a
        # reference cycle would leave a dropped cache's keys and values (GBs at an evaluation's pool)
        # to Python's cycle collector, whose full passes are rare in a process holding a model: each
        # evaluated dataset's cache stayed resident, 3 GB more a dataset (benchmarks/kv_release.py).
        ref = weakref.ref(self)
        super().__init__(layer_class_to_replicate=lambda: SlotLayer(ref))
        self.slots, self.capacity = max(1, slots), max(1, capacity)
        self.plan = _Plan()

    def reserve(self, slots: int, tokens: int) -> None:
        """Make room for `slots` rows of `tokens` tokens each (doubling what is there)."""
        new_slots, new_capacity = _grown(self.slots, slots), _grown(self.capacity, tokens)
        if (new_slots, new_capacity) != (self.slots, self.capacity):
            self.slots, self.capacity = new_slots, new_capacity
            for layer in self.layers:
                layer.resize(new_slots, new_capacity)

    def plan_prefill(self, slot: int, start: int, n: int) -> None:
        self.reserve(slot + 1, start + n)
        self.plan = _Plan(q_offset=start, kv_len=start + n, slot=slot, start=start)

    def plan_decode(self, positions: torch.Tensor) -> None:
        """positions: long[rows], on the model's device; row b's token is written at positions[b]."""
        kv_len = int(positions.max()) + 1
        self.reserve(len(positions), kv_len)
        self.plan = _Plan(q_offset=kv_len - 1, kv_len=kv_len, rows=len(positions), positions=positions)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` tokens of slot `src` into slot `dst` (every layer)."""
        for layer in self.layers:
            layer.move(src, dst, length)

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange the first `length` tokens of slots `a` and `b` (every layer)."""
        for layer in self.layers:
            layer.swap(a, b, length)

    # the mask sizes come from the plan, not from a stored length: every layer sees the same pass
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.plan.q_offset

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.plan.kv_len, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.plan.q_offset
