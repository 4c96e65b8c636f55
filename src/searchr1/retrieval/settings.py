"""Settings of the search engine: index building, query-time retrieval (an index, a server, web search
APIs, simulated search, the query cache), the HTTP server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param
from searchr1.retrieval import registry
from searchr1.rollout.settings import ModelConfig

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
# The method names come from the registry, so a registered method is a valid config value.
STORED_METHODS = tuple(registry.names(stored=True))
SERVICE_METHODS = tuple(registry.services())
METHODS = ("auto", *registry.names(), *SERVICE_METHODS)


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


# ----------------------------------------------------------------------------- web search, simulated search, cache
# List prices are USD per 1,000 requests, read on 2026-12-06 from the providers' pricing pages (and, where
# noted, the published comparisons that quote them); override them with your plan's price.


@dataclass
class WebProviderConfig:
    """One web search API: where it is, which environment variable holds its key, its limits and price."""

    url: str = param("", "endpoint URL (the provider's public one by default; set it for a proxy or a stub)")
    api_key_env: str = param("", "name of the environment variable that holds the API key (the key itself is "
                                 "never read from a config file)")
    price_per_1k: float = param(0.0, "USD per 1,000 billed requests, for the estimated cost in the metrics")
    requests_per_s: float = param(5.0, "most requests started per second (0: no limit)")
    concurrency: int = param(4, "requests in flight at once")

    def __post_init__(self) -> None:
        if self.price_per_1k < 0 or self.requests_per_s < 0 or self.concurrency < 1:
            raise ValueError("price_per_1k >= 0, requests_per_s >= 0 and concurrency >= 1 are required")


@dataclass
class SerpApiConfig(WebProviderConfig):
    url: str = param("https://serpapi.com/search.json", "SerpAPI search endpoint")
    api_key_env: str = param("SERPAPI_API_KEY", "environment variable with the SerpAPI key")
    price_per_1k: float = param(15.0, "USD per 1,000 searches: SerpAPI Developer plan, $75 for 5,000 searches/month "
                                      "(serpapi.com/pricing, 2026-12-06; the figure MMSearch-R1 quotes)")
    engine: Literal["google", "bing"] = param("google", "the search engine SerpAPI queries")
    gl: str = param("", "country of the search (google: gl, bing: cc), e.g. 'us'; '' for the provider's default")
    hl: str = param("", "language of the results (google: hl, bing: mkt such as 'en-US'); '' for the default")


@dataclass
class SerperConfig(WebProviderConfig):
    url: str = param("https://google.serper.dev/search", "Serper search endpoint")
    api_key_env: str = param("SERPER_API_KEY", "environment variable with the Serper key")
    price_per_1k: float = param(1.0, "USD per 1,000 searches: Serper Starter, $50 for 50,000 credits "
                                     "(serper.dev pricing, 2026-12-06)")
    gl: str = param("", "country of the search, e.g. 'us'; '' for Serper's default")
    hl: str = param("", "language of the results, e.g. 'en'; '' for Serper's default")


@dataclass
class BraveConfig(WebProviderConfig):
    url: str = param("https://api.search.brave.com/res/v1/web/search", "Brave Search web endpoint")
    api_key_env: str = param("BRAVE_API_KEY", "environment variable with the Brave Search subscription token")
    price_per_1k: float = param(5.0, "USD per 1,000 requests: Brave Search API 'Search' plan, $5 per 1,000 "
                                     "(brave.com/search/api, 2026-12-06)")
    requests_per_s: float = param(1.0, "most requests started per second (Brave's free tier allows 1)")
    country: str = param("", "country of the search, e.g. 'us'; '' for Brave's default")


@dataclass
class TavilyConfig(WebProviderConfig):
    url: str = param("https://api.tavily.com/search", "Tavily search endpoint")
    api_key_env: str = param("TAVILY_API_KEY", "environment variable with the Tavily key")
    price_per_1k: float = param(8.0, "USD per 1,000 basic searches: Tavily pay-as-you-go, $0.008 per credit "
                                     "(tavily.com pricing as quoted by scavio.dev, 2026-12-06)")
    search_depth: Literal["basic", "advanced"] = param("basic", "Tavily search depth (advanced costs 2 credits)")


@dataclass
class WebConfig:
    serpapi: SerpApiConfig = param(SerpApiConfig, "retriever.method=serpapi: Google or Bing through SerpAPI")
    serper: SerperConfig = param(SerperConfig, "retriever.method=serper: Google through Serper")
    brave: BraveConfig = param(BraveConfig, "retriever.method=brave: Brave Search API")
    tavily: TavilyConfig = param(TavilyConfig, "retriever.method=tavily: Tavily search API")
    timeout_s: float = param(20.0, "seconds per request before it counts as timed out")
    retries: int = param(3, "retries after a timeout, a connection error, a 5xx or a 429")
    backoff_s: float = param(1.0, "first retry delay when the reply names none (Retry-After), doubled each retry")
    max_retry_after_s: float = param(60.0, "longest wait honoured for one retry (a longer Retry-After fails now)")
    fetch_pages: bool = param(False, "fetch each result's page and use its text (cut to page_chars) instead of "
                                     "the snippet; the snippet stays when a page cannot be read")
    page_chars: int = param(2000, "characters of page text kept per result when fetch_pages is on")
    page_timeout_s: float = param(10.0, "seconds per page fetch")

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.page_timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError("timeout_s > 0, page_timeout_s > 0, retries >= 0 and backoff_s >= 0 are required")
        if self.max_retry_after_s < 0 or self.page_chars < 1:
            raise ValueError("max_retry_after_s >= 0 and page_chars >= 1 are required")


@dataclass
class SimulatedConfig:
    model: ModelConfig = param(ModelConfig, "the model that writes the documents (ZeroSearch used a fine-tuned "
                                            "Qwen2.5 3B-14B; any instruct model works without fine-tuning)")
    max_new_tokens: int = param(512, "tokens the model may write for one query's documents")
    temperature: float = param(0.0, "sampling temperature of the document writer (0: greedy)")
    noise_start: float = param(0.0, "probability that a query gets noisy documents at the first training step")
    noise_end: float = param(0.5, "that probability at the last training step")
    noise_base: float = param(4.0, "base b of ZeroSearch's exponential curriculum (b > 1; larger: noise rises later)")
    noise_steps: int = param(0, "training steps over which noise rises (m); 0: the trainer's step count")
    seed: int = param(0, "seed of the useful/noisy draws and of sampling")

    def __post_init__(self) -> None:
        if not (0 <= self.noise_start <= 1 and 0 <= self.noise_end <= 1):
            raise ValueError("noise_start and noise_end must be probabilities in [0, 1]")
        if self.noise_base <= 1 or self.max_new_tokens < 1 or self.noise_steps < 0 or self.temperature < 0:
            raise ValueError("noise_base > 1, max_new_tokens >= 1, noise_steps >= 0 and temperature >= 0 are required")


@dataclass
class CacheConfig:
    mode: Literal["auto", "disabled", "enabled", "replay"] = param(
        "auto", "auto: enabled for web and simulated search, disabled for an index or a server; enabled: read "
                "and record; replay: read only, a query not in the cache is an error (reproducible offline runs)")
    path: str = param("", "SQLite file shared by the processes of one machine; '' = "
                          "$XDG_CACHE_HOME/searchr1/search-cache.sqlite (~/.cache/...)")
    busy_timeout_s: float = param(30.0, "how long a writer waits for another process's write to finish")

    def __post_init__(self) -> None:
        if self.busy_timeout_s <= 0:
            raise ValueError("busy_timeout_s must be > 0")


@dataclass
class RetrieverConfig:
    index: str = param("", "index directory to search in process (give this or url)")
    url: str = param("", "URL of a running `searchr1 serve` (or Search-R1) retrieval server")
    method: Literal[METHODS] = param(
        "auto", "auto: hybrid when the index has every method hybrid_methods names, else the first one it has; "
                f"{', '.join(SERVICE_METHODS)} need no index (web search APIs, simulated search)"
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
    wait_deadline_s: float = param(
        600.0, "training: when the server stays unreachable after the client's retries, checkpoint the last "
               "completed step and wait this long (polling /health with backoff) before stopping the run"
    )
    token: str = param(
        "", "HTTP client: name of the environment variable holding the server's bearer token (server.token); "
            "'' sends none"
    )
    web: WebConfig = param(WebConfig, "web search APIs (retriever.method=serpapi, serper, brave or tavily)")
    simulated: SimulatedConfig = param(SimulatedConfig, "retriever.method=simulated: documents written by a model "
                                                        "(ZeroSearch)")
    cache: CacheConfig = param(CacheConfig, "the persistent query cache (SQLite)")

    def __post_init__(self) -> None:
        if self.topk < 1 or self.rrf_k < 0 or self.fusion_depth < 1 or self.rerank_depth < 1:
            raise ValueError("topk, fusion_depth, rerank_depth must be >= 1 and rrf_k >= 0")
        if self.retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0 or self.wait_deadline_s < 0:
            raise ValueError("retries >= 0, timeout_s > 0, backoff_s >= 0 and wait_deadline_s >= 0 are required")


@dataclass
class ServerConfig:
    host: str = param("127.0.0.1", "interface to bind; another address serves other machines (set server.token then)")
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
    max_result_hits: int = param(20_000, "most passages in one answer (queries x topk); larger requests get HTTP 413")
    max_queue_queries: int = param(
        8192, "most queries waiting for the batcher; further requests get HTTP 503 with Retry-After"
    )
    queue_timeout_s: float = param(
        30.0, "a request still queued after this long is dropped with HTTP 503 (its client has given up: "
              "keep it at the clients' retriever.timeout_s)"
    )
    token: str = param(
        "", "name of the environment variable holding a bearer token that every request must carry "
            "(Authorization: Bearer ...); '' serves without one"
    )
    log_level: Literal["debug", "info", "warning", "error"] = param("warning", "uvicorn log level")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if min(self.max_batch_queries, self.max_queries_per_request, self.max_topk, self.max_query_chars,
               self.max_result_hits, self.max_queue_queries) < 1 or self.queue_timeout_s <= 0:
            raise ValueError("server limits must be positive")
        if self.max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")


def read_token(variable: str, key: str) -> str:
    """The bearer token held by environment variable `variable` ('' when `variable` is ''); `key` names
    the setting in the error. The token itself never appears in a config file, a message or a log."""
    import os

    from searchr1.errors import ConfigError

    if not variable:
        return ""
    token = os.environ.get(variable, "").strip()
    if not token:
        raise ConfigError(f"{key}={variable} names an environment variable that is not set (or is empty)")
    return token
