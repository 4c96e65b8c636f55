"""Does training learn the same with vLLM rollouts? One study arm, trained once per engine, compared.

    searchr1 study -c study-synthetic study.arms=[grpo] study.dir=runs/study-vllm \\
        study.warmup_model=runs/study-synthetic/warmup/model rollout.backend=vllm   # in .venv-vllm
    python benchmarks/engines.py --a runs/study-synthetic --b runs/study-vllm --arm grpo

Both studies must share everything but the engine (same seeds, steps, questions, warm-up model):
the script refuses runs whose seeds or held-out questions differ. It reports, per engine, the
training reward of every step (mean over seeds with a Student-t interval) and the held-out EM
(seed-averaged per question, bootstrap interval), and the paired difference B - A over the same
questions (paired bootstrap interval, sign-flip permutation p-value). The engines draw their
sampling noise differently, so the runs are not expected to be equal, only alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save_json, table  # noqa: E402


def load(study: Path, arm: str) -> list[dict]:
    runs = sorted((study / "runs" / arm).glob("seed*/record.json"))
    if not runs:
        raise SystemExit(f"{study}: no finished run of arm {arm!r}")
    return [json.loads(p.read_text()) for p in runs]


def question_scores(record: dict, metric: str) -> dict[str, float]:
    """(dataset, question id) -> score of one run."""
    out = {}
    for label, episodes in record["episodes"].items():
        for qid, e in episodes.items():
            out[f"{label}/{qid}"] = float(e[metric] or 0.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="study directory of engine A (the baseline)")
    p.add_argument("--b", type=Path, required=True, help="study directory of engine B")
    p.add_argument("--arm", default="grpo")
    p.add_argument("--metric", default="em")
    p.add_argument("--names", default="engine,vllm", help="labels of A and B")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engines_grpo.json")
    args = p.parse_args()

    from searchr1.study.stats import bootstrap_ci, paired_difference, seed_interval

    names = args.names.split(",")
    runs = {names[0]: load(args.a, args.arm), names[1]: load(args.b, args.arm)}
    seeds = {n: [r["seed"] for r in rs] for n, rs in runs.items()}
    if seeds[names[0]] != seeds[names[1]]:
        raise SystemExit(f"the studies ran different seeds: {seeds}")
    scores = {n: [question_scores(r, args.metric) for r in rs] for n, rs in runs.items()}
    questions = sorted(scores[names[0]][0])
    if any(sorted(s) != questions for rs in scores.values() for s in rs):
        raise SystemExit("the studies evaluated different questions")
    per_question = {n: [statistics.fmean(s[q] for s in rs) for q in questions] for n, rs in scores.items()}

    result = {"arm": args.arm, "metric": args.metric, "seeds": seeds[names[0]], "questions": len(questions),
              "studies": {names[0]: str(args.a), names[1]: str(args.b)}, "engines": {}}
    rows = []
    for n, rs in runs.items():
        steps = sorted({c["step"] for r in rs for c in r["curves"] if "reward/mean" in c})
        curve = []
        for step in steps:
            values = [c["reward/mean"] for r in rs for c in r["curves"] if c["step"] == step and "reward/mean" in c]
            t = seed_interval(values)
            curve.append({"step": step, "reward": t["mean"], "low": t["low"], "high": t["high"], "per_seed": values})
        em, lo, hi = bootstrap_ci(per_question[n])
        result["engines"][n] = {"reward_curve": curve, args.metric: em, "low": lo, "high": hi,
                                "per_seed": [statistics.fmean(s.values()) for s in scores[n]],
                                "train_seconds": [r["seconds"].get("train") for r in rs]}
        rows.append([n] + [f"{c['reward']:.3f}" for c in curve] + [f"{em:.3f} [{lo:.3f}, {hi:.3f}]"])
    diff = paired_difference(per_question[names[1]], per_question[names[0]])
    result["difference"] = {"b_minus_a": diff}
    steps = [c["step"] for c in result["engines"][names[0]]["reward_curve"]]
    print(table(f"arm {args.arm}, {len(seeds[names[0]])} seeds, {len(questions)} held-out questions",
                ["engine"] + [f"reward step {s}" for s in steps] + [f"held-out {args.metric} [95% CI]"], rows))
    detectable = "n/a" if diff["detectable"] is None else f"{diff['detectable']:.3f}"
    print(f"\n{names[1]} - {names[0]} ({args.metric}, paired over questions): {diff['mean']:+.3f} "
          f"[{diff['low']:+.3f}, {diff['high']:+.3f}], permutation p {diff['p_value']:.3f}, wins/losses/ties "
          f"{diff['wins']}/{diff['losses']}/{diff['ties']}; smallest difference detectable at 80% power: {detectable}")
    save_json(args.out, result)
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
