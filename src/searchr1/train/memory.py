"""Memory arithmetic of a training run: the rollout pool a KV-cache budget allows, and whether the
training state fits the device at all (checked before the first step, with the ways out named).

Our engine keeps one KV cache for the live rows of a rollout (`searchr1.rollout.kv.SlotCache`): its
slots and its per-slot capacity start at SlotCache's defaults and double when outgrown. With every
episode of a step live at once (`train.sampling.pool=0`) it grows to slots x longest row: the paper's
512 x 5 rows of up to ~5,000 tokens is on the order of 150 GB for a 3B model. `pool_for_budget` picks
the largest pool whose cache, doubling included, stays within a budget.
"""

from __future__ import annotations

from pathlib import Path

import torch

from searchr1.errors import ConfigError

GiB = 1 << 30
#: Share of the GPU memory free at rollout time that the KV cache may take when no budget is set.
CUDA_KV_SHARE = 0.9


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
    """The KV cache budget in bytes: `memory_gb` when set; else on CUDA a share of the memory free now
    (torch's cached blocks count as free), on CPU none."""
    if memory_gb > 0:
        return int(memory_gb * GiB)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int((free + cached) * CUDA_KV_SHARE)


# ---------------------------------------------------------------------------------------- training state


def _unique_params(*modules) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in (m.parameters() if m is not None else ()):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def training_state_bytes(models, world: int = 1, sharding: str = "none") -> dict[str, int]:
    """Bytes per process of the weights (policy, reference, critic), gradients and AdamW's two
    moments of the trainable parameters (same dtype as the parameters). Sharding divides the
    optimizer state (zero1), + gradients (zero2), + weights (zero3) by the process count."""
    params = _unique_params(models.policy, models.reference, models.critic)
    trainable = [p for p in params if p.requires_grad]
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    weights, grads = nbytes(params), nbytes(trainable)
    level = {"zero1": 1, "zero2": 2, "zero3": 3}.get(sharding, 0) if world > 1 else 0
    return {"weights": weights // (world if level >= 3 else 1),
            "gradients": grads // (world if level >= 2 else 1),
            "optimizer": 2 * grads // (world if level >= 1 else 1)}


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


def check_training_fits(models, device: torch.device, world: int = 1, sharding: str = "none",
                        reserved: int = 0, available: int | None = None) -> dict[str, int]:
    """ConfigError unless what training has still to allocate (gradients and AdamW's moments; the
    weights are loaded already) plus `reserved` (e.g. a colocated vLLM engine's share) fits the
    memory `available` now (default: `available_bytes(device)`). Activations come on top: this is
    the state alone, so passing it is necessary, not sufficient. Returns the estimate."""
    state = training_state_bytes(models, world, sharding)
    to_allocate = state["gradients"] + state["optimizer"] + reserved
    available = available_bytes(device) if available is None else available
    if to_allocate > available:
        parts = ", ".join(f"{k} {v / GiB:.2f} GiB" for k, v in state.items())
        vllm = f" + {reserved / GiB:.2f} GiB for the vLLM engine" if reserved else ""
        raise ConfigError(
            f"the training state does not fit {device}: {parts} per process{vllm}; the gradients and "
            f"optimizer state still to allocate need {to_allocate / GiB:.2f} GiB, {available / GiB:.2f} GiB are "
            "available. Options: LoRA (train.lora.r=16), sharding over several GPUs (torchrun with "
            "train.compute.sharding=zero2 or zero3), rollout.vllm.sleep=true or a lower "
            "rollout.vllm.gpu_memory_utilization, train.compute.precision=bf16, or a smaller model")
    return state
