"""Retrieval quality: answer recall@k (the gold answer string appears in the top-k passages).

This is the measure DPR and FlashRAG report for open-domain QA retrieval. Matching uses the
same normalisation as the rewards (`searchr1.rewards.contains_answer`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from searchr1.retrieval.base import Retriever
from searchr1.rewards import contains_answer


def answer_recall(retriever: Retriever, questions: Sequence[str], answers: Sequence[Sequence[str]],
                  ks: Sequence[int] = (1, 3, 10), batch_size: int = 64) -> dict:
    """{"recall@k": fraction of questions with a gold answer in the top k, ..., "queries_per_s": ...}.

    Every question is searched once at depth max(ks); recall@k reads the first k hits.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answer lists")
    if not questions:
        raise ValueError("no questions to evaluate")
    depth = max(ks)
    first_hit = []  # rank (1-based) of the first passage with an answer, or None
    start = time.perf_counter()
    for s in range(0, len(questions), batch_size):
        rows = retriever.search(list(questions[s : s + batch_size]), depth)
        for hits, gold in zip(rows, answers[s : s + batch_size]):
            rank = next((i + 1 for i, h in enumerate(hits) if contains_answer(h.contents, gold)), None)
            first_hit.append(rank)
    seconds = time.perf_counter() - start
    out = {f"recall@{k}": sum(r is not None and r <= k for r in first_hit) / len(first_hit) for k in ks}
    out["questions"] = len(questions)
    out["queries_per_s"] = len(questions) / seconds if seconds > 0 else float("inf")
    return out
