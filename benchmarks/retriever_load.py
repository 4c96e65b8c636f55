"""Load test of the server's queue bound: the HTTP client's retries against a deliberately slow backend.

    python benchmarks/retriever_load.py                         # 64 clients x 10 searches, 50 ms per batch
    python benchmarks/retriever_load.py --clients 128 --searches 20 --bounds 16 64 1000000

The server runs in its own process over a backend that sleeps `--delay-ms` per search call and
searches at most `--batch` queries per call, so it serves far fewer queries per second than the
clients ask for. Each client is an `HttpRetriever` (the one rollouts use: timeout, retries with
backoff, Retry-After honoured) sending one query per search, as rollout workers do. For each
queue bound (`server.max_queue_queries`) the table shows the deepest the queue got, the requests
refused with 503 (queue full) or dropped for waiting longer than the client's timeout, the
searches served and failed (after the client's retries), and the latency of a search, retries
included. A bound keeps the queue depth at or under it however many clients wait.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import machine, table  # noqa: E402


class SlowBackend:
    """A retriever whose every search call takes `delay_s`, whatever its size."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def search(self, queries, k):
        from searchr1.retrieval.base import Hit

        time.sleep(self.delay_s)
        return [[Hit(str(i), "T", q, 1.0) for i in range(k)] for q in queries]


def _serve(delay_s: float, overrides: dict, urls) -> None:
    from searchr1.retrieval.server import BackgroundServer
    from searchr1.retrieval.settings import ServerConfig

    with BackgroundServer(SlowBackend(delay_s), ServerConfig(port=0, **overrides)) as url:
        urls.put(url)
        threading.Event().wait()  # until the parent terminates this process


def run_bound(bound: int, args) -> list:
    from searchr1.errors import RetrieverError
    from searchr1.retrieval.client import HttpRetriever

    ctx = mp.get_context("spawn")
    urls = ctx.Queue()
    server = ctx.Process(target=_serve, daemon=True, args=(args.delay_ms / 1000, {
        "max_batch_queries": args.batch, "max_queue_queries": bound, "queue_timeout_s": args.timeout_s}, urls))
    server.start()
    url = urls.get(timeout=120)
    latencies: list[float] = []
    failed = attempts = 0
    lock = threading.Lock()

    def client(i: int) -> None:
        nonlocal failed, attempts
        with HttpRetriever(url, timeout_s=args.timeout_s, retries=args.retries, backoff_s=args.backoff_s,
                           seed=i) as r:
            for j in range(args.searches):
                t = time.perf_counter()
                try:
                    r.search([f"client {i} query {j}"], 3)
                    with lock:
                        latencies.append(time.perf_counter() - t)
                except RetrieverError:
                    with lock:
                        failed += 1
            with lock:
                attempts += r.attempts

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    with HttpRetriever(url) as r:
        health = r.health()
    server.terminate()
    server.join()
    stats = health["batching"]
    xs = sorted(latencies)

    def pct(p: float) -> float:
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")

    return [f"{bound:,}", stats["max_queued_queries"], stats["rejected_full"], stats["dropped_stale"],
            len(latencies), failed, attempts, pct(50), pct(95), seconds]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--searches", type=int, default=10, help="searches per client")
    p.add_argument("--delay-ms", type=float, default=50.0, help="the backend's time per search call")
    p.add_argument("--batch", type=int, default=4, help="server.max_batch_queries")
    p.add_argument("--bounds", type=int, nargs="+", default=[16, 1_000_000], help="server.max_queue_queries values")
    p.add_argument("--timeout-s", type=float, default=2.0, help="client timeout = server.queue_timeout_s")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--backoff-s", type=float, default=0.5)
    args = p.parse_args()
    rows = [run_bound(bound, args) for bound in args.bounds]
    print(table(f"Queue bound under overload: {args.clients} clients x {args.searches} searches, backend "
                f"{args.delay_ms:g} ms per call of <= {args.batch} queries, client timeout {args.timeout_s:g} s, "
                f"{args.retries} retries ({machine()})",
                ["max_queue_queries", "queue depth max", "503 (full)", "dropped (stale)", "served", "failed",
                 "client attempts", "p50 s", "p95 s", "wall s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
