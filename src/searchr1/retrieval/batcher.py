"""Dynamic micro-batching: concurrent search requests share one retriever call.

Rollout workers typically send one query per request. Encoding and searching 32 queries at once
costs little more than one query, so the server queues requests and a single worker drains the
queue: whatever arrived while the previous batch was being searched becomes the next batch. Under
low load a request is searched immediately (no added latency); under high load batches grow by
themselves, up to `max_batch_queries`. While requests are arriving concurrently, a non-full batch
is additionally held open for up to `max_wait_ms` to collect the clients that are about to send.

The queue is bounded: past `max_queue_queries` waiting queries a request is refused at once
(`QueueFull`, HTTP 503 with Retry-After), so retries from clients that time out cannot pile up.
A request that waited longer than `max_age_s` is dropped unsearched (`QueueTimeout`): its client
has given up, and searching it would only delay the requests behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from searchr1.retrieval.base import Hit

SearchFn = Callable[[Sequence[str], int], list[list[Hit]]]
log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More queries wait than the batcher's bound: the request is refused, to be retried later."""


class QueueTimeout(Exception):
    """The request waited in the queue longer than its client waits for an answer."""


class BatcherStopped(RuntimeError):
    """The batching task is not running (stopped, or died): nothing will be searched."""


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: asyncio.Future
    queued_at: float


@dataclass
class BatchStats:
    requests: int = 0
    queries: int = 0
    batches: int = 0
    search_calls: int = 0
    largest_batch: int = 0
    failed_requests: int = 0
    busy_seconds: float = 0.0
    rejected_full: int = 0  # requests refused because the queue was full
    dropped_stale: int = 0  # requests dropped after waiting longer than max_age_s
    max_queued_queries: int = 0  # the deepest the queue has been, in queries

    def as_dict(self) -> dict:
        mean = self.queries / self.search_calls if self.search_calls else 0.0
        return {
            "requests": self.requests,
            "queries": self.queries,
            "batches": self.batches,
            "search_calls": self.search_calls,
            "mean_queries_per_call": round(mean, 2),
            "largest_batch": self.largest_batch,
            "failed_requests": self.failed_requests,
            "busy_seconds": round(self.busy_seconds, 3),
            "rejected_full": self.rejected_full,
            "dropped_stale": self.dropped_stale,
            "max_queued_queries": self.max_queued_queries,
        }


class MicroBatcher:
    def __init__(self, search: SearchFn, max_batch_queries: int = 256, max_wait_ms: float = 0.0,
                 max_queue_queries: int | None = None, max_age_s: float | None = None):
        self._search = search
        self.max_batch_queries = max_batch_queries
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_queries = max_queue_queries
        self.max_age_s = max_age_s
        self.queued_queries = 0  # queries waiting, not yet taken into a batch
        self.stats = BatchStats()
        self._last_requests = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._held: _Pending | None = None  # a request that did not fit the previous batch
        # One search thread: the retriever parallelises inside (BLAS, faiss, torch threads).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="searchr1-search")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="searchr1-batcher")
        self._task.add_done_callback(_log_death)

    @property
    def alive(self) -> bool:
        """The batching task is running (False before start, and after it died or was stopped)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except BaseException:  # noqa: BLE001 - it died earlier; _log_death logged why
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        if not self.alive:
            raise BatcherStopped("the batching task has stopped")
        n = len(queries)
        # An empty queue takes any request, so one larger than the bound is not refused forever.
        if self.max_queue_queries is not None and self.queued_queries and \
                self.queued_queries + n > self.max_queue_queries:
            self.stats.rejected_full += 1
            raise QueueFull(f"{self.queued_queries} queries are waiting (server.max_queue_queries="
                            f"{self.max_queue_queries})")
        future = asyncio.get_running_loop().create_future()
        self.queued_queries += n
        self.stats.max_queued_queries = max(self.stats.max_queued_queries, self.queued_queries)
        self._queue.put_nowait(_Pending(list(queries), k, future, time.monotonic()))
        return await future

    def _take(self, item: _Pending) -> _Pending:
        self.queued_queries -= len(item.queries)
        return item

    def _stale(self, p: _Pending, now: float) -> bool:
        if self.max_age_s is None or now - p.queued_at <= self.max_age_s:
            return False
        self.stats.dropped_stale += 1
        if not p.future.done():
            p.future.set_exception(QueueTimeout(f"waited more than {self.max_age_s:g} s in the queue"))
        return True

    async def _collect(self) -> list[_Pending]:
        assert self._queue is not None
        held, self._held = self._held, None
        batch = [held if held is not None else self._take(await self._queue.get())]
        n = len(batch[0].queries)
        # Wait for stragglers only under concurrent load (the last batch merged several requests):
        # when a batch completes, its clients' next requests arrive over the following
        # milliseconds, and searching the first one alone would split the load into a small and a
        # large batch. A lone client never waits.
        wait = self.max_wait if self._last_requests > 1 else 0.0
        deadline = time.monotonic() + wait
        while n < self.max_batch_queries:
            try:
                item = self._take(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._take(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            if n + len(item.queries) > self.max_batch_queries:
                self._held = item  # it starts the next batch, so this one stays within the limit
                break
            batch.append(item)
            n += len(item.queries)
        self._last_requests = len(batch)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Pending] = []
        try:
            while True:
                collected = await self._collect()
                now = time.monotonic()
                # drop requests whose client disconnected or has given up waiting
                batch = [p for p in collected if not p.future.done() and not self._stale(p, now)]
                if not batch:
                    continue
                self.stats.batches += 1
                by_k: dict[int, list[_Pending]] = {}
                for p in batch:
                    by_k.setdefault(p.k, []).append(p)
                for k, group in by_k.items():
                    await self._serve_group(loop, group, k)
        finally:
            # Stopped or died: nobody will answer what is still waiting, so answer it now.
            self._fail_waiting(batch)

    def _fail_waiting(self, batch: list[_Pending]) -> None:
        waiting = list(batch) + ([self._held] if self._held is not None else [])
        self._held = None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._take(self._queue.get_nowait()))
        for p in waiting:
            if not p.future.done():
                p.future.set_exception(BatcherStopped("the batching task has stopped"))

    async def _serve_group(self, loop, group: list[_Pending], k: int) -> None:
        queries = [q for p in group for q in p.queries]
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._search, queries, k)
        except Exception as exc:  # noqa: BLE001 - the error goes back to the requests
            self._note_call(len(queries), start)
            if len(group) > 1:
                # Isolate the request that broke the batch: retry each one alone.
                for p in group:
                    await self._serve_group(loop, [p], k)
                return
            self.stats.requests += 1
            self.stats.failed_requests += 1
            if not group[0].future.done():
                group[0].future.set_exception(exc)
            return
        self._note_call(len(queries), start)
        self.stats.requests += len(group)
        self.stats.queries += len(queries)
        pos = 0
        for p in group:
            n = len(p.queries)
            if not p.future.done():
                p.future.set_result(results[pos : pos + n])
            pos += n

    def _note_call(self, n_queries: int, start: float) -> None:
        s = self.stats
        s.busy_seconds += time.perf_counter() - start
        s.search_calls += 1
        s.largest_batch = max(s.largest_batch, n_queries)


def _log_death(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("the batching task died (%s: %s); /health now fails", type(exc).__name__, exc)
