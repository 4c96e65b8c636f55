"""What RL adds in the demo, over seeds: `searchr1 demo train.seed=S` for each seed, then held-out EM
after RL against after the warm-up, paired on the same questions.

    python benchmarks/demo_seeds.py --seeds 0,1,2 --runs ~/searchr1-runs/demo-seeds

Each seed is a whole `searchr1 demo` in its own directory (RUNS/seed-S): the same synthetic world
and held-out questions, the warm-up's demonstrations and the RL rollouts drawn with train.seed=S.
A seed whose report.json exists is not rerun (resumable). Extra dotted overrides for every run go
after `--set`.

Reported per seed (the demo's own report.json: `gains.rl`, `held_out_curve`, timings): EM after the
warm-up and after RL on the demo's held-out questions, the paired difference with its 95% bootstrap
interval over questions, the questions gained and lost, the exact McNemar p-value, the curve of
held-out EM over RL steps and the demo's wall time against its 15-minute budget. Pooled: over
seed x question pairs, resampled by question so a question's seeds stay together. Results: --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save_json, table  # noqa: E402


def per_question_em(report: dict, name: str) -> dict[str, float]:
    """Question id -> EM of the demo's evaluation `name` (before, after_sft, after)."""
    from searchr1.demo import load_eval, per_question_em as em

    return em(load_eval(report["eval_dirs"][name]))


def paired(diffs_by_question: dict[str, list[float]], n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference and a 95% bootstrap interval, resampling questions (each with all its seeds)."""
    questions = list(diffs_by_question)
    rng = random.Random(seed)

    def mean(qs):
        vals = [d for q in qs for d in diffs_by_question[q]]
        return sum(vals) / len(vals)

    means = sorted(mean([rng.choice(questions) for _ in questions]) for _ in range(n))
    return mean(questions), means[int(0.025 * n)], means[int(0.975 * n) - 1]


def run_seed(seed: int, out: Path, extra: list[str]) -> None:
    if (out / "report.json").exists():
        print(f"... seed {seed}: {out} done, kept")
        return
    cmd = [sys.executable, "-m", "searchr1", "demo", f"demo.dir={out}", f"train.seed={seed}", *extra]
    print("...", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--runs", type=Path, default=Path.home() / "searchr1-runs" / "demo-seeds")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides for every demo run")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_seeds.json")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    per_seed, pooled = [], {}
    em_rl, em_warm = [], []  # every seed x question pair, for the pooled McNemar test
    for seed in seeds:
        d = args.runs / f"seed-{seed}"
        run_seed(seed, d, args.set)
        report = json.loads((d / "report.json").read_text())
        warm, rl = per_question_em(report, "after_sft"), per_question_em(report, "after")
        for q in warm:
            pooled.setdefault(q, []).append(rl[q] - warm[q])
            em_rl.append(rl[q])
            em_warm.append(warm[q])
        gain = report["gains"]["rl"]  # the demo's own paired comparison (searchr1.demo.paired_gain)
        seconds = report["timings"]["total"]
        per_seed.append({"seed": seed, "questions": gain["n"], "em_warmup": report["eval"]["after_sft"]["em"],
                         "em_rl": report["eval"]["after"]["em"], "em_before": report["eval"]["before"]["em"],
                         "diff": gain["mean"], "low": gain["low"], "high": gain["high"],
                         "gained": gain["gained"], "lost": gain["lost"], "mcnemar_p": gain["mcnemar_p"],
                         "warm_up_gain": report["gains"]["warm_up"], "held_out_curve": report["held_out_curve"],
                         "seconds": seconds, "within_15_min": seconds <= 15 * 60, "timings": report["timings"],
                         "dir": str(d)})
    from searchr1.study.stats import mcnemar

    test = mcnemar(em_rl, em_warm)
    gained, lost = test["a_only"], test["b_only"]
    mean, low, high = paired(pooled)
    summary = {"seeds": seeds, "pairs": len(em_rl), "diff": mean, "low": low,
               "high": high, "gained": gained, "lost": lost, "mcnemar_p": test["p_value"],
               "em_warmup": sum(s["em_warmup"] for s in per_seed) / len(per_seed),
               "em_rl": sum(s["em_rl"] for s in per_seed) / len(per_seed)}
    rows = [[str(s["seed"]), f"{s['em_warmup']:.3f}", f"{s['em_rl']:.3f}",
             f"{s['diff']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]", f"{s['gained']}/{s['lost']}",
             f"{s['mcnemar_p']:.3f}", f"{s['seconds']:.0f}"] for s in per_seed]
    rows.append(["pooled", f"{summary['em_warmup']:.3f}", f"{summary['em_rl']:.3f}",
                 f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", f"{gained}/{lost}", f"{summary['mcnemar_p']:.3f}",
                 f"{max(s['seconds'] for s in per_seed):.0f} max"])
    print(table("demo: held-out EM after the warm-up and after RL, paired on the same questions",
                ["seed", "warm-up", "RL", "RL - warm-up [95%]", "gained/lost", "McNemar p", "demo s"], rows))
    save_json(args.out, {"machine": machine(), "command": " ".join(["python", *sys.argv]), "settings": args.set,
                         "per_seed": per_seed, "pooled": summary})
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
