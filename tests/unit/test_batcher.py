"""searchr1.retrieval.batcher.MicroBatcher with a fake search function that records its calls."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from searchr1.retrieval.base import Hit
from searchr1.retrieval.batcher import MicroBatcher


class FakeSearch:
    """Returns k hits per query whose ids name the query; raises on the query "boom"."""

    def __init__(self, delay_s: float = 0.01):
        self.delay_s = delay_s
        self.calls: list[tuple[list[str], int]] = []
        self._lock = threading.Lock()

    def __call__(self, queries, k):
        with self._lock:
            self.calls.append((list(queries), k))
        time.sleep(self.delay_s)
        if "boom" in queries:
            raise RuntimeError("poisoned query")
        return [[Hit(f"{q}#{j}", q, "", float(-j)) for j in range(k)] for q in queries]


def ids(rows):
    return [[h.doc_id for h in row] for row in rows]


def run(coro_fn, fake, **kw):
    """Start a batcher around `fake`, run `coro_fn(batcher)`, always stop the batcher.

    A request that is never answered fails the test after a few seconds instead of hanging it.
    """

    async def main():
        batcher = MicroBatcher(fake, **kw)
        await batcher.start()
        try:
            return await asyncio.wait_for(coro_fn(batcher), timeout=10), batcher
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_are_merged_and_each_caller_gets_its_own_results():
    fake = FakeSearch()
    queries = [f"q{i}" for i in range(20)]

    async def go(b):
        return await asyncio.gather(*(b.search([q], 2) for q in queries))

    results, batcher = run(go, fake)
    for q, rows in zip(queries, results):
        assert ids(rows) == [[f"{q}#0", f"{q}#1"]]
    assert len(fake.calls) < len(queries)
    assert sorted(q for call, _ in fake.calls for q in call) == sorted(queries)
    assert batcher.stats.requests == 20 and batcher.stats.queries == 20
    assert batcher.stats.search_calls == len(fake.calls)


def test_multi_query_request_keeps_its_rows_in_order():
    fake = FakeSearch()

    async def go(b):
        return await asyncio.gather(b.search(["a", "b", "c"], 1), b.search(["d"], 1), b.search(["e", "f"], 1))

    results, _ = run(go, fake)
    assert [ids(r) for r in results] == [[["a#0"], ["b#0"], ["c#0"]], [["d#0"]], [["e#0"], ["f#0"]]]


def test_poisoned_query_fails_only_its_own_request():
    fake = FakeSearch()

    async def go(b):
        return await asyncio.gather(b.search(["a"], 1), b.search(["boom"], 1), b.search(["c"], 1),
                                    return_exceptions=True)

    (a, boom, c), batcher = run(go, fake)
    assert ids(a) == [["a#0"]]
    assert ids(c) == [["c#0"]]
    assert isinstance(boom, RuntimeError) and str(boom) == "poisoned query"
    assert batcher.stats.failed_requests == 1
    # the failing merged call is followed by one call per request to isolate the bad one
    assert (["boom"], 1) in fake.calls
    assert any(len(call) > 1 and "boom" in call for call, _ in fake.calls)


def test_batcher_keeps_serving_after_a_failure():
    fake = FakeSearch()

    async def go(b):
        with pytest.raises(RuntimeError):
            await b.search(["boom"], 1)
        return await b.search(["after"], 1)

    result, _ = run(go, fake)
    assert ids(result) == [["after#0"]]


def test_different_k_values_are_searched_separately():
    fake = FakeSearch()

    async def go(b):
        return await asyncio.gather(b.search(["a"], 1), b.search(["b"], 3), b.search(["c"], 1), b.search(["d"], 3))

    results, _ = run(go, fake)
    assert [len(r[0]) for r in results] == [1, 3, 1, 3]
    assert ids(results[1]) == [["b#0", "b#1", "b#2"]]
    for queries, k in fake.calls:
        expected = {"a": 1, "c": 1, "b": 3, "d": 3}
        assert all(expected[q] == k for q in queries)
    # all four arrived together, so each k value is one call
    assert sorted((tuple(q), k) for q, k in fake.calls) == [(("a", "c"), 1), (("b", "d"), 3)]


def test_max_batch_queries_is_respected():
    fake = FakeSearch()

    async def go(b):
        return await asyncio.gather(*(b.search([f"q{i}"], 1) for i in range(10)))

    results, batcher = run(go, fake, max_batch_queries=4)
    assert [ids(r) for r in results] == [[[f"q{i}#0"]] for i in range(10)]
    assert all(len(q) <= 4 for q, _ in fake.calls)
    assert len(fake.calls) >= 3
    assert batcher.stats.largest_batch <= 4


def test_lone_client_never_waits_for_stragglers():
    fake = FakeSearch(delay_s=0.0)

    async def go(b):
        for q in ("a", "b", "c"):
            # max_wait_ms is 5 s: if a lone request waited for company this would time out
            await asyncio.wait_for(b.search([q], 1), timeout=2.0)
        return None

    run(go, fake, max_wait_ms=5000)
    assert [q for q, _ in fake.calls] == [["a"], ["b"], ["c"]]


def test_search_before_start_is_an_error():
    async def go():
        return await MicroBatcher(FakeSearch()).search(["a"], 1)

    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(go())


def test_stats_as_dict():
    fake = FakeSearch()

    async def go(b):
        return await asyncio.gather(*(b.search([f"q{i}"], 1) for i in range(6)))

    _, batcher = run(go, fake)
    d = batcher.stats.as_dict()
    assert d["requests"] == 6 and d["queries"] == 6
    assert d["search_calls"] == len(fake.calls)
    assert d["mean_queries_per_call"] == round(6 / len(fake.calls), 2)
    assert d["failed_requests"] == 0


def test_merged_requests_do_not_exceed_max_batch_queries():
    # Two 3-query requests with a limit of 4 must not be merged into one 6-query call.
    fake = FakeSearch()

    async def go(b):
        return await asyncio.gather(b.search(["a", "b", "c"], 1), b.search(["d", "e", "f"], 1),
                                    b.search(["g"], 1))

    results, _ = run(go, fake, max_batch_queries=4)
    assert [ids(r) for r in results] == [[["a#0"], ["b#0"], ["c#0"]], [["d#0"], ["e#0"], ["f#0"]], [["g#0"]]]
    assert [q for q, _ in fake.calls] == [["a", "b", "c"], ["d", "e", "f", "g"]]


def test_single_request_larger_than_max_batch_queries_is_searched_whole():
    fake = FakeSearch()

    async def go(b):
        return await b.search([f"q{i}" for i in range(6)], 1)

    result, _ = run(go, fake, max_batch_queries=4)
    assert len(result) == 6
    assert [len(q) for q, _ in fake.calls] == [6]


# ----------------------------------------------------------------------------- bounds (issue 24)


class Gate:
    """A search that blocks until released, so requests can be made to wait in the queue."""

    def __init__(self):
        self.open = threading.Event()
        self.calls: list[list[str]] = []

    def __call__(self, queries, k):
        self.calls.append(list(queries))
        assert self.open.wait(10)
        return [[Hit(q, q, "", 0.0)] for q in queries]


def test_a_full_queue_refuses_at_once_and_the_batcher_serves_on():
    from searchr1.retrieval.batcher import QueueFull

    gate = Gate()

    async def go(b):
        first = asyncio.create_task(b.search(["a"], 1))  # taken into a batch: the search blocks
        while not gate.calls:
            await asyncio.sleep(0.001)
        queued = [asyncio.create_task(b.search([q], 1)) for q in ("b", "c")]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.search(["d"], 1)
        depth = b.queued_queries
        gate.open.set()
        done = await asyncio.gather(first, *queued)
        return depth, done, await b.search(["e"], 1)

    (depth, done, after), batcher = run(go, gate, max_queue_queries=2)
    assert depth == 2
    assert [ids(r) for r in done] == [[["a"]], [["b"]], [["c"]]]
    assert ids(after) == [["e"]]
    assert (batcher.stats.rejected_full, batcher.stats.max_queued_queries) == (1, 2)


def test_an_empty_queue_takes_a_request_larger_than_the_bound():
    async def go(b):
        return await b.search(["a", "b", "c"], 1)

    rows, _ = run(go, FakeSearch(0), max_queue_queries=2)
    assert len(rows) == 3


def test_requests_older_than_max_age_are_dropped_unsearched():
    from searchr1.retrieval.batcher import QueueTimeout

    gate = Gate()

    async def go(b):
        first = asyncio.create_task(b.search(["a"], 1))
        while not gate.calls:
            await asyncio.sleep(0.001)
        late = asyncio.create_task(b.search(["stale"], 1))
        await asyncio.sleep(0.15)  # longer than max_age_s: its client has given up
        gate.open.set()
        await first
        with pytest.raises(QueueTimeout):
            await late

    _, batcher = run(go, gate, max_age_s=0.05)
    assert gate.calls == [["a"]]
    assert batcher.stats.dropped_stale == 1


class Fatal(BaseException):
    """Not an Exception: the batcher's error handling does not catch it, and its task dies."""


def test_a_dead_batching_task_is_reported_and_fails_waiting_requests():
    from searchr1.retrieval.batcher import BatcherStopped

    def fatal(queries, k):
        raise Fatal()

    async def go(b):
        assert b.alive
        with pytest.raises(BatcherStopped):
            await b.search(["a"], 1)
        assert not b.alive
        with pytest.raises(BatcherStopped):
            await b.search(["b"], 1)

    run(go, fatal)
