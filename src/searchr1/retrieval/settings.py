"""Settings of the search engine: index building, query-time retrieval, the HTTP server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param
from searchr1.retrieval import registry

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# The method names come from the registry, so a registered method is a valid config value.
STORED_METHODS = tuple(registry.names(stored=True))
METHODS = ("auto", *registry.names())


@dataclass
class BM25Config:
    k1: float = param(0.9, "BM25 term-frequency saturation (0.9 is Pyserini's default, used by Search-R1's BM25)")
    b: float = param(0.4, "BM25 length normalisation (0.4 is Pyserini's default)")
    method: Literal["lucene", "robertson", "atire"] = param("lucene", "BM25 variant (idf and tf formulas)")
    stemmer: str = param("english", "PyStemmer language for stemming, or '' for none")
    stopwords: str = param("en", "stop-word list: 'en' (bm25s's English list) or '' for none")
    chunk_docs: int = param(50_000, "documents tokenised per chunk while building (bounds build memory)")

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.chunk_docs < 1:
            raise ValueError("chunk_docs must be positive")


@dataclass
class EncoderConfig:
    model: str = param(DEFAULT_ENCODER, "Hugging Face model id or local path of the sentence encoder (e5: intfloat/e5-base-v2)")
    pooling: Literal["mean", "cls"] = param("mean", "how token states become one vector (e5, MiniLM: mean; bge: cls)")
    normalize: bool = param(True, "L2-normalise embeddings so inner product is cosine similarity")
    query_prefix: str = param("", "text put before every query (e5: 'query: ')")
    passage_prefix: str = param("", "text put before every passage (e5: 'passage: ')")
    max_length: int = param(256, "passage truncation in encoder tokens")
    query_max_length: int = param(128, "query truncation in encoder tokens")
    batch_size: int = param(64, "texts encoded per forward pass")
    device: str = param("auto", "'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    fp16: bool = param(True, "use half precision when running on a GPU (ignored on CPU)")

    def __post_init__(self) -> None:
        if min(self.max_length, self.query_max_length, self.batch_size) < 1:
            raise ValueError("max_length, query_max_length and batch_size must be positive")


@dataclass
class DenseConfig:
    encoder: EncoderConfig = param(EncoderConfig, "the sentence encoder used for passages and queries")
    index_type: str = param(
        "flat",
        "faiss index: flat (exact), hnsw, ivfpq (compressed, for 21M passages in a few GB), sq8, fp16, "
        "or any faiss index_factory string such as 'IVF4096,PQ64'",
    )
    hnsw_m: int = param(32, "HNSW graph degree")
    hnsw_ef_construction: int = param(200, "HNSW build-time search width")
    ivf_nlist: int = param(0, "IVF clusters; 0 picks about 4*sqrt(N)")
    pq_m: int = param(0, "PQ sub-quantisers for ivfpq; 0 picks dim/8 (must divide dim)")
    train_size: int = param(200_000, "vectors used to train IVF/PQ/SQ indexes")
    seed: int = param(0, "seed for index training")
    save_embeddings: bool = param(
        True, "keep the passage embeddings (float16) so other index types can be built without re-encoding"
    )

    def __post_init__(self) -> None:
        if self.hnsw_m < 2 or self.train_size < 1 or self.ivf_nlist < 0 or self.pq_m < 0:
            raise ValueError("hnsw_m >= 2, train_size >= 1, ivf_nlist >= 0 and pq_m >= 0 are required")


@dataclass
class IndexConfig:
    corpus: str = param("", "JSONL corpus ({id, contents} or {id, title, text}; .gz allowed)")
    dir: str = param("runs/index", "index directory to write")
    methods: list[Literal[STORED_METHODS]] = param(["bm25"], f"indexes to build, any of {', '.join(STORED_METHODS)}")
    overwrite: bool = param(False, "rebuild methods that already exist in dir")
    on_bad_line: Literal["error", "skip"] = param(
        "error", "malformed corpus line: stop with an error naming it, or skip it (skipped lines are saved)"
    )
    bm25: BM25Config = param(BM25Config, "BM25 settings")
    dense: DenseConfig = param(DenseConfig, "dense index settings")

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError(f"methods must name at least one of {', '.join(STORED_METHODS)}")


@dataclass
class RetrieverConfig:
    index: str = param("", "index directory to search in process (give this or url)")
    url: str = param("", "URL of a running `searchr1 serve` (or Search-R1) retrieval server")
    method: Literal[METHODS] = param(
        "auto", "auto: hybrid when the index has every method hybrid_methods names, else the first one it has"
    )
    topk: int = param(3, "passages returned per query (the paper uses 3)")
    hybrid_methods: list[Literal[STORED_METHODS]] = param(
        ["bm25", "dense"], f"the indexes hybrid fuses by reciprocal rank fusion, any of {', '.join(STORED_METHODS)}"
    )
    rrf_k: int = param(60, "reciprocal rank fusion constant for hybrid")
    fusion_depth: int = param(50, "candidates each method contributes to hybrid fusion / reranking")
    hnsw_ef_search: int = param(128, "HNSW query-time search width")
    ivf_nprobe: int = param(32, "IVF clusters visited per query")
    faiss_blas_threshold: int = param(
        20, "faiss uses BLAS for exact search from this many queries per call (faiss 1.15's default, 128000, "
            "halves flat-search speed for batches on CPU here)"
    )
    reranker: str = param("", "cross-encoder model id/path to rerank candidates; '' disables")
    rerank_depth: int = param(20, "candidates passed to the reranker")
    device: str = param("auto", "device of the query encoder and reranker")
    threads: int = param(0, "CPU threads for torch/faiss; 0 keeps the library default")
    timeout_s: float = param(30.0, "HTTP client: seconds per request")
    retries: int = param(3, "HTTP client: retries after a failed attempt (connection errors, 5xx, 429)")
    backoff_s: float = param(0.5, "HTTP client: first retry delay, doubled each retry")

    def __post_init__(self) -> None:
        if self.topk < 1 or self.rrf_k < 0 or self.fusion_depth < 1 or self.rerank_depth < 1:
            raise ValueError("topk, fusion_depth, rerank_depth must be >= 1 and rrf_k >= 0")
        if self.retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("retries >= 0, timeout_s > 0 and backoff_s >= 0 are required")


@dataclass
class ServerConfig:
    host: str = param("127.0.0.1", "interface to bind; 0.0.0.0 serves other machines")
    port: int = param(8000, "TCP port")
    batching: bool = param(True, "merge concurrent requests into one search call (dynamic micro-batching)")
    max_batch_queries: int = param(256, "most queries merged into one search call")
    max_wait_ms: float = param(
        5.0, "under concurrent load, how long a non-full batch waits for more requests (a lone client never waits)"
    )
    max_queries_per_request: int = param(1024, "larger requests get HTTP 413")
    max_topk: int = param(100, "larger topk gets HTTP 422")
    max_query_chars: int = param(4096, "longer queries get HTTP 422")
    max_body_bytes: int = param(8 << 20, "larger request bodies get HTTP 413")
    log_level: Literal["debug", "info", "warning", "error"] = param("warning", "uvicorn log level")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if min(self.max_batch_queries, self.max_queries_per_request, self.max_topk, self.max_query_chars) < 1:
            raise ValueError("server limits must be positive")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
