"""In-process retrieval over an index directory (its methods come from registry.py), and the one
function that opens any retriever (an index, a server, or a service such as web search, with the
query cache its settings ask for)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from searchr1.errors import ConfigError, IndexFormatError
from searchr1.retrieval import registry
from searchr1.retrieval.base import Hit, Ranker, Retriever, search_queries
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
        queries = search_queries(queries, k)
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


def resolve_method(index_dir: str | os.PathLike, cfg: RetrieverConfig) -> str:
    """The method `cfg.method` names, checked against what the index holds; `auto` picks one."""
    meta = read_index_meta(index_dir)
    have = sorted(m for m in meta["methods"] if (Path(index_dir) / m).is_dir())
    if cfg.method == "auto":
        if not have:
            raise IndexFormatError(f"{index_dir} has no search index yet (only passages); "
                                   f"build one of {', '.join(registry.names(stored=True))}")
        for name in registry.names(stored=False):  # a fusion of several methods the index holds
            fused = set(registry.get(name).needs(cfg))
            if len(fused) > 1 and fused <= set(have):
                return name
        return have[0]
    need = registry.get(cfg.method).needs(cfg)
    missing = sorted({m for m in need if m not in have})
    if missing:
        raise IndexFormatError(
            f"{index_dir} has no {' or '.join(missing)} index (it has: {', '.join(have) or 'none'}); "
            f"build it with `searchr1 index build index.dir={index_dir} index.methods={','.join(missing)}`"
        )
    return cfg.method


def _set_threads(threads: int) -> None:
    if threads > 0:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def open_index(cfg: RetrieverConfig) -> IndexRetriever:
    _set_threads(cfg.threads)
    method = resolve_method(cfg.index, cfg)
    ranker = registry.get(method).open(Path(cfg.index), cfg)
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


def _index_namespace(cfg: RetrieverConfig, method: str) -> str:
    """The cache namespace of an index search: its directory, its method, and a digest of what its
    results depend on (the index as built, the query-time settings), so a rebuild starts afresh."""
    import hashlib
    import json

    settings = {k: getattr(cfg, k) for k in ("hybrid_methods", "rrf_k", "fusion_depth", "hnsw_ef_search",
                                            "ivf_nprobe", "reranker", "rerank_depth")}
    digest = hashlib.sha1(json.dumps([read_index_meta(cfg.index), settings], sort_keys=True, default=str)
                          .encode()).hexdigest()[:12]
    return f"index:{Path(cfg.index).resolve()}:{method}:{digest}"


def with_method(cfg: RetrieverConfig, method: str) -> RetrieverConfig:
    """`cfg` searching with `method`; a service (web or simulated search) replaces the index or the
    server `cfg` names, an index method searches the same index."""
    import dataclasses

    if registry.get(method).service:
        return dataclasses.replace(cfg, method=method, index="", url="")
    return dataclasses.replace(cfg, method=method)


def open_retriever(cfg: RetrieverConfig) -> Retriever:
    """The retriever the config names: an HTTP server (`url`), an index directory (`index`), or a
    service method (web search, simulated search) that needs neither. The query cache is on by default
    for services and off for the others (`retriever.cache.mode`)."""
    from searchr1.retrieval.cache import CachedRetriever, open_cache

    service = cfg.method != "auto" and registry.get(cfg.method).service
    given = [name for name, value in (("retriever.url", cfg.url), ("retriever.index", cfg.index)) if value]
    if service and given:
        raise ConfigError(f"retriever.method={cfg.method} needs no index or server: leave {' and '.join(given)} empty")
    if len(given) > 1:
        raise ConfigError("give retriever.url or retriever.index, not both")
    if service:
        return registry.get(cfg.method).connect(cfg, open_cache(cfg.cache, default_on=True))
    if cfg.url:
        from searchr1.retrieval.client import HttpRetriever

        retriever = HttpRetriever.from_config(cfg)
        namespace = f"url:{cfg.url}"
    elif cfg.index:
        retriever = open_index(cfg)
        namespace = _index_namespace(cfg, retriever.method)
    else:
        raise ConfigError("no retriever configured: set retriever.index=DIR, retriever.url=http://HOST:PORT or "
                          f"retriever.method to one of {', '.join(registry.services())}")
    cache = open_cache(cfg.cache, default_on=False)
    return retriever if cache is None else CachedRetriever(retriever, cache, namespace)
