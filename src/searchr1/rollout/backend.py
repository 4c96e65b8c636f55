"""Which engine generates: `rollout.backend` -> a `Generator`."""

from __future__ import annotations


def open_generator(cfg, model=None, tokenizer=None, seed: int = 0):
    """The generator `cfg.rollout.backend` names, for `cfg.model`.

    With `model` (a trainer's policy, and its tokenizer) it samples from that module's weights:
    `EngineGenerator` runs the module itself; vLLM loads the model directory and then follows the
    module's weights (`weights_updated()`). `seed` seeds vLLM's engine (requests carry their own).
    The caller owns the generator: `close()` it when done (a no-op for ours)."""
    if cfg.rollout.backend == "vllm":
        from searchr1.rollout.vllm import VLLMGenerator

        return VLLMGenerator.from_config(cfg, tokenizer=tokenizer, source=model, seed=seed)
    from searchr1.rollout.engine import EngineGenerator

    if model is not None:
        return EngineGenerator(model, tokenizer)
    return EngineGenerator.from_config(cfg.model)
