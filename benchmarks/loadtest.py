"""Load test: many requests at high concurrency against a running `searchr1 serve`; zero errors expected.

    python benchmarks/loadtest.py                                   # 20,000 requests, 64 clients, BM25 on wiki18_mini
    python benchmarks/loadtest.py --method dense --requests 5000
    python benchmarks/loadtest.py --url http://host:8000            # an already running server

Without --url it starts `searchr1 serve` on 127.0.0.1 over the cached wiki18_mini index of
benchmarks/retrieval.py (built by that script; run it first) or over --index. Queries are NQ dev
questions, one per request, as rollout workers send them. Exit status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import CACHE, SHARED_DATA, machine, run_load, table, vm_hwm_mib  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="", help="server to test; default: start one")
    p.add_argument("--index", type=Path, default=CACHE / "wiki18_mini")
    p.add_argument("--method", default="bm25")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--topk", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from searchr1.data.qa import read_qa
    from searchr1.retrieval.process import ServerProcess

    questions = [r["question"] for r in read_qa(SHARED_DATA / "nq" / "NQ-open.dev.jsonl")]
    batches = [[questions[i % len(questions)]] for i in range(args.requests)]
    server = None
    url = args.url
    if not url:
        if not (args.index / "index.json").exists():
            print(f"no index at {args.index}: run benchmarks/retrieval.py first or pass --index/--url")
            return 2
        server = ServerProcess([f"retriever.index={args.index}", f"retriever.method={args.method}", "server.port=0"])
        url = server.start()
    try:
        run_load(url.rstrip("/") + "/retrieve", batches[:200], 16)  # warm-up
        res = run_load(url.rstrip("/") + "/retrieve", batches, args.concurrency, args.topk)
        rss = vm_hwm_mib(server.proc.pid) if server else float("nan")
    finally:
        if server:
            server.stop()
    print(f"# searchr1 load test — {machine()} — {url} ({args.method if server else 'external'})")
    print(table("load test", ["requests", "concurrency", "errors", "seconds", "requests/s", "p50 ms", "p99 ms",
                              "max ms", "server peak RSS MiB"],
                [[res.requests, args.concurrency, res.errors, res.seconds, res.qps, res.pct(50), res.pct(99),
                  res.pct(100), rss]]))
    for e in res.error_samples:
        print("error:", e)
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
