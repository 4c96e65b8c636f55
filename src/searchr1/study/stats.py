"""Intervals and paired tests for per-question scores (pure functions over arrays).

Shapes: `scores` is [questions] (one arm, its seeds already averaged per question) and a pair
`a`, `b` is two [questions] arrays over the same questions in the same order. Every function is
deterministic for a given `seed`. The resampling itself is scipy's (`scipy.stats.bootstrap`,
`permutation_test`, `binomtest`); this module fixes the choices: percentile intervals, the
paired sign-flip test, exact McNemar.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


def _array(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds a non-finite value")
    return x


def bootstrap_ci(scores: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean over questions.

    All-equal scores (e.g. every answer wrong) have no spread to resample: the interval is the
    point itself, not scipy's degenerate-data NaN."""
    x = _array(scores, "scores")
    mean = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return mean, mean, mean
    res = sps.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                        vectorized=True, rng=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def stratified_ci(groups: Sequence[Sequence[float]], *, confidence: float = 0.95, resamples: int = 10_000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the unweighted mean of group means (the paper's "Avg." over datasets):
    a percentile bootstrap that resamples questions within each group, never across."""
    xs = [_array(g, f"groups[{i}]") for i, g in enumerate(groups)]
    if not xs:
        raise ValueError("groups must hold at least one group")
    mean = float(np.mean([x.mean() for x in xs]))
    if len(xs) == 1:
        return bootstrap_ci(xs[0], confidence=confidence, resamples=resamples, seed=seed)
    if all(x.size < 2 or np.all(x == x[0]) for x in xs):
        return mean, mean, mean

    def statistic(*samples, axis=-1):
        return np.mean([s.mean(axis=axis) for s in samples], axis=0)

    res = sps.bootstrap(tuple(xs), statistic, confidence_level=confidence, n_resamples=resamples,
                        method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                      resamples: int = 10_000, permutations: int = 10_000, seed: int = 0) -> dict:
    """A minus B on the same questions.

    Returns {n, mean, low, high, p_value, wins, losses, ties, detectable}: the mean per-question
    difference, its percentile bootstrap interval (questions resampled as pairs), and the two-sided
    p-value of the paired permutation test (each question's difference flips sign under the null
    that the arms are exchangeable; exact enumeration when 2^n <= permutations). wins / losses /
    ties count the questions where A scored above / below / equal to B. detectable: the smallest
    true difference that this many questions, with the observed spread of differences, would find
    at the interval's level with 80% power (normal approximation; None when nothing differs), so
    a null result says how large an effect it rules out."""
    x, y = _array(a, "a"), _array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same questions: {x.size} against {y.size}")
    d = x - y
    mean = float(d.mean())
    out = {"n": int(d.size), "mean": mean, "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
           "ties": int((d == 0).sum())}
    if np.all(d == 0):
        return {**out, "low": 0.0, "high": 0.0, "p_value": 1.0, "detectable": None}
    out["detectable"] = detectable_difference(float(d.std(ddof=1)) if d.size > 1 else 0.0, d.size,
                                              confidence=confidence)
    _, low, high = bootstrap_ci(d, confidence=confidence, resamples=resamples, seed=seed)
    test = sps.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=permutations,
                                alternative="two-sided", vectorized=True, rng=np.random.default_rng(seed + 1))
    return {**out, "low": low, "high": high, "p_value": float(test.pvalue)}


def detectable_difference(sd: float, n: int, *, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest mean difference a two-sided paired test at `confidence` finds with `power`,
    for per-question differences of standard deviation `sd` over `n` questions:
    (z_{1-alpha/2} + z_power) * sd / sqrt(n). Inverted, it sizes a run: n = ((z + z) * sd / delta)^2."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return float((sps.norm.ppf(0.5 + confidence / 2) + sps.norm.ppf(power)) * sd / math.sqrt(n))


def mcnemar(a: Sequence[float], b: Sequence[float]) -> dict:
    """The exact McNemar test on binary scores (EM) of two arms on the same questions.

    Returns {a_only, b_only, p_value}: questions only A / only B got right, and the two-sided
    binomial p-value of a_only among the discordant pairs at p = 1/2 (1.0 with none)."""
    x, y = _array(a, "a"), _array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same questions: {x.size} against {y.size}")
    if not (np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("McNemar's test needs binary scores (0 or 1), e.g. one seed's EM")
    a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    n = a_only + b_only
    p = float(sps.binomtest(a_only, n, 0.5).pvalue) if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def seed_interval(seed_means: Sequence[float], *, confidence: float = 0.95) -> dict:
    """{n, mean, std, low, high, min, max} of per-seed means: Student's t interval over seeds
    (what a new seed would average to), std with ddof=1. With one seed the interval is undefined
    (low = high = None)."""
    x = _array(seed_means, "seed_means")
    mean = float(x.mean())
    out = {"n": int(x.size), "mean": mean, "min": float(x.min()), "max": float(x.max())}
    if x.size < 2:
        return {**out, "std": None, "low": None, "high": None}
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return {**out, "std": std, "low": mean - half, "high": mean + half}
