"""The retrieval methods, one entry each: how it is built from the passages, how it is opened for
search, and which settings it reads. `searchr1 index build` and `open_index` find methods here, so
a new method is one `register` call.

A stored method (bm25, dense) keeps its index in `<index dir>/<name>/`, built with the `IndexConfig`
section its entry names. A fused method (hybrid) stores nothing: at query time it opens the stored
methods its settings list and combines their rankings. A service (web search APIs, simulated search)
needs no index at all: it connects a `Retriever` from the settings alone, with the query cache to use.

This module imports no search library (each entry imports its own when called), so the settings
can read the method names from it without loading torch or faiss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchr1.errors import ConfigError

if TYPE_CHECKING:
    from searchr1.retrieval.base import Ranker, Retriever
    from searchr1.retrieval.cache import QueryCache
    from searchr1.retrieval.settings import RetrieverConfig

# (passage texts, passage count, output directory, the method's settings section, progress bars) -> stats
BuildFn = Callable[[Iterable[str], int, Path, Any, bool], dict]
# (index directory, query-time settings) -> a Ranker over that index
OpenFn = Callable[[Path, "RetrieverConfig"], "Ranker"]
# (query-time settings, the query cache or None) -> a Retriever that needs no index
ConnectFn = Callable[["RetrieverConfig", "QueryCache | None"], "Retriever"]


@dataclass(frozen=True)
class Method:
    name: str
    open: OpenFn | None = None  # a Ranker over the index (stored and fused methods)
    build: BuildFn | None = None  # None: a fused method or a service, nothing on disk
    settings: str | None = None  # the IndexConfig section handed to `build` (None: build gets None)
    # The stored methods a fused method opens, read from the query-time settings.
    fuses: Callable[["RetrieverConfig"], Sequence[str]] | None = None
    connect: ConnectFn | None = None  # a service: its Retriever, from the settings alone

    @property
    def stored(self) -> bool:
        return self.build is not None

    @property
    def service(self) -> bool:
        return self.connect is not None

    def needs(self, cfg: "RetrieverConfig") -> list[str]:
        """The stored methods the index must hold for this method to open."""
        if self.fuses is None:
            return [self.name]
        members = list(self.fuses(cfg))
        if not members:
            raise ConfigError(f"{self.name} fuses no method: name at least one of {', '.join(names(stored=True))}")
        for m in members:
            if not get(m).stored:
                raise ConfigError(f"{self.name} can only fuse stored methods ({', '.join(names(stored=True))}), "
                                  f"not {m!r}")
        return members


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in _METHODS or method.name == "auto":
        raise ValueError(f"retrieval method {method.name!r} is already registered")
    kinds = [method.build is not None, method.fuses is not None, method.connect is not None]
    if sum(kinds) != 1:
        raise ValueError(f"retrieval method {method.name!r} must either be built (build=), fuse others (fuses=) "
                         "or be a service (connect=), and only one of these")
    if (method.open is None) != method.service:
        raise ValueError(f"retrieval method {method.name!r}: an index method needs open=, a service does not take it")
    _METHODS[method.name] = method
    return method


def names(stored: bool | None = None) -> list[str]:
    """Registered index methods in registration order; `stored` filters stored / fused ones."""
    return [m.name for m in _METHODS.values() if not m.service and (stored is None or m.stored == stored)]


def services() -> list[str]:
    """Registered services (methods that need no index) in registration order."""
    return [m.name for m in _METHODS.values() if m.service]


def get(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown retrieval method {name!r}; registered: {', '.join(names() + services())}") from None


# ----------------------------------------------------------------------------- the built-in methods


def _build_bm25(texts: Iterable[str], n: int, out: Path, cfg, progress: bool) -> dict:
    from searchr1.retrieval.bm25 import build_bm25

    return build_bm25(texts, out, cfg, total=n, progress=progress)


def _open_bm25(index_dir: Path, cfg: "RetrieverConfig") -> "Ranker":
    from searchr1.retrieval.bm25 import BM25Ranker

    return BM25Ranker(index_dir / "bm25", threads=cfg.threads)


def _build_dense(texts: Iterable[str], n: int, out: Path, cfg, progress: bool) -> dict:
    from searchr1.retrieval.dense import build_dense

    return build_dense(texts, n, out, cfg, progress=progress)


def _open_dense(index_dir: Path, cfg: "RetrieverConfig") -> "Ranker":
    from searchr1.retrieval.dense import DenseRanker

    return DenseRanker(index_dir / "dense", device=cfg.device, ef_search=cfg.hnsw_ef_search,
                       nprobe=cfg.ivf_nprobe, blas_threshold=cfg.faiss_blas_threshold)


def _open_hybrid(index_dir: Path, cfg: "RetrieverConfig") -> "Ranker":
    from searchr1.retrieval.hybrid import HybridRanker

    rankers = [get(m).open(index_dir, cfg) for m in get("hybrid").needs(cfg)]
    return HybridRanker(rankers, depth=cfg.fusion_depth, rrf_k=cfg.rrf_k)


register(Method("bm25", open=_open_bm25, build=_build_bm25, settings="bm25"))
register(Method("dense", open=_open_dense, build=_build_dense, settings="dense"))
register(Method("hybrid", open=_open_hybrid, fuses=lambda cfg: cfg.hybrid_methods))


def _web(provider: str) -> ConnectFn:
    def connect(cfg: "RetrieverConfig", cache: "QueryCache | None") -> "Retriever":
        from searchr1.retrieval.web import open_web_search

        return open_web_search(provider, cfg.web, cache)

    return connect


def _connect_simulated(cfg: "RetrieverConfig", cache: "QueryCache | None") -> "Retriever":
    from searchr1.retrieval.simulated import open_simulated_search

    return open_simulated_search(cfg.simulated, cache)


for _provider in ("serpapi", "serper", "brave", "tavily"):
    register(Method(_provider, connect=_web(_provider)))
register(Method("simulated", connect=_connect_simulated))
