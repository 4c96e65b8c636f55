"""Decode passes of our engine by width and precision: what one token of a few rows costs, and why.

    python benchmarks/decode.py --model searchr1-demo/sft-model            # rows 1,2,4,8,16; 3 rounds (after `searchr1 demo`)
    python benchmarks/decode.py --rows 1,16 --passes 32 --rounds 1          # quick look

For each precision and pool width (--rows), one `EngineSession` of that many rows of the same
prompt (--prompt-tokens tokens) generates --passes tokens per row at temperature 1 (each row with
its own seeded generator, as in training); the time per decode pass is the median over --rounds
rounds, the precisions interleaved in each round (ABBA over rounds) so drift hits them alike:

  fp32       float32 weights, no autocast (evaluation's and the fp32 trainer's rollouts)
  bf16-mixed float32 weights under bf16 autocast (the trainer's rollouts under precision=auto on a
             CPU with native bf16): the weights require grad here, so autocast casts each once per
             session and the passes read the bf16 copies (`TrainModels.generation` does the same for
             a LoRA policy's frozen weights)
  bf16       bfloat16 weights, no autocast (a separate bf16 copy of the policy, as vLLM keeps)

Beside each width:
  sample ms   `sample_next` alone on that many rows of logits (per-row generators, as the engine
              calls it): the share of a pass that is sampling, not the model
  matmul ms   every nn.Linear of the model on that many random rows in that precision (the pass's
              matrix products alone; `rollout.linear_ceiling`)
  stream ms   the bytes of the model's weights in that precision divided by the read bandwidth
              measured in the same run (a 256 MB tensor summed): the floor of a pass that must read
              every weight once from memory

The ratio column divides fp32's ms per pass by the precision's (> 1: faster than fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, save_json, table  # noqa: E402
from rollout import linear_ceiling  # noqa: E402

PRECISIONS = ("fp32", "bf16-mixed", "bf16")


def read_bandwidth(repeats: int = 7) -> float:
    """Bytes per second of reading a 256 MB float32 tensor once (its sum): the rate a pass that
    streams its weights from memory can reach."""
    import torch

    x = torch.randn(64 * 1024 * 1024)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times[1:])


def decode_ms(gen, prompt: list[int], rows: int, passes: int, autocast: bool) -> float:
    """Median milliseconds of a decode pass of `rows` rows (the prefill pass excluded)."""
    import contextlib

    import torch

    from searchr1.rollout.generator import SamplingParams

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        s = gen.session([prompt] * rows, SamplingParams(temperature=1.0, seed=0))
        for r in range(rows):
            s.submit(r, [], passes + 1)
        s.step()  # every row's prefill (shared prompt) and its first token
        times = []
        while s.turns:
            t0 = time.perf_counter()
            s.step()
            times.append(time.perf_counter() - t0)
        s.close()
    return 1000 * statistics.median(times)


def sample_ms(vocab: int, rows: int, repeats: int = 15) -> float:
    import torch

    from searchr1.rollout.generator import SamplingParams
    from searchr1.rollout.sampling import sample_next

    logits = torch.randn(rows, vocab)
    gens = [torch.Generator().manual_seed(r) for r in range(rows)]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        sample_next(logits, SamplingParams(temperature=1.0, seed=0), gens)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="searchr1-demo/sft-model")
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--passes", type=int, default=48, help="decode passes per session")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/decode.json")
    args = ap.parse_args()

    import torch

    from searchr1.rollout.engine import EngineGenerator

    torch.set_num_threads(args.threads)
    widths = [int(r) for r in args.rows.split(",")]
    fp32 = EngineGenerator.from_pretrained(args.model, device="cpu", dtype="float32")
    bf16 = EngineGenerator.from_pretrained(args.model, device="cpu", dtype="bfloat16")
    engines = {"fp32": (fp32, False), "bf16-mixed": (fp32, True), "bf16": (bf16, False)}
    vocab = fp32.model.config.vocab_size
    prompt = list(range(1000, 1000 + args.prompt_tokens))
    bandwidth = read_bandwidth()
    params = sum(p.numel() for p in fp32.model.parameters())

    runs: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        order = PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]
        for rows in widths:
            for name in order:
                gen, autocast = engines[name]
                runs.setdefault((name, rows), []).append(decode_ms(gen, prompt, rows, args.passes, autocast))
        print(f"... round {round_ + 1}/{args.rounds} done", flush=True)

    results = []
    for rows in widths:
        smp = sample_ms(vocab, rows)
        base = statistics.median(runs[("fp32", rows)])
        for name in PRECISIONS:
            ms = statistics.median(runs[(name, rows)])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16-mixed"):
                mm = 1000 * rows / linear_ceiling((bf16 if name == "bf16" else fp32).model, rows)
            width_bytes = 4 if name == "fp32" else 2  # bf16-mixed reads autocast's cached bf16 copies
            results.append({"rows": rows, "precision": name, "ms_per_pass": ms, "tokens_per_s": 1000 * rows / ms,
                            "vs_fp32": base / ms, "sample_ms": smp, "matmul_ms": mm,
                            "stream_ms": 1000 * params * width_bytes / bandwidth, "runs_ms": runs[(name, rows)]})

    print(table("decode passes by width and precision", ["rows", "precision", "ms/pass", "tokens/s", "x fp32", "sample ms", "matmul ms", "stream ms"],
                [[r["rows"], r["precision"], f"{r['ms_per_pass']:.1f}", f"{r['tokens_per_s']:.1f}",
                  f"{r['vs_fp32']:.2f}", f"{r['sample_ms']:.1f}", f"{r['matmul_ms']:.1f}", f"{r['stream_ms']:.1f}"]
                 for r in results]))
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s; {params / 1e6:.1f}M parameters")
    save_json(Path(args.out), {"machine": machine(), "command": " ".join(sys.argv), "settings": vars(args),
                         "read_bandwidth_gb_s": bandwidth / 1e9, "parameters": params, "results": results})


if __name__ == "__main__":
    main()
