"""The interfaces every retriever implements.

`Retriever` is what the rest of searchr1 sees (rollouts, evaluation, the server): queries in,
passages out. BM25, dense, hybrid, reranked and the HTTP client all implement it.

`Ranker` is the layer underneath for in-process indexes: queries in, integer passage indices and
scores out, so that fusion and reranking work on arrays before any passage text is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from searchr1.retrieval.corpus import Passage, format_contents


@dataclass(frozen=True)
class Hit:
    doc_id: str
    title: str
    text: str
    score: float
    raw_contents: str | None = field(default=None, repr=False)

    @property
    def contents(self) -> str:
        return self.raw_contents if self.raw_contents is not None else format_contents(self.title, self.text)

    @classmethod
    def from_passage(cls, p: Passage, score: float) -> "Hit":
        return cls(p.doc_id, p.title, p.text, float(score), p.raw_contents)


@runtime_checkable
class Retriever(Protocol):
    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-`k` passages for each query, best first. May return fewer than k for a query."""
        ...


def search_queries(queries: Sequence[str], k: int) -> list[str]:
    """The checks every `Retriever.search` starts with: k >= 1; the queries as a list."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return list(queries)


#: Retriever metrics that are levels, read as they are; every other one is a cumulative count.
LEVEL_METRICS = frozenset({"search/noise_p"})  # simulated search's current noise probability


def metrics_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What a retriever's `metrics()` counted between two readings (requests, cost, cache hits, ...):
    the counts' differences, the levels as `after` has them."""
    return {k: v if k in LEVEL_METRICS else v - before.get(k, 0.0) for k, v in after.items()}


class Ranker(Protocol):
    name: str
    num_docs: int

    def rank(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids int64[Q, k], scores float32[Q, k]), best first.

        Slots without a result hold id -1 and score -inf (k larger than the corpus, or a query
        with no matching term for BM25).
        """
        ...


def empty_ranking(num_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((num_queries, k), -1, dtype=np.int64), np.full((num_queries, k), -np.inf, dtype=np.float32)
