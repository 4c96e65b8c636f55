"""Which levers let the demo show RL's own gain: warm-up length x RL learning rate, on the demo's
world, paired on all 144 held-out questions.

    python benchmarks/demo_levers.py --runs ~/searchr1-runs/levers            # every run below
    python benchmarks/demo_levers.py --only sft4,rl4-lr3e-5 --threads 1       # some of them

Each run is one directory under RUNS (kept, so a rerun only adds what is missing):
  warm-up runs  `sft<N>`: SmolLM2-135M-Instruct after N supervised warm-up steps (the demo's
                demonstrations, train.seed), saved, then evaluated on the held-out questions;
  RL runs       `rl<N>-lr<LR>`: the cpu-demo preset's GRPO (4 questions x 4 rollouts a step) for
                --rl-steps steps at learning rate LR from warm-up N, then evaluated the same way.
Every other setting is the cpu-demo preset's. Each RL run is compared with its own starting point:
the paired EM difference on the same questions with its 95% bootstrap interval, questions gained
and lost, and the exact McNemar p (`searchr1.demo.paired_gain`); plus EM and searches per question
type, which show what RL changed. Results: --out (JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CHAIN_GRPO_DEMO, machine, save_json, table  # noqa: E402

WARM_UPS = {"sft4": 4, "sft12": 12}
RL = {"rl4-lr2e-5": ("sft4", 2e-5), "rl4-lr3e-5": ("sft4", 3e-5), "rl12-lr2e-5": ("sft12", 2e-5)}


def _config(overrides: list[str]):
    from searchr1.config import load_config
    from searchr1.settings import Config

    return load_config(Config, "cpu-demo", ["demo.eval_questions=144", *CHAIN_GRPO_DEMO, *overrides])


def run(name: str, root: Path, args) -> dict:
    """One warm-up or RL run in root/name, unless its summary.json exists; its summary."""
    out = root / name
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    import torch

    from searchr1.data.world import prepare_world
    from searchr1.demo import _on_synthetic, evaluate_held_out
    from searchr1.pipeline import index_world, load_policy, retriever_config, train_policy, warm_up
    from searchr1.retrieval.local import open_retriever

    common = [f"train.seed={args.seed}", f"model.threads={args.threads}", "train.progress=false"]
    if name in WARM_UPS:
        overrides = [*common, f"sft.steps={WARM_UPS[name]}"]
    else:
        start, lr = RL[name]
        overrides = [*common, f"model.name={root / start / 'model'}", f"train.steps={args.rl_steps}",
                     f"train.optim.lr={lr}", "demo.eval_every=0"]
    cfg = _config(overrides)
    torch.set_num_threads(args.threads)
    base = root / "base"
    corpus, train_q, _ = prepare_world(cfg.world, base / "data")
    index_world(cfg, corpus, base / "index", ["bm25"])
    rcfg = retriever_config(cfg, base / "index")
    retriever = open_retriever(rcfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if name in WARM_UPS:
        policy = load_policy(cfg)
        warm_up(cfg, policy, retriever, train_q, out / "model")
    else:
        tcfg = dataclasses.replace(cfg, retriever=rcfg, train=dataclasses.replace(
            _on_synthetic(cfg.train), run_dir=str(out / "train"), resume=False, overwrite=True))
        _, policy = train_policy(tcfg, retriever)
    t1 = time.perf_counter()
    evaluate_held_out(cfg, rcfg, out / "eval", None, retriever, policy)
    summary = {"overrides": overrides, "train_s": t1 - t0, "eval_s": time.perf_counter() - t1}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path.home() / "searchr1-runs" / "levers")
    p.add_argument("--only", default="", help="comma-separated run names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rl-steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_levers.json")
    args = p.parse_args()
    from searchr1.demo import _agent_metrics, by_question_kind, load_eval, paired_gain

    names = [n for n in [*WARM_UPS, *RL] if not args.only or n in args.only.split(",")]
    for name in names:  # an RL run needs its warm-up first
        if name in RL and RL[name][0] not in names:
            names.insert(names.index(name), RL[name][0])
    records = {}
    for name in dict.fromkeys(names):
        summary = run(name, args.runs, args)
        results = load_eval(args.runs / name / "eval")
        m = _agent_metrics(results)[0]
        rec = {"em": m["em"], "searches": m["searches"], "n": m["n"], "by_kind": by_question_kind(results),
               **summary}
        if name in RL:
            start = RL[name][0]
            rec["from"] = start
            rec["gain"] = paired_gain(results, load_eval(args.runs / start / "eval"))
        records[name] = rec
    rows = []
    for name, r in records.items():
        g = r.get("gain")
        rows.append([name, r.get("from", "-"), f"{r['em']:.3f}", f"{r['searches']:.2f}",
                     f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" if g else "-",
                     f"{g['gained']}/{g['lost']}" if g else "-", f"{g['mcnemar_p']:.3f}" if g else "-"])
    print(table(f"demo levers: held-out EM on {next(iter(records.values()))['n']} questions, seed {args.seed}",
                ["run", "from", "EM", "searches", "RL - start [95%]", "gained/lost", "McNemar p"], rows))
    kinds = sorted({k for r in records.values() for k in r["by_kind"]})
    print(table("EM (searches per question) by question type",
                ["type", *records], [[k, *(f"{r['by_kind'][k]['em']:.2f} ({r['by_kind'][k]['searches']:.1f})"
                                          if k in r["by_kind"] else "-" for r in records.values())] for k in kinds]))
    save_json(args.out, {"machine": machine(), "command": " ".join(["python", *sys.argv]), "seed": args.seed,
                         "threads": args.threads, "rl_steps": args.rl_steps, "runs": records})
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
