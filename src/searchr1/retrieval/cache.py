"""A persistent query cache: SQLite in WAL mode, shared by the processes of one machine.

An entry is keyed by (namespace, normalised query, k). The namespace names the backend and every
setting that changes its results (`serpapi:google`, `simulated:useful:<model>`, `index:<dir>:bm25`),
so two backends never read each other's entries. The first writer of a key wins (`INSERT OR IGNORE`)
and every caller returns what the cache holds after its write, so processes that missed the same
query at the same time still agree, and a replay returns exactly what the recording run used.

`CachedRetriever` wraps any `Retriever`. In replay mode it never calls the retriever it wraps: a
query that is not in the cache is a `CacheMissError`, which makes a web-search evaluation
reproducible offline.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from searchr1.errors import RetrieverError, RetrieverRequestError
from searchr1.retrieval.base import Hit, Retriever, search_queries

SCHEMA = """CREATE TABLE IF NOT EXISTS search_results_v1 (
    namespace TEXT NOT NULL,
    query TEXT NOT NULL,
    k INTEGER NOT NULL,
    hits TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (namespace, query, k)
) WITHOUT ROWID"""


class CacheMissError(RetrieverRequestError):
    """Replay mode met a query the cache does not hold (asking again will not help)."""


def normalize_query(query: str) -> str:
    """The cache's key for a query: Unicode NFKC, case-folded, whitespace squeezed."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "searchr1" / "search-cache.sqlite"


def _encode(hits: Sequence[Hit]) -> str:
    return json.dumps([{"id": h.doc_id, "title": h.title, "text": h.text, "score": h.score,
                        "contents": h.raw_contents} for h in hits], ensure_ascii=False)


def _decode(text: str) -> list[Hit]:
    return [Hit(d["id"], d["title"], d["text"], float(d["score"]), d.get("contents")) for d in json.loads(text)]


class QueryCache:
    """The SQLite file. Thread-safe (one connection per process, behind a lock) and fork-safe (a
    child process opens its own connection on first use)."""

    def __init__(self, path: str | os.PathLike, replay: bool = False, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.replay = replay
        self.busy_timeout_s = busy_timeout_s
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        if replay and not self.path.is_file():
            raise CacheMissError(f"replay mode needs a query cache, and {self.path} does not exist; "
                                 "record one first with retriever.cache.mode=enabled")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit (isolation_level=None): each statement or explicit BEGIN is its own transaction
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            try:
                if not self.replay:
                    self._set_up(conn)
            except sqlite3.DatabaseError as e:
                conn.close()
                raise RetrieverError(f"query cache {self.path} cannot be used: {e}") from None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL takes an exclusive lock, and SQLite answers "database is locked" at once
        # (its busy handler does not cover it) while another process is setting up the same file:
        # retry within the busy timeout.
        deadline = time.monotonic() + self.busy_timeout_s
        for attempt in itertools.count():
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL keeps the file consistent on a crash
                conn.execute(SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
                time.sleep(min(0.01 * 2**attempt, 0.5))

    def get_many(self, namespace: str, queries: Sequence[str], k: int) -> list[list[Hit] | None]:
        """The cached hits of each query (None where absent); counts hits and misses."""
        keys = [normalize_query(q) for q in queries]
        with self._lock:
            conn = self._connection()
            try:
                found = {}
                for key in dict.fromkeys(keys):
                    row = conn.execute("SELECT hits FROM search_results_v1 WHERE namespace=? AND query=? AND k=?",
                                       (namespace, key, k)).fetchone()
                    if row is not None:
                        found[key] = row[0]
            except sqlite3.OperationalError as e:
                raise RetrieverError(f"query cache {self.path} cannot be read: {e}") from None
            out = [_decode(found[key]) if key in found else None for key in keys]
            n_hit = sum(r is not None for r in out)
            self.hits += n_hit
            self.misses += len(out) - n_hit
            return out

    def put_many(self, namespace: str, queries: Sequence[str], k: int, results: Sequence[Sequence[Hit]]) -> list[list[Hit]]:
        """Store results (the first writer of a key wins) and return what the cache now holds for them."""
        keys = [normalize_query(q) for q in queries]
        now = time.time()
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR IGNORE INTO search_results_v1 (namespace, query, k, hits, created) VALUES (?,?,?,?,?)",
                        [(namespace, key, k, _encode(hits), now) for key, hits in zip(keys, results)])
                    stored = {key: conn.execute(
                        "SELECT hits FROM search_results_v1 WHERE namespace=? AND query=? AND k=?",
                        (namespace, key, k)).fetchone()[0] for key in dict.fromkeys(keys)}
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:
                raise RetrieverError(f"query cache {self.path} cannot be written: {e}") from None
            return [_decode(stored[key]) for key in keys]

    def __len__(self) -> int:
        with self._lock:
            return self._connection().execute("SELECT COUNT(*) FROM search_results_v1").fetchone()[0]

    def metrics(self) -> dict[str, float]:
        return {"search/cache_hits": float(self.hits), "search/cache_misses": float(self.misses)}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class CachedRetriever:
    """`inner` behind the cache: cached queries are answered from it, the rest are searched in one
    call to `inner` and recorded. In replay mode `inner` is never called."""

    def __init__(self, inner: Retriever, cache: QueryCache, namespace: str) -> None:
        self.inner = inner
        self.cache = cache
        self.namespace = namespace
        self.method = getattr(inner, "method", namespace)
        self.num_docs = getattr(inner, "num_docs", None)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        queries = search_queries(queries, k)
        if not queries:
            return []
        results = self.cache.get_many(self.namespace, queries, k)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing and self.cache.replay:
            q = queries[missing[0]]
            raise CacheMissError(f"replay mode: {q!r} (k={k}) for {self.namespace} is not in the query cache "
                                 f"{self.cache.path} ({len(missing)} of {len(queries)} queries missing); "
                                 "record it with retriever.cache.mode=enabled")
        if missing:
            fresh = self.inner.search([queries[i] for i in missing], k)
            stored = self.cache.put_many(self.namespace, [queries[i] for i in missing], k, fresh)
            for i, hits in zip(missing, stored):
                results[i] = hits
        return results  # type: ignore[return-value]

    def __getattr__(self, name: str):
        # The wrapped retriever's own operations (an HTTP client's wait_until_healthy, queries_cut,
        # retries_itself) stay visible through the cache, so the agent and the trainer treat a cached
        # client as the client.
        if name == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def metrics(self) -> dict[str, float]:
        inner = getattr(self.inner, "metrics", None)
        return {**(inner() if inner is not None else {}), **self.cache.metrics()}

    def close(self) -> None:
        getattr(self.inner, "close", lambda: None)()
        self.cache.close()


def open_cache(cfg, default_on: bool) -> QueryCache | None:
    """The cache `cfg` (a `CacheConfig`) asks for; `default_on` is what mode `auto` means here."""
    if cfg.mode == "disabled" or (cfg.mode == "auto" and not default_on):
        return None
    return QueryCache(cfg.path or default_cache_path(), replay=cfg.mode == "replay", busy_timeout_s=cfg.busy_timeout_s)
