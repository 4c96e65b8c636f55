"""searchr1.retrieval.cache: keys, first-writer-wins, hit/miss counts, replay mode, and two writer
processes on one SQLite file at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from searchr1.retrieval.base import Hit
from searchr1.retrieval.cache import CachedRetriever, CacheMissError, QueryCache, default_cache_path, normalize_query, open_cache
from searchr1.retrieval.settings import CacheConfig


class Counting:
    """A retriever whose passages name the query and a version; counts the queries it was asked."""

    def __init__(self, version: str = "v1") -> None:
        self.version = version
        self.asked: list[str] = []
        self.method = "counting"

    def search(self, queries, k):
        self.asked += list(queries)
        return [[Hit(f"{q}-{i}", f"T{i}", f"{q} {self.version}", 1.0 / (i + 1), None) for i in range(k)]
                for q in queries]


def test_normalize_query():
    assert normalize_query("  Who  WROTE\tHamlet ") == "who wrote hamlet"
    assert normalize_query("ﬁle Ａ") == "file a"  # NFKC: ligature and full-width letter
    assert normalize_query("Straße") == "strasse"  # casefold, not lower


def test_hits_and_misses_are_counted_and_entries_keyed_by_k_and_namespace(tmp_path):
    cache = QueryCache(tmp_path / "c.sqlite")
    inner = Counting()
    r = CachedRetriever(inner, cache, "ns-a")
    first = r.search(["Who wrote Hamlet", "capital of France"], 2)
    again = r.search(["who wrote  hamlet", "capital of france", "new one"], 2)
    assert inner.asked == ["Who wrote Hamlet", "capital of France", "new one"]
    assert again[:2] == first  # the normalised query found the stored hits, exactly
    assert again[0][0] == Hit("Who wrote Hamlet-0", "T0", "Who wrote Hamlet v1", 1.0)
    assert r.metrics() == {"search/cache_hits": 2.0, "search/cache_misses": 3.0}
    r.search(["capital of france"], 3)  # another k is another entry
    CachedRetriever(inner, cache, "ns-b").search(["capital of france"], 2)  # another backend too
    assert inner.asked[-2:] == ["capital of france", "capital of france"]
    assert len(cache) == 5


def test_raw_contents_and_scores_survive_the_round_trip(tmp_path):
    hit = Hit("d1", "Title", "text", 0.123456789, raw_contents='"Title"\ntext')
    cache = QueryCache(tmp_path / "c.sqlite")
    cache.put_many("ns", ["q"], 1, [[hit]])
    assert cache.get_many("ns", ["Q"], 1) == [[hit]]
    assert cache.get_many("ns", ["Q"], 1)[0][0].contents == '"Title"\ntext'


def test_the_first_writer_wins_and_everyone_returns_the_stored_entry(tmp_path):
    path = tmp_path / "c.sqlite"
    a = CachedRetriever(Counting("from-a"), QueryCache(path), "ns")
    b_cache = QueryCache(path)
    assert a.search(["q"], 1)[0][0].text == "q from-a"
    # b missed the same query before a's write landed (simulated by writing directly): it gets a's entry
    assert b_cache.put_many("ns", ["q"], 1, [[Hit("x", "x", "q from-b", 1.0)]])[0][0].text == "q from-a"


def test_replay_answers_from_the_cache_and_a_miss_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedRetriever(Counting(), QueryCache(path), "serper").search(["known"], 2)
    inner = Counting()
    replay = CachedRetriever(inner, QueryCache(path, replay=True), "serper")
    assert replay.search(["KNOWN"], 2)[0][0].text == "known v1"
    with pytest.raises(CacheMissError, match=r"replay mode: 'unknown' \(k=2\) for serper is not in the query cache"):
        replay.search(["known", "unknown"], 2)
    with pytest.raises(CacheMissError):
        replay.search(["known"], 3)
    assert inner.asked == []  # replay never calls the backend
    with pytest.raises(CacheMissError, match="does not exist"):
        QueryCache(tmp_path / "absent.sqlite", replay=True)


def test_the_file_is_in_wal_mode(tmp_path):
    cache = QueryCache(tmp_path / "c.sqlite")
    cache.put_many("ns", ["q"], 1, [[]])
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_open_cache_modes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "searchr1" / "search-cache.sqlite"
    assert open_cache(CacheConfig(mode="auto"), default_on=False) is None
    assert open_cache(CacheConfig(mode="disabled"), default_on=True) is None
    on = open_cache(CacheConfig(mode="auto"), default_on=True)
    assert on.path == default_cache_path() and not on.replay
    explicit = open_cache(CacheConfig(mode="enabled", path=str(tmp_path / "x.sqlite")), default_on=False)
    assert explicit.path == tmp_path / "x.sqlite"


def _writer(path: str, worker: int, n: int, barrier) -> None:
    cache = QueryCache(path, busy_timeout_s=60)
    barrier.wait()
    for i in range(n):
        # both workers write the shared queries (s*) and their own (w<worker>-*), one batch at a time
        queries = [f"s{i}", f"w{worker}-{i}"]
        stored = cache.put_many("ns", queries, 1, [[Hit(q, q, f"by {worker}", 1.0)] for q in queries])
        assert stored[1][0].text == f"by {worker}"
        assert cache.get_many("ns", [f"s{i}"], 1)[0] == stored[0]
    cache.close()


def test_two_writer_processes_at_once(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    n = 150
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, w, n, barrier)) for w in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = QueryCache(path)
    assert len(cache) == 3 * n  # n shared entries (one writer won each) + n own entries per worker
    shared = cache.get_many("ns", [f"s{i}" for i in range(n)], 1)
    assert all(h[0].text in ("by 0", "by 1") for h in shared)
    own = cache.get_many("ns", [f"w{w}-{i}" for w in (0, 1) for i in range(n)], 1)
    assert [h[0].text for h in own] == ["by 0"] * n + ["by 1"] * n
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
