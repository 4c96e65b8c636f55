"""Shared pieces of the benchmark scripts: load generation, child-process measurement, tables."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The cpu-demo's chain GRPO settings (16 chains a step, 2 mini-batches of 8, KL loss 0.001) before it moved
#: to tree rollouts and dropped the KL (2026-12-07): the benchmarks whose committed results ran with them
#: pin them, so they run the same settings.
CHAIN_GRPO_DEMO = ["train.algorithm=grpo", "train.rollout_tree=0", "train.group_size=4", "train.mini_batch_size=8",
                   "train.kl.coef=0.001"]
CACHE = REPO / "benchmarks" / ".cache"
SHARED_DATA = Path(os.environ.get("SEARCHR1_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class LoadResult:
    requests: int
    queries: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    error_samples: list[str] = field(default_factory=list, repr=False)

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def _run_load(url: str, batches: Sequence[list[str]], concurrency: int, topk: int, timeout_s: float,
                    max_seconds: float) -> LoadResult:
    # aiohttp, not httpx, generates the load: httpx's async client spends ~3 ms of CPU per request
    # here (aiohttp ~0.2 ms), which on 2 cores would measure the client instead of the server.
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(batches) and time.perf_counter() < deadline:
                queries = batches[next_index]
                next_index += 1
                body = json.dumps({"queries": queries, "topk": topk, "return_scores": True})
                t = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        payload = await r.read()
                        ok = r.status == 200 and len(json.loads(payload)["result"]) == len(queries)
                        if not ok:
                            errors.append(f"HTTP {r.status}: {payload[:200]!r}")
                except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the run
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                if ok:
                    latencies.append((time.perf_counter() - t) * 1000)

        start = time.perf_counter()
        deadline = start + max_seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    sent = batches[:next_index]
    return LoadResult(len(sent), sum(len(b) for b in sent), len(errors), seconds, latencies, errors[:5])


def run_load(url: str, batches: Sequence[list[str]], concurrency: int, topk: int = 3,
             timeout_s: float = 120.0, max_seconds: float = float("inf")) -> LoadResult:
    """Closed loop: `concurrency` clients, each sends its next request as soon as the last returns.

    Stops issuing requests after `max_seconds` (requests in flight complete and are counted).
    """
    return asyncio.run(_run_load(url, batches, concurrency, topk, timeout_s, max_seconds))


def median_run(fn, repeats: int) -> LoadResult:
    """Run `fn()` `repeats` times and return the run with the median throughput."""
    runs = sorted((fn() for _ in range(repeats)), key=lambda r: r.qps)
    return runs[len(runs) // 2]


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS of that child in MiB, stdout)."""
    start = time.perf_counter()
    out_path = CACHE / f".child-{os.getpid()}.out"
    err_path = CACHE / f".child-{os.getpid()}.err"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    out_path.unlink()
    err_path.unlink()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, stdout  # ru_maxrss is KiB on Linux


def dir_size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def vm_mib(pid: int | str, field: str) -> float:
    """A memory line of a running process's /proc status (VmRSS: resident now, VmHWM: its peak), in MiB
    (Linux; pid "self" for this process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_hwm_mib(pid: int) -> float:
    """Peak resident memory of a running process (Linux)."""
    return vm_mib(pid, "VmHWM")


def table(title: str, headers: list[str], rows: list[list]) -> str:
    def fmt(x) -> str:
        if isinstance(x, float):
            return f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)

    cells = [[fmt(x) for x in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
            for r in cells]
    return "\n".join([f"\n### {title}\n", line, sep, *body])


def machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def save_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))



def matmul_peak(dtype: str = "bfloat16", rows: int = 2048, d_in: int = 576, d_out: int = 1536,
                seconds: float = 1.0) -> float:
    """FLOP/s of F.linear [rows, d_in] x [d_in, d_out] in `dtype` on the CPU with torch's current
    threads: the best of three timed windows of about `seconds` each (after a warm-up call). The
    default shape is SmolLM2-135M's MLP up-projection over a large batch of tokens."""
    import torch

    dt = getattr(torch, dtype)
    x, w = torch.randn(rows, d_in, dtype=dt), torch.randn(d_out, d_in, dtype=dt)
    torch.nn.functional.linear(x, w)
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.nn.functional.linear(x, w)
            n += 1
        best = max(best, 2 * rows * d_in * d_out * n / elapsed)
    return best
