"""Advantage estimators for multi-turn search trajectories: GAE (PPO), GRPO, RLOO, REINFORCE,
REINFORCE++, Tree-GRPO.

All functions are pure tensor functions (no config, no model, no I/O) and run under
``torch.no_grad()``: advantages and returns are training targets, never differentiated through.

Shapes: ``B`` trajectories, ``T`` response tokens (right-padded). ``mask`` ``[B, T]`` is 1 for the
tokens the policy generated and 0 for tokens the environment injected (``<information>`` blocks,
notes) and for padding; injected tokens may sit between generated ones (see :mod:`.masked`).
Every advantage / return is exactly 0 at mask-0 positions.

Each ``stats`` dict maps a name to a detached 0-dim tensor (no host sync; ``float()`` it to log).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from .masked import masked_whiten

__all__ = [
    "gae_advantages",
    "grpo_advantages",
    "informative_groups",
    "kl_penalized_rewards",
    "reinforce_advantages",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "tree_grpo_advantages",
]


def _bool_mask(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=device)
    return mask if mask.dtype == torch.bool else mask != 0


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


@torch.no_grad()
def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over the GENERATED tokens of each trajectory.

    An injected token is not an action, so the MDP is the sequence of generated tokens with the
    injected ones removed (the environment's reply is part of the transition that follows an
    action). For a generated token at position ``t`` with the next generated token at ``t'``
    (any number of injected tokens may lie between them)::

        delta_t = r_t + gamma * V[t'] - V[t]          (V[t'] := 0 after the last generated token)
        A_t     = delta_t + gamma * lam * A_{t'}
        R_t     = A_t + V[t]

    i.e. exactly the usual GAE on the row with its mask-0 tokens physically removed: ``gamma``
    and ``lam`` are applied once per action, however long the hole is, and the values and rewards
    at injected positions never enter the recurrence as states.

    Rewards at mask-0 positions are FOLDED INTO THE PRECEDING GENERATED TOKEN, undiscounted:
    a reward that arrives while the environment is replying (or on the padding after the last
    generated token, e.g. an outcome score placed at the last *valid* token of a trajectory that
    was cut off inside an ``<information>`` block) is the reward of the action that led there.
    Rewards at mask-0 positions before the first generated token of a row have no action to be
    credited to and are dropped. With rewards from :func:`kl_penalized_rewards` (which only
    writes mask-1 positions) nothing is folded and this matches veRL's ``compute_gae_advantage_
    return`` (which ignores rewards at mask-0 positions).

    Args:
        rewards: ``[B, T]`` token-level rewards (typically the outcome score at the last generated
            token minus the per-token KL penalty).
        values: ``[B, T]`` critic values ``V(s_t)`` at each token (values at mask-0 positions are
            never read, so NaN there is harmless).
        mask: ``[B, T]`` 1 = generated.
        gamma: discount per generated token.
        lam: GAE lambda.
        whiten: standardise the advantages over all mask-1 tokens of the batch afterwards (veRL and
            Search-R1 do this for PPO); the returns are computed before whitening.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` in the promoted float dtype of ``rewards`` and
        ``values``, detached, 0 at mask-0 positions.
    """
    if rewards.shape != values.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards and values must both be [B, T]; got {tuple(rewards.shape)} and {tuple(values.shape)}")
    m = _bool_mask(mask, rewards.device)
    if m.shape != rewards.shape:
        raise ValueError(f"mask must be [B, T] = {tuple(rewards.shape)}, got {tuple(m.shape)}")
    dtype = _float_dtype(rewards, values)
    r = rewards.detach().to(dtype)
    v = values.detach().to(dtype)
    B, T = r.shape
    zero = torch.zeros(B, dtype=dtype, device=r.device)
    next_value = zero  # V at the next generated token (0 past the last one: episode end)
    next_adv = zero  # A at the next generated token
    pending = zero  # rewards seen on mask-0 positions since the next generated token
    columns: list[torch.Tensor] = []
    for t in range(T - 1, -1, -1):
        m_t = m[:, t]
        r_t = r[:, t]
        v_t = v[:, t]
        delta = r_t + pending + gamma * next_value - v_t
        adv_t = delta + gamma * lam * next_adv
        # Only generated tokens update the carried state: a hole is skipped entirely.
        next_value = torch.where(m_t, v_t, next_value)
        next_adv = torch.where(m_t, adv_t, next_adv)
        pending = torch.where(m_t, zero, pending + r_t)
        columns.append(torch.where(m_t, adv_t, zero))
    if columns:
        advantages = torch.stack(columns[::-1], dim=1)
    else:
        advantages = torch.zeros_like(r)
    returns = torch.where(m, advantages + v, torch.zeros_like(advantages))
    if whiten:
        advantages = masked_whiten(advantages, m)
    return advantages, returns


def _group_index(group_ids, batch: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids (ints or hashables) to contiguous ``[B]`` long indices ``0..G-1``."""
    if isinstance(group_ids, torch.Tensor):
        ids = group_ids.reshape(-1)
        if ids.numel() != batch:
            raise ValueError(f"group_ids has {ids.numel()} entries, scores has {batch}")
        _, inverse = torch.unique(ids.to(device), return_inverse=True)
        num = int(inverse.max().item()) + 1 if batch else 0
        return inverse.long(), num
    ids = list(group_ids)
    if len(ids) != batch:
        raise ValueError(f"group_ids has {len(ids)} entries, scores has {batch}")
    lookup: dict[Hashable, int] = {}
    inverse_list = [lookup.setdefault(g.item() if hasattr(g, "item") else g, len(lookup)) for g in ids]
    return torch.tensor(inverse_list, dtype=torch.long, device=device), len(lookup)


def _group_moments(scores: torch.Tensor, group_ids, device: torch.device):
    """Per-sample group statistics in float64.

    Returns ``(mean [B], std_unbiased [B], size [B], constant [B] bool, index [B], G, counts [G],
    constant [G])``: per-sample values gathered from the per-group ones, then the per-group ones.
    ``std`` is 0 for singleton groups; ``constant`` is True where all scores of the group are equal.
    """
    B = scores.shape[0]
    index, G = _group_index(group_ids, B, device)
    s = scores.to(torch.float64)
    counts = torch.bincount(index, minlength=G).to(torch.float64)  # [G]
    sums = torch.zeros(G, dtype=torch.float64, device=device).index_add_(0, index, s)
    mean_g = sums / counts.clamp(min=1)
    dev = s - mean_g[index]
    sq_g = torch.zeros(G, dtype=torch.float64, device=device).index_add_(0, index, dev * dev)
    var_g = torch.where(counts > 1, sq_g / (counts - 1).clamp(min=1), torch.zeros_like(sq_g))
    hi = torch.full((G,), -torch.inf, dtype=torch.float64, device=device).scatter_reduce(0, index, s, "amax")
    lo = torch.full((G,), torch.inf, dtype=torch.float64, device=device).scatter_reduce(0, index, s, "amin")
    constant_g = hi == lo
    return mean_g[index], var_g.sqrt()[index], counts[index], constant_g[index], index, G, counts, constant_g


def _outcome_inputs(scores, mask) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    m = _bool_mask(mask, scores.device if isinstance(scores, torch.Tensor) else None)
    scores = torch.as_tensor(scores, device=m.device)
    if m.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(m.shape)}")
    scores = scores.reshape(-1)
    if scores.shape[0] != m.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} entries, mask has {m.shape[0]} rows")
    dtype = scores.dtype if scores.dtype.is_floating_point else torch.get_default_dtype()
    return scores.detach(), m, dtype


def _broadcast(per_seq: torch.Tensor, m: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B]`` -> ``[B, T]``: the value on every mask-1 token, 0 elsewhere."""
    per_seq = per_seq.to(dtype)
    return torch.where(m, per_seq[:, None], torch.zeros((), dtype=dtype, device=m.device))


@torch.no_grad()
def grpo_advantages(
    scores: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable],
    mask: torch.Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's group-normalised outcome advantage, broadcast over the generated tokens.

    For trajectory ``i`` in group ``g`` (the trajectories sampled for the same prompt)::

        A_i = (s_i - mean_g) / (std_g + eps)     (norm_by_std=True, GRPO; std_g unbiased, as veRL)
        A_i =  s_i - mean_g                      (norm_by_std=False, Dr. GRPO)

    Degenerate groups give exactly 0, never NaN: a group of size 1 (no baseline; veRL would pass
    the raw score through) and a group whose scores are all equal (no learning signal).

    Args:
        scores: ``[B]`` outcome rewards.
        group_ids: ``[B]`` group id per trajectory (an int tensor, or any sequence of hashables,
            e.g. prompt uids).
        mask: ``[B, T]`` 1 = generated token.
        norm_by_std: divide by the group std.
        eps: added to the std.

    Returns:
        ``advantages`` ``[B, T]`` (0 at mask-0 positions) and ``stats``: ``num_groups``,
        ``zero_variance_groups`` (groups of size >= 2 whose scores are all equal),
        ``singleton_groups`` (groups of size 1), ``zero_variance_fraction`` (the former over
        ``num_groups``).
    """
    scores, m, dtype = _outcome_inputs(scores, mask)
    mean, std, size, constant, _, G, counts_g, constant_g = _group_moments(scores, group_ids, m.device)
    centred = scores.to(torch.float64) - mean
    adv = centred / (std + eps) if norm_by_std else centred
    degenerate = (size < 2) | constant
    adv = torch.where(degenerate, torch.zeros_like(adv), adv)
    zero_var = ((counts_g >= 2) & constant_g).sum()
    stats = {
        "num_groups": torch.tensor(G, device=m.device),
        "zero_variance_groups": zero_var,
        "singleton_groups": (counts_g < 2).sum(),
        "zero_variance_fraction": zero_var.to(torch.float32) / max(G, 1),
    }
    return _broadcast(adv, m, dtype), stats


def tree_grpo_advantages(
    scores: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable],
    tree_ids: torch.Tensor | Sequence[Hashable],
    mask: torch.Tensor,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Tree-GRPO's advantage (Ji et al. 2025): each leaf of a tree of rollouts is compared with the
    leaves of its own tree and with every leaf sampled for its prompt, and the two are added::

        A_i = (s_i - mean_tree) / (std_tree + eps)  +  (s_i - mean_group) / (std_group + eps)

    each term a GRPO advantage (:func:`grpo_advantages`, so a tree of one leaf or of equal scores
    adds 0). Leaves that share a prefix each carry it in their own row with their own advantage,
    so the shared tokens are trained by the sum of their leaves' advantages: what makes the
    within-tree term a step-level preference between the branches of a node.

    Args:
        scores: ``[B]`` outcome rewards of the leaves.
        group_ids: ``[B]`` the prompt of each leaf (its trees' group).
        tree_ids: ``[B]`` the tree of each leaf, unique across the batch (a tree is in one group).
        mask: ``[B, T]`` 1 = generated token.
        norm_by_std: divide both terms by their std (false: Dr. GRPO's centring only).
        eps: added to the stds.

    Returns:
        ``advantages`` ``[B, T]`` and the within-group term's ``stats`` (:func:`grpo_advantages`),
        with ``num_trees`` added.
    """
    intra, intra_stats = grpo_advantages(scores, tree_ids, mask, norm_by_std, eps)
    inter, stats = grpo_advantages(scores, group_ids, mask, norm_by_std, eps)
    return intra + inter, {**stats, "num_trees": intra_stats["num_groups"]}


@torch.no_grad()
def informative_groups(scores: torch.Tensor, group_ids: torch.Tensor | Sequence[Hashable]) -> torch.Tensor:
    """``[B]`` bool: True for the samples of groups whose scores are not all equal (DAPO's dynamic
    sampling keeps only those: a group of equal scores has zero group-relative advantage, so it
    only dilutes the batch). A singleton group counts as constant."""
    scores = torch.as_tensor(scores).reshape(-1)
    _, _, size, constant, *_ = _group_moments(scores, group_ids, scores.device)
    return ~constant & (size > 1)


@torch.no_grad()
def rloo_advantages(
    scores: torch.Tensor,
    group_ids: torch.Tensor | Sequence[Hashable],
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE Leave-One-Out: the baseline of each trajectory is the mean of the OTHER scores of
    its group (Ahmadian et al. 2024)::

        A_i = s_i - (sum_g - s_i) / (n_g - 1) = n_g / (n_g - 1) * (s_i - mean_g)

    Groups of size 1 have no other sample and get advantage 0.

    Args:
        scores: ``[B]`` outcome rewards.
        group_ids: ``[B]`` group ids (see :func:`grpo_advantages`).
        mask: ``[B, T]``.

    Returns:
        ``advantages`` ``[B, T]`` (0 at mask-0 positions) and ``stats`` (``num_groups``,
        ``singleton_groups``).
    """
    scores, m, dtype = _outcome_inputs(scores, mask)
    mean, _, size, _, _, G, counts_g, _ = _group_moments(scores, group_ids, m.device)
    adv = size / (size - 1).clamp(min=1) * (scores.to(torch.float64) - mean)
    adv = torch.where(size < 2, torch.zeros_like(adv), adv)
    stats = {"num_groups": torch.tensor(G, device=m.device), "singleton_groups": (counts_g < 2).sum()}
    return _broadcast(adv, m, dtype), stats


@torch.no_grad()
def reinforce_advantages(
    scores: torch.Tensor,
    mask: torch.Tensor,
    baseline: str = "none",
    whiten: bool = False,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE outcome advantages, optionally with a batch baseline and REINFORCE++ whitening.

    ``A_i = s_i - b`` on every generated token, with ``b = 0`` (``baseline="none"``) or the mean
    score over the batch's trajectories (``"batch-mean"``). With ``whiten=True`` the token-level
    advantages are then standardised over all mask-1 tokens of the batch (REINFORCE++, Hu 2025:
    the pooled statistics weigh each trajectory by its number of generated tokens; whitening
    subtracts the mean, so the baseline no longer matters).

    Args:
        scores: ``[B]`` outcome rewards.
        mask: ``[B, T]``.
        baseline: ``"none"`` or ``"batch-mean"``.
        whiten: standardise over mask-1 tokens.
        eps: added to the variance when whitening.

    Returns:
        ``advantages`` ``[B, T]`` (0 at mask-0 positions) and ``stats`` (``baseline``).

    Raises:
        ValueError: unknown ``baseline``.
    """
    if baseline not in ("none", "batch-mean"):
        raise ValueError(f"unknown baseline {baseline!r}; expected 'none' or 'batch-mean'")
    scores, m, dtype = _outcome_inputs(scores, mask)
    s = scores.to(dtype)
    b = s.mean() if (baseline == "batch-mean" and s.numel()) else torch.zeros((), dtype=dtype, device=m.device)
    adv = _broadcast(s - b, m, dtype)
    if whiten:
        adv = masked_whiten(adv, m, eps=eps)
    return adv, {"baseline": b}


@torch.no_grad()
def reinforce_pp_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, as OpenRLHF and veRL define it): discounted returns of token-level
    rewards, standardised over the whole batch (no critic, no group baseline)::

        G_t = r_t + gamma * G_{t'}        (t' = the next generated token; G := 0 after the last)
        A   = (G - mean(G)) / sqrt(var(G) + eps)      over every mask-1 token of the batch

    ``token_rewards`` are normally :func:`kl_penalized_rewards` (the outcome score on the last
    generated token, ``-kl_coef * KL`` on every generated token). As in :func:`gae_advantages`,
    the return runs over GENERATED tokens: an injected block neither discounts nor cuts it (veRL's
    loop resets the running return at every mask-0 token, which in a multi-turn episode would stop
    the outcome reaching the turns before an ``<information>`` block; a reward placed on an
    injected token is carried to the generated token before it). This is GAE with ``V = 0`` and
    ``lambda = 1``, and is computed as such.

    Args:
        token_rewards: ``[B, T]``.
        mask: ``[B, T]``.
        gamma: discount per generated token.
        eps: added to the variance when standardising.

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` and 0 at mask-0 positions.
    """
    returns, _ = gae_advantages(token_rewards, torch.zeros_like(token_rewards), mask, gamma, 1.0)
    return masked_whiten(returns, _bool_mask(mask, returns.device), eps=eps), returns


def kl_penalized_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Token-level rewards for PPO with the KL penalty in the reward (Search-R1 PPO, InstructGPT).

    ``r[b, t] = -kl_coef * kl[b, t]`` on every mask-1 token, plus ``scores[b]`` on the LAST mask-1
    token of row ``b``; 0 on mask-0 tokens (the KL at injected tokens is ignored: the policy did
    not choose them). A row without any mask-1 token gets all zeros (its score has no token to sit
    on; such a row also carries no loss).

    Args:
        scores: ``[B]`` outcome rewards.
        kl: ``[B, T]`` per-token KL estimate between policy and reference (e.g. ``kl_penalty(...,
            "k1")``); values at mask-0 positions are never read.
        mask: ``[B, T]``.
        kl_coef: the KL coefficient (paper: 0.001).

    Returns:
        ``[B, T]`` rewards in ``kl``'s float dtype (differentiable through ``kl`` if it requires
        grad, though it normally does not).
    """
    m = _bool_mask(mask, kl.device)
    if m.shape != kl.shape or kl.dim() != 2:
        raise ValueError(f"kl and mask must both be [B, T]; got {tuple(kl.shape)} and {tuple(m.shape)}")
    dtype = _float_dtype(kl)
    scores = torch.as_tensor(scores, device=kl.device).reshape(-1).to(dtype)
    if scores.shape[0] != kl.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} entries, kl has {kl.shape[0]} rows")
    B, T = kl.shape
    zero = torch.zeros((), dtype=dtype, device=kl.device)
    rewards = torch.where(m, -kl_coef * kl.to(dtype), zero)
    if T == 0:
        return rewards
    positions = torch.arange(T, device=kl.device).expand(B, T)
    last = torch.where(m, positions, torch.full_like(positions, -1)).max(dim=-1).values  # [B], -1 if none
    has_tokens = last >= 0
    placed = torch.where(has_tokens, scores, zero)[:, None]
    bonus = torch.zeros_like(rewards).scatter(1, last.clamp(min=0)[:, None], placed)
    return rewards + bonus
