"""The demo's held-out evaluation at several pool widths (`eval.batch_size`: episodes live at once).

    python benchmarks/eval_pool.py --demo searchr1-demo --model searchr1-demo/train/checkpoints/step-000016/policy
    python benchmarks/eval_pool.py --demo searchr1-demo --model searchr1-demo/sft-model --pools 16,48,144 --rounds 1

One model (--model: the demo's warm-up or RL checkpoint) plays the demo's agent evaluation
(`searchr1.demo.evaluate_as_trained`: greedy, the training precision, the demo's index in --demo) on
--questions held-out questions, once per pool width per round, the widths in ABBA order over
--rounds rounds so that drift hits them alike. Reported per width: the median wall time, its ratio
against the first width's, and the EM (the same greedy episodes at every width in fp32; in bf16 a
different batch may round differently).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save_json, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="a demo directory (its index/ is searched)")
    p.add_argument("--model", required=True, help="the policy to evaluate (a saved model directory)")
    p.add_argument("--pools", default="48,144")
    p.add_argument("--questions", type=int, default=144)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_pool.json")
    args = p.parse_args()

    from searchr1.allocator import tune_malloc

    tune_malloc()  # as the CLI does
    from rich.console import Console

    from searchr1.config import load_config
    from searchr1.demo import evaluate_as_trained, per_question_em
    from searchr1.pipeline import load_policy, retriever_config
    from searchr1.retrieval.local import open_retriever
    from searchr1.settings import Config

    pools = [int(x) for x in args.pools.split(",")]
    cfg = load_config(Config, "cpu-demo", [f"demo.dir={args.demo}", f"model.name={args.model}",
                                           f"demo.eval_questions={args.questions}"])
    rcfg = retriever_config(cfg, args.demo / "index")
    retriever = open_retriever(rcfg)
    policy = load_policy(cfg)
    quiet = Console(quiet=True)
    print(f"# the demo's held-out evaluation by pool width — {time.strftime('%Y-%m-%d')} — {machine()}; "
          f"model {args.model}; {args.questions} questions, greedy, training precision")
    seconds: dict[int, list[float]] = {w: [] for w in pools}
    em: dict[int, list[float]] = {w: [] for w in pools}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for width in (pools if r % 2 == 0 else pools[::-1]):
                c = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=width))
                t0 = time.perf_counter()
                result = evaluate_as_trained(c, rcfg, Path(tmp) / f"{width}-{r}", quiet, retriever, policy)
                seconds[width].append(time.perf_counter() - t0)
                scores = per_question_em(result)
                em[width].append(sum(scores.values()) / len(scores))
                print(f"round {r + 1} pool {width}: {seconds[width][-1]:.1f} s, EM {em[width][-1]:.3f}", flush=True)
    getattr(retriever, "close", lambda: None)()
    base = statistics.median(seconds[pools[0]])
    rows = [[w, statistics.median(seconds[w]), base / statistics.median(seconds[w]), statistics.median(em[w])]
            for w in pools]
    headers = ["pool", "wall s", f"x pool {pools[0]}", "EM"]
    print(table(f"medians over {args.rounds} rounds (ABBA)", headers, rows))
    save_json(args.out, {"command": "python benchmarks/eval_pool.py " + " ".join(sys.argv[1:]),
                         "date": time.strftime("%Y-%m-%d"), "machine": machine(), "headers": headers, "rows": rows,
                         "seconds": seconds, "em": em})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
