"""Hybrid retrieval: reciprocal rank fusion (Cormack et al., SIGIR 2009) of several rankers.

RRF uses ranks, not scores, so BM25 and cosine scores need no calibration against each other:
  fused(d) = sum_i  w_i / (rrf_k + rank_i(d)),   rank starting at 1, absent from list i -> 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from searchr1.retrieval.base import Ranker, empty_ranking


def reciprocal_rank_fusion(
    rankings: Sequence[np.ndarray], k: int, rrf_k: float = 60.0, weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked id lists.

    rankings: one int64[Q, D_i] array per ranker, best first; -1 marks an empty slot.
    Returns (ids int64[Q, k], scores float32[Q, k]), best first, padded with -1 / -inf.
    Ties are broken by the smaller passage id so the result is deterministic.
    """
    if not rankings:
        raise ValueError("need at least one ranking")
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    n_queries = rankings[0].shape[0]
    if any(r.shape[0] != n_queries for r in rankings):
        raise ValueError("all rankings must have the same number of queries")
    out_ids, out_scores = empty_ranking(n_queries, k)
    for q in range(n_queries):
        fused: dict[int, float] = {}
        for ranking, w in zip(rankings, weights):
            seen = set()
            for rank, doc in enumerate(ranking[q].tolist(), start=1):
                if doc < 0 or doc in seen:
                    continue
                seen.add(doc)
                fused[doc] = fused.get(doc, 0.0) + w / (rrf_k + rank)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        for j, (doc, score) in enumerate(best):
            out_ids[q, j] = doc
            out_scores[q, j] = score
    return out_ids, out_scores


class HybridRanker:
    """Each ranker contributes its top `depth` candidates; RRF picks the final top k."""

    name = "hybrid"

    def __init__(self, rankers: Sequence[Ranker], depth: int = 50, rrf_k: float = 60.0,
                 weights: Sequence[float] | None = None):
        if not rankers:
            raise ValueError("hybrid retrieval needs at least one ranker")
        self.rankers = list(rankers)
        self.depth = depth
        self.rrf_k = rrf_k
        self.weights = weights
        self.num_docs = self.rankers[0].num_docs

    def rank(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        depth = max(self.depth, k)
        rankings = [r.rank(queries, depth)[0] for r in self.rankers]
        return reciprocal_rank_fusion(rankings, k, self.rrf_k, self.weights)
