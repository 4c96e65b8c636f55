"""What RL adds in the demo, over seeds: `searchr1 demo train.seed=S` for each seed, then held-out EM
after RL against after the warm-up, paired on the same questions.

    python benchmarks/demo_seeds.py --seeds 0,1,2 --runs ~/searchr1-runs/demo-seeds

    python benchmarks/demo_seeds.py --runs ~/searchr1-runs/demo-tree --set train.algorithm=tree_grpo ... \
        --against ~/searchr1-runs/demo-seeds-v3      # one RL setting against another, seed by seed

Each seed is a whole `searchr1 demo` in its own directory (RUNS/seed-S): the same synthetic world
and held-out questions, the warm-up's demonstrations and the RL rollouts drawn with train.seed=S.
A seed whose report.json exists is not rerun (resumable). Extra dotted overrides for every run go
after `--set`.

Reported per seed (the demo's own report.json: `gains.rl`, `held_out_curve`, timings): EM after the
warm-up and after RL on the demo's held-out questions, the paired difference with its 95% bootstrap
interval over questions, the questions gained and lost, the exact McNemar p-value, the curve of
held-out EM over RL steps and the demo's wall time against its 15-minute budget. Pooled: over
seed x question pairs, resampled by question so a question's seeds stay together. Results: --out (JSON).

--against B (the run directory of another setting's seeds, already run): this setting's EM after RL
minus B's, per seed on the same questions and pooled as above. Each seed's warm-up must be B's
(checked: the same per-question EM after the warm-up, or byte-identical warm-up models when the two
settings evaluate in different precisions), so the two differ only in their RL. Beside it,
each arm's RL budget: generated tokens and searches summed over its steps (`budget/*` in
train/metrics.jsonl), and their ratio.
"""

from __future__ import annotations

import argparse
import hashlib
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


def pooled_pairs(pairs: list[tuple[dict[str, float], dict[str, float]]]) -> dict:
    """A minus B over every seed x question pair, one (A, B) per seed of question id -> EM: the mean
    with `paired`'s question-clustered interval, and the exact McNemar test over all pairs."""
    from searchr1.study.stats import mcnemar

    by_question, em_a, em_b = {}, [], []
    for a, b in pairs:
        for q in b:
            by_question.setdefault(q, []).append(a[q] - b[q])
            em_a.append(a[q])
            em_b.append(b[q])
    test = mcnemar(em_a, em_b)
    mean, low, high = paired(by_question)
    return {"pairs": len(em_a), "diff": mean, "low": low, "high": high, "gained": test["a_only"],
            "lost": test["b_only"], "mcnemar_p": test["p_value"]}


def rl_budget(run: Path) -> dict[str, float]:
    """Generated tokens and searches over a demo's RL steps (train/metrics.jsonl)."""
    total = {"generated_tokens": 0.0, "searches": 0.0, "steps": 0}
    for line in (run / "train" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "budget/generated_tokens" in row:
            total["generated_tokens"] += row["budget/generated_tokens"]
            total["searches"] += row["budget/searches"]
            total["steps"] += 1
    return total


def weights_digest(model_dir: Path) -> str | None:
    """sha256 over a saved model's weight files (safetensors), or None when it has none."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def same_warm_up(run_a: Path, run_b: Path, ra: dict, rb: dict) -> str | None:
    """How two seeds' warm-ups are known to be the same, or None when they are not: "evaluation"
    (the same per-question EM after the warm-up) or "weights" (byte-identical warm-up models whose
    evaluations differ, as when the settings differ in the precision the demo evaluates in)."""
    if per_question_em(ra, "after_sft") == per_question_em(rb, "after_sft"):
        return "evaluation"
    a, b = weights_digest(run_a / "sft-model"), weights_digest(run_b / "sft-model")
    return "weights" if a is not None and a == b else None


def compare_runs(seeds: list[int], runs: Path, against: Path) -> dict:
    """This setting's EM after RL minus `against`'s, seed by seed and pooled (see the module doc)."""
    from searchr1.demo import by_question_kind, load_eval, paired_gain, per_question_em as em

    per_seed, pairs = [], []
    for seed in seeds:
        ra = json.loads((runs / f"seed-{seed}" / "report.json").read_text())
        rb = json.loads((against / f"seed-{seed}" / "report.json").read_text())
        same_by = same_warm_up(runs / f"seed-{seed}", against / f"seed-{seed}", ra, rb)
        if same_by is None:
            raise SystemExit(f"seed {seed}: the two settings' warm-ups differ; their RL cannot be compared paired")
        after_a, after_b = load_eval(ra["eval_dirs"]["after"]), load_eval(rb["eval_dirs"]["after"])
        pairs.append((em(after_a), em(after_b)))
        gain = paired_gain(after_a, after_b)
        ba, bb = rl_budget(runs / f"seed-{seed}"), rl_budget(against / f"seed-{seed}")
        per_seed.append({"seed": seed, "warm_up_same_by": same_by,
                         "em": ra["eval"]["after"]["em"], "em_against": rb["eval"]["after"]["em"],
                         "em_warmup": ra["eval"]["after_sft"]["em"], "em_warmup_against": rb["eval"]["after_sft"]["em"],
                         "diff": gain["mean"], "low": gain["low"], "high": gain["high"], "gained": gain["gained"],
                         "lost": gain["lost"], "mcnemar_p": gain["mcnemar_p"], "budget": ba, "budget_against": bb,
                         "token_ratio": ba["generated_tokens"] / bb["generated_tokens"],
                         "curve": ra["held_out_curve"], "curve_against": rb["held_out_curve"],
                         "by_kind": by_question_kind(after_a), "by_kind_against": by_question_kind(after_b)})
    summary = pooled_pairs(pairs) | {
        "token_ratio": sum(s["budget"]["generated_tokens"] for s in per_seed)
        / sum(s["budget_against"]["generated_tokens"] for s in per_seed)}
    mean, low, high = summary["diff"], summary["low"], summary["high"]
    rows = [[str(s["seed"]), f"{s['em_against']:.3f}", f"{s['em']:.3f}",
             f"{s['diff']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]", f"{s['gained']}/{s['lost']}",
             f"{s['mcnemar_p']:.3f}", f"{s['token_ratio']:.2f}"] for s in per_seed]
    rows.append(["pooled", f"{sum(s['em_against'] for s in per_seed) / len(per_seed):.3f}",
                 f"{sum(s['em'] for s in per_seed) / len(per_seed):.3f}", f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
                 f"{summary['gained']}/{summary['lost']}", f"{summary['mcnemar_p']:.3f}", f"{summary['token_ratio']:.2f}"])
    print(table(f"after RL: {runs.name} against {against.name}, paired on the same questions",
                ["seed", against.name, runs.name, "difference [95%]", "gained/lost", "McNemar p",
                 "generated tokens ratio"], rows))
    kinds = sorted({k for s in per_seed for k in s["by_kind"]})

    def mean_of(kind: str, key: str, field: str) -> str:
        got = [s[key][kind] for s in per_seed if kind in s[key]]
        return f"{sum(g[field] for g in got) / len(got):.2f}"

    print(table("after RL by question kind, mean over seeds: EM (searches per question)",
                ["kind", "questions", against.name, runs.name],
                [[k, str(per_seed[0]["by_kind"].get(k, {}).get("n", "")),
                  f"{mean_of(k, 'by_kind_against', 'em')} ({mean_of(k, 'by_kind_against', 'searches')})",
                  f"{mean_of(k, 'by_kind', 'em')} ({mean_of(k, 'by_kind', 'searches')})"] for k in kinds]))
    return {"against": str(against), "per_seed": per_seed, "pooled": summary}


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
    p.add_argument("--against", type=Path, default=None,
                   help="another setting's run directory (same seeds, already run): compare EM after RL with it")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_seeds.json")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    per_seed, pairs = [], []
    for seed in seeds:
        d = args.runs / f"seed-{seed}"
        run_seed(seed, d, args.set)
        report = json.loads((d / "report.json").read_text())
        pairs.append((per_question_em(report, "after"), per_question_em(report, "after_sft")))
        gain = report["gains"]["rl"]  # the demo's own paired comparison (searchr1.demo.paired_gain)
        seconds = report["timings"]["total"]
        per_seed.append({"seed": seed, "questions": gain["n"], "em_warmup": report["eval"]["after_sft"]["em"],
                         "em_rl": report["eval"]["after"]["em"], "em_before": report["eval"]["before"]["em"],
                         "diff": gain["mean"], "low": gain["low"], "high": gain["high"],
                         "gained": gain["gained"], "lost": gain["lost"], "mcnemar_p": gain["mcnemar_p"],
                         "warm_up_gain": report["gains"]["warm_up"], "held_out_curve": report["held_out_curve"],
                         "seconds": seconds, "within_15_min": seconds <= 15 * 60, "timings": report["timings"],
                         "dir": str(d)})
    summary = {"seeds": seeds, **pooled_pairs(pairs),
               "em_warmup": sum(s["em_warmup"] for s in per_seed) / len(per_seed),
               "em_rl": sum(s["em_rl"] for s in per_seed) / len(per_seed)}
    mean, low, high, gained, lost = (summary[k] for k in ("diff", "low", "high", "gained", "lost"))
    rows = [[str(s["seed"]), f"{s['em_warmup']:.3f}", f"{s['em_rl']:.3f}",
             f"{s['diff']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]", f"{s['gained']}/{s['lost']}",
             f"{s['mcnemar_p']:.3f}", f"{s['seconds']:.0f}"] for s in per_seed]
    rows.append(["pooled", f"{summary['em_warmup']:.3f}", f"{summary['em_rl']:.3f}",
                 f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", f"{gained}/{lost}", f"{summary['mcnemar_p']:.3f}",
                 f"{max(s['seconds'] for s in per_seed):.0f} max"])
    print(table("demo: held-out EM after the warm-up and after RL, paired on the same questions",
                ["seed", "warm-up", "RL", "RL - warm-up [95%]", "gained/lost", "McNemar p", "demo s"], rows))
    comparison = compare_runs(seeds, args.runs, args.against) if args.against else None
    save_json(args.out, {"machine": machine(), "command": " ".join(["python", *sys.argv]), "settings": args.set,
                         "per_seed": per_seed, "pooled": summary, **({"comparison": comparison} if comparison else {})})
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
