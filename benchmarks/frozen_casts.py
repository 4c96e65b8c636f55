"""Decode speed of a LoRA policy under bf16 autocast: frozen base weights recast at every op (as
generation ran before) against each cast once per rollout (`TrainModels.generation`,
`searchr1.train.models.autocast_frozen_once`).

    python benchmarks/frozen_casts.py                                       # SmolLM2-135M, 1 and 16 rows
    python benchmarks/frozen_casts.py --model Qwen/Qwen2.5-Coder-0.5B-Instruct --out ...

Autocast keeps its bf16 copy of a weight for the rest of the autocast region only when the weight
requires grad. LoRA freezes the base model, so before this change every decode pass of a LoRA
policy read its fp32 base weights and wrote a bf16 copy of each, for every token; a fully
fine-tuned policy (every weight trainable) was never affected.

What one measurement is: the policy (`build_models` with LoRA r=16 on all 7 projections, as
study-pure-rl trains it; lora_B set to small random values so the adapter is live) in our engine
(`EngineGenerator`), greedy, ROWS rows of a 300-token prompt each (prefilled, not timed), then
--tokens decode passes of ROWS rows timed; generated tokens per second. Arms alternate in ABBA order
for --rounds rounds in one process, the median is reported, and the greedy tokens of the two arms
are compared (they must be identical: the casts are the same values). Results: --out (JSON).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save_json, table  # noqa: E402

ARMS = ("recast", "cast-once")


def decode_rate(models, tok, rows: int, tokens: int, arm: str) -> tuple[float, list[list[int]]]:
    """Generated tokens per second over `tokens` decode passes of `rows` rows, and what each row drew."""
    from searchr1.rollout.engine import EngineGenerator
    from searchr1.rollout.generator import SamplingParams
    from searchr1.train.models import causal_lm

    gen = EngineGenerator(causal_lm(models.policy), tok)
    prompts = [[10 + (7 * i + 13 * j) % 5000 for j in range(300)] for i in range(rows)]
    session = gen.session(prompts, SamplingParams(temperature=0.0))
    # recast: how rollouts ran before, no grad and autocast alone
    with models.generation(cache_frozen_casts=arm == "cast-once"):
        for r in range(rows):
            session.submit(r, [], tokens + 1)
        session.step()  # the prefills and the first token: not timed
        t0 = time.perf_counter()
        for _ in range(tokens):
            session.step()
        seconds = time.perf_counter() - t0
    drawn = [session.contexts[r][300:] for r in range(rows)]
    return rows * tokens / seconds, drawn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--rows", default="1,16", help="comma-separated decode batch sizes")
    p.add_argument("--tokens", type=int, default=32, help="timed decode passes per measurement")
    p.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each arm measured twice a round)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "frozen_casts.json")
    args = p.parse_args()

    import torch

    from searchr1.modelhub import load_causal_lm
    from searchr1.train.models import build_models
    from searchr1.train.settings import LoRAConfig, TrainConfig

    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model, device="cpu", dtype="float32")
    models = build_models(model, TrainConfig(lora=LoRAConfig(r=16, alpha=32)), autocast_dtype=torch.bfloat16)
    models.set_training(False)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in models.policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 1e-3)
    frozen = sum(p.numel() for p in models.policy.parameters() if not p.requires_grad)

    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        rates: dict[str, list[float]] = {a: [] for a in ARMS}
        drawn: dict[str, list] = {}
        decode_rate(models, tok, rows, 4, ARMS[0])  # warm-up: allocator, thread pool
        for _ in range(args.rounds):
            for arm in (*ARMS, *reversed(ARMS)):
                rate, drawn[arm] = decode_rate(models, tok, rows, args.tokens, arm)
                rates[arm].append(rate)
        med = {a: statistics.median(v) for a, v in rates.items()}
        results.append({"rows": rows, "tokens_per_s": rates, "median": med, "ratio": med["cast-once"] / med["recast"],
                        "identical": drawn["recast"] == drawn["cast-once"]})
        print(f"... {rows} rows: {med}", flush=True)
    print(table(f"{args.model} + LoRA r=16 (frozen base: {frozen / 1e6:.0f}M parameters), bf16 autocast, greedy decode "
                f"tokens/s, median of {2 * args.rounds} (ABBA)",
                ["rows", "recast (before)", "cast once (now)", "speed-up", "same tokens"],
                [[str(r["rows"]), f"{r['median']['recast']:.1f}", f"{r['median']['cast-once']:.1f}",
                  f"{r['ratio']:.2f}x", "yes" if r["identical"] else "NO"] for r in results]))
    save_json(args.out, {"machine": machine(), "command": " ".join(["python", *sys.argv]), "model": args.model,
                         "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds,
                         "frozen_parameters": frozen, "results": results})
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    main()
