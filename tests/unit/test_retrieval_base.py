"""The helpers every retriever shares (searchr1.retrieval.base)."""

from searchr1.retrieval.base import metrics_since


def test_metrics_since_differences_the_counts_and_keeps_the_levels():
    before = {"search/requests": 4.0, "search/cost_usd": 0.06, "search/noise_p": 0.1}
    after = {"search/requests": 7.0, "search/cost_usd": 0.105, "search/noise_p": 0.3, "search/cache_hits": 2.0}
    since = metrics_since(before, after)
    assert since["search/requests"] == 3.0 and since["search/cache_hits"] == 2.0  # a new counter counts from 0
    assert abs(since["search/cost_usd"] - 0.045) < 1e-12
    assert since["search/noise_p"] == 0.3  # a level, not a count
    assert metrics_since({}, {}) == {}
