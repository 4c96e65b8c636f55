"""Critic-free algorithms compared on the synthetic task: GRPO vs RLOO vs REINFORCE++, same
warm-up, same seeds, same budget, held-out EM with intervals.

    python benchmarks/algorithms.py                              # cpu-demo settings, seeds 0,1,2
    python benchmarks/algorithms.py --steps 2 --seeds 0 --eval-limit 16     # a smoke run

What runs (everything the cpu-demo preset says, unless a flag changes it):
  1. the demo's synthetic world and its BM25 index, under --dir
  2. ONE supervised warm-up of SmolLM2-135M-Instruct (the demo's: 12 steps on demonstrations),
     saved to --dir/sft-model and reused by every arm (it teaches the tag format only)
  3. per algorithm and seed: `searchr1 train` from the warmed-up model with train.algorithm and
     train.seed changed, nothing else (4 questions x 4 rollouts a step, lr 5e-6, KL 0.001: in the
     loss for grpo / rloo, in the token rewards for reinforce_pp), then greedy agent-mode
     evaluation on the held-out synthetic questions (all 144 with --eval-limit 0)
  4. the warm-up alone, evaluated on the same questions (the "before" row)

Reported per arm: held-out EM (mean over seeds; the seeds' spread; a 95% bootstrap interval over
questions of the seed-averaged per-question EM), the mean training reward over the last half of
the steps, and the paired difference to GRPO on the same questions (paired bootstrap, 95%).
Resumable: a finished run (its final eval results.json exists) is not rerun; a killed one resumes
from its checkpoint. Results: --out (JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import CHAIN_GRPO_DEMO, machine, save_json, table  # noqa: E402

from searchr1.config import load_config
from searchr1.data.questions import held_out_questions
from searchr1.data.world import prepare_world
from searchr1.eval.harness import evaluate, read_trajectories
from searchr1.retrieval.build import build_index
from searchr1.retrieval.local import open_retriever
from searchr1.rollout.engine import EngineGenerator
from searchr1.settings import Config
from searchr1.train.sft import save_model, warmup
from searchr1.train.trainer import train

ALGORITHMS = ("grpo", "rloo", "reinforce_pp")


def _per_question_em(results_dir: Path) -> dict[str, float]:
    path = next(results_dir.glob("trajectories.*.agent.jsonl"))
    return {r["id"]: float(r["scores"]["em"]) for r in read_trajectories(path)}


def _bootstrap(values: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def _warm_up(cfg: Config, sft_dir: Path, train_questions, retriever) -> dict:
    info_path = sft_dir / "warmup.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    generator = EngineGenerator.from_config(cfg.model)
    result = warmup(cfg, generator.model, generator.tokenizer, retriever, train_questions)
    save_model(generator.model, generator.tokenizer, sft_dir)
    info_path.write_text(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("runs/algorithms"))
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=8, help="RL steps per run (the cpu-demo's 8)")
    p.add_argument("--eval-limit", type=int, default=0, help="held-out questions evaluated; 0 = all 144")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "algorithms.json")
    args = p.parse_args()
    algorithms = [a for a in args.algorithms.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",") if s]

    # the committed comparison (algorithms.json) ran with the cpu-demo of 2026-12-01: fp32 (before
    # precision=auto became bf16-mixed on CPUs with native bf16), a 12-step warm-up, lr 5e-6 and chain
    # rollouts (the demo's since 2026-12-07: 4 steps, 2e-5, tree rollouts); pinned so that this command
    # still reproduces it
    cfg = load_config(Config, "cpu-demo", [f"demo.dir={args.dir}", f"model.threads={args.threads}",
                                          f"eval.limit={args.eval_limit}", "eval.modes=[agent]", "eval.html=false",
                                          "train.compute.precision=fp32", "sft.steps=12", "train.optim.lr=5e-6",
                                          *CHAIN_GRPO_DEMO])
    _, train_questions, _ = prepare_world(cfg.world, args.dir / "data")
    index_dir = args.dir / "index"
    build_index(dataclasses.replace(cfg.index, corpus=str(args.dir / "data" / "corpus.jsonl"), dir=str(index_dir),
                                    methods=["bm25"]), progress=False)
    rcfg = dataclasses.replace(cfg.retriever, index=str(index_dir), url="", method="bm25")
    cfg = dataclasses.replace(cfg, retriever=rcfg)
    retriever = open_retriever(rcfg)
    sft_dir = args.dir / "sft-model"
    warm = _warm_up(cfg, sft_dir, train_questions, retriever)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(sft_dir)))
    questions = held_out_questions(cfg)

    before_dir = args.dir / "eval-warmup"
    if not (before_dir / "results.json").is_file():
        evaluate(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, out_dir=str(before_dir))), None,
                 None, retriever, questions=questions)
    runs = {}
    for seed in seeds:
        for algorithm in algorithms:
            run_dir = args.dir / f"{algorithm}-seed{seed}"
            final = run_dir / "eval" / f"step_{args.steps:06d}"
            if not (final / "results.json").is_file():
                tc = dataclasses.replace(cfg.train, algorithm=algorithm, seed=seed, steps=args.steps,
                                         eval_every=args.steps, save_every=1, keep_last=1, run_dir=str(run_dir),
                                         resume=True, progress=False)
                train(dataclasses.replace(cfg, train=tc), retriever=retriever)
            history = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if line.strip()]
            rewards = [h["reward/mean"] for h in history if "reward/mean" in h]
            runs[(algorithm, seed)] = {"em": _per_question_em(final), "rewards": rewards}
    retriever.close()

    base = _per_question_em(before_dir)
    ids = sorted(base)
    rows, summary = [], {}
    seed_mean = {a: [statistics.fmean(runs[(a, s)]["em"][i] for s in seeds) for i in ids] for a in algorithms}
    rows.append(["warm-up only", f"{statistics.fmean(base.values()):.3f}", "", "", "", ""])
    for a in algorithms:
        per_seed = [statistics.fmean(runs[(a, s)]["em"].values()) for s in seeds]
        lo, hi = _bootstrap(seed_mean[a])
        late = [statistics.fmean(runs[(a, s)]["rewards"][len(runs[(a, s)]["rewards"]) // 2:]) for s in seeds]
        entry = {"em_mean": statistics.fmean(per_seed), "em_per_seed": per_seed, "em_ci95_questions": [lo, hi],
                 "late_reward_mean": statistics.fmean(late),
                 "reward_curves": {str(s): runs[(a, s)]["rewards"] for s in seeds}}
        diff_text = ""
        if a != "grpo" and "grpo" in algorithms:
            diffs = [x - y for x, y in zip(seed_mean[a], seed_mean["grpo"])]
            dlo, dhi = _bootstrap(diffs, seed=1)
            entry["minus_grpo"] = {"mean": statistics.fmean(diffs), "ci95": [dlo, dhi]}
            diff_text = f"{statistics.fmean(diffs):+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        summary[a] = entry
        rows.append([a, f"{entry['em_mean']:.3f}", " / ".join(f"{x:.3f}" for x in per_seed),
                     f"[{lo:.3f}, {hi:.3f}]", f"{entry['late_reward_mean']:.3f}", diff_text])
    header = ["arm", "held-out EM", "per seed", "95% CI (questions)", "reward, 2nd half", "minus GRPO (paired)"]
    print(table(f"held-out EM on {len(ids)} synthetic questions, {len(seeds)} seeds, {args.steps} steps", header,
                rows))
    save_json(args.out, {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items() if k != "out"},
                         "questions": len(ids), "warmup": {k: warm[k] for k in ("kept", "dropped", "steps",
                                                                               "first_loss", "last_loss")},
                         "warmup_em": statistics.fmean(base.values()), "arms": summary})


if __name__ == "__main__":
    main()
