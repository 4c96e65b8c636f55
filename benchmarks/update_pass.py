"""The passes of the demo's RL update and reference, before and after two levers of issue 22: glibc
malloc thresholds (`searchr1.allocator.tune_malloc`) and the LM head only at the scored tokens
(`sequence_logprobs(positions=...)`, what `Learner` passes: `Batch.scored`).

    python benchmarks/update_pass.py                     # 3 rounds, ABBA, SmolLM2-135M-Instruct
    python benchmarks/update_pass.py --rounds 1 --repeats 2 --rows 2 --response 64   # smoke test

Each arm runs in its own child process (the thresholds are per process), in ABBA order over
--rounds rounds so that drift hits every arm alike:

  before     glibc as shipped (SEARCHR1_MALLOC_TUNING=0), LM head over every response column
  malloc     `tune_malloc()` as `searchr1`'s CLI calls it (mmap and trim thresholds at 1 GiB),
             head over every response column
  malloc+head  the same, head only at the scored tokens (--scored of the response, default 0.4:
             the demo's generated share; the rest are retrieved passages)
  trim-only  MALLOC_TRIM_THRESHOLD_=1 GiB alone (glibc then keeps its mmap threshold at 128 KiB),
             head everywhere: why `tune_malloc` sets both thresholds

In each child: the model under bf16 autocast (the trainer's precision=auto on a CPU with native bf16),
--rows rows of --prompt random prompt tokens (left-padded by up to a third) and --response
response tokens, of which a random --scored share is scored; after one warm-up of each:
  update ms   forward + backward of `sequence_logprobs` with the entropy metric, loss over the
              scored tokens (one micro-batch of the update)
  forward ms  the same forward without gradients (the reference's log-prob pass)
each the median of --repeats; minor faults and system seconds are the child's over the timed
passes (getrusage), peak RSS the child's. The ratio divides before's time by the arm's (> 1: faster).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save_json, table  # noqa: E402

from searchr1.allocator import SWITCH, USER_SETTINGS, tune_malloc  # noqa: E402

ARMS = {  # name: (environment, head only at the scored tokens)
    "before": ({SWITCH: "0"}, False),
    "malloc": ({}, False),
    "malloc+head": ({}, True),
    "trim-only": ({"MALLOC_TRIM_THRESHOLD_": str(1 << 30)}, False),
}


def child(args) -> dict:
    applied = tune_malloc()  # before torch's first allocation, as the CLI does
    import torch

    from searchr1.modelhub import load_causal_lm
    from searchr1.train.models import sequence_logprobs

    torch.manual_seed(0)
    model, _ = load_causal_lm(args.model)
    model.train()
    B, P, R = args.rows, args.prompt, args.response
    ids = torch.randint(0, model.config.vocab_size, (B, P + R))
    mask = torch.ones_like(ids)
    for i in range(B):  # left padding, as the trainer's batches have
        mask[i, : (i * P // 3) // max(B - 1, 1)] = 0
    scored = torch.rand(B, R, generator=torch.Generator().manual_seed(1)) < args.scored
    positions = scored if ARMS[args.arm][1] else None

    def update() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sequence_logprobs(model, ids, mask, P, with_entropy=True, entropy_grad=False,
                                    positions=positions)
        (out.logprobs * scored).sum().backward()
        model.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            sequence_logprobs(model, ids, mask, P, positions=positions)

    out = {"applied": applied}
    for name, fn in (("update", update), ("forward", forward)):
        fn()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        out[name] = {"ms": 1000 * statistics.median(times), "minor_faults": r1.ru_minflt - r0.ru_minflt,
                     "system_s": r1.ru_stime - r0.ru_stime}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--rows", type=int, default=4, help="the demo's micro-batch")
    p.add_argument("--prompt", type=int, default=150)
    p.add_argument("--response", type=int, default=260, help="the demo's responses: 160-280 tokens")
    p.add_argument("--scored", type=float, default=0.4, help="the scored share of response tokens")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "update_pass.json")
    p.add_argument("--arm", default="", help=argparse.SUPPRESS)  # set in the child processes
    args = p.parse_args()
    if args.arm:
        print(json.dumps(child(args)))
        return
    arms = args.arms.split(",")
    unknown = set(arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arms {sorted(unknown)}; known: {list(ARMS)}")
    print(f"# update and reference passes — {time.strftime('%Y-%m-%d')} — {machine()}; model {args.model}; "
          f"{args.rows} rows x ({args.prompt} + {args.response}) tokens, {args.scored:.0%} of the response "
          "scored, bf16 autocast")
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    argv = sys.argv[1:]
    for r in range(args.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            env = {k: v for k, v in os.environ.items() if k not in (SWITCH, *USER_SETTINGS)}
            env.update(ARMS[arm][0])
            proc = subprocess.run([sys.executable, __file__, *argv, "--arm", arm], env=env, capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"arm {arm} failed:\n{proc.stderr[-3000:]}")
            runs[arm].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {arm}: update {runs[arm][-1]['update']['ms']:.0f} ms", flush=True)

    def med(arm, key, field):
        return statistics.median(run[key][field] for run in runs[arm])

    base = {k: med(arms[0], k, "ms") for k in ("update", "forward")} if arms[0] == "before" else None
    rows = []
    for arm in arms:
        row = [arm]
        for key in ("update", "forward"):
            row += [med(arm, key, "ms"), base[key] / med(arm, key, "ms") if base else float("nan"),
                    int(med(arm, key, "minor_faults")), med(arm, key, "system_s")]
        row.append(statistics.median(run["peak_rss_mib"] for run in runs[arm]))
        rows.append(row)
    headers = ["arm", "update ms", "x before", "update faults", "update sys s",
               "forward ms", "x before", "forward faults", "forward sys s", "peak RSS MiB"]
    print(table(f"medians over {args.rounds} child runs of {args.repeats} passes each (ABBA)", headers, rows))
    save_json(args.out, {"command": "python benchmarks/update_pass.py " + " ".join(argv), "date": time.strftime("%Y-%m-%d"),
                         "machine": machine(), "headers": headers, "rows": rows, "runs": runs})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
