"""GPU benchmark: our rollout engine and our trainer on a randomly initialised Qwen2.5-shaped model.

    python benchmarks/gpu.py                                    # qwen2.5-0.5b, CUDA, bf16-mixed, 3 repeats
    python benchmarks/gpu.py --shape qwen2.5-1.5b --gradient-checkpointing --json gpu-1.5b.json
    python benchmarks/gpu.py --device cpu --shape tiny          # smoke test (what the test runs)
    .venv-vllm/bin/python benchmarks/gpu.py --only rollout,vllm  # our engine against vLLM (make vllm-env)
    .venv-vllm/bin/python benchmarks/gpu.py --device cpu --shape tiny-hd64 --only rollout,vllm   # its smoke test

The model is `Qwen2ForCausalLM` built from a `Qwen2Config` with the published shape (SHAPES
below, from the models' config.json) and random weights: nothing is downloaded, and the weights
do not change the speed. Token ids are random; no id can end a sequence (see below).

Rows (`--only` takes these names), each timed as the median of --repeats runs after one warm-up:
  rollout  `searchr1.rollout.engine.EngineGenerator.generate`: --batch prompts of --prompt-len random ids,
           exactly --gen-tokens new tokens each (temperature 1, one KV cache for the batch).
           The model has no EOS id and the tokenizer stub none either, and no stop strings are
           given, so every row runs to its budget; the script fails if any row generated another
           count. tokens/s = generated tokens / seconds of the whole call (prefill included).
  vllm     `searchr1.rollout.vllm.VLLMGenerator.generate` (rollout.backend=vllm) on the same model (saved
           to a temporary directory, loaded by vLLM in bf16 on CUDA / fp32 on CPU), the same prompts,
           counts and sampling as the rollout row; vLLM's start-up is timed apart (`startup_s`), not in
           the row. Runs by default where vLLM is installed (its own environment: make vllm-env).
  train    `searchr1.train.learner.Learner.learn`, GRPO, full fine-tuning: --train-batch sequences (groups
           of 4) of --prompt-len prompt + --response-len response random ids, the middle quarter of
           each response injected (loss mask 0), micro-batch --micro, AdamW lr 1e-6, KL 0.001 (the
           reference forward runs), 1 epoch, 1 mini-batch of the whole batch: so the old-log-prob
           forward is skipped, as `learn` does for single-step GRPO. The batch is collated and on
           the device before the clock starts; tokens/s = B x (P + R) / seconds of Learner.learn().

FLOPs and MFU (model FLOPs, the PaLM convention: recomputation under gradient checkpointing is
not counted). N = non-embedding parameters (every weight of the decoder layers and final norm,
biases included); the embedding lookup costs nothing and the tied LM head (V x d) is counted
where our code applies it. Per forward over B sequences of length S = P + R:
    2 N B S  +  2 V d B R (logits over the response columns only)  +  4 L d S B S (attention)
and training = 3 x that (forward + backward: 6N and 12 L d S per token) + 1 x that (reference).
Rollout: 2 N per token fed (B (P + G - 1)) + 2 V d per generated token, attention excluded
(decoding is memory-bound; this row's MFU is only indicative). MFU = FLOPs / seconds / peak dense
bf16 FLOP/s of the GPU (PEAK_BF16 by device name, or --peak-tflops); n/a on CPU, and under fp32
unless --peak-tflops is given (the table's peaks are bf16).

Memory: CUDA max_memory_allocated over the row (model weights included; the train row also holds
the reference copy, gradients and AdamW state). On CPU: the process's peak RSS so far (getrusage),
which is cumulative across rows.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import machine, save_json, table  # noqa: E402
from train_step import Synthetic

# From the published config.json files (Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-1.5B): rope_theta 1e6,
# rms_norm_eps 1e-6, 32768 positions, tied embeddings.
SHAPES = {
    "qwen2.5-0.5b": dict(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936),
    "qwen2.5-1.5b": dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=151936),
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=1000),
    # head_dim 64: vLLM's CPU attention has no kernel for tiny's 16 (the vllm row's CPU smoke test)
    "tiny-hd64": dict(hidden=128, intermediate=256, layers=2, heads=2, kv_heads=2, vocab=1000),
}
# Peak dense (no sparsity) bf16 tensor FLOP/s; first name fragment found in the device name wins.
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12)]
CUDA_DEFAULTS = dict(batch=64, prompt_len=256, gen_tokens=256, train_batch=16, response_len=512, micro=4)
CPU_DEFAULTS = dict(batch=4, prompt_len=32, gen_tokens=16, train_batch=4, response_len=32, micro=2)
PAD = 0
ROWS = ("rollout", "train", "vllm")


def param_counts(s: dict) -> tuple[int, int]:
    """(N = non-embedding parameters, LM head parameters V x d) of a Qwen2 shape."""
    d, kv = s["hidden"], s["kv_heads"] * s["hidden"] // s["heads"]
    layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * s["intermediate"] + 2 * d  # q,k,v (bias), o, MLP, norms
    return s["layers"] * layer + d, s["vocab"] * d


def forward_flops(s: dict, batch: int, prompt: int, response: int) -> int:
    n, head = param_counts(s)
    seq = prompt + response
    return 2 * n * batch * seq + 2 * head * batch * response + 4 * s["layers"] * s["hidden"] * seq * batch * seq


def train_flops(s: dict, batch: int, prompt: int, response: int, extra_forwards: int = 1) -> int:
    """Model FLOPs of one Learner.learn(): forward + backward (3 forwards) + no-grad forwards (reference)."""
    return (3 + extra_forwards) * forward_flops(s, batch, prompt, response)


def rollout_flops(s: dict, batch: int, prompt: int, gen: int) -> int:
    n, head = param_counts(s)
    return 2 * n * batch * (prompt + gen - 1) + 2 * head * batch * gen


class IdTokenizer:
    """All EngineGenerator, collate and the synthetic batches read: a pad id, no EOS (decode only serves
    stop strings), the vocabulary size and the special ids random tokens must avoid."""

    pad_token_id, eos_token_id = PAD, None
    all_special_ids = [PAD]

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def decode(self, ids) -> str:
        return " ".join(map(str, ids))


def build_model(shape: str, device, dtype):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    s = SHAPES[shape]
    cfg = Qwen2Config(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                      max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      pad_token_id=PAD, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):  # initialised on the GPU: a CPU init of 1.5B weights takes a while
        model = Qwen2ForCausalLM(cfg)
    model.to(dtype).eval()
    n, head = param_counts(s)
    if sum(p.numel() for p in model.parameters()) != n + head:  # the FLOPs count must describe this model
        raise RuntimeError(f"{shape}: model has {sum(p.numel() for p in model.parameters())} parameters, "
                           f"param_counts says {n + head}")
    return model


def random_ids(gen, vocab: int, *shape):
    import torch

    return torch.randint(1, vocab, shape, generator=gen)  # never PAD


def timed(fn, repeats: int, sync) -> list[float]:
    times = []
    for i in range(1 + repeats):
        sync()
        t = time.perf_counter()
        fn(i)
        sync()
        times.append(time.perf_counter() - t)
    return times


def timed_generation(gen, vocab_size: int, args, sync, context=contextlib.nullcontext) -> dict:
    """The rollout rows' measurement, for any `Generator`: --batch prompts of --prompt-len random ids,
    exactly --gen-tokens new tokens each (temperature 1), timed by `timed` (each run under `context()`)."""
    import torch

    from searchr1.rollout.generator import SamplingParams

    if gen.eos_ids:
        raise RuntimeError(f"the generator would stop at {gen.eos_ids}: rows could end early")
    prompts = random_ids(torch.Generator().manual_seed(args.seed), vocab_size, args.batch, args.prompt_len).tolist()
    generated = []

    def run(i):
        with context():
            out = gen.generate(prompts, args.gen_tokens, params=SamplingParams(temperature=1.0, seed=args.seed + i))
        short = [(k, len(s.token_ids), s.finish) for k, s in enumerate(out) if len(s.token_ids) != args.gen_tokens]
        if short:
            raise RuntimeError(f"rows generated other than {args.gen_tokens} tokens (row, count, finish): {short[:5]}")
        generated.append(sum(len(s.token_ids) for s in out))

    times = timed(run, args.repeats, sync)
    return {"times_s": times, "tokens": generated[-1], "generated_tokens": generated[-1],
            "flops": rollout_flops(SHAPES[args.shape], args.batch, args.prompt_len, args.gen_tokens),
            "work": f"{args.batch} x ({args.prompt_len} prompt + {args.gen_tokens} new)"}


def bench_rollout(model, args, autocast, sync) -> dict:
    from searchr1.rollout.engine import EngineGenerator

    return timed_generation(EngineGenerator(model, IdTokenizer(model.config.vocab_size)), model.config.vocab_size,
                            args, sync, autocast)


def bench_train(model, args, autocast_dtype, sync) -> dict:

    from searchr1.train.models import build_models
    from searchr1.train.settings import ComputeConfig, KLConfig, OptimConfig, TrainConfig
    from searchr1.train.batch import collate
    from searchr1.train.learner import Learner

    B, P, R, G = args.train_batch, args.prompt_len, args.response_len, args.group
    tc = TrainConfig(algorithm="grpo", steps=1 + args.repeats, prompts_per_step=B // G, group_size=G,
                     mini_batch_size=B, micro_batch_size=args.micro, ppo_epochs=1, optim=OptimConfig(lr=1e-6),
                     kl=KLConfig(coef=0.001), compute=ComputeConfig(
                         gradient_checkpointing=args.gradient_checkpointing, precision=args.precision),
                     tensorboard=False, progress=False, seed=args.seed)
    models = build_models(model, tc, autocast_dtype)
    learner = Learner(models, tc)
    device = next(model.parameters()).device
    # the synthetic batches of train_step.py: groups sharing a prompt, the middle quarter of each
    # response injected (where an <information> block would sit); a fresh batch per step, built
    # before any timing
    data = Synthetic(IdTokenizer(model.config.vocab_size), B, P, R, G, args.seed)
    batches = []
    for step in range(1 + args.repeats):
        trajs, scores = data.trajectories(data.step(step))
        batches.append((collate(trajs, PAD).to(device), scores.to(device)))

    def run(i):
        out = learner.learn(batches[i][0], batches[i][1], i + 1)
        if out["train/optimizer_steps"] != 1:
            raise RuntimeError(f"step {i}: {out['train/optimizer_steps']} optimizer steps (non-finite loss?)")

    times = timed(run, args.repeats, sync)
    return {"times_s": times, "tokens": B * (P + R),
            "flops": train_flops(SHAPES[args.shape], B, P, R, extra_forwards=1 if models.reference is not None else 0),
            "work": f"{B} x ({P}+{R}), micro {args.micro}"}


def peak_flops(args, device_name: str, mixed_or_bf16: bool) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device != "cuda" or not mixed_or_bf16:
        return None
    return next((f for frag, f in PEAK_BF16 if frag in device_name), None)


def bench_vllm(model, args, sync) -> dict:
    import tempfile

    from searchr1.modelhub import resolve_dtype
    from searchr1.rollout.vllm import VLLMGenerator

    with tempfile.TemporaryDirectory(prefix="searchr1-gpu-bench-") as folder:
        model.save_pretrained(folder)  # config + weights, no tokenizer: the engine returns ids only
        gen = VLLMGenerator(folder, IdTokenizer(model.config.vocab_size), device=args.device,
                            dtype=resolve_dtype("auto", args.device), seed=args.seed, engine_tokenizer=False)
        try:
            return {**timed_generation(gen, model.config.vocab_size, args, sync), "startup_s": gen.startup_seconds}
        finally:
            gen.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="qwen2.5-0.5b")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--precision", choices=["auto", "bf16-mixed", "fp32", "bf16"], default="auto",
                   help="auto = bf16-mixed on CUDA, fp32 on CPU (as training)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    default_rows = ["rollout", "train"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    p.add_argument("--only", default=",".join(default_rows), help="comma list of rows: rollout,train,vllm "
                                                                   "(vllm by default where it is installed)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (after one warm-up)")
    for name, help_ in [("batch", "rollout prompts"), ("prompt-len", "prompt tokens (both rows)"),
                        ("gen-tokens", "rollout: new tokens per prompt"), ("train-batch", "train: sequences (B)"),
                        ("response-len", "train: response tokens (R)"), ("micro", "train: rows per forward/backward")]:
        key = name.replace("-", "_")
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"{help_}; default {CUDA_DEFAULTS[key]} on CUDA, {CPU_DEFAULTS[key]} on CPU")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak dense FLOP/s of the GPU in TFLOP/s (MFU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    import torch
    import transformers

    from searchr1.train.models import resolve_precision

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    for key, value in (CUDA_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    if not rows or set(rows) - set(ROWS):
        p.error(f"--only takes {', '.join(ROWS)}")
    args.group = 4 if args.train_batch % 4 == 0 else 2
    if args.train_batch % args.group or args.train_batch % args.micro:
        p.error("--train-batch must be even, and a multiple of --micro")
    if min(args.batch, args.prompt_len, args.gen_tokens, args.response_len, args.repeats) < 1:
        p.error("lengths, batch sizes and --repeats must be >= 1")
    if args.precision == "auto":
        args.precision = "bf16-mixed" if args.device == "cuda" else "fp32"
    weights_dtype, autocast_dtype = resolve_precision(args.precision, args.device)

    cuda = args.device == "cuda"
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    peak = peak_flops(args, device_name, args.precision != "fp32")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    autocast = ((lambda: torch.autocast(args.device, dtype=autocast_dtype)) if autocast_dtype is not None
                else contextlib.nullcontext)
    n, head = param_counts(SHAPES[args.shape])
    print(f"# searchr1 GPU benchmark — {time.strftime('%Y-%m-%d')} — {device_name}")
    print(f"torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if cuda else "") + f", transformers {transformers.__version__}, "
          f"{machine()}; shape {args.shape} (random init; N = {n / 1e6:.1f}M non-embedding + {head / 1e6:.1f}M "
          f"tied embedding/LM head), precision {args.precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}; median of {args.repeats} after 1 warm-up; peak "
          + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "n/a (MFU not computed)"))

    model = build_model(args.shape, args.device, getattr(torch, weights_dtype))
    results = {}
    for row in rows:
        print(f"... {row}", file=sys.stderr, flush=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        r = (bench_rollout(model, args, autocast, sync) if row == "rollout"
             else bench_vllm(model, args, sync) if row == "vllm"
             else bench_train(model, args, autocast_dtype, sync))
        r["seconds"] = statistics.median(r["times_s"][1:])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["tflops_per_s"] = r["flops"] / r["seconds"] / 1e12
        r["mfu"] = r["flops"] / r["seconds"] / peak if peak else None
        r["peak_mem_mib"] = (torch.cuda.max_memory_allocated() if cuda
                             else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        results[row] = r
    mem = "peak GPU MiB (allocated)" if cuda else "peak RSS MiB (process, cumulative)"
    print(table(f"{args.shape} on {device_name}, {args.precision}",
                ["row", "work per run", "s (median)", "tokens/s", "TFLOP/s", "MFU", mem],
                [[row, r["work"], r["seconds"], r["tokens_per_s"], r["tflops_per_s"],
                  f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a", r["peak_mem_mib"]]
                 for row, r in results.items()]))
    print("\nrollout tokens = generated tokens; train tokens = B x (P + R). FLOPs: see the docstring (--help).")
    if "vllm" in results:
        print(f"vllm engine start-up (not in its row): {results['vllm']['startup_s']:.0f} s")
        if "rollout" in results:
            ratio = results["vllm"]["tokens_per_s"] / results["rollout"]["tokens_per_s"]
            results["vllm"]["speedup_vs_rollout"] = ratio
            print(f"vllm / our engine (rollout row), tokens/s: {ratio:.2f}x")
    if args.json:
        save_json(args.json, {"date": time.strftime("%Y-%m-%d"), "device": device_name, "torch": torch.__version__,
                              "transformers": transformers.__version__, "peak_flops": peak,
                              "args": {k: str(v) for k, v in vars(args).items()}, "memory": mem, "rows": results})
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
