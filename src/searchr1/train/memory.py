"""Memory arithmetic of a training run: whether the training state fits the device at all (checked
before the first step, with the ways out named). The rollout's KV-cache pool is
`searchr1.rollout.memory`'s.
"""

from __future__ import annotations

import torch

from searchr1.errors import ConfigError
from searchr1.rollout.memory import GiB, available_bytes


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
