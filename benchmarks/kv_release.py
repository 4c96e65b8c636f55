"""Resident memory across rollout sessions: is each session's KV cache given back when it closes?

    python benchmarks/kv_release.py --baseline e079592

An evaluation opens one engine session per dataset (a training run, one per step). Each session
grows its own KV cache (`searchr1.rollout.kv.SlotCache`) and drops it when it closes. This script
plays --prompts rounds, one session each: --pool rows of random token ids (the round's prompt
length, plus up to 200), each sampling 8-24 new tokens. After each round it reads the process's
resident memory (VmRSS) and its peak so far (VmHWM), beside the round's cache size by
`searchr1.rollout.memory.cache_bytes`. Each arm runs in a fresh process, one after another: this
checkout, and with --baseline COMMIT the same script against that commit's `src/` (a temporary git
worktree), so the two arms differ only in the library. Memory, not time, is measured: the machine
need not be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine, save_json, table, vm_mib  # noqa: E402

GB = 1e9


def _status() -> tuple[float, float]:
    """This process's resident memory now and its peak so far, in GB."""
    return vm_mib("self", "VmRSS") * 2**20 / GB, vm_mib("self", "VmHWM") * 2**20 / GB


def child(args) -> None:
    """One arm: print a JSON line per round (and one after loading the model)."""
    from searchr1.allocator import tune_malloc

    tune_malloc()  # as the CLI does
    import torch

    from searchr1.rollout.engine import EngineGenerator
    from searchr1.rollout.generator import SamplingParams
    from searchr1.rollout.memory import cache_bytes, kv_bytes_per_token

    torch.set_num_threads(args.threads)
    gen = EngineGenerator.from_pretrained(args.model, device="cpu", dtype="float32")
    per_token = kv_bytes_per_token(gen.model.config, torch.float32)
    rss, peak = _status()
    print(json.dumps({"round": "loaded", "rss_gb": rss, "peak_gb": peak}), flush=True)
    rng = random.Random(0)
    for i, length in enumerate(args.prompts):
        prompts = [[rng.randrange(100, 40_000) for _ in range(length + rng.randrange(200))] for _ in range(args.pool)]
        budgets = [rng.randrange(8, 25) for _ in prompts]
        session = gen.session(prompts, SamplingParams(temperature=1.0, seed=i))
        for row, (p, b) in enumerate(zip(prompts, budgets)):
            session.submit(row, p, max_new_tokens=b)
        live = set(range(args.pool))
        while live:
            live -= set(session.step())
        session.finish(range(args.pool))
        session.close()
        del session
        longest = max(len(p) + b for p, b in zip(prompts, budgets))
        rss, peak = _status()
        print(json.dumps({"round": i + 1, "prompt": length, "cache_gb": cache_bytes(args.pool, longest, per_token) / GB,
                          "rss_gb": rss, "peak_gb": peak}), flush=True)


def run_arm(args, src: Path) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--pool", str(args.pool), "--threads",
           str(args.threads), "--prompts", ",".join(map(str, args.prompts))]
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the arm on {src} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--pool", type=int, default=16, help="rows of each session (an evaluation's eval.batch_size)")
    p.add_argument("--prompts", type=lambda s: [int(x) for x in s.split(",")], default=[300, 700, 400],
                   help="each round's prompt length in tokens (plus up to 200)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline", help="a git commit to run the same rounds against")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kv_release.json")
    args = p.parse_args()
    if args.child:
        return child(args)

    print(f"# resident memory across rollout sessions — {machine()}; {args.model}, fp32, pool {args.pool}")
    arms = {"this checkout": run_arm(args, REPO / "src")}
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.baseline],
                           check=True)
            try:
                arms[f"baseline {args.baseline}"] = run_arm(args, tree / "src")
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    rows = []
    for name, records in arms.items():
        for r in records:
            rows.append([name, r["round"], r.get("prompt", ""), round(r.get("cache_gb", 0.0), 2),
                         round(r["rss_gb"], 2), round(r["peak_gb"], 2)])
    print(table("resident memory after each session closes (GB)",
                ["arm", "round", "prompt tokens", "its KV cache", "RSS after", "peak so far"], rows))
    save_json(args.out, {"machine": machine(), "model": args.model, "pool": args.pool, "prompts": args.prompts,
                         "arms": arms})


if __name__ == "__main__":
    main()
