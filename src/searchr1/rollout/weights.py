"""A policy's weights as a checkpoint would name them: what an inference engine (vLLM) loads.

The policy a trainer holds is not always a plain checkpoint: with LoRA, peft wraps each adapted
linear layer, renaming its weight `<layer>.base_layer.weight` and adding `lora_A` / `lora_B`.
An engine that serves the checkpoint architecture wants one `<layer>.weight`: the merged
`W + scale * B @ A`. Computing it per layer (peft's `get_delta_weight`) leaves the policy as it is,
unlike `merge_adapter()` / `unmerge_adapter()`, which write into the weights being trained and
round them twice.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")


def _merged(module: nn.Module) -> torch.Tensor:
    weight = module.base_layer.weight
    if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return weight  # merged: the delta is in the weight already; disabled: it does not apply
    for adapter in module.active_adapters:
        if adapter in module.lora_A:
            weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
    return weight


@torch.no_grad()
def checkpoint_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every parameter of a transformers causal LM, under its checkpoint names.

    LoRA layers (peft, injected into `model`) give their merged weight and their base layer's
    other parameters; adapter tensors are left out. Tied parameters appear once (under their first
    name), as in `named_parameters`. Tensors stay on their device and dtype, detached."""
    skip: set[str] = set()
    for prefix, module in model.named_modules():
        if not _is_lora_layer(module):
            continue
        dot = f"{prefix}." if prefix else ""
        yield f"{dot}weight", _merged(module).detach()
        for name, param in module.base_layer.named_parameters():
            if name != "weight":
                yield f"{dot}{name}", param.detach()
        skip.add(dot)
    for name, param in model.named_parameters():
        if any(name.startswith(s) for s in skip):
            continue
        if ".modules_to_save." in name or ".original_module." in name:
            raise NotImplementedError(f"{name}: peft's modules_to_save copies have no checkpoint name; "
                                      "train LoRA without modules_to_save to serve the policy from an engine")
        yield name, param.detach()
