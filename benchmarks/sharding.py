"""Memory per process and time per step of data-parallel training under each sharding stage.

    python benchmarks/sharding.py                        # SmolLM2-135M, full fine-tuning, 2 processes
    python benchmarks/sharding.py --batch 4 --prompt-len 16 --response-len 32 --repeats 1   # smoke test

Each row is one launch of `searchr1.train.learner.Learner.learn` on the synthetic batches of
`benchmarks/train_step.py` (GRPO, B sequences in groups of 4, P prompt + R response tokens with an
injected block, AdamW, KL 0.001 so the frozen reference is kept, one optimizer step per batch, fp32,
CPU/gloo):

    1 process       the baseline: one process, the whole batch, --threads threads
    none (DDP)      --nproc processes under torchrun, each holding the whole model, gradients and
                    AdamW state; each computes 1/N of every forward and backward
    zero1/2/3       the same with `train.compute.sharding` zero1 (AdamW state split), zero2 (+ gradients
                    and weights, FSDP2), zero3 (+ weights resharded after every layer's forward)

Reported: seconds per step (median of --repeats after one warm-up; every rank waits at a barrier
before and after, so the slowest rank counts) and, per process (the largest rank): the peak
resident memory during the steps (Linux VmHWM, reset after the models and optimizer are built:
loading is excluded, where every rank briefly holds the whole model before sharding it), and the
resident memory after the steps (what the training state occupies; freed heap is first handed back
to the OS with glibc's malloc_trim, so that it counts live memory). The columns "x DDP" divide by
the DDP row of the same run.

On a CPU the processes share the machine's cores (each gets --threads / N threads), so the time
column shows the cost of the communication and bookkeeping, not a speed-up; the memory columns are
what sharding is for.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import machine, save_json, table  # noqa: E402
from train_step import KL_COEF, LR, MAX_GRAD_NORM, WEIGHT_DECAY, Synthetic, _load, _rss_mib

ROWS = {"1 process": ("none", 1), "none (DDP)": ("none", 0), "zero1": ("zero1", 0), "zero2": ("zero2", 0),
        "zero3": ("zero3", 0)}  # name -> (sharding, processes; 0 = --nproc)


def _trim() -> None:
    """Return freed heap memory to the OS (glibc), so that resident memory tracks live tensors: the
    whole model each rank loaded before sharding it would otherwise stay resident as free heap."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS includes freed heap
        pass


def _reset_peak() -> bool:
    """Restart the kernel's peak-RSS count (Linux: VmHWM), so that the peak of the training steps is
    not the peak of loading the model (every rank loads it whole; the offline copies are dequantised)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    """One rank of one row (or the whole 1-process row): writes the per-rank results on rank 0."""
    import torch

    from searchr1.train.distributed import DataParallel
    from searchr1.train.models import build_models
    from searchr1.train.settings import ComputeConfig, KLConfig, OptimConfig, TrainConfig
    from searchr1.train.batch import collate
    from searchr1.train.learner import Learner

    dist = DataParallel.from_env("cpu", args.sharding)
    torch.set_num_threads(max(1, args.threads // dist.world))
    model, tokenizer = _load(args.model)
    B, G = args.batch, 4
    tc = TrainConfig(algorithm="grpo", steps=1 + args.repeats, prompts_per_step=B // G, group_size=G,
                     mini_batch_size=B, micro_batch_size=args.micro,
                     optim=OptimConfig(lr=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM),
                     kl=KLConfig(coef=KL_COEF), tensorboard=False,
                     # fp32, as the committed table was measured (auto is bf16-mixed on CPUs with native bf16)
                     compute=ComputeConfig(precision="fp32", sharding=args.sharding),
                     progress=False, seed=args.seed)
    torch.manual_seed(tc.seed)
    models = build_models(model, tc)
    del model
    models.distribute(dist)
    learner = Learner(models, tc, dist)
    load_peak = _peak_mib()
    _trim()
    steps_only = _reset_peak()
    data = Synthetic(tokenizer, B, args.prompt_len, args.response_len, G, args.seed)
    times = []
    for step in range(1 + args.repeats):
        trajs, scores = data.trajectories(data.step(step))
        batch = collate(trajs, tokenizer.pad_token_id)
        dist.barrier()
        start = time.perf_counter()
        out = learner.learn(batch, scores, step + 1)
        dist.barrier()
        times.append(time.perf_counter() - start)
        if out["train/optimizer_steps"] != 1:
            raise RuntimeError(f"step {step}: {out['train/optimizer_steps']} optimizer steps")
    mine = {"rank": dist.rank, "load_peak_rss_mib": load_peak, "peak_rss_mib": _peak_mib(),
            "peak_is_steps_only": steps_only}
    _trim()
    mine["rss_after_mib"] = _rss_mib()
    ranks = dist.gather_objects([mine])
    if dist.is_main:
        Path(args.out).write_text(json.dumps({"step_seconds": times[1:], "warmup_seconds": times[0],
                                              "world": dist.world, "sharding": dist.sharding, "ranks": ranks}))
    models.undistribute()
    dist.close()


def run_row(name: str, args) -> dict:
    sharding, n = ROWS[name]
    n = n or args.nproc
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={n}"]
        cmd = launcher + [__file__, "--worker", "--sharding", sharding, "--out", str(out)] + args.passthrough
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or qwen2.5-0.5b (see train_step.py)")
    p.add_argument("--batch", type=int, default=8, help="B: sequences per step (groups of 4)")
    p.add_argument("--micro", type=int, default=4, help="rows per forward/backward")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--response-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads in all (split over the processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help=f"comma list of rows: {', '.join(ROWS)}")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sharding", default="none", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.batch % 4 or (args.batch // args.nproc) % args.micro or (args.batch // 4) % args.nproc:
        p.error("--batch must be a multiple of 4 whose groups split over --nproc, and --micro must divide B / nproc")
    args.passthrough = ["--model", args.model, "--batch", str(args.batch), "--micro", str(args.micro),
                        "--prompt-len", str(args.prompt_len), "--response-len", str(args.response_len),
                        "--repeats", str(args.repeats), "--threads", str(args.threads), "--seed", str(args.seed)]
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ROWS)
    print(f"# searchr1 sharding benchmark — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(f"{args.model}, full fine-tuning, GRPO, B={args.batch} x ({args.prompt_len}+{args.response_len}), "
          f"micro-batch {args.micro}, fp32, {args.threads} threads in all, median of {args.repeats} after 1 warm-up")
    results = {}
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        results[name] = run_row(name, args)
    base = results.get("none (DDP)")
    rows = []
    for name, r in results.items():
        secs = statistics.median(r["step_seconds"])
        peak = max(x["peak_rss_mib"] for x in r["ranks"])
        after = max(x["rss_after_mib"] for x in r["ranks"])
        ratio = (lambda v, key: f"{v / max(x[key] for x in base['ranks']):.2f}") if base else (lambda v, key: "-")
        time_ratio = f"{secs / statistics.median(base['step_seconds']):.2f}" if base else "-"
        rows.append([name, r["world"], secs, time_ratio, peak, ratio(peak, "peak_rss_mib"), after,
                     ratio(after, "rss_after_mib")])
    print(table("per-process memory and time per step", ["row", "processes", "s/step (median)", "x DDP",
                                                          "peak RSS in steps MiB (max rank)", "x DDP",
                                                          "RSS after steps MiB (max rank)", "x DDP"], rows))
    if args.json:
        save_json(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "args": vars(args) | {
            "json": str(args.json)}, "rows": results})


if __name__ == "__main__":
    main()
