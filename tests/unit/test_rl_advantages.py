"""searchr1.rl.advantages: GAE over generated tokens only, GRPO, RLOO, REINFORCE, KL-in-reward."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from searchr1.rl import (gae_advantages, grpo_advantages, informative_groups, kl_penalized_rewards, masked_mean,
                         masked_var, reinforce_advantages, reinforce_pp_advantages, rloo_advantages,
                         tree_grpo_advantages)

NAN = float("nan")

# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------

# One row: [gen, gen, inj, inj, gen], outcome reward 1 on the last generated token. The values at
# the injected positions (9.0) must never be read.
ROW_MASK = torch.tensor([[1, 1, 0, 0, 1]])
ROW_REWARDS = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
ROW_VALUES = torch.tensor([[0.5, 0.6, 9.0, 9.0, 0.7]], dtype=torch.float64)


def test_gae_gamma_lambda_one_by_hand():
    adv, ret = gae_advantages(ROW_REWARDS, ROW_VALUES, ROW_MASK, gamma=1.0, lam=1.0)
    # t=4 (last generated, next value 0): delta = 1 + 0 - 0.7 = 0.3;          A4 = 0.3
    # t=1 (next generated is t=4):        delta = 0 + 0.7 - 0.6 = 0.1;        A1 = 0.1 + 0.3 = 0.4
    # t=0:                                delta = 0 + 0.6 - 0.5 = 0.1;        A0 = 0.1 + 0.4 = 0.5
    # returns = A + V = 1, 1, 1 (the Monte Carlo return, as gamma = lam = 1); injected: 0
    assert torch.allclose(adv, torch.tensor([[0.5, 0.4, 0.0, 0.0, 0.3]], dtype=torch.float64))
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]], dtype=torch.float64))


def test_gae_discounted_by_hand():
    adv, ret = gae_advantages(ROW_REWARDS, ROW_VALUES, ROW_MASK, gamma=0.9, lam=0.8)
    # gamma * lam = 0.72; the hole counts as ONE step (gamma applied once between t=1 and t=4)
    # t=4: delta = 1 - 0.7 = 0.3;                 A4 = 0.3
    # t=1: delta = 0.9 * 0.7 - 0.6 = 0.03;        A1 = 0.03 + 0.72 * 0.3   = 0.246
    # t=0: delta = 0.9 * 0.6 - 0.5 = 0.04;        A0 = 0.04 + 0.72 * 0.246 = 0.21712
    # returns: 0.21712 + 0.5 = 0.71712; 0.246 + 0.6 = 0.846; 0.3 + 0.7 = 1.0
    assert torch.allclose(adv, torch.tensor([[0.21712, 0.246, 0.0, 0.0, 0.3]], dtype=torch.float64))
    assert torch.allclose(ret, torch.tensor([[0.71712, 0.846, 0.0, 0.0, 1.0]], dtype=torch.float64))


def test_gae_hole_equals_row_with_injected_tokens_removed():
    compact_mask = torch.tensor([[1, 1, 1, 0, 0]])
    compact_r = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    compact_v = torch.tensor([[0.5, 0.6, 0.7, 0.0, 0.0]], dtype=torch.float64)
    adv, ret = gae_advantages(ROW_REWARDS, ROW_VALUES, ROW_MASK, gamma=0.9, lam=0.8)
    cadv, cret = gae_advantages(compact_r, compact_v, compact_mask, gamma=0.9, lam=0.8)
    keep = ROW_MASK[0].bool()
    assert torch.allclose(adv[0, keep], cadv[0, :3])
    assert torch.allclose(ret[0, keep], cret[0, :3])


def test_gae_nan_values_at_masked_positions_are_harmless():
    values = ROW_VALUES.clone()
    values[0, 2:4] = NAN
    adv, ret = gae_advantages(ROW_REWARDS, values, ROW_MASK, gamma=0.9, lam=0.8)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert adv[0, 0].item() == pytest.approx(0.21712)


def test_gae_rewards_on_injected_tokens_fold_into_the_preceding_generated_token():
    mask = torch.tensor([[0, 1, 0, 0, 1, 0, 0]])
    values = torch.tensor([[0.0, 0.2, 0.0, 0.0, 0.4, 0.0, 0.0]], dtype=torch.float64)
    # 5.0 before any generated token: no action to credit -> dropped;
    # 0.5 + 0.25 inside the hole: credited to t=1; 1.0 on trailing padding: credited to t=4.
    spread = torch.tensor([[5.0, 0.0, 0.5, 0.25, 0.0, 0.0, 1.0]], dtype=torch.float64)
    folded = torch.tensor([[0.0, 0.75, 0.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    adv_s, ret_s = gae_advantages(spread, values, mask, gamma=0.9, lam=0.8)
    adv_f, ret_f = gae_advantages(folded, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(adv_s, adv_f) and torch.allclose(ret_s, ret_f)
    # By hand: t=4: delta = 1 - 0.4 = 0.6, A4 = 0.6; t=1: delta = 0.75 + 0.9*0.4 - 0.2 = 0.91,
    # A1 = 0.91 + 0.72*0.6 = 1.342
    assert torch.allclose(adv_f, torch.tensor([[0, 1.342, 0, 0, 0.6, 0, 0]], dtype=torch.float64))


def test_gae_batch_rows_are_independent_and_empty_rows_are_zero():
    rewards = torch.cat([ROW_REWARDS, torch.ones(1, 5, dtype=torch.float64)])
    values = torch.cat([ROW_VALUES, torch.ones(1, 5, dtype=torch.float64)])
    mask = torch.cat([ROW_MASK, torch.zeros(1, 5, dtype=torch.long)])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv[0], torch.tensor([0.5, 0.4, 0.0, 0.0, 0.3], dtype=torch.float64))
    assert (adv[1] == 0).all() and (ret[1] == 0).all()


def test_gae_whiten_normalises_advantages_but_not_returns():
    adv_raw, ret_raw = gae_advantages(ROW_REWARDS, ROW_VALUES, ROW_MASK, 0.9, 0.8)
    adv, ret = gae_advantages(ROW_REWARDS, ROW_VALUES, ROW_MASK, 0.9, 0.8, whiten=True)
    assert torch.equal(ret, ret_raw)
    assert masked_mean(adv, ROW_MASK).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(adv, ROW_MASK).item() == pytest.approx(1.0, abs=1e-4)  # eps=1e-8 in the variance
    assert (adv[ROW_MASK == 0] == 0).all()


def test_gae_does_not_track_gradients_and_keeps_dtype():
    values = ROW_VALUES.float().requires_grad_(True)
    adv, ret = gae_advantages(ROW_REWARDS.float(), values, ROW_MASK.bool(), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    assert adv.dtype == torch.float32


def _reference_gae(rewards: list[float], values: list[float], mask: list[int], gamma: float, lam: float):
    """Slow, obviously-correct GAE: compact the generated tokens first (folding each reward on an
    injected / padding token into the generated token before it, dropping it if there is none),
    run textbook GAE on the compacted episode, then scatter back."""
    gen = [t for t, m in enumerate(mask) if m]
    r = {t: rewards[t] for t in gen}
    last_gen = None
    for t, m in enumerate(mask):
        if m:
            last_gen = t
        elif last_gen is not None:
            r[last_gen] += rewards[t]
    n = len(gen)
    rc = [r[t] for t in gen]
    vc = [values[t] for t in gen]
    ac = [0.0] * n
    running = 0.0
    for i in reversed(range(n)):
        next_v = vc[i + 1] if i + 1 < n else 0.0
        delta = rc[i] + gamma * next_v - vc[i]
        running = delta + gamma * lam * running
        ac[i] = running
    adv = [0.0] * len(mask)
    ret = [0.0] * len(mask)
    for i, t in enumerate(gen):
        adv[t] = ac[i]
        ret[t] = ac[i] + vc[i]
    return adv, ret


_floats = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False, width=32)


@st.composite
def _gae_case(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(0, 9))
    mask = [[draw(st.integers(0, 1)) for _ in range(T)] for _ in range(B)]
    rewards = [[draw(_floats) for _ in range(T)] for _ in range(B)]
    values = [[draw(_floats) for _ in range(T)] for _ in range(B)]
    gamma = draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
    lam = draw(st.sampled_from([0.0, 0.8, 0.95, 1.0]))
    return mask, rewards, values, gamma, lam


@settings(max_examples=150, deadline=None)
@given(_gae_case())
def test_gae_matches_compacted_reference(case):
    mask, rewards, values, gamma, lam = case
    B, T = len(mask), len(mask[0])
    to_t = lambda rows: torch.tensor(rows, dtype=torch.float64).reshape(B, T)  # noqa: E731
    adv, ret = gae_advantages(to_t(rewards), to_t(values), to_t(mask), gamma, lam)
    for b in range(B):
        ref_adv, ref_ret = _reference_gae(rewards[b], values[b], mask[b], gamma, lam)
        assert adv[b].tolist() == pytest.approx(ref_adv, abs=1e-9)
        assert ret[b].tolist() == pytest.approx(ref_ret, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(_gae_case())
def test_gae_with_holes_equals_gae_on_physically_compacted_rows(case):
    mask, rewards, values, gamma, lam = case
    B, T = len(mask), len(mask[0])
    m = torch.tensor(mask, dtype=torch.bool).reshape(B, T)
    r = torch.tensor(rewards, dtype=torch.float64).reshape(B, T) * m  # rewards only on generated tokens
    v = torch.tensor(values, dtype=torch.float64).reshape(B, T)
    adv, ret = gae_advantages(r, v, m, gamma, lam)
    for b in range(B):
        keep = m[b]
        n = int(keep.sum())
        cadv, cret = gae_advantages(r[b, keep][None], v[b, keep][None], torch.ones(1, n), gamma, lam)
        assert torch.allclose(adv[b, keep], cadv[0]) and torch.allclose(ret[b, keep], cret[0])
        assert (adv[b, ~keep] == 0).all() and (ret[b, ~keep] == 0).all()


def test_kl_penalized_rewards_then_gae_gives_score_minus_future_kl():
    # gamma = lam = 1 and V = 0: the return at t is the score minus coef * (sum of KL from t on)
    mask = torch.tensor([[1, 1, 0, 1]])
    kl = torch.tensor([[0.5, 1.0, 100.0, 2.0]], dtype=torch.float64)
    rewards = kl_penalized_rewards(torch.tensor([1.0]), kl, mask, kl_coef=0.1)
    _, ret = gae_advantages(rewards, torch.zeros_like(kl), mask, 1.0, 1.0)
    # t=3: 1 - 0.2 = 0.8; t=1: 0.8 - 0.1 = 0.7; t=0: 0.7 - 0.05 = 0.65
    assert torch.allclose(ret, torch.tensor([[0.65, 0.7, 0.0, 0.8]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# KL in the reward
# ---------------------------------------------------------------------------------------------


def test_kl_penalized_rewards_by_hand():
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    kl = torch.tensor([[1.0, 2.0, 50.0, 3.0, 60.0], [4.0, 70.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    scores = torch.tensor([1.0, 0.5, 2.0])
    r = kl_penalized_rewards(scores, kl, mask, kl_coef=0.1)
    expected = torch.tensor(
        [
            [-0.1, -0.2, 0.0, 1.0 - 0.3, 0.0],  # score on the LAST mask-1 token (t=3), not on padding
            [0.5 - 0.4, 0.0, 0.0, 0.0, 0.0],  # a single generated token carries score and KL
            [0.0, 0.0, 0.0, 0.0, 0.0],  # no generated token: nothing (the score has no place)
        ]
    )
    assert torch.allclose(r, expected)


# ---------------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------------


def test_grpo_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([[1, 0, 1], [1, 1, 0], [1, 1, 1], [0, 1, 1]])
    adv, stats = grpo_advantages(scores, torch.tensor([0, 0, 0, 0]), mask)
    # mean 0.5; unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.57735...;
    # A = +-0.5 / (0.57735 + 1e-6) = +-0.866024...
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    expected = torch.tensor([[a, 0, a], [-a, -a, 0], [-a, -a, -a], [0, a, a]])
    assert torch.allclose(adv, expected)
    assert int(stats["num_groups"]) == 1 and int(stats["zero_variance_groups"]) == 0
    # Dr. GRPO: no std normalisation -> +-0.5
    adv, _ = grpo_advantages(scores, [0, 0, 0, 0], mask, norm_by_std=False)
    assert torch.allclose(adv, expected / a * 0.5)


def test_tree_grpo_on_two_level_trees_by_hand():
    """One prompt, two trees of three leaves: a chain (root -> a1 -> a2) and two expansions, one
    from the root's step (b) and one from the second level (a1 -> c). Tree 0 scores 1, 0, 1 and
    tree 1 scores 0, 0, 1; a third prompt's single tree has equal scores (no signal)."""
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    trees = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    mask = torch.ones(8, 3)
    mask[1, 2] = 0  # an injected token: no advantage there
    adv, stats = tree_grpo_advantages(scores, groups, trees, mask)
    # within a tree: mean 2/3 (or 1/3), unbiased std sqrt(1/3); within the prompt: mean 1/2, std sqrt(0.3)
    w, u = 1 / 3 / math.sqrt(1 / 3), 2 / 3 / math.sqrt(1 / 3)
    g = 0.5 / math.sqrt(0.3)
    want = [w + g, -u - g, w + g, -w - g, -w - g, u + g, 0.0, 0.0]
    assert adv[:, 0].tolist() == pytest.approx(want, abs=1e-5)
    assert adv[1, 2] == 0 and torch.equal(adv[:, 0], adv[:, 1])
    assert int(stats["num_trees"]) == 3 and int(stats["num_groups"]) == 2
    # each term is GRPO's: within the trees, then within the prompts
    expected = grpo_advantages(scores, trees, mask)[0] + grpo_advantages(scores, groups, mask)[0]
    assert torch.allclose(adv, expected)


def test_grpo_degenerate_groups_are_zero_and_counted():
    # group "a": [1, 0, 0, 1]; group "b": all equal (0.1 is inexact in binary); "c": all zero;
    # "d": a singleton
    scores = torch.tensor([1.0, 0.1, 0.0, 0.1, 0.0, 0.1, 0.0, 1.0, 0.7])
    ids = ["a", "b", "a", "b", "c", "b", "a", "a", "d"]
    mask = torch.ones(9, 2)
    for norm in (True, False):
        adv, stats = grpo_advantages(scores, ids, mask, norm_by_std=norm)
        assert torch.isfinite(adv).all()
        assert (adv[[1, 3, 5, 8]] == 0).all()  # groups b and d
        assert int(stats["num_groups"]) == 4
        assert int(stats["zero_variance_groups"]) == 1  # b (c is a singleton here: one score 0.0)
        assert int(stats["singleton_groups"]) == 2  # c and d
        assert float(stats["zero_variance_fraction"]) == pytest.approx(0.25)
    adv, _ = grpo_advantages(scores, ids, mask)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert adv[[0, 2, 6, 7], 0].tolist() == pytest.approx([a, -a, -a, a])


def test_grpo_matches_slow_reference_with_unordered_ids():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(40, generator=g).round(decimals=1)
    ids = torch.randint(100, 108, (40,), generator=g)
    adv, _ = grpo_advantages(scores, ids, torch.ones(40, 1))
    for i in range(40):
        group = [scores[j].item() for j in range(40) if ids[j] == ids[i]]
        if len(group) < 2 or len(set(group)) == 1:
            expected = 0.0
        else:
            expected = (scores[i].item() - statistics.mean(group)) / (statistics.stdev(group) + 1e-6)
        assert adv[i, 0].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_grpo_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.zeros(3), [0, 0], torch.ones(3, 2))


# ---------------------------------------------------------------------------------------------
# RLOO and REINFORCE
# ---------------------------------------------------------------------------------------------


def test_rloo_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 9.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    mask = torch.tensor([[1, 0]] * 7)
    adv, stats = rloo_advantages(scores, ids, mask)
    # group 0: A_0 = 1 - (0 + 0 + 1) / 3 = 2/3; A_1 = 0 - (1 + 0 + 1) / 3 = -2/3
    # group 1: A = 2 - 4 = -2 and 4 - 2 = 2; group 2 (singleton): 0
    assert adv[:, 0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, -2.0, 2.0, 0.0])
    assert (adv[:, 1] == 0).all()
    assert int(stats["singleton_groups"]) == 1


def test_reinforce_by_hand():
    scores = torch.tensor([1.0, 0.0, 3.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 1]])
    adv, _ = reinforce_advantages(scores, mask)
    assert adv.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 3.0]]
    adv, stats = reinforce_advantages(scores, mask, baseline="batch-mean")
    b = 4 / 3  # (1 + 0 + 3) / 3
    assert float(stats["baseline"]) == pytest.approx(b)
    assert torch.allclose(adv, torch.tensor([[1 - b, 1 - b, 0], [-b, 0, 0], [3 - b, 0, 3 - b]]))
    # REINFORCE++: whitened over the five generated tokens (values 1, 1, 0, 3, 3: mean 1.6)
    adv, _ = reinforce_advantages(scores, mask, whiten=True)
    tokens = torch.tensor([1.0, 1.0, 0.0, 3.0, 3.0])
    whitened = (tokens - 1.6) / tokens.std()
    assert torch.allclose(adv[mask.bool()], whitened, atol=1e-6)
    assert (adv[~mask.bool()] == 0).all()
    with pytest.raises(ValueError, match="baseline"):
        reinforce_advantages(scores, mask, baseline="ema")


# ---------------------------------------------------------------------------------------------
# REINFORCE++ and the zero-variance group filter
# ---------------------------------------------------------------------------------------------


def _reinforce_pp_loop(rewards, mask, gamma):
    """Slow reference: per row, returns over the generated tokens only (a reward on an injected
    token is carried to the generated token before it), then standardised over all of them."""
    B, T = len(rewards), len(rewards[0])
    returns = [[0.0] * T for _ in range(B)]
    for b in range(B):
        running, pending = 0.0, 0.0
        for t in reversed(range(T)):
            if mask[b][t]:
                running = rewards[b][t] + pending + gamma * running
                pending = 0.0
                returns[b][t] = running
            else:
                pending += rewards[b][t]
    flat = [returns[b][t] for b in range(B) for t in range(T) if mask[b][t]]
    mean, var = statistics.fmean(flat), statistics.variance(flat)
    adv = [[(returns[b][t] - mean) / math.sqrt(var + 1e-8) if mask[b][t] else 0.0 for t in range(T)]
           for b in range(B)]
    return adv, returns


def test_reinforce_pp_by_hand():
    # row 0: [gen, gen, inj, gen], KL-in-reward style rewards -0.1 per token, score 1 on the last;
    # row 1: [gen, gen, pad, pad], score 0 on its last generated token
    rewards = torch.tensor([[-0.1, -0.1, 0.0, 0.9], [-0.1, -0.1, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 0, 0]])
    adv, ret = reinforce_pp_advantages(rewards, mask, gamma=1.0)
    # returns: row 0 = 0.7, 0.8, -, 0.9; row 1 = -0.2, -0.1
    assert torch.allclose(ret, torch.tensor([[0.7, 0.8, 0.0, 0.9], [-0.2, -0.1, 0.0, 0.0]], dtype=torch.float64))
    values = [0.7, 0.8, 0.9, -0.2, -0.1]
    mean, std = statistics.fmean(values), statistics.stdev(values)  # 0.42, unbiased like masked_var
    expected = torch.tensor([[(0.7 - mean) / std, (0.8 - mean) / std, 0.0, (0.9 - mean) / std],
                             [(-0.2 - mean) / std, (-0.1 - mean) / std, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(adv, expected, atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_matches_slow_reference(gamma):
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    mask = (torch.rand(5, 9, generator=gen) > 0.3).long()
    adv, ret = reinforce_pp_advantages(rewards, mask, gamma=gamma)
    ref_adv, ref_ret = _reinforce_pp_loop(rewards.tolist(), mask.tolist(), gamma)
    assert torch.allclose(ret, torch.tensor(ref_ret, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(adv, torch.tensor(ref_adv, dtype=torch.float64), atol=1e-6)


def test_informative_groups_by_hand():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 3.0])
    groups = torch.tensor([7, 7, 2, 2, 5, 5, 5, 9])  # 7: equal; 2: differ; 5: equal; 9: alone
    assert informative_groups(scores, groups).tolist() == [False, False, True, True, False, False, False, False]
    assert informative_groups(scores, ["a", "a", "b", "b", "c", "c", "c", "d"]).tolist() == \
        informative_groups(scores, groups).tolist()
