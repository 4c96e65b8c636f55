"""Memory arithmetic of a rollout: the pool of live episodes a KV-cache budget allows.

Our engine keeps one KV cache for the live rows of a rollout (`searchr1.rollout.kv.SlotCache`): its
slots and its per-slot capacity start at SlotCache's defaults and double when outgrown, so every
slot is as long as the longest row. With every episode live at once it grows to slots x longest
row: the paper's 512 x 5 rows of up to ~5,000 tokens is on the order of 150 GB for a 3B model.
`pool_for_budget` picks the largest pool whose cache, doubling included, stays within a budget;
training and evaluation both ask `engine_pool`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from searchr1.errors import ConfigError

GiB = 1 << 30
#: Share of the GPU memory free at rollout time that the KV cache may take when no budget is set.
CUDA_KV_SHARE = 0.9
#: The same on a CPU, of the available RAM.
CPU_KV_SHARE = 0.5


def kv_bytes_per_token(model_config, dtype: torch.dtype) -> int:
    """Bytes one token takes in the KV cache: layers x (key + value) x kv heads x head dim x dtype."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return model_config.num_hidden_layers * 2 * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def _cache_shape(pool: int, max_tokens: int) -> tuple[int, int]:
    """Slots and per-slot capacity a fresh SlotCache grows to for `pool` rows of `max_tokens`."""
    from searchr1.rollout.kv import SlotCache, _grown

    fresh = SlotCache()
    return _grown(fresh.slots, pool), _grown(fresh.capacity, max_tokens)


def cache_bytes(pool: int, max_tokens: int, bytes_per_token: int) -> int:
    """The most a rollout cache of `pool` live rows of up to `max_tokens` tokens each can take."""
    slots, capacity = _cache_shape(pool, max_tokens)
    return slots * capacity * bytes_per_token


def pool_for_budget(episodes: int, wanted: int, budget: int | None, max_tokens: int, bytes_per_token: int) -> int:
    """Episodes live at once: `wanted` (0 = all `episodes`), lowered until the cache fits `budget` bytes
    (None = unbounded). ConfigError when not even the smallest cache fits."""
    pool = min(wanted or episodes, episodes)
    if budget is None or cache_bytes(pool, max_tokens, bytes_per_token) <= budget:
        return pool
    first_slots, capacity = _cache_shape(1, max_tokens)
    slots = first_slots  # the cache's slot counts are first_slots x 2^k: take the largest that fits
    while slots * 2 * capacity * bytes_per_token <= budget:
        slots *= 2
    smallest = slots * capacity * bytes_per_token
    if smallest > budget:
        raise ConfigError(
            f"the rollout KV cache does not fit its budget: its smallest size ({first_slots} rows of "
            f"{capacity} tokens, {bytes_per_token} bytes a token) is {smallest / GiB:.2f} "
            f"GiB, the budget {budget / GiB:.2f} GiB; raise train.sampling.pool_memory_gb, lower "
            "agent.max_response_tokens, or use rollout.backend=vllm")
    return min(pool, slots)


def rollout_budget(memory_gb: float, device: torch.device) -> int | None:
    """The KV cache budget in bytes: `memory_gb` when set; else a share of the memory free now: on CUDA
    (torch's cached blocks count as free) `CUDA_KV_SHARE`, on a CPU `CPU_KV_SHARE` of the available RAM
    (the cache doubles by copying, so it briefly holds 1.5x its size; the model and its activations
    need the rest)."""
    if memory_gb > 0:
        return int(memory_gb * GiB)
    share = CUDA_KV_SHARE if device.type == "cuda" else CPU_KV_SHARE
    return int(available_bytes(device) * share)


def longest_row(trajectories, agent) -> int:
    """The most tokens a row of `trajectories` can hold: its prompt, the agent's whole response budget
    (`agent.max_response_tokens`) and one more observation block appended at that budget's edge."""
    return max((len(t.prompt_ids) for t in trajectories), default=0) + agent.max_response_tokens + agent.max_obs_tokens


def engine_pool(generator, trajectories, wanted: int, agent, memory_gb: float = 0.0,
                dtype: torch.dtype | None = None) -> int:
    """Episodes of `trajectories` live at once: `wanted` (0 = all), lowered to fit `rollout_budget` when
    `generator` is our engine (an `EngineGenerator`: it has `.model`); another backend (vLLM) sizes
    its own cache and gets `wanted` (0 = all). `dtype`: what the cache holds (default: autocast's
    dtype when autocast is on now, else the weights')."""
    episodes = len(trajectories)
    model = getattr(generator, "model", None)
    config = getattr(model, "config", None)
    # no model (vLLM), or one without a transformer's layers and heads (a scripted test policy): no
    # KV cache of that size to bound
    if not all(hasattr(config, k) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size")):
        return min(wanted or episodes, episodes)
    if dtype is None:
        dtype = next(model.parameters()).dtype
        if torch.is_autocast_enabled(generator.device.type):  # the cache holds the compute dtype then
            dtype = torch.get_autocast_dtype(generator.device.type)
    budget = rollout_budget(memory_gb, generator.device)
    return pool_for_budget(episodes, wanted, budget, longest_row(trajectories, agent),
                           kv_bytes_per_token(config, dtype))


def available_bytes(device: torch.device) -> int:
    """Memory a process can still take: free GPU memory (CUDA), else available RAM (psutil, or
    /proc/meminfo's MemAvailable; unknown -> a very large number)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62
