"""The demo's RL update with and without its silent rows (`train.compute.skip_silent_rows`): rows whose
advantage is 0 at every token (every row of a group whose rewards are all equal) have exactly zero
gradient when no KL, entropy, LLDS or critic term reads them, so the update can leave them out.

    python benchmarks/silent_rows.py                        # 3 rounds, ABBA, SmolLM2-135M-Instruct
    python benchmarks/silent_rows.py --rounds 1 --repeats 1 --response 48 --prompt 32   # smoke test

One batch shaped like a demo step (--groups groups of --group-size rows, --prompt prompt tokens
left-padded by up to a third, responses of up to --response tokens, --generated of them generated,
the rest retrieved), of which --silent groups have equal rewards: the demo's three seeds of
2026-12-07 had 0.63 of their groups so (`adv/zero_variance_fraction`, mean over 42 steps), so the
default is 2 of 4 and 3 of 4 is the common bad step. The learner is the demo's (GRPO, KL 0, mini-batch
12, micro-batch 4, bf16 autocast, AdamW) built anew for every timed update from the same weights, so
each arm updates the same model. Arms, interleaved ABBA over --rounds rounds:

  all rows   skip_silent_rows=false: every row through the forward and backward passes
  skip       skip_silent_rows=true (the default)

update ms is `Learner.update` (all its mini-batches and optimizer steps), the median of --repeats per
round, then of the rounds; the ratio divides all rows' time by skip's (> 1: faster). In the title:
how far apart the two arms' weight changes are after one update, relative to their size, under bf16
autocast (the timed runs) and in fp32 (one untimed update of each arm). The gradient is the same;
bf16 autocast and a different grouping of rows into micro-batches change its rounding, and AdamW's
first step, about lr * sign(gradient), turns the rounding of near-zero gradients into whole steps.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save_json, table  # noqa: E402

ARMS = ("all rows", "skip")


def demo_batch(vocab: int, args, seed: int = 0):
    """A collated batch of demo-shaped trajectories and its scores (the first --silent groups flat)."""
    import random

    import torch

    from searchr1.rollout.trajectory import Trajectory
    from searchr1.train.batch import collate

    rng = random.Random(seed)
    trajs, scores = [], []
    for g in range(args.groups):
        prompt = [rng.randrange(2, vocab) for _ in range(args.prompt - rng.randrange(args.prompt // 3 + 1))]
        for k in range(args.group_size):
            t = Trajectory(question=f"q{g}", golden_answers=[], prompt_ids=prompt, group=g)
            length = rng.randrange(args.response * 2 // 3, args.response + 1)
            generated = int(length * args.generated)
            t.append([rng.randrange(2, vocab) for _ in range(generated)], 1, [-1.0] * generated)
            t.append([rng.randrange(2, vocab) for _ in range(length - generated)], 0)
            trajs.append(t)
            scores.append(0.0 if g < args.silent else float(k % 2))
    return collate(trajs, 0), torch.tensor(scores)


def learner_for(model, skip: bool, autocast=True):
    import torch

    from searchr1.train.learner import Learner
    from searchr1.train.models import build_models
    from searchr1.train.settings import ComputeConfig, KLConfig, OptimConfig, TrainConfig

    tc = TrainConfig(algorithm="grpo", prompts_per_step=4, group_size=6, mini_batch_size=12, micro_batch_size=4,
                     optim=OptimConfig(lr=2e-5), kl=KLConfig(coef=0.0), compute=ComputeConfig(skip_silent_rows=skip))
    return Learner(build_models(copy.deepcopy(model), tc, torch.bfloat16 if autocast else None), tc)


def flat_weights(module):
    import torch

    return torch.cat([q.detach().flatten() for q in module.parameters()])


def relative_gap(skip, all_rows, start) -> float:
    """How far apart the two arms' weight changes are, relative to the size of all rows' change."""
    return float((skip - all_rows).norm() / (all_rows - start).norm())


def weight_change_gap(model, batch, scores) -> float:
    """`relative_gap` after one fp32 update of each arm."""
    after = {}
    for skip in (False, True):
        learner = learner_for(model, skip, autocast=False)
        prepared, _ = learner.prepare(batch, scores)
        learner.update(prepared, step=1)
        after[skip] = flat_weights(learner.models.policy)
    return relative_gap(after[True], after[False], flat_weights(model))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--group-size", type=int, default=6)
    p.add_argument("--silent", type=int, default=2, help="groups whose rewards are all equal")
    p.add_argument("--prompt", type=int, default=200)
    p.add_argument("--response", type=int, default=300)
    p.add_argument("--generated", type=float, default=0.45, help="the generated share of a response")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "silent_rows.json")
    args = p.parse_args()

    from searchr1.allocator import tune_malloc

    tune_malloc()  # as the CLI does
    import torch

    from searchr1.modelhub import load_causal_lm

    torch.manual_seed(0)
    model, _ = load_causal_lm(args.model)
    batch, scores = demo_batch(model.config.vocab_size, args)
    print(f"# the demo's update with and without silent rows — {time.strftime('%Y-%m-%d')} — {machine()}; "
          f"model {args.model}; {args.groups} groups x {args.group_size} rows, {args.silent} of them with equal "
          f"rewards; prompt <= {args.prompt}, response <= {args.response} tokens ({args.generated:.0%} generated); "
          "bf16 autocast")
    times: dict[str, list[float]] = {a: [] for a in ARMS}
    weights: dict[str, torch.Tensor] = {}
    left_out = 0.0
    for r in range(args.rounds):
        for arm in (ARMS if r % 2 == 0 else ARMS[::-1]):
            runs = []
            for _ in range(args.repeats):
                learner = learner_for(model, arm == "skip")
                prepared, _ = learner.prepare(batch, scores)
                t0 = time.perf_counter()
                stats = learner.update(prepared, step=1)
                runs.append(time.perf_counter() - t0)
                if arm == "skip":
                    left_out = stats["train/silent_rows_left_out"]
                weights[arm] = flat_weights(learner.models.policy)
            times[arm].append(statistics.median(runs))
            print(f"round {r + 1} {arm}: update {1000 * times[arm][-1]:.0f} ms", flush=True)
    med = {a: 1000 * statistics.median(times[a]) for a in ARMS}
    diff = relative_gap(weights["skip"], weights["all rows"], flat_weights(model))
    fp32_gap = weight_change_gap(model, batch, scores)
    rows = [[a, med[a], med["all rows"] / med[a], int(left_out) if a == "skip" else 0] for a in ARMS]
    headers = ["arm", "update ms", "x all rows", "rows left out"]
    print(table(f"medians over {args.rounds} rounds of {args.repeats} updates each (ABBA); after one update the "
                f"arms' weight changes differ by {diff:.2e} of their L2 norm under bf16 autocast, {fp32_gap:.2e} "
                "in fp32", headers, rows))
    save_json(args.out, {"command": "python benchmarks/silent_rows.py " + " ".join(sys.argv[1:]),
                         "date": time.strftime("%Y-%m-%d"), "machine": machine(), "headers": headers, "rows": rows,
                         "times_s": times, "relative_weight_change_difference": diff,
                         "relative_weight_change_difference_fp32": fp32_gap,
                         "batch": {"rows": batch.size, "silent_groups": args.silent, "groups": args.groups,
                                   "tokens": int(batch.attention_mask.sum())}})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
