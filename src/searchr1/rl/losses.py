"""Losses for PPO / GRPO on multi-turn trajectories: clipped policy loss, clipped value loss, KL
estimators and the KL loss, entropy, log-probs from logits.

Shapes: ``[B, T]`` over response tokens; ``mask`` ``[B, T]`` is 1 on generated tokens and 0 on
injected tokens and padding (see :mod:`.masked`). Losses are aggregated over mask-1 tokens only
with :func:`~searchr1.rl.masked.aggregate_loss` (``agg`` names its mode, ``agg_norm`` is the
constant length of ``"seq-mean-token-sum-norm"``). Inputs at mask-0 positions are replaced before
any arithmetic, so NaN / inf there (e.g. log-probs of padding) change nothing and receive exactly
zero gradient.

Each ``stats`` dict maps a name to a detached 0-dim tensor (no host sync; ``float()`` it to log).
"""

from __future__ import annotations

import torch

from .masked import aggregate_loss, masked_mean, masked_var
from .names import KL_KINDS, LLDS_GATES, POLICY_LOSS_MODES

__all__ = [
    "KL_KINDS",
    "LLDS_GATES",
    "POLICY_LOSS_MODES",
    "entropy_from_logits",
    "explained_variance",
    "kl_loss",
    "kl_penalty",
    "llds_loss",
    "logprobs_from_logits",
    "policy_loss",
    "sequence_ratio",
    "truncated_is_weights",
    "value_loss",
]

_LOG_RATIO_LIMIT = 20.0  # exp(20) ~ 5e8: bounds ratios as veRL does, avoids inf
_K3_LIMIT = 10.0  # veRL's clamp of the low-variance KL


def _mask_bool(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=like.device)
    mask = mask if mask.dtype == torch.bool else mask != 0
    if mask.shape != like.shape:
        raise ValueError(f"mask must have shape {tuple(like.shape)}, got {tuple(mask.shape)}")
    return mask


def _keep(m: torch.Tensor, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``x`` at mask-1 positions, ``fill`` elsewhere (gradient 0 there, even if ``x`` is NaN)."""
    return torch.where(m, x, torch.full((), fill, dtype=x.dtype, device=x.device))


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs.

    With ``d = logprob - ref_logprob`` (log pi(a) - log pi_ref(a), ``a`` sampled from pi):

    - ``"k1"`` / ``"kl"``: ``d`` (unbiased, high variance, can be negative).
    - ``"abs"``: ``|d|``.
    - ``"k2"`` / ``"mse"``: ``0.5 * d**2``.
    - ``"k3"`` / ``"low_var_kl"``: Schulman's ``exp(-d) + d - 1`` (i.e. ``exp(ref - logp) - (ref -
      logp) - 1``; unbiased, >= 0, low variance; GRPO's KL), with ``-d`` clamped to [-20, 20]
      before ``exp`` and the result clamped to [-10, 10], as veRL does.

    Args:
        logprob: ``[B, T]`` log-probs of the sampled tokens under the policy.
        ref_logprob: ``[B, T]`` the same tokens under the reference.
        kind: one of :data:`KL_KINDS`.

    Returns:
        ``[B, T]`` per-token KL (unmasked: apply the mask when aggregating).

    Raises:
        ValueError: unknown ``kind``.
    """
    d = logprob - ref_logprob
    if kind in ("k1", "kl"):
        return d
    if kind == "abs":
        return d.abs()
    if kind in ("k2", "mse"):
        return 0.5 * d.square()
    if kind in ("k3", "low_var_kl"):
        neg = (-d).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        return (torch.exp(neg) - neg - 1).clamp(-_K3_LIMIT, _K3_LIMIT)
    raise ValueError(f"unknown KL kind {kind!r}; expected one of {', '.join(KL_KINDS)}")


def policy_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float = 0.2,
    clip_ratio_high: float | None = None,
    dual_clip_c: float | None = None,
    agg: str = "token-mean",
    agg_norm: float | None = None,
    token_weights: torch.Tensor | None = None,
    mode: str = "ppo",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss (to minimise), per token, aggregated over mask-1 tokens.

    With ``ratio = exp(logprob - old_logprob)`` (log-ratio clamped to [-20, 20]) and advantage A::

        L = max(-A * ratio, -A * clip(ratio, 1 - clip_ratio, 1 + clip_ratio_high))

    ``clip_ratio_high`` defaults to ``clip_ratio`` (symmetric); a larger value is DAPO's
    clip-higher. With ``dual_clip_c = c > 1`` (Ye et al. 2020), tokens with A < 0 are further
    bounded: ``L = min(L, -A * c) = min(L, c * |A|)``, so a huge ratio on a bad action cannot
    produce an unbounded loss.

    ``mode="gspo"`` (GSPO, Zheng et al. 2025) replaces each token's ratio by its sequence's
    length-normalised ratio (:func:`sequence_ratio`): every token of a sequence has the same ratio,
    so the clip keeps or drops whole sequences. The per-token form is the paper's GSPO-token: it
    takes any advantage (per token or per sequence), and with one advantage per sequence and
    ``agg="seq-mean-token-mean"`` it is GSPO's objective exactly, gradient included.

    Args:
        logprob: ``[B, T]`` log-probs of the sampled tokens under the current policy (with grad).
        old_logprob: ``[B, T]`` the same under the behaviour policy (no grad needed).
        advantages: ``[B, T]``.
        mask: ``[B, T]`` 1 = generated token.
        clip_ratio: epsilon of the lower bound (and of the upper one unless ``clip_ratio_high``).
        clip_ratio_high: epsilon of the upper bound.
        dual_clip_c: dual-clip constant (> 1), or None for no dual clip.
        agg: :func:`~searchr1.rl.masked.aggregate_loss` mode.
        agg_norm: constant length for ``agg="seq-mean-token-sum-norm"``.
        token_weights: ``[B, T]`` constant per-token factors of the (clipped) loss, e.g. the
            truncated importance weights of :func:`truncated_is_weights`; None = 1.
        mode: ``"ppo"`` (a ratio per token) or ``"gspo"`` (a ratio per sequence).

    Returns:
        ``(loss, stats)``: ``loss`` a 0-dim tensor; ``stats`` over mask-1 tokens:
        ``clip_fraction`` (tokens where the clipped term is the active one, i.e. the clip binds and
        the token's gradient is 0), ``dual_clip_fraction`` (tokens where the dual clip binds),
        ``approx_kl`` (k3 estimate of KL(old || new): mean of ``ratio - 1 - log ratio``),
        ``approx_kl_k1`` (mean of ``-log ratio``), ``ratio_mean``, ``ratio_max``, ``ratio_min``
        (ratio_max / ratio_min are 1 when there is no mask-1 token).

    Raises:
        ValueError: a clip ratio outside (0, 1) for the lower bound / <= 0 for the upper one,
            ``dual_clip_c <= 1``, or an unknown ``mode``.
    """
    if mode not in POLICY_LOSS_MODES:
        raise ValueError(f"unknown policy loss mode {mode!r}; expected one of {', '.join(POLICY_LOSS_MODES)}")
    if not 0 < clip_ratio < 1:
        raise ValueError(f"clip_ratio must be in (0, 1), got {clip_ratio}")
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    if high <= 0:
        raise ValueError(f"clip_ratio_high must be positive, got {clip_ratio_high}")
    if dual_clip_c is not None and dual_clip_c <= 1:
        raise ValueError(f"dual_clip_c must be > 1, got {dual_clip_c}")
    m = _mask_bool(mask, logprob)
    adv = _keep(m, advantages.to(logprob.dtype).detach())
    if mode == "gspo":
        ratio = sequence_ratio(logprob, old_logprob, m)
        log_ratio = _keep(m, torch.log(ratio))
    else:
        log_ratio = _keep(m, logprob - old_logprob).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_ratio, 1.0 + high)
    per_token = torch.maximum(loss_unclipped, loss_clipped)
    clip_active = loss_clipped > loss_unclipped
    if dual_clip_c is not None:
        loss_dual = -adv * dual_clip_c
        dual_active = (adv < 0) & (per_token > loss_dual)
        per_token = torch.where(dual_active, loss_dual, per_token)
    else:
        dual_active = torch.zeros_like(m)
    if token_weights is not None:
        per_token = per_token * _keep(m, token_weights.to(per_token.dtype).detach(), 1.0)
    loss = aggregate_loss(per_token, m, agg, agg_norm)

    with torch.no_grad():
        lr = log_ratio.detach()
        r = ratio.detach()
        any_token = m.any()
        one = torch.ones((), dtype=r.dtype, device=r.device)
        stats = {
            "clip_fraction": masked_mean(clip_active.float(), m),
            "dual_clip_fraction": masked_mean(dual_active.float(), m),
            "approx_kl": masked_mean(r - 1 - lr, m),
            "approx_kl_k1": masked_mean(-lr, m),
            "ratio_mean": masked_mean(r, m),
            "ratio_max": torch.where(any_token, _keep(m, r, -torch.inf).max(), one) if r.numel() else one,
            "ratio_min": torch.where(any_token, _keep(m, r, torch.inf).min(), one) if r.numel() else one,
        }
    return loss, stats


def sequence_ratio(logprob: torch.Tensor, old_logprob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's length-normalised sequence importance ratio, spread over the sequence's tokens::

        s_i = exp(mean over the mask-1 tokens t of sequence i of (logprob_t - old_logprob_t))

    in value at every mask-1 token of row ``i`` (1 elsewhere), with GSPO-token's gradient
    ``d ratio_t / d logprob_t = s_i`` (``s_i`` detached times ``exp(logprob_t - logprob_t.detach())``):
    token t of a sequence whose advantage is A then gets the gradient GSPO gives it once the loss
    is averaged over the sequence's tokens. The mean log-ratio is clamped to [-20, 20].

    Args:
        logprob: ``[B, T]`` log-probs of the sampled tokens under the current policy (with grad).
        old_logprob: ``[B, T]`` the same under the behaviour policy.
        mask: ``[B, T]`` 1 = generated token; a row without one has ratio 1.

    Returns:
        ``[B, T]`` ratios.
    """
    m = _mask_bool(mask, logprob)
    lp = _keep(m, logprob)
    diff = _keep(m, logprob - old_logprob.to(logprob.dtype).detach())
    length = m.sum(dim=-1).clamp(min=1)
    seq_log_ratio = (diff.sum(dim=-1) / length).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = torch.exp(seq_log_ratio.detach())[:, None] * torch.exp(lp - lp.detach())
    return _keep(m, ratio, 1.0)


def llds_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    gate: str = "action",
    agg: str = "token-mean",
    agg_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LLDS (Deng et al. 2025): the likelihood-preserving regulariser against lazy likelihood
    displacement (multiply by its coefficient yourself)::

        d_t = old_logprob_t - logprob_t                   (> 0: token t's likelihood fell)
        L_t = gate_t * max(d_t, 0)                        aggregated over the mask-1 tokens

    It only guards the preserving set, the tokens whose advantage is >= 0 (their likelihood
    should not fall), and switches on only where the likelihood fell: ``gate_t`` is 1 when the
    summed ``d`` of token t's unit (over its preserving tokens) is > 0, where the unit is

    - ``"action"``: the contiguous run of preserving mask-1 tokens holding t, i.e. one turn of
      the agent between injected blocks (the paper's best variant, LLDS-A);
    - ``"response"``: the preserving tokens of t's whole row (LLDS-R).

    Within an active unit only the tokens whose own likelihood fell are penalised (``max(d, 0)``).
    The gate is a constant; the gradient flows through ``logprob`` only.

    Args:
        logprob: ``[B, T]`` log-probs under the current policy (with grad).
        old_logprob: ``[B, T]`` the same before the update (the behaviour policy's).
        advantages: ``[B, T]``.
        mask: ``[B, T]`` 1 = a token the loss trains on.
        gate: ``"action"`` or ``"response"``.
        agg: :func:`~searchr1.rl.masked.aggregate_loss` mode (the paper: the token mean over every
            mask-1 token, ``"token-mean"``).
        agg_norm: constant length for ``agg="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, stats)``: ``active_tokens`` (share of mask-1 tokens penalised), ``active_responses``
        (share of rows with a penalised token; 0 without rows), ``penalty`` (mean of ``max(d, 0)``
        over the penalised tokens; 0 when none is).
    """
    if gate not in LLDS_GATES:
        raise ValueError(f"unknown LLDS gate {gate!r}; expected one of {', '.join(LLDS_GATES)}")
    m = _mask_bool(mask, logprob)
    d = _keep(m, old_logprob.to(logprob.dtype).detach() - logprob)
    with torch.no_grad():
        keep = m & (_keep(m, advantages.detach()) >= 0)
        d_keep = torch.where(keep, d.detach(), torch.zeros_like(d))
        if gate == "response":
            active = keep & (d_keep.sum(dim=-1, keepdim=True) > 0)
        else:
            # number the runs of preserving tokens in each row (0 outside), then sum d per run
            starts = keep & ~torch.nn.functional.pad(keep[:, :-1], (1, 0), value=False)
            run = starts.long().cumsum(dim=-1) * keep.long()
            sums = torch.zeros(keep.shape[0], keep.shape[1] + 1, dtype=d.dtype, device=d.device)
            sums.scatter_add_(1, run, d_keep)
            active = keep & (sums.gather(1, run) > 0)
        hit = active & (d.detach() > 0)
    per_token = torch.where(active, d.clamp(min=0), torch.zeros_like(d))
    loss = aggregate_loss(per_token, m, agg, agg_norm)
    with torch.no_grad():
        zero = torch.zeros((), dtype=torch.float32, device=d.device)
        stats = {
            "active_tokens": masked_mean(hit.float(), m),
            "active_responses": hit.any(dim=-1).float().mean() if hit.shape[0] else zero,
            "penalty": masked_mean(per_token.detach().float(), hit),
        }
    return loss, stats


@torch.no_grad()
def truncated_is_weights(
    old_logprob: torch.Tensor,
    sample_logprob: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated importance sampling (TIS; Yao et al. 2025, veRL's ``tis_imp_ratio_cap``) between
    the engine that sampled the tokens and the trainer's own forward of the same weights::

        w = min(exp(old_logprob - sample_logprob), cap)        on mask-1 tokens, 1 elsewhere

    The two differ when rollouts come from another engine (vLLM) or precision (bf16); ``w``
    multiplies the per-token policy loss, so tokens the sampler over-sampled weigh less, and the
    cap bounds the variance. The log-ratio is clamped to [-20, 20] like the policy ratio.

    Args:
        old_logprob: ``[B, T]`` the trainer's log-probs of the sampled tokens (before the update).
        sample_logprob: ``[B, T]`` the sampler's log-probs of the same tokens.
        mask: ``[B, T]`` 1 = a sampled token (injected tokens have no sampler log-prob).
        cap: C > 0.

    Returns:
        ``(weights [B, T], stats)``: ``capped_fraction`` (mask-1 tokens where the cap binds) and
        ``weight_mean`` over mask-1 tokens.
    """
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    m = _mask_bool(mask, old_logprob)
    log_w = _keep(m, old_logprob.float() - sample_logprob.float()).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    raw = torch.exp(log_w)
    weights = _keep(m, raw.clamp(max=cap), 1.0)
    return weights, {"capped_fraction": masked_mean((raw > cap).float(), m), "weight_mean": masked_mean(weights, m)}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[returns - values] / Var[returns]`` over mask-1 tokens (pooled over the batch).

    1 = perfect critic, 0 = no better than a constant, < 0 = worse than a constant.

    Args:
        values: ``[B, T]`` critic predictions.
        returns: ``[B, T]`` targets.
        mask: ``[B, T]``.

    Returns:
        Detached 0-dim tensor; NaN when the returns have no variance over the mask (fewer than two
        tokens, or all equal), where the quantity is undefined.
    """
    with torch.no_grad():
        m = _mask_bool(mask, values)
        v = _keep(m, values.detach().float())
        y = _keep(m, returns.detach().float())
        var_y = masked_var(y, m)
        var_res = masked_var(y - v, m)
        nan = torch.full((), float("nan"), device=v.device)
        return torch.where(var_y > 0, 1 - var_res / torch.where(var_y > 0, var_y, torch.ones_like(var_y)), nan)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.5,
    agg: str = "token-mean",
    agg_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss (veRL / OpenAI baselines form), aggregated over mask-1 tokens::

        v_clip = old_values + clip(values - old_values, -clip_range, clip_range)
        L      = 0.5 * max((values - returns)**2, (v_clip - returns)**2)

    Args:
        values: ``[B, T]`` current critic predictions (with grad).
        old_values: ``[B, T]`` predictions at rollout time.
        returns: ``[B, T]`` targets (e.g. from :func:`~searchr1.rl.advantages.gae_advantages`).
        mask: ``[B, T]``.
        clip_range: the clip range; None = unclipped ``0.5 * (values - returns)**2``.
        agg: :func:`~searchr1.rl.masked.aggregate_loss` mode.
        agg_norm: constant length for ``agg="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, stats)``: ``clip_fraction`` (mask-1 tokens where the clipped term is the larger),
        ``explained_variance`` (of ``values``; see :func:`explained_variance`), ``value_mean``,
        ``returns_mean``.
    """
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range must be positive or None, got {clip_range}")
    m = _mask_bool(mask, values)
    v = _keep(m, values)
    old = _keep(m, old_values.to(values.dtype).detach())
    ret = _keep(m, returns.to(values.dtype).detach())
    err = (v - ret).square()
    if clip_range is None:
        per_token = 0.5 * err
        clip_active = torch.zeros_like(m)
    else:
        v_clip = old + (v - old).clamp(-clip_range, clip_range)
        err_clip = (v_clip - ret).square()
        per_token = 0.5 * torch.maximum(err, err_clip)
        clip_active = err_clip > err
    loss = aggregate_loss(per_token, m, agg, agg_norm)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(clip_active.float(), m),
            "explained_variance": explained_variance(v, ret, m),
            "value_mean": masked_mean(v.detach(), m),
            "returns_mean": masked_mean(ret, m),
        }
    return loss, stats


def kl_loss(
    logprob: torch.Tensor,
    ref_logprob: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "low_var_kl",
    agg: str = "token-mean",
    agg_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL to the reference policy as a loss term (GRPO; multiply by the KL coefficient yourself).

    Args:
        logprob: ``[B, T]`` policy log-probs of the sampled tokens (with grad).
        ref_logprob: ``[B, T]`` reference log-probs (no grad).
        mask: ``[B, T]``.
        kind: a :func:`kl_penalty` kind (default ``"low_var_kl"`` = k3, as Search-R1 GRPO).
        agg: :func:`~searchr1.rl.masked.aggregate_loss` mode.
        agg_norm: constant length for ``agg="seq-mean-token-sum-norm"``.

    Returns:
        ``(loss, stats)``: ``loss`` 0-dim; ``stats["kl"]`` the token mean of the estimate over
        mask-1 tokens (equal to ``loss`` for ``agg="token-mean"``).
    """
    m = _mask_bool(mask, logprob)
    per_token = kl_penalty(_keep(m, logprob), _keep(m, ref_logprob.to(logprob.dtype).detach()), kind)
    loss = aggregate_loss(per_token, m, agg, agg_norm)
    with torch.no_grad():
        stats = {"kl": masked_mean(per_token.detach(), m)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at every position, numerically stable.

    ``H = -sum_v p_v log p_v`` with ``log p = log_softmax(logits)``, computed in float32 (or
    float64 if given); ``-inf`` logits (banned tokens) contribute 0, not NaN, in value and gradient.
    For the entropy bonus, aggregate with ``aggregate_loss(entropy, mask, agg)`` and subtract it
    times the coefficient from the loss.

    Args:
        logits: ``[B, T, V]`` (any leading shape ``[..., V]``).

    Returns:
        ``[B, T]`` (the leading shape), float32 (float64 for float64 input).
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(dim=-1)
    # 0 * -inf is NaN, so only a row with a -inf (or NaN) logit comes out NaN; that row alone needs
    # the guarded form. Testing the [...] result instead of guarding the [..., V] log-probs keeps four
    # passes over the vocabulary (isfinite's abs, eq, ne and the where) out of every other row: 2.8x on
    # the metric, 1.5% of an update's micro-batch on a CPU (benchmarks/entropy.py). Where nothing is
    # -inf the guard is the identity, so
    # values and gradients are the same bits either way.
    if torch.isnan(entropy).any():
        finite_logp = torch.where(torch.isfinite(logp), logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
        entropy = -(p * finite_logp).sum(dim=-1)
    return entropy


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``.

    Args:
        logits: ``[B, T, V]`` (already divided by the sampling temperature if there was one), where
            ``logits[:, t]`` predicts ``labels[:, t]``.
        labels: ``[B, T]`` token ids.

    Returns:
        ``[B, T]`` float32 (float64 for float64 input); ``logit[label] - logsumexp(logits)``,
        without materialising the full log-softmax.
    """
    x = logits if logits.dtype == torch.float64 else logits.float()
    picked = x.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(x, dim=-1)
