"""Study statistics against exact references: the bootstrap distribution of a binary mean is a
binomial, a sign-flip test over few questions can be enumerated, McNemar is a binomial tail."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from searchr1.study.stats import (
    bootstrap_ci,
    detectable_difference,
    mcnemar,
    paired_difference,
    seed_interval,
    stratified_ci,
)


def test_bootstrap_interval_of_a_binary_mean_matches_the_exact_binomial_quantiles():
    # resampling n binary scores with k ones: the resampled mean is Binomial(n, k/n) / n exactly
    n, k = 40, 12
    scores = [1.0] * k + [0.0] * (n - k)
    mean, low, high = bootstrap_ci(scores, resamples=20_000, seed=3)
    assert mean == pytest.approx(0.3)
    exact_low = sps.binom.ppf(0.025, n, k / n) / n
    exact_high = sps.binom.ppf(0.975, n, k / n) / n
    assert abs(low - exact_low) <= 1 / n and abs(high - exact_high) <= 1 / n
    assert low < mean < high


def test_bootstrap_is_deterministic_per_seed_and_all_equal_scores_give_the_point():
    scores = [0.0, 1.0, 1.0, 0.0, 1.0, 0.5]
    assert bootstrap_ci(scores, seed=1) == bootstrap_ci(scores, seed=1)
    assert bootstrap_ci([0.0] * 10) == (0.0, 0.0, 0.0)
    assert bootstrap_ci([1.0]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([0.0, float("nan")])


def test_stratified_interval_averages_dataset_means_and_resamples_within_each():
    big = [1.0] * 30 + [0.0] * 70   # mean 0.3
    small = [1.0] * 9 + [0.0]       # mean 0.9
    mean, low, high = stratified_ci([big, small], resamples=20_000, seed=0)
    assert mean == pytest.approx((0.3 + 0.9) / 2)  # unweighted, not the pooled 39/110
    # a constant group shifts the other's interval: (1 + B*) / 2 has B's quantiles, halved and shifted
    b = [1.0] * 12 + [0.0] * 28
    m2, lo2, hi2 = stratified_ci([[1.0] * 5, b], resamples=20_000, seed=0)
    exact = [(1 + sps.binom.ppf(q, 40, 0.3) / 40) / 2 for q in (0.025, 0.975)]
    assert m2 == pytest.approx(0.65)
    assert abs(lo2 - exact[0]) <= 0.5 / 40 and abs(hi2 - exact[1]) <= 0.5 / 40
    assert stratified_ci([b], seed=0) == bootstrap_ci(b, seed=0)  # one group is the plain interval
    assert low < mean < high


def _exact_sign_flip_p(d):
    observed = abs(np.mean(d))
    flips = [abs(np.mean([s * x for s, x in zip(signs, d)])) for signs in itertools.product((1, -1), repeat=len(d))]
    return sum(f >= observed - 1e-12 for f in flips) / len(flips)


@pytest.mark.parametrize("a, b", [
    ([1, 1, 1, 0], [0, 0, 0, 0]),                  # by hand: 2 of 16 sign patterns reach 3/4 each way: p 1/4
    ([1, 1, 1, 1, 1], [0, 0, 0, 0, 0]),            # p 2/32
    ([1, 0.5, 0, 1, 0, 1], [0, 0.5, 1, 0, 0, 0]),  # mixed signs and ties
])
def test_paired_permutation_p_value_is_the_exact_enumeration(a, b):
    d = [x - y for x, y in zip(a, b)]
    out = paired_difference(a, b, permutations=10_000)
    assert out["p_value"] == pytest.approx(_exact_sign_flip_p(d))
    assert out["mean"] == pytest.approx(np.mean(d))
    assert (out["wins"], out["losses"], out["ties"]) == (sum(x > 0 for x in d), sum(x < 0 for x in d),
                                                         sum(x == 0 for x in d))
    assert out["low"] <= out["mean"] <= out["high"]


def test_paired_difference_by_hand_and_its_errors():
    assert paired_difference([1, 1, 1, 0], [0, 0, 0, 0])["p_value"] == pytest.approx(0.25)
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert (same["mean"], same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1, 0, 1])


def test_mcnemar_is_the_exact_binomial_test_on_discordant_pairs():
    a = [1, 0, 0, 0, 0, 0, 1, 1]
    b = [0, 1, 1, 1, 1, 1, 1, 0]
    out = mcnemar(a, b)  # A alone right on 2 questions, B alone on 5: p = 2 * P(X <= 2), X ~ Bin(7, 1/2)
    assert (out["a_only"], out["b_only"]) == (2, 5)
    assert out["p_value"] == pytest.approx(2 * sum(math.comb(7, i) for i in range(3)) / 2 ** 7)
    assert mcnemar([1, 0], [1, 0])["p_value"] == 1.0  # no discordant pair
    with pytest.raises(ValueError, match="binary"):
        mcnemar([0.5, 1], [1, 1])


def test_seed_interval_is_students_t_over_seed_means():
    out = seed_interval([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df 2) from tables
    assert out["mean"] == pytest.approx(0.6) and out["std"] == pytest.approx(0.1)
    assert (out["low"], out["high"]) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert (out["min"], out["max"], out["n"]) == (0.5, 0.7, 3)
    one = seed_interval([0.4])
    assert one["low"] is None and one["std"] is None and one["mean"] == 0.4


def test_detectable_difference_by_hand():
    # z(0.975) = 1.959964, z(0.8) = 0.841621 (tables); differences [1, 0, 0, 0]: sd 0.5 over 4 questions
    assert detectable_difference(0.5, 4) == pytest.approx((1.959964 + 0.841621) * 0.5 / 2, abs=1e-6)
    assert paired_difference([1, 0, 0, 0], [0, 0, 0, 0])["detectable"] == pytest.approx(0.700396, abs=1e-6)
    assert paired_difference([1, 0], [1, 0])["detectable"] is None
    # four times the questions halve it
    assert detectable_difference(0.5, 16) == pytest.approx(detectable_difference(0.5, 4) / 2)
