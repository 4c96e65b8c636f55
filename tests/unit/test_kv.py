"""searchr1.rollout.kv: where the slot cache writes, what it returns, and that growing, moving and
swapping rows keep every row's tokens. Keys here are small integer tensors, so each expected
value is written down exactly."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import pytest
import torch

from searchr1.rollout.kv import SlotCache, check_model


def kv(values, heads: int = 2) -> torch.Tensor:
    """[rows, heads, tokens, 1] whose entry (b, h, t) is values[b][t] + 100 * h."""
    x = torch.tensor(values, dtype=torch.float32)[:, None, :, None]
    return x + 100 * torch.arange(heads, dtype=torch.float32)[None, :, None, None]


def row(t: torch.Tensor, b: int, length: int, head: int = 0) -> list[int]:
    return t[b, head, :length, 0].long().tolist()


def test_prefill_writes_one_slot_and_returns_a_view_of_its_history():
    c = SlotCache(slots=2, capacity=4)
    c.plan_prefill(slot=1, start=0, n=3)
    k, v = c.update(kv([[1, 2, 3]]), kv([[-1, -2, -3]]), 0)
    assert k.shape == (1, 2, 3, 1) and row(k, 0, 3) == [1, 2, 3] and row(v, 0, 3, head=1) == [99, 98, 97]
    assert k.data_ptr() == c.layers[0].keys[1].data_ptr()  # a view, not a copy
    assert (c.get_seq_length(), c.get_mask_sizes(3, 0)) == (0, (3, 0))
    c.plan_prefill(slot=1, start=3, n=1)  # the next token goes after them
    k, _ = c.update(kv([[4]]), kv([[0]]), 0)
    assert row(k, 0, 4) == [1, 2, 3, 4] and c.get_query_offset() == 3
    assert row(c.layers[0].keys, 0, 4) == [0, 0, 0, 0]  # slot 0 untouched


def test_decode_writes_each_row_at_its_own_position():
    c = SlotCache(slots=2, capacity=8)
    c.plan_prefill(0, 0, 3)
    c.update(kv([[1, 2, 3]]), kv([[1, 2, 3]]), 0)
    c.plan_prefill(1, 0, 1)
    c.update(kv([[7]]), kv([[7]]), 0)
    c.plan_decode(torch.tensor([3, 1]))
    k, _ = c.update(kv([[4], [8]]), kv([[4], [8]]), 0)
    # both rows are read up to the longest (4 tokens); the caller's mask hides row 1's last two
    assert k.shape == (2, 2, 4, 1)
    assert row(k, 0, 4) == [1, 2, 3, 4] and row(k, 1, 2) == [7, 8]
    assert (c.get_seq_length(), c.get_mask_sizes(1, 0)) == (3, (4, 0))


def test_capacity_and_slots_double_and_keep_what_is_there():
    c = SlotCache(slots=1, capacity=2)
    c.plan_prefill(0, 0, 2)
    c.update(kv([[5, 6]]), kv([[5, 6]]), 0)
    c.plan_prefill(2, 0, 5)  # slot 2 of 1, 5 tokens of 2: slots 1 -> 4, capacity 2 -> 8
    k, _ = c.update(kv([[1, 2, 3, 4, 5]]), kv([[1, 2, 3, 4, 5]]), 0)
    assert (c.slots, c.capacity) == (4, 8) and c.layers[0].keys.shape == (4, 2, 8, 1)
    assert row(c.layers[0].keys, 0, 2) == [5, 6] and row(k, 0, 5) == [1, 2, 3, 4, 5]


def test_move_and_swap_carry_every_layer():
    c = SlotCache(slots=3, capacity=4)
    for layer in (0, 1):
        for slot, ids in enumerate(([1, 2], [3, 4], [5, 6])):
            c.plan_prefill(slot, 0, 2)
            c.update(kv([[x + 10 * layer for x in ids]]), kv([ids]), layer)
    c.swap(0, 2, 2)
    assert [row(c.layers[1].keys, s, 2) for s in range(3)] == [[15, 16], [13, 14], [11, 12]]
    c.move(2, 1, 2)
    assert [row(c.layers[0].keys, s, 2) for s in range(2)] == [[5, 6], [1, 2]]
    assert row(c.layers[0].values, 1, 2, head=1) == [101, 102]


def test_models_with_sliding_window_layers_are_refused():
    check_model(SimpleNamespace(config=SimpleNamespace(layer_types=["full_attention"] * 2)))
    check_model(SimpleNamespace(config=SimpleNamespace()))
    with pytest.raises(NotImplementedError, match="sliding_attention"):
        check_model(SimpleNamespace(config=SimpleNamespace(layer_types=["full_attention", "sliding_attention"])))


def test_a_dropped_cache_frees_its_keys_and_values_at_once():
    # no reference cycle through the layers: the tensors go when the last reference does, not at
    # the cycle collector's next full pass (an evaluation kept GBs of dropped caches that way)
    gc.disable()
    try:
        c = SlotCache(slots=2, capacity=4)
        c.plan_prefill(0, 0, 2)
        c.update(kv([[1, 2]]), kv([[1, 2]]), 0)
        c.update(kv([[3, 4]]), kv([[3, 4]]), 1)
        held = [weakref.ref(t) for layer in c.layers for t in (layer.keys, layer.values)]
        assert len(held) == 4 and c.layers[1].cache is c
        del c
        assert all(r() is None for r in held)
    finally:
        gc.enable()
