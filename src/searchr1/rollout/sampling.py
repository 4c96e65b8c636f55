"""Next-token sampling as a pure tensor function (temperature, top-k, top-p, greedy)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from searchr1.errors import NonFiniteLogitsError
from searchr1.rollout.generator import SamplingParams


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set the logits outside the top-k / nucleus (top-p) sets to -inf.

    logits: float[B, V]. Returns float[B, V]. The nucleus keeps the smallest prefix of tokens,
    sorted by probability, whose mass reaches top_p (the token that crosses it is kept, so at
    least one token always survives).
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _check_finite(logprobs: torch.Tensor) -> None:
    """NonFiniteLogitsError naming the rows whose logits hold NaN or +inf (their log-softmax is NaN;
    -inf logits, masked tokens, are fine), before torch.multinomial meets them: on CUDA it asserts on
    the device and kills the process with no usable message. One reduction per step."""
    if not torch.isnan(logprobs.sum()):
        return
    rows = torch.isnan(logprobs).any(dim=-1).nonzero().flatten().tolist()
    raise NonFiniteLogitsError(
        f"the model's next-token logits are NaN or infinite in batch row(s) {rows[:10]}"
        f"{' ...' if len(rows) > 10 else ''} of {len(logprobs)}: the weights have diverged (a trained policy: "
        "lower train.optim.lr, or train.compute.precision=fp32) or the precision overflows (model.dtype=float32)")


def sample_next(logits: torch.Tensor, params: SamplingParams,
                generator: torch.Generator | Sequence[torch.Generator] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row. logits: float[B, V] -> (tokens long[B], logprobs float[B]).

    `generator`: one for the whole batch, or one per row (row b draws from generator[b] only, so
    what a row samples does not depend on which other rows share its batch).

    The log-prob is taken under softmax(logits / T) before top-k/top-p filtering (T = 1 when
    greedy): the distribution a fresh forward pass of the policy computes, which is what PPO's
    importance ratio compares against. Filtering only restricts which tokens can be drawn.
    """
    logits = logits.float()
    if params.greedy:
        logprobs = torch.log_softmax(logits, dim=-1)
        _check_finite(logprobs)
        tokens = logits.argmax(dim=-1)
    else:
        scaled = logits / params.temperature
        logprobs = torch.log_softmax(scaled, dim=-1)
        _check_finite(logprobs)
        probs = torch.softmax(filter_logits(scaled, params.top_k, params.top_p), dim=-1)
        if generator is None or isinstance(generator, torch.Generator):
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            if len(generator) != len(probs):
                raise ValueError(f"{len(probs)} rows but {len(generator)} generators")
            tokens = torch.cat([torch.multinomial(p[None], 1, generator=g)[0] for p, g in zip(probs, generator)])
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
