"""The entropy metric of the RL update, before and after dropping its -inf guard from the common case.

    python benchmarks/entropy.py                      # the demo's micro-batch shape; 5 rounds, ABBA
    python benchmarks/entropy.py --rows 64 --rounds 1 --repeats 2      # smoke test

The learner logs the policy's entropy at every scored token of every micro-batch
(`searchr1.rl.entropy_from_logits` over fp32 logits ``[N, V]``). Before, it replaced every
non-finite log-prob by 0 (``where(isfinite(logp), logp, 0)``) so that a banned token (logit -inf)
adds 0 rather than ``0 * -inf = NaN``; that is four more passes over ``[N, V]`` (isfinite's abs, eq
and ne, then the where). Now the plain form is computed and the guarded one only when a position
came out NaN, which a finite logit never does; the values are the same bits
(`tests/unit/test_rl_losses.py`).

Arms, in ABBA order over --rounds rounds, each the median of --repeats calls on the same logits:

  guarded   the former function (written out here)
  now       `entropy_from_logits`
  step      one micro-batch of the update as the learner runs it now: forward + backward of
            `sequence_logprobs` with the entropy metric, under bf16 autocast, --seq rows x prompt x
            response random tokens with about --rows of them scored: what the saving is a share of

N defaults to the demo's micro-batch: 4 rows of 260 response tokens, 40% of them scored (416).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save_json, table  # noqa: E402


def guarded_entropy(logits):
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -(p * torch.where(torch.isfinite(logp), logp, torch.zeros((), dtype=logp.dtype))).sum(dim=-1)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--rows", type=int, default=416, help="scored positions in one micro-batch (N)")
    p.add_argument("--seq", default="4x150x260", help="the step arm's micro-batch: rows x prompt x response")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "entropy.json")
    args = p.parse_args()

    from searchr1.allocator import tune_malloc

    tune_malloc()  # as the CLI does, before torch's first allocation
    import torch

    from searchr1.modelhub import load_causal_lm
    from searchr1.rl import entropy_from_logits
    from searchr1.train.models import sequence_logprobs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = load_causal_lm(args.model)
    model.train()
    V = model.config.vocab_size
    logits = torch.randn(args.rows, V) * 3
    if not torch.equal(entropy_from_logits(logits), guarded_entropy(logits)):
        raise SystemExit("the two forms disagree: the comparison would not be like for like")

    B, P, R = (int(x) for x in args.seq.split("x"))
    ids = torch.randint(0, V, (B, P + R))
    mask = torch.ones_like(ids)
    scored = torch.rand(B, R, generator=torch.Generator().manual_seed(1)) < args.rows / (B * R)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sequence_logprobs(model, ids, mask, P, with_entropy=True, entropy_grad=False, positions=scored)
        (out.logprobs * scored).sum().backward()
        model.zero_grad(set_to_none=True)

    arms = {"guarded": lambda: guarded_entropy(logits), "now": lambda: entropy_from_logits(logits), "step": step}
    runs: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(args.rounds):
        for name in (list(arms) if round_ % 2 == 0 else list(arms)[::-1]):
            with torch.no_grad() if name != "step" else torch.enable_grad():
                runs[name].append(timed(arms[name], args.repeats))
        print(f"... round {round_ + 1}/{args.rounds}", flush=True)

    ms = {name: statistics.median(v) for name, v in runs.items()}
    saved = ms["guarded"] - ms["now"]
    print(table(f"entropy over [{args.rows}, {V}] fp32 logits, and one update micro-batch ({args.seq}, bf16 autocast)",
                ["arm", "ms (median)", "x guarded", "share of the step"],
                [["guarded (before)", f"{ms['guarded']:.1f}", "1.00", f"{ms['guarded'] / ms['step']:.3f}"],
                 ["now", f"{ms['now']:.1f}", f"{ms['guarded'] / ms['now']:.2f}", f"{ms['now'] / ms['step']:.3f}"],
                 ["update micro-batch (now)", f"{ms['step']:.0f}", "", "1.000"]]))
    print(f"saved per micro-batch: {saved:.0f} ms, {saved / (ms['step'] + saved):.1%} of the step as it was")
    save_json(args.out, {"machine": machine(), "command": " ".join(sys.argv), "settings": vars(args) | {"out": str(args.out)},
                         "runs_ms": runs, "median_ms": ms, "saved_ms": saved,
                         "saved_share_of_step_before": saved / (ms["step"] + saved)})


if __name__ == "__main__":
    main()
