"""In-process retrieval over an index directory, and the one function that opens any retriever."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from searchr1.errors import ConfigError, IndexFormatError
from searchr1.retrieval.base import Hit, Ranker, Retriever
from searchr1.retrieval.build import read_index_meta
from searchr1.retrieval.docstore import DocStore
from searchr1.retrieval.settings import RetrieverConfig


class IndexRetriever:
    """Ranker (+ optional reranker) over a passage store: the in-process `Retriever`."""

    def __init__(self, ranker: Ranker, store: DocStore, reranker=None, rerank_depth: int = 20):
        self.ranker = ranker
        self.store = store
        self.reranker = reranker
        self.rerank_depth = rerank_depth
        self.method = ranker.name + ("+rerank" if reranker is not None else "")
        self.num_docs = len(store)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = list(queries)
        if not queries:
            return []
        depth = max(k, self.rerank_depth) if self.reranker is not None else k
        ids, scores = self.ranker.rank(queries, depth)
        hits = [
            [Hit.from_passage(self.store[int(i)], float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(ids, scores)
        ]
        if self.reranker is not None:
            hits = self.reranker.rerank(queries, hits, k)
        return hits

    def close(self) -> None:
        self.store.close()


def resolve_method(index_dir: str | os.PathLike, method: str) -> str:
    meta = read_index_meta(index_dir)
    have = sorted(m for m in meta["methods"] if (Path(index_dir) / m).is_dir())
    if method == "auto":
        if not have:
            raise IndexFormatError(f"{index_dir} has no search index yet (only passages); build bm25 or dense")
        return "hybrid" if {"bm25", "dense"} <= set(have) else have[0]
    need = ["bm25", "dense"] if method == "hybrid" else [method]
    missing = [m for m in need if m not in have]
    if missing:
        raise IndexFormatError(
            f"{index_dir} has no {' or '.join(missing)} index (it has: {', '.join(have) or 'none'}); "
            f"build it with `searchr1 index build index.dir={index_dir} index.methods={','.join(missing)}`"
        )
    return method


def load_ranker(index_dir: str | os.PathLike, method: str, cfg: RetrieverConfig) -> Ranker:
    index_dir = Path(index_dir)
    if method == "bm25":
        from searchr1.retrieval.bm25 import BM25Ranker

        return BM25Ranker(index_dir / "bm25", threads=cfg.threads)
    if method == "dense":
        from searchr1.retrieval.dense import DenseRanker

        return DenseRanker(index_dir / "dense", device=cfg.device, ef_search=cfg.hnsw_ef_search,
                           nprobe=cfg.ivf_nprobe, blas_threshold=cfg.faiss_blas_threshold)
    if method == "hybrid":
        from searchr1.retrieval.hybrid import HybridRanker

        rankers = [load_ranker(index_dir, m, cfg) for m in ("bm25", "dense")]
        return HybridRanker(rankers, depth=cfg.fusion_depth, rrf_k=cfg.rrf_k)
    raise ConfigError(f"unknown retrieval method {method!r}")


def _set_threads(threads: int) -> None:
    if threads > 0:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def open_index(cfg: RetrieverConfig) -> IndexRetriever:
    _set_threads(cfg.threads)
    method = resolve_method(cfg.index, cfg.method)
    ranker = load_ranker(cfg.index, method, cfg)
    reranker = None
    if cfg.reranker:
        from searchr1.retrieval.rerank import CrossEncoderReranker

        reranker = CrossEncoderReranker(cfg.reranker, device=cfg.device)
    store = DocStore(cfg.index)
    if len(store) != ranker.num_docs:
        raise IndexFormatError(
            f"{cfg.index}: {ranker.name} index has {ranker.num_docs} passages but the store has {len(store)}; rebuild it"
        )
    return IndexRetriever(ranker, store, reranker, cfg.rerank_depth)


def open_retriever(cfg: RetrieverConfig) -> Retriever:
    """The retriever the config names: an HTTP server (`url`) or an index directory (`index`)."""
    if cfg.url and cfg.index:
        raise ConfigError("give retriever.url or retriever.index, not both")
    if cfg.url:
        from searchr1.retrieval.client import HttpRetriever

        return HttpRetriever(cfg.url, timeout_s=cfg.timeout_s, retries=cfg.retries, backoff_s=cfg.backoff_s)
    if cfg.index:
        return open_index(cfg)
    raise ConfigError("no retriever configured: set retriever.index=DIR or retriever.url=http://HOST:PORT")
