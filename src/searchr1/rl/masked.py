"""Masked reductions over token-level tensors, and the one loss-aggregation function.

Conventions (shared by everything in :mod:`searchr1.rl`):

- Token-level tensors are ``[B, T]`` over RESPONSE tokens, right-padded.
- ``mask`` is ``[B, T]`` (bool, or float/int holding 0/1): 1 = a token the policy generated (the
  loss applies to it), 0 = a token injected by the environment (``<information>`` blocks, invalid
  action notes) or padding. Injected tokens may sit between generated tokens.
- Values at mask-0 positions never influence a result, even when they are NaN or inf: they are
  selected away with :func:`torch.where`, not multiplied by zero.
- Empty selections never produce NaN: a mean / variance over zero elements is 0.
"""

from __future__ import annotations

import torch

from .names import AGG_MODES

__all__ = [
    "AGG_MODES",
    "aggregate_loss",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
]


def _as_bool_mask(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast ``x`` and ``mask`` to one shape and return ``(x, mask as bool)``."""
    mask = mask.to(device=x.device)
    if mask.dtype != torch.bool:
        mask = mask != 0
    x, mask = torch.broadcast_tensors(x, mask)
    return x, mask


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Sum of ``x`` over the positions where ``mask`` is 1.

    Args:
        x: any shape, e.g. ``[B, T]``.
        mask: broadcastable to ``x``; nonzero = include.
        dim: reduce over this dim (or dims); ``None`` reduces over everything.

    Returns:
        0-dim tensor when ``dim`` is None, else ``x``'s shape without ``dim``
        (e.g. ``[B]`` for ``dim=-1`` on ``[B, T]``).
    """
    x, m = _as_bool_mask(x, mask)
    selected = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return selected.sum()
    return selected.sum(dim=dim)


def _count(mask: torch.Tensor, like: torch.Tensor, dim) -> torch.Tensor:
    _, m = _as_bool_mask(like, mask)
    counts = m.to(like.dtype if like.is_floating_point() else torch.float32)
    return counts.sum() if dim is None else counts.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the mask-1 positions; 0 (not NaN) where there are none.

    Args:
        x: any shape, e.g. ``[B, T]``.
        mask: broadcastable to ``x``.
        dim: as in :func:`masked_sum`.

    Returns:
        0-dim tensor when ``dim`` is None, else the reduced shape (``[B]`` for ``dim=-1``).
    """
    if not x.is_floating_point():
        x = x.float()
    total = masked_sum(x, mask, dim)
    n = _count(mask, x, dim)
    return total / n.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over ALL mask-1 positions (a scalar).

    Args:
        x: any shape, e.g. ``[B, T]``.
        mask: broadcastable to ``x``.
        unbiased: divide by ``n - 1`` (Bessel) instead of ``n``.

    Returns:
        0-dim tensor. 0 when there are no selected elements, or only one with ``unbiased=True``
        (where the unbiased variance is undefined), never NaN.
    """
    if not x.is_floating_point():
        x = x.float()
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    n = _count(mask, x, None)
    denom = n - 1 if unbiased else n
    return torch.where(denom > 0, sq / denom.clamp(min=1), torch.zeros_like(sq))


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Standardise ``x`` with the mean and (unbiased) variance of its mask-1 elements.

    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back (only the
    scale changes). Statistics are pooled over the whole tensor (e.g. all tokens of the batch).

    Args:
        x: ``[B, T]`` (any shape works).
        mask: broadcastable to ``x``.
        shift_mean: subtract the mean (True) or keep it (False).
        eps: added to the variance.

    Returns:
        Same shape as ``x``. Mask-0 positions are 0. With 0 selected elements the result is all 0;
        with 1 it is 0 (``shift_mean=True``) or the element itself (``shift_mean=False``); never NaN.
    """
    if not x.is_floating_point():
        x = x.float()
    x_b, m = _as_bool_mask(x, mask)
    mean = masked_mean(x_b, m)
    var = masked_var(x_b, m, unbiased=True)
    out = (x_b - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))


def aggregate_loss(
    loss_mat: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    norm: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar over the mask-1 tokens.

    Modes:

    - ``"token-mean"``: sum over all mask-1 tokens of the batch / their count (long sequences
      weigh more; the Search-R1 / veRL default and DAPO's choice).
    - ``"seq-mean-token-mean"``: per sequence, the mean over its mask-1 tokens; then the mean over
      the sequences that have at least one mask-1 token (sequences without any are excluded).
      The original GRPO objective.
    - ``"seq-mean-token-sum"``: per sequence, the sum over its mask-1 tokens; then the mean over
      the sequences that have at least one mask-1 token (same exclusion rule).
    - ``"seq-mean-token-sum-norm"``: Dr. GRPO's constant normaliser: the sum over all mask-1
      tokens / (B * norm), where ``norm`` is a constant length (the maximum response length,
      defaults to ``T``). This is TRL's ``dr_grpo`` scaling; veRL divides by ``norm`` only, which
      is this value times B.

    Args:
        loss_mat: ``[B, T]`` per-token loss.
        mask: ``[B, T]``, 1 = include.
        mode: one of :data:`AGG_MODES`.
        norm: the constant length for ``"seq-mean-token-sum-norm"`` (ignored by the other modes).

    Returns:
        0-dim tensor, differentiable w.r.t. ``loss_mat``; 0 (never NaN) when no token is selected.
        Mask-0 positions get exactly zero gradient.

    Raises:
        ValueError: unknown ``mode``, or a non-positive ``norm``.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {', '.join(AGG_MODES)}")
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be [B, T], got shape {tuple(loss_mat.shape)}")
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-sum-norm":
        length = float(loss_mat.shape[-1]) if norm is None else float(norm)
        if length <= 0:
            raise ValueError(f"norm must be positive, got {norm}")
        batch = max(loss_mat.shape[0], 1)
        return masked_sum(loss_mat, mask) / (batch * length)
    if mode == "seq-mean-token-mean":
        per_seq = masked_mean(loss_mat, mask, dim=-1)  # [B]
    else:  # seq-mean-token-sum
        per_seq = masked_sum(loss_mat, mask, dim=-1)  # [B]
    _, m = _as_bool_mask(loss_mat, mask)
    has_tokens = m.any(dim=-1)  # [B]
    return masked_mean(per_seq, has_tokens)
