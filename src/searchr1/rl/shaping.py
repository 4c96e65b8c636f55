"""Reward shaping on outcome scores: DAPO's soft overlong punishment.

Pure tensor functions on ``[B]`` per-trajectory values (no config, no model, no I/O).
"""

from __future__ import annotations

import torch

__all__ = ["overlong_penalty"]


@torch.no_grad()
def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), to ADD to the outcome scores::

        0                                         if L <= max_length - buffer
        factor * ((max_length - buffer) - L) / buffer   if max_length - buffer < L <= max_length
        -factor                                   if L > max_length

    so the penalty grows linearly from 0 to ``-factor`` over the last ``buffer`` tokens of the
    budget instead of a cliff at the limit.

    Args:
        lengths: ``[B]`` response lengths in tokens.
        max_length: the response budget (e.g. ``agent.max_response_tokens``).
        buffer: the length of the linear ramp, ``0 < buffer <= max_length``.
        factor: the penalty at and beyond the limit.

    Returns:
        ``[B]`` float32 penalties (<= 0).
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"need 0 < buffer <= max_length, got buffer {buffer}, max_length {max_length}")
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    L = torch.as_tensor(lengths, dtype=torch.float32).reshape(-1)
    start = float(max_length - buffer)
    ramp = (start - L) / buffer * factor
    return torch.where(L <= start, torch.zeros_like(L), torch.clamp(ramp, min=-factor))
