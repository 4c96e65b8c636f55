"""searchr1.rl.losses: KL estimators, clipped policy loss (asymmetric, dual clip, GSPO's sequence
ratio), LLDS, value loss, KL loss, entropy and log-probs, by hand and against a slow reference loop."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from searchr1.rl import (AGG_MODES, aggregate_loss, entropy_from_logits, explained_variance, kl_loss, kl_penalty,
                         llds_loss, logprobs_from_logits, policy_loss, sequence_ratio, truncated_is_weights,
                         value_loss)

NAN = float("nan")

# ---------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------


def test_kl_kinds_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    # token 0: d = logp - ref = 0.5; token 1: d = 0
    assert kl_penalty(logp, ref, "k1").tolist() == [[0.5, 0.0]]
    assert kl_penalty(logp, ref, "kl").tolist() == [[0.5, 0.0]]
    assert kl_penalty(ref, logp, "abs").tolist() == [[0.5, 0.0]]
    assert kl_penalty(logp, ref, "k2").tolist() == [[0.125, 0.0]]  # 0.5 * 0.5**2
    assert kl_penalty(logp, ref, "mse").tolist() == [[0.125, 0.0]]
    # k3: exp(ref - logp) - (ref - logp) - 1 = exp(-0.5) + 0.5 - 1 = 0.1065306...
    k3 = math.exp(-0.5) - 0.5
    assert kl_penalty(logp, ref, "k3")[0].tolist() == pytest.approx([k3, 0.0])
    assert kl_penalty(logp, ref, "low_var_kl")[0].tolist() == pytest.approx([k3, 0.0])
    # k3 of equal log-probs is exactly 0
    assert kl_penalty(logp, logp, "k3").tolist() == [[0.0, 0.0]]


def test_k3_is_clamped_like_verl():
    logp = torch.tensor([[-60.0, -1.0]])
    ref = torch.tensor([[-1.0, -60.0]])
    # token 0: ref - logp = 59 -> huge -> clamped to 10; token 1: -59: exp(-20 clamp) + 20 - 1 = 19 -> 10
    assert kl_penalty(logp, ref, "k3").tolist() == [[10.0, 10.0]]
    with pytest.raises(ValueError, match="unknown KL kind"):
        kl_penalty(logp, ref, "full")


def test_kl_loss_by_hand_and_masked():
    logp = torch.tensor([[-1.0, -2.0, NAN]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -0.1]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = kl_loss(logp, ref, mask)  # k3, token-mean: (0.10653 + 0) / 2
    assert loss.item() == pytest.approx((math.exp(-0.5) - 0.5) / 2)
    assert float(stats["kl"]) == pytest.approx(loss.item())
    loss.backward()
    # d/dlogp of exp(ref - logp) - (ref - logp) - 1 = 1 - exp(ref - logp), / 2 for the mean
    assert logp.grad[0, :2].tolist() == pytest.approx([(1 - math.exp(-0.5)) / 2, 0.0])
    assert logp.grad[0, 2].item() == 0.0
    loss, _ = kl_loss(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]), torch.ones(1, 2), kind="k1")
    assert loss.item() == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------
# Policy loss
# ---------------------------------------------------------------------------------------------

# Five tokens, old log-prob 0, clip 0.2 (ratio clipped to [0.8, 1.2]):
#   a: ratio 1.1, A=+1 -> inside:                max(-1.1, -1.1) = -1.1   (not clipped)
#   b: ratio 1.5, A=+1 -> above, A>0:            max(-1.5, -1.2) = -1.2   (clipped)
#   c: ratio 0.5, A=-1 -> below, A<0:            max( 0.5,  0.8) =  0.8   (clipped)
#   d: ratio 1.5, A=-1 -> above, A<0 (pessimism):max( 1.5,  1.2) =  1.5   (not clipped)
#   e: ratio 0.5, A=+1 -> below, A>0:            max(-0.5, -0.8) = -0.5   (not clipped)
# token-mean = (-1.1 - 1.2 + 0.8 + 1.5 - 0.5) / 5 = -0.5 / 5 = -0.1; clip_fraction = 2 / 5
RATIOS = torch.tensor([[1.1, 1.5, 0.5, 1.5, 0.5]], dtype=torch.float64)
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)


def _policy_case():
    logprob = RATIOS.log().clone().requires_grad_(True)
    return logprob, torch.zeros_like(RATIOS), ADV.clone(), torch.ones_like(RATIOS)


def test_policy_loss_clip_by_hand():
    logprob, old, adv, mask = _policy_case()
    loss, stats = policy_loss(logprob, old, adv, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx(-0.1)
    assert float(stats["clip_fraction"]) == pytest.approx(0.4)
    assert float(stats["dual_clip_fraction"]) == 0.0
    assert float(stats["ratio_mean"]) == pytest.approx((1.1 + 1.5 + 0.5 + 1.5 + 0.5) / 5)
    assert float(stats["ratio_max"]) == pytest.approx(1.5)
    assert float(stats["ratio_min"]) == pytest.approx(0.5)
    # k3 of KL(old || new): mean of r - 1 - log r
    k3 = sum(r - 1 - math.log(r) for r in (1.1, 1.5, 0.5, 1.5, 0.5)) / 5
    assert float(stats["approx_kl"]) == pytest.approx(k3)
    assert float(stats["approx_kl_k1"]) == pytest.approx(-sum(math.log(r) for r in (1.1, 1.5, 0.5, 1.5, 0.5)) / 5)
    loss.backward()
    # d/dlogp (-A * ratio) = -A * ratio on unclipped tokens, 0 where the clip binds; / 5 (mean)
    expected = [-1.1 / 5, 0.0, 0.0, 1.5 / 5, -0.5 / 5]
    assert logprob.grad[0].tolist() == pytest.approx(expected)


def _gspo_case():
    """Two sequences of 2 and 3 generated tokens: log-ratios (0.1, 0.3) and (-0.3, 0, 0), so the
    sequence ratios are exp(0.2) and exp(-0.1); advantages +1 and -1."""
    old = torch.tensor([[-1.0, -1.0, NAN], [-2.0, -2.0, -2.0]])
    logprob = (old.nan_to_num() + torch.tensor([[0.1, 0.3, 0.0], [-0.3, 0.0, 0.0]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return logprob, old, adv, mask


def test_sequence_ratio_is_the_length_normalised_ratio_with_gspo_gradient():
    logprob, old, _, mask = _gspo_case()
    ratio = sequence_ratio(logprob, old, mask)
    s_a, s_b = math.exp(0.2), math.exp(-0.1)
    torch.testing.assert_close(ratio, torch.tensor([[s_a, s_a, 1.0], [s_b, s_b, s_b]]))
    # the token mean of a sequence's ratios has the gradient of s_i itself: s_i / |y_i| per token
    (ratio[0, :2].mean() + ratio[1].mean()).backward()
    torch.testing.assert_close(logprob.grad, torch.tensor([[s_a / 2, s_a / 2, 0.0], [s_b / 3, s_b / 3, s_b / 3]]))


def test_policy_loss_gspo_clips_whole_sequences_by_hand():
    logprob, old, adv, mask = _gspo_case()
    s_a, s_b = math.exp(0.2), math.exp(-0.1)  # 1.221 (above 1.2: clipped), 0.905 (inside [0.8, 1.2])
    loss, stats = policy_loss(logprob, old, adv, mask, clip_ratio=0.2, agg="seq-mean-token-mean", mode="gspo")
    # sequence A: -A * 1.2 on both tokens; sequence B: -A * s_b on its three; mean of the sequences
    assert loss.item() == pytest.approx((-1.2 + s_b) / 2)
    assert float(stats["clip_fraction"]) == pytest.approx(2 / 5)  # the whole of A, none of B
    assert float(stats["ratio_mean"]) == pytest.approx((2 * s_a + 3 * s_b) / 5)
    assert float(stats["ratio_max"]) == pytest.approx(s_a) and float(stats["ratio_min"]) == pytest.approx(s_b)
    loss.backward()
    # GSPO: d/dlogp_t of -A_i * s_i is -A_i * s_i / |y_i|, halved by the mean over the 2 sequences; 0 when clipped
    torch.testing.assert_close(logprob.grad, torch.tensor([[0.0, 0.0, 0.0], [s_b / 6, s_b / 6, s_b / 6]]))
    # token ratios would clip a different set: A's second token only (e^0.3) and B's first (e^-0.3 < 0.8)
    _, token_stats = policy_loss(logprob, old, adv, mask, clip_ratio=0.2, agg="seq-mean-token-mean")
    assert float(token_stats["clip_fraction"]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="mode"):
        policy_loss(logprob, old, adv, mask, mode="seq")


def _llds_case():
    """Row 0 (advantage +1): two actions split by an injected token, d = old - new = (0.2, -0.1)
    then (-0.3, 0.1): the first action's likelihood fell (sum 0.1), the second's rose (-0.2), the
    response's rose (-0.1). Row 1 (advantage -1): every likelihood fell, but it is not preserved.
    Row 2 (advantage +1): every likelihood rose."""
    new = torch.zeros(3, 5)
    d = torch.tensor([[0.2, -0.1, 9.0, -0.3, 0.1], [0.5, 0.5, 0.5, 0.5, 0.0], [-0.1, -0.2, -0.1, -0.3, 0.0]])
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    adv = torch.tensor([[1.0] * 5, [-1.0] * 5, [1.0] * 5]) * mask
    return new.requires_grad_(), new.detach() + d, adv, mask


def test_llds_action_gate_penalises_only_the_fallen_tokens_of_a_fallen_action():
    new, old, adv, mask = _llds_case()
    loss, stats = llds_loss(new, old, adv, mask, gate="action")
    assert loss.item() == pytest.approx(0.2 / 12)  # one token of 12 generated ones
    assert float(stats["active_tokens"]) == pytest.approx(1 / 12)
    assert float(stats["active_responses"]) == pytest.approx(1 / 3)
    assert float(stats["penalty"]) == pytest.approx(0.2)
    loss.backward()
    expected = torch.zeros(3, 5)
    expected[0, 0] = -1 / 12  # raising that token's log-prob lowers the loss
    torch.testing.assert_close(new.grad, expected)


def test_llds_response_gate_stays_off_when_the_response_likelihood_rose():
    new, old, adv, mask = _llds_case()
    loss, stats = llds_loss(new, old, adv, mask, gate="response")
    assert loss.item() == 0.0 and float(stats["active_responses"]) == 0.0 and float(stats["penalty"]) == 0.0
    # once the response's likelihood fell overall, its fallen tokens (0.2 and 0.4) are penalised
    old[0, 3] = -0.4 + 0.0
    old[0, 4] = 0.4
    loss, stats = llds_loss(new, old, adv, mask, gate="response")
    assert loss.item() == pytest.approx((0.2 + 0.4) / 12)
    assert float(stats["active_tokens"]) == pytest.approx(2 / 12)


def test_llds_is_off_before_the_policy_moves():
    new, _, adv, mask = _llds_case()
    loss, stats = llds_loss(new, new.detach(), adv, mask)
    assert loss.item() == 0.0 and float(stats["active_tokens"]) == 0.0
    with pytest.raises(ValueError, match="gate"):
        llds_loss(new, new.detach(), adv, mask, gate="token")


def test_policy_loss_token_weights_scale_each_token_by_hand():
    logprob, old, adv, mask = _policy_case()
    weights = torch.tensor([[2.0, 1.0, 1.0, 0.5, 3.0]])
    loss, _ = policy_loss(logprob, old, adv, mask, clip_ratio=0.2, token_weights=weights)
    # per-token losses of test_policy_loss_clip_by_hand: -1.1, -1.2 (clipped), 0.8 (clipped), 1.5, -0.5
    assert loss.item() == pytest.approx((2 * -1.1 - 1.2 + 0.8 + 0.5 * 1.5 + 3 * -0.5) / 5)
    loss.backward()
    assert logprob.grad[0].tolist() == pytest.approx([2 * -1.1 / 5, 0.0, 0.0, 0.5 * 1.5 / 5, 3 * -0.5 / 5])


def test_truncated_is_weights_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    sample = torch.tensor([[-1.0, -1.0, -2.5, NAN]])  # the masked token's sampler log-prob is never read
    mask = torch.tensor([[1, 1, 1, 0]])
    weights, stats = truncated_is_weights(old, sample, mask, cap=2.0)
    # exp(0) = 1; exp(-1) = 0.368 (the sampler over-sampled it); exp(2) = 7.39, capped at 2; masked -> 1
    assert weights[0].tolist() == pytest.approx([1.0, math.exp(-1.0), 2.0, 1.0])
    assert float(stats["capped_fraction"]) == pytest.approx(1 / 3)
    assert float(stats["weight_mean"]) == pytest.approx((1.0 + math.exp(-1.0) + 2.0) / 3)
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, sample, mask, cap=0.0)


def test_policy_loss_asymmetric_clip_by_hand():
    logprob, old, adv, mask = _policy_case()
    # clip range [0.8, 1.6]: token b (ratio 1.5, A=+1) is now inside -> -1.5, not clipped;
    # token d (1.5, A=-1): max(1.5, 1.5) = 1.5. Others unchanged.
    loss, stats = policy_loss(logprob, old, adv, mask, clip_ratio=0.2, clip_ratio_high=0.6)
    assert loss.item() == pytest.approx((-1.1 - 1.5 + 0.8 + 1.5 - 0.5) / 5)
    assert float(stats["clip_fraction"]) == pytest.approx(1 / 5)  # only token c


def test_policy_loss_dual_clip_by_hand():
    # c = 3:
    #   ratio 5, A=-1: max(5, 1.2) = 5 -> dual: min(5, 3 * |A|) = 3       (dual clip binds)
    #   ratio 5, A=+1: max(-5, -1.2) = -1.2 (dual clip only touches A < 0)
    #   ratio 2, A=-2: max(4, 2.4) = 4 -> min(4, 3 * 2 = 6) = 4             (does not bind)
    #   ratio 0.5, A=-1: max(0.5, 0.8) = 0.8 -> min(0.8, 3) = 0.8
    ratios = torch.tensor([[5.0, 5.0, 2.0, 0.5]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, 1.0, -2.0, -1.0]], dtype=torch.float64)
    logprob = ratios.log().requires_grad_(True)
    loss, stats = policy_loss(logprob, torch.zeros_like(ratios), adv, torch.ones_like(ratios), dual_clip_c=3.0)
    assert loss.item() == pytest.approx((3.0 - 1.2 + 4.0 + 0.8) / 4)
    assert float(stats["dual_clip_fraction"]) == pytest.approx(0.25)
    loss.backward()
    # gradients: dual-clipped and clipped tokens 0; token 2: -A * ratio / 4 = 2 * 2 / 4 = 1
    assert logprob.grad[0].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])
    unclipped, _ = policy_loss(ratios.log(), torch.zeros_like(ratios), adv, torch.ones_like(ratios))
    assert unclipped.item() == pytest.approx((5.0 - 1.2 + 4.0 + 0.8) / 4)


def test_policy_loss_masked_tokens_get_zero_gradient_even_with_nan_inputs():
    torch.manual_seed(0)
    logprob = (-torch.rand(3, 6)).requires_grad_(True)
    old = -torch.rand(3, 6)
    adv = torch.randn(3, 6)
    mask = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    old[mask == 0] = NAN  # e.g. garbage log-probs on padding
    adv[0, 2] = math.inf
    for agg in AGG_MODES:
        logprob.grad = None
        loss, stats = policy_loss(logprob, old, adv, mask, dual_clip_c=3.0, agg=agg)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(v) for v in stats.values())
        loss.backward()
        assert torch.isfinite(logprob.grad).all()
        assert (logprob.grad[mask == 0] == 0).all()
        assert (logprob.grad[mask == 1] != 0).any()


def test_policy_loss_with_no_generated_token_is_zero():
    x = torch.zeros(2, 3, requires_grad=True)
    loss, stats = policy_loss(x, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0 and float(stats["clip_fraction"]) == 0.0 and float(stats["ratio_max"]) == 1.0


def test_policy_loss_rejects_bad_clip_settings():
    lp, old, adv, mask = _policy_case()
    with pytest.raises(ValueError, match="dual_clip_c"):
        policy_loss(lp, old, adv, mask, dual_clip_c=1.0)
    with pytest.raises(ValueError, match="clip_ratio"):
        policy_loss(lp, old, adv, mask, clip_ratio=0.0)


def _reference_policy_loss(logprob, old, adv, mask, eps_low, eps_high, c, agg, norm):
    """Slow loop over tokens: per-token PPO loss, then the aggregation, written out."""
    B, T = len(logprob), len(logprob[0])
    rows = []
    for b in range(B):
        row = []
        for t in range(T):
            if not mask[b][t]:
                continue
            ratio = math.exp(logprob[b][t] - old[b][t])
            a = adv[b][t]
            clipped_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss = max(-a * ratio, -a * clipped_ratio)
            if c is not None and a < 0:
                loss = min(loss, -a * c)
            row.append(loss)
        rows.append(row)
    tokens = [x for row in rows for x in row]
    nonempty = [row for row in rows if row]
    if agg == "token-mean":
        return sum(tokens) / len(tokens)
    if agg == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in nonempty) / len(nonempty)
    if agg == "seq-mean-token-sum":
        return sum(sum(r) for r in nonempty) / len(nonempty)
    return sum(tokens) / (B * (T if norm is None else norm))


@pytest.mark.parametrize("agg", AGG_MODES)
@pytest.mark.parametrize("eps_high, c", [(None, None), (0.28, None), (None, 3.0), (0.28, 2.0)])
def test_policy_loss_matches_slow_reference(agg, eps_high, c):
    g = torch.Generator().manual_seed(zlib.crc32(repr((agg, eps_high, c)).encode()))
    B, T = 4, 7
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logprob = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.35
    mask[0] = False  # an empty row
    mask[1, 0] = True
    norm = 16 if agg == "seq-mean-token-sum-norm" else None
    loss, _ = policy_loss(logprob, old, adv, mask, clip_ratio=0.2, clip_ratio_high=eps_high, dual_clip_c=c,
                          agg=agg, agg_norm=norm)
    expected = _reference_policy_loss(logprob.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2,
                                      0.2 if eps_high is None else eps_high, c, agg, norm)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Value loss and explained variance
# ---------------------------------------------------------------------------------------------


def test_value_loss_by_hand():
    values = torch.tensor([[1.0, 2.0, 7.0]], requires_grad=True)
    old = torch.tensor([[0.0, 1.9, NAN]])
    returns = torch.tensor([[0.8, 3.0, NAN]])
    mask = torch.tensor([[1, 1, 0]])
    # t0: v=1, old=0 -> v_clip = 0 + clip(1, -0.5, 0.5) = 0.5; (1-0.8)^2 = 0.04, (0.5-0.8)^2 = 0.09
    #     -> 0.5 * 0.09 = 0.045, clipped
    # t1: v=2, old=1.9 -> inside, v_clip = 2; (2-3)^2 = 1 both -> 0.5, not clipped
    # token-mean = (0.045 + 0.5) / 2 = 0.2725
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.5)
    assert loss.item() == pytest.approx(0.2725)
    assert float(stats["clip_fraction"]) == pytest.approx(0.5)
    loss.backward()
    # t0: clipped branch is constant in v -> 0; t1: 0.5 * 2 * (2 - 3) / 2 = -0.5; t2 masked -> 0
    assert values.grad[0].tolist() == pytest.approx([0.0, -0.5, 0.0])
    # unclipped: 0.5 * (0.04 + 1) / 2 = 0.26
    loss, stats = value_loss(values, old, returns, mask, clip_range=None)
    assert loss.item() == pytest.approx(0.26)
    assert float(stats["clip_fraction"]) == 0.0


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 99.0, 3.0]])
    mask = torch.tensor([[1, 1, 0, 1]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    # constant prediction 2: residuals -1, 0, 1 have the same variance as the returns -> 0
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask).item() == pytest.approx(0.0)
    # prediction returns / 2: residual returns / 2 has a quarter of the variance -> 1 - 1/4 = 0.75
    assert explained_variance(returns / 2, returns, mask).item() == pytest.approx(0.75)
    # undefined when the returns do not vary
    assert math.isnan(explained_variance(returns, torch.ones(1, 4), mask).item())


# ---------------------------------------------------------------------------------------------
# Entropy and log-probs
# ---------------------------------------------------------------------------------------------


def test_entropy_by_hand_and_stable():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0], [0.0, 0.0, -math.inf, -math.inf]]],
                          requires_grad=True)
    ent = entropy_from_logits(logits)
    # uniform over 4: log 4; one dominant logit: 0; uniform over 2 with two banned tokens: log 2
    assert ent[0].tolist() == pytest.approx([math.log(4), 0.0, math.log(2)], abs=1e-6)
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()


def _guarded_entropy(logits):
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * torch.where(torch.isfinite(logp), logp, torch.zeros(()))).sum(dim=-1)


@pytest.mark.parametrize("banned", [False, True])
def test_entropy_is_the_guarded_form_bit_for_bit_in_value_and_gradient(banned):
    torch.manual_seed(3)
    base = torch.randn(3, 4, 50) * 4
    if banned:
        base[1, 2, :10] = -math.inf  # one position with banned tokens: the guarded form is taken
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    ent, ref = entropy_from_logits(a), _guarded_entropy(b)
    assert torch.equal(ent, ref)
    weights = torch.randn(3, 4)
    (ent * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(a.grad, b.grad) and torch.isfinite(a.grad).all()


def test_entropy_matches_categorical_and_aggregates():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 11) * 3
    ent = entropy_from_logits(logits.to(torch.bfloat16))
    assert ent.shape == (2, 3) and ent.dtype == torch.float32
    reference = torch.distributions.Categorical(logits=logits.to(torch.bfloat16).float()).entropy()
    assert torch.allclose(ent, reference, atol=1e-5)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    assert aggregate_loss(ent, mask, "token-mean").item() == pytest.approx(
        (reference[0, 0] + reference[0, 2] + reference[1, 2]).item() / 3, rel=1e-5)


def test_logprobs_from_logits():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 13)
    labels = torch.randint(0, 13, (2, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels), expected, atol=1e-6)
