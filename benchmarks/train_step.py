"""RL training-step benchmark: our trainer's update phase against TRL's GRPOTrainer, same run; and
(`demo`) the demo's whole GRPO step before and after issue 22's levers.

    python benchmarks/train_step.py demo --demo-dir searchr1-demo       # see "The demo's step" below
    python benchmarks/train_step.py                                   # B=8, P=128, R=256, 3 repeats
    python benchmarks/train_step.py --batch 2 --prompt-len 16 --response-len 32 --repeats 1   # smoke test
    python benchmarks/train_step.py --only ours-grpo-full,trl-grpo-full --threads 2

What one "step" is (the work between two rollouts, generation excluded):
  both frameworks get the same fixed synthetic batch each step: B sequences = B/G groups of G
  (--group, default 4) sharing one prompt of P random token ids, each with its own response of R
  random token ids, one random reward in [0, 1) per sequence, and a loss mask that is 1 on the response except
  an "injected" block of R/4 tokens in its middle (where Search-R1 puts an <information> block).
  The step then does, as `searchr1.train.trainer.train` does in its steps 4-6 (`Learner.learn`):
    pad into tensors -> old log-probs (no grad) -> reference log-probs (no grad; KL 0.001)
    [-> critic values (PPO)] -> advantages (GRPO group-normalised; PPO KL-in-reward + GAE)
    -> 1 epoch, 1 mini-batch of B (gradient accumulation over --micro rows, default B)
    -> clip grad norm 1.0 -> AdamW step (lr 1e-6, critic 1e-5, weight decay 0.01) -> zero grads.
  Same model weights (`searchr1.modelhub.load_causal_lm`, offline GGUF copies), float32 on CPU.

Rows (`--only` takes these names):
  ours-grpo-full            our GRPO, full fine-tuning (frozen deep copy as reference)
  ours-grpo-lora            our GRPO, LoRA r=16 alpha=32 on all 7 projections (reference = adapter off)
  ours-ppo-full             our PPO, full fine-tuning + separate critic (its own trunk copy + value head)
  ours-ppo-lora             our PPO, LoRA policy + separate full critic
  ours-grpo-lora-qwen0.5b   our GRPO LoRA on Qwen2.5-Coder-0.5B-Instruct (skipped with a note if it cannot load)
  ours-grpo-full-chunk64    ours-grpo-full with train.compute.logits_chunk=64 (LM head over 64 response tokens at a time)
  ours-grpo-lora-qwen0.5b-chunk64   the same for the Qwen row
  trl-grpo-full             TRL GRPOTrainer as shipped (see below), full fine-tuning
  trl-grpo-full-oldlp       the same, forced to compute old log-probs in a separate forward
  trl-grpo-lora             TRL, LoRA with the same LoraConfig
  trl-grpo-lora-qwen0.5b    TRL, LoRA, Qwen2.5-Coder-0.5B-Instruct

How TRL is driven (trl 1.16, `pip install trl`; an optional benchmark dependency, not in pyproject):
  `GRPOTrainer.train()` itself runs, with generation replaced through its (experimental)
  `rollout_func` argument: it returns the step's precomputed prompt/completion ids and the same
  loss mask as `env_mask` (TRL masks those tokens from the loss, as ours does), and a reward
  function returns the step's rewards. Everything after generation is TRL's own code: padding,
  reference log-probs (beta=0.001; full FT loads a second copy from the model directory, LoRA
  disables the adapter), group-normalised advantages (scale_rewards="group"), loss "bnpo"
  (token mean over the mini-batch = our "token-mean"), epsilon 0.2, backward, clip 1.0,
  optim "adamw_torch", constant lr 1e-6, weight decay 0.01, no gradient checkpointing, no bf16.
  A TrainerCallback times on_step_begin -> on_step_end: one optimizer step including rollout_func,
  ref forward, rewards, advantages, loss, backward, clipping, optimizer and scheduler step.
  Not like-for-like, and why:
  - TRL as shipped (num_iterations=1, steps_per_generation = gradient_accumulation_steps) does NOT
    compute old log-probs: the ratio uses the current log-probs detached (equal on-policy). Ours
    does the same when GRPO takes one optimizer step per batch (this benchmark's shape; with
    several mini-batches or epochs both must recompute them first). `trl-grpo-full-oldlp` forces
    TRL to make that extra forward (num_iterations=2, with a subclass that regenerates every step
    so each timed step does the same work).
  - TRL computes log-probs with its fused, chunked LM head (never the full [B, R, V] logits);
    ours materialises the logits over the response columns (not over the prompt).
  - TRL's step also decodes the completions to text (for reward functions and logs) and keeps
    metrics; ours computes its own metrics. Both are small next to the forward/backward passes.
  - TRL has no PPO (removed in 1.x) and no search loop: the PPO rows have no TRL counterpart.
    The "x TRL" column divides by the TRL GRPO row of the same model and fine-tuning (for PPO
    that shows the price of the critic, not a framework difference).

Reported per row (each row runs in its own child process, so models, allocator and peak memory
never mix): seconds per step = median of --repeats steps after one warm-up step (excluded);
tokens/s = B x (P + R) / that median; peak RSS = the child's peak resident memory
(getrusage ru_maxrss, whole process: model load and reference/critic copies included); loaded RSS
= resident memory after the models are built, before the first step (not comparable across
frameworks: TRL's reference is a memory-mapped safetensors load whose pages count only once touched,
ours a deep copy); x TRL = s/step / s/step of the
matching TRL row (same model, same fine-tuning) of the same run (> 1: slower than TRL).

The demo's step (`demo`): `searchr1 train -c cpu-demo` as `searchr1 demo` runs it (16 rollouts of
the warm-up model from a finished demo directory, agent with BM25 over the demo's index, 2
mini-batches of 8, micro-batches of 4), --steps steps per run, one child process per run, in ABBA
order (--rounds times), of two arms that differ only in:
  A  today's:  train.compute.precision=fp32, train.loss.reuse_sampler_logprobs=false (old log-probs recomputed),
               train.compute.sort_micro_batches=false (micro-batches in the shuffled order)
  B  the new:  train.compute.precision=auto (bf16-mixed on a CPU with AVX512-BF16 / AMX), the sampler's
               log-probs as old log-probs, micro-batches sorted by length
The first step of each run is a warm-up and not counted; the table gives the median over the
other steps of each arm (step, rollout, prepare = old/ref log-probs, update), the padded share of
the update's micro-batches, and B/A. Compute floor: the step's FLOPs (trunk matmuls 2 x params per
token, attention 2 x layers x heads x head_dim x mean row length per token, LM head over response
tokens; 1 forward for the rollout (every token at least once), 1 for the reference, 3 for the
update's forward + backward: 5 forwards, none for the old log-probs) divided by the bf16 matmul
peak measured in the same run (F.linear 2048 x 576 -> 1536), and the fp32 peak next to it.
    python benchmarks/train_step.py demo --demo-dir searchr1-demo --steps 4 --rounds 1
    python benchmarks/train_step.py demo --demo-dir DIR --model M --quick   # a check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when imported by path, not run
from _common import CACHE, CHAIN_GRPO_DEMO, machine, matmul_peak, run_measured, save_json, table  # noqa: E402

PY = sys.executable
MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "qwen2.5-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct"}
LORA_R, LORA_ALPHA = 16, 32
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR, CRITIC_LR, WEIGHT_DECAY, KL_COEF, CLIP, MAX_GRAD_NORM = 1e-6, 1e-5, 0.01, 0.001, 0.2, 1.0

# name -> (framework, algorithm, model key, lora, extra)
ROWS: dict[str, tuple[str, str, str, bool, dict]] = {
    "ours-grpo-full": ("searchr1", "grpo", "smollm2-135m", False, {}),
    "ours-grpo-lora": ("searchr1", "grpo", "smollm2-135m", True, {}),
    "ours-ppo-full": ("searchr1", "ppo", "smollm2-135m", False, {}),
    "ours-ppo-lora": ("searchr1", "ppo", "smollm2-135m", True, {}),
    "ours-grpo-lora-qwen0.5b": ("searchr1", "grpo", "qwen2.5-0.5b", True, {}),
    "ours-grpo-full-chunk64": ("searchr1", "grpo", "smollm2-135m", False, {"logits_chunk": 64}),
    "ours-grpo-lora-qwen0.5b-chunk64": ("searchr1", "grpo", "qwen2.5-0.5b", True, {"logits_chunk": 64}),
    "trl-grpo-full": ("trl", "grpo", "smollm2-135m", False, {}),
    "trl-grpo-full-oldlp": ("trl", "grpo", "smollm2-135m", False, {"old_logprobs": True}),
    "trl-grpo-lora": ("trl", "grpo", "smollm2-135m", True, {}),
    "trl-grpo-lora-qwen0.5b": ("trl", "grpo", "qwen2.5-0.5b", True, {}),
}


def trl_reference(name: str) -> str:
    """The TRL row an `x TRL` ratio divides by: TRL as shipped, same model and fine-tuning."""
    _, _, model, lora, _ = ROWS[name]
    return "trl-grpo-" + ("lora" if lora else "full") + ("" if model == "smollm2-135m" else "-qwen0.5b")


# ============================================================================ synthetic data (shared)


class Synthetic:
    """The fixed-shape batch of step `step`: identical for both frameworks (seeded by the step)."""

    def __init__(self, tokenizer, B: int, P: int, R: int, G: int, seed: int) -> None:
        import torch

        self.B, self.P, self.R, self.G, self.seed = B, P, R, G, seed
        self.hi = int(tokenizer.vocab_size)
        self.specials = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.filler = min(1000, self.hi - 1)
        start = R // 2 - R // 8
        self.block = (start, start + R // 4) if R >= 4 else (R, R)  # injected tokens [a, b)

    def ids(self, gen, shape):
        import torch

        x = torch.randint(0, self.hi, shape, generator=gen)
        x[torch.isin(x, self.specials)] = self.filler  # never an EOS / pad / BOS id
        return x

    def trajectories(self, d: dict):
        """The step's sequences as the agent builds them (generated / injected / generated), and rewards."""
        import torch

        from searchr1.rollout.trajectory import Trajectory

        a, b = self.block
        trajs = []
        for i in range(self.B):
            t = Trajectory(question="", golden_answers=[], prompt_ids=d["prompt_ids"][i], id=str(i), group=d["groups"][i])
            r = d["response_ids"][i]
            t.append(r[:a], 1, [0.0] * a)
            t.append(r[a:b], 0)
            t.append(r[b:], 1, [0.0] * (len(r) - b))
            trajs.append(t)
        return trajs, torch.tensor(d["rewards"], dtype=torch.float32)

    def step(self, step: int) -> dict:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        prompts = self.ids(gen, (self.B // self.G, self.P)).repeat_interleave(self.G, 0)  # one prompt per group
        responses = self.ids(gen, (self.B, self.R))
        rewards = torch.rand(self.B, generator=gen)
        a, b = self.block
        mask = [1] * a + [0] * (b - a) + [1] * (self.R - b)
        return {"prompt_ids": prompts.tolist(), "response_ids": responses.tolist(), "mask": mask,
                "rewards": rewards.tolist(), "groups": [i // self.G for i in range(self.B)]}


def _load(model_key: str):
    from searchr1.modelhub import load_causal_lm

    model, tokenizer = load_causal_lm(MODELS[model_key], device="cpu", dtype="float32")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ============================================================================ ours


def child_ours(spec: dict) -> dict:
    import torch

    from searchr1.train.models import build_models
    from searchr1.train.settings import (ComputeConfig, KLConfig, LoRAConfig, LossConfig, OptimConfig,
                                         TrainConfig)
    from searchr1.train.batch import collate
    from searchr1.train.learner import Learner

    B, G = spec["batch"], spec["group"]
    model, tokenizer = _load(spec["model"])
    ppo = spec["algorithm"] == "ppo"
    tc = TrainConfig(algorithm=spec["algorithm"], steps=1 + spec["repeats"],
                     prompts_per_step=B if ppo else B // G, group_size=1 if ppo else G,
                     mini_batch_size=B, micro_batch_size=spec["micro"], ppo_epochs=1,
                     optim=OptimConfig(lr=LR, critic_lr=CRITIC_LR, weight_decay=WEIGHT_DECAY,
                                       max_grad_norm=MAX_GRAD_NORM),
                     loss=LossConfig(clip_ratio=CLIP), kl=KLConfig(coef=KL_COEF),
                     lora=LoRAConfig(r=LORA_R if spec["lora"] else 0, alpha=LORA_ALPHA, targets=list(LORA_TARGETS)),
                     critic="separate", tensorboard=False, progress=False, seed=spec["seed"],
                     # fp32 like the TRL rows (precision=auto is bf16-mixed on CPUs with native bf16)
                     compute=ComputeConfig(precision="fp32", logits_chunk=spec.get("logits_chunk", 0)))
    torch.manual_seed(tc.seed)
    models = build_models(model, tc)
    learner = Learner(models, tc)
    pad_id = tokenizer.pad_token_id
    data = Synthetic(tokenizer, B, spec["prompt_len"], spec["response_len"], G, spec["seed"])
    loaded_rss = _rss_mib()
    batches = [data.step(s) for s in range(1 + spec["repeats"])]

    def one_step(step: int) -> float:
        trajs, scores = data.trajectories(batches[step])
        start = time.perf_counter()
        # the trainer's steps 4-6 (tensors, old/ref log-probs, values, advantages, update)
        out = learner.learn(collate(trajs, pad_id, tc.loss.mask_retrieved), scores, step)
        seconds = time.perf_counter() - start
        if out["train/optimizer_steps"] != 1:
            raise RuntimeError(f"step {step}: {out['train/optimizer_steps']} optimizer steps (skipped: non-finite?)")
        return seconds

    times = [one_step(s) for s in range(1 + spec["repeats"])]
    return {"step_seconds": times[1:], "warmup_seconds": times[0], "loaded_rss_mib": loaded_rss}


# ============================================================================ TRL


def child_trl(spec: dict) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import trl
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        return {"skipped": "trl is not installed (pip install trl)"}
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    B, G, R = spec["batch"], spec["group"], spec["response_len"]
    micro = spec["micro"]
    model, tokenizer = _load(spec["model"])
    data = Synthetic(tokenizer, B, spec["prompt_len"], R, G, spec["seed"])
    steps = 1 + spec["repeats"]
    force_old = bool(spec.get("old_logprobs"))
    batches = [data.step(s) for s in range(steps)]  # made before timing, as ours
    state = {"step": -1, "current": None}

    def rollout_func(prompts, trainer):
        # Called once per optimizer step with the B prompts of the generation batch: returns the
        # step's precomputed tokens instead of sampling (one completion per prompt, as TRL requires).
        if len(prompts) != B:
            raise RuntimeError(f"rollout_func got {len(prompts)} prompts, expected {B}")
        state["step"] += 1
        d = state["current"] = batches[state["step"]]
        return {"prompt_ids": d["prompt_ids"], "completion_ids": d["response_ids"], "logprobs": None,
                "env_mask": [list(d["mask"]) for _ in range(B)]}

    def reward(prompts, completions, **kwargs):
        return list(state["current"]["rewards"])

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, st, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, st, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    class RegenerateEveryStep(GRPOTrainer):
        """num_iterations=2 makes TRL compute old log-probs; regenerating every step keeps it on-policy,
        one optimizer step per batch, as ours (and as the timed steps of the plain trainer)."""

        def _prepare_inputs(self, generation_batch):
            if self.model.training and self._step % self.args.steps_per_generation == 0:
                self._buffered_inputs = None  # a new batch at every optimizer step
            return super()._prepare_inputs(generation_batch)

    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                                 task_type="CAUSAL_LM", bias="none")
    out_dir = CACHE / f"trl-out-{os.getpid()}"
    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=micro, gradient_accumulation_steps=B // micro,
        num_generations=G, max_completion_length=R, max_steps=steps, num_iterations=2 if force_old else 1,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", max_grad_norm=MAX_GRAD_NORM, beta=KL_COEF, epsilon=CLIP, loss_type="bnpo",
        scale_rewards="group", temperature=1.0, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True,
        log_completions=False, seed=spec["seed"], dataloader_num_workers=0)
    dataset = Dataset.from_dict({"prompt": [f"question {i}" for i in range(max(64, steps * B))]})
    timer = Timer()
    cls = RegenerateEveryStep if force_old else GRPOTrainer
    trainer = cls(model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer,
                  peft_config=peft_config, rollout_func=rollout_func, callbacks=[timer])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])  # the trainer may reset it; set again after building
    loaded_rss = _rss_mib()
    trainer.train()
    if len(timer.times) != steps or state["step"] != steps - 1:
        raise RuntimeError(f"TRL ran {len(timer.times)} timed steps and {state['step'] + 1} rollouts, expected {steps}")
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    return {"step_seconds": timer.times[1:], "warmup_seconds": timer.times[0], "loaded_rss_mib": loaded_rss,
            "trl_version": trl.__version__}


def child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    try:
        result = (child_trl if spec["framework"] == "trl" else child_ours)(spec)
    except Exception as e:  # a model that cannot load is a skipped row, not a crash
        from searchr1.errors import SearchR1Error

        if not isinstance(e, SearchR1Error):
            raise
        result = {"skipped": str(e).splitlines()[0][:300]}
    result["threads"] = torch.get_num_threads()
    result["peak_rss_mib_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


# ============================================================================ the demo's step, A/B


DEMO_ARMS = {
    "A": ["train.compute.precision=fp32", "train.loss.reuse_sampler_logprobs=false", "train.compute.sort_micro_batches=false"],
    "B": ["train.compute.precision=auto", "train.loss.reuse_sampler_logprobs=auto", "train.compute.sort_micro_batches=true"],
}
DEMO_KEYS = ("time/step_s", "time/rollout_s", "time/prepare_s", "time/update_s", "batch/pad_fraction",
             "batch/tokens", "batch/response_tokens", "rollout/logprob_diff", "train/old_logprobs_from_sampler")
# a check that the arms run, in seconds (not a measurement): 2 rollouts, short turns, 2 steps
QUICK = ["train.prompts_per_step=1", "train.group_size=2", "train.mini_batch_size=1", "train.micro_batch_size=1",
         "agent.max_turn_tokens=16", "agent.max_response_tokens=96"]


def demo_overrides(args, arm: str, run_dir: Path) -> list[str]:
    """The dotted overrides of the cpu-demo preset for one run of `arm`. The learning rate stays the
    demo's of 2026-12-06 (5e-6) and so does its chain GRPO batch shape, as when train_step_demo.json was
    measured; the demo has used 2e-5 and tree rollouts since 2026-12-07."""
    return [f"retriever.index={args.demo_dir / 'index'}", "retriever.url=", f"model.name={args.model}",
            "train.optim.lr=5e-6", *CHAIN_GRPO_DEMO,
            "train.questions.datasets=[synthetic]", f"train.run_dir={run_dir}", f"train.steps={args.steps}",
            "train.save_every=0", "train.eval_every=0", "train.progress=false", "train.tensorboard=false",
            f"train.seed={args.seed}", *(QUICK if args.quick else []), *args.set, *DEMO_ARMS[arm]]


def demo_run(arm: str, run_dir: Path, args) -> list[dict]:
    """One `searchr1 train` child of `arm`; the metrics of its steps."""
    from searchr1.train.metrics_log import read_metrics

    cmd = [PY, "-m", "searchr1", "train", "-c", "cpu-demo", *demo_overrides(args, arm, run_dir)]
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else None
    run_measured(cmd, env=env)
    return [{k: row[k] for k in DEMO_KEYS if k in row} | {"step": row["step"]} for row in read_metrics(run_dir)
            if "time/step_s" in row]


def forward_flops(model: str, tokens: float, response_tokens: float, rows: int) -> float:
    """FLOPs of one forward pass over a batch of `rows` rows holding `tokens` tokens (LM head over the
    `response_tokens` only): see the module docstring."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from searchr1.modelhub import resolve_causal_lm

    config = AutoConfig.from_pretrained(resolve_causal_lm(model))
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    head = lm.get_output_embeddings()
    trunk = sum(m.weight.numel() for m in lm.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    mean_len = tokens / rows
    return (2 * trunk * tokens + 2 * config.num_hidden_layers * config.num_attention_heads * head_dim * mean_len * tokens
            + 2 * head.weight.numel() * response_tokens)


def demo_main(argv: list[str]) -> None:
    import shutil
    import tempfile

    import torch

    p = argparse.ArgumentParser(prog="train_step.py demo", description="the demo's GRPO step, arms A and B (ABBA)")
    p.add_argument("--demo-dir", type=Path, default=Path("searchr1-demo"),
                   help="a finished `searchr1 demo` directory (its index/ and sft-model/)")
    p.add_argument("--model", default="", help="the policy; default: DEMO_DIR/sft-model, the demo's warm-up model")
    p.add_argument("--steps", type=int, default=4, help="training steps per run (the first is a warm-up)")
    p.add_argument("--rounds", type=int, default=1, help="ABBA rounds")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny step (2 rollouts, short turns): checks that it runs")
    p.add_argument("--set", nargs="*", default=[], help="further dotted overrides for both arms (e.g. world.people=40)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step_demo.json")
    args = p.parse_args(argv)
    if not (args.demo_dir / "index").is_dir():
        p.error(f"{args.demo_dir / 'index'} does not exist: run `searchr1 demo demo.dir={args.demo_dir}` first "
                "(demo.retrieval_only=true builds only the index)")
    args.model = args.model or str(args.demo_dir / "sft-model")
    if not args.model.startswith(("HuggingFaceTB/", "Qwen/")) and not Path(args.model).exists():
        p.error(f"no model at {args.model}: a finished demo has DEMO_DIR/sft-model, or pass --model")
    if args.steps < 2 or args.rounds < 1:
        p.error("--steps must be >= 2 (the first step is not counted) and --rounds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from searchr1.modelhub import cpu_computes_bf16

    print(f"# searchr1 demo GRPO step, A/B — {time.strftime('%Y-%m-%d')} — {machine()}; torch {torch.__version__}, "
          f"threads {args.threads or torch.get_num_threads()}; CPU computes bf16 natively: {cpu_computes_bf16()}")
    peaks = {"bf16": matmul_peak("bfloat16"), "fp32": matmul_peak("float32")}
    order = ["A", "B", "B", "A"] * args.rounds
    steps: dict[str, list[dict]] = {"A": [], "B": []}
    root = Path(tempfile.mkdtemp(prefix="searchr1-demo-step-"))
    try:
        for i, arm in enumerate(order):
            print(f"... run {i + 1}/{len(order)}: arm {arm}", file=sys.stderr, flush=True)
            steps[arm] += demo_run(arm, root / f"{i}-{arm}", args)[1:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {arm: {k: statistics.median(s[k] for s in rows) for k in DEMO_KEYS if all(k in s for s in rows)}
           for arm, rows in steps.items()}
    from searchr1.config import load_config
    from searchr1.settings import Config

    tc = load_config(Config, "cpu-demo", demo_overrides(args, "B", root)).train
    forward = forward_flops(args.model, med["B"]["batch/tokens"], med["B"]["batch/response_tokens"],
                            tc.prompts_per_step * tc.group_size)
    # rollout 1 + reference 1 (when there is a KL) + update 3 (forward + backward); no old-log-prob pass
    floor_flops = (4 + (tc.kl.coef > 0)) * forward
    floor = {dt: floor_flops / peak for dt, peak in peaks.items()}
    cols = [("time/step_s", "step s"), ("time/rollout_s", "rollout s"), ("time/prepare_s", "old+ref log-probs s"),
            ("time/update_s", "update s"), ("batch/pad_fraction", "pad share"), ("batch/tokens", "tokens")]
    body = [[arm, len(steps[arm])] + [med[arm].get(k, float("nan")) for k, _ in cols] for arm in ("A", "B")]
    body.append(["B/A", "-"] + [med["B"].get(k, float("nan")) / med["A"].get(k, float("nan"))
                                if med["A"].get(k) else float("nan") for k, _ in cols])
    print(table("the demo's GRPO step: medians over the timed steps (ABBA)", ["arm", "steps"] + [c for _, c in cols],
                body))
    print(f"\nA: {' '.join(DEMO_ARMS['A'])}\nB: {' '.join(DEMO_ARMS['B'])}")
    print(f"speed-up A/B: {med['A']['time/step_s'] / med['B']['time/step_s']:.2f}x")
    print(f"compute floor of the step: {floor_flops / 1e12:.2f} TFLOP at the bf16 matmul peak "
          f"{peaks['bf16'] / 1e9:.0f} GFLOP/s = {floor['bf16']:.1f} s (fp32 peak {peaks['fp32'] / 1e9:.0f} GFLOP/s: "
          f"{floor['fp32']:.1f} s); B's step is {med['B']['time/step_s'] / floor['bf16']:.1f}x its bf16 floor")
    save_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(), "order": order,
                         "arms": DEMO_ARMS, "steps": steps, "medians": med, "peak_flops": peaks,
                         "floor_flops": floor_flops, "floor_seconds": floor})
    print(f"\nraw results: {args.out}")


# ============================================================================ main


def run_row(name: str, args) -> dict:
    framework, algorithm, model, lora, extra = ROWS[name]
    spec = {"framework": framework, "algorithm": algorithm, "model": model, "lora": lora, "batch": args.batch,
            "group": args.group, "micro": args.micro or args.batch, "prompt_len": args.prompt_len,
            "response_len": args.response_len, "repeats": args.repeats, "threads": args.threads,
            "seed": args.seed, **extra}
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else None
    try:
        wall, rss, out = run_measured([PY, __file__, "_child", json.dumps(spec)], env=env)
    except RuntimeError as e:
        return {"name": name, "spec": spec, "error": str(e).strip().splitlines()[-1][:300]}
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    return {"name": name, "spec": spec, "wall_s": wall, "peak_rss_mib": rss, **result}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        return child(sys.argv[2])
    if len(sys.argv) > 1 and sys.argv[1] == "demo":
        return demo_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="B: sequences per step (= the mini-batch)")
    p.add_argument("--group", type=int, default=0,
                   help="G: GRPO group size (sequences sharing a prompt), divides B; 0 = 4 (2 when B is not a multiple of 4)")
    p.add_argument("--micro", type=int, default=0, help="rows per forward/backward (gradient accumulation); 0 = B")
    p.add_argument("--prompt-len", type=int, default=128, help="P: prompt tokens")
    p.add_argument("--response-len", type=int, default=256, help="R: response tokens (R/4 of them injected)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per row (after one warm-up step)")
    p.add_argument("--only", default="", help=f"comma list of rows: {', '.join(ROWS)}")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_step.json")
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    micro = args.micro or args.batch
    args.group = args.group or (4 if args.batch % 4 == 0 else 2)
    if args.batch % args.group or args.batch % micro or args.group < 2:
        p.error("--group (>= 2) and --micro must divide --batch")
    if min(args.prompt_len, args.response_len, args.repeats) < 1:
        p.error("--prompt-len, --response-len and --repeats must be >= 1")
    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    import torch
    import transformers

    print(f"# searchr1 training-step benchmark — {time.strftime('%Y-%m-%d')} — {machine()}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl_version}, "
          f"threads {args.threads or torch.get_num_threads()}; B={args.batch} (groups of {args.group}, micro-batch "
          f"{micro}), P={args.prompt_len}, R={args.response_len} ({args.response_len // 4} injected), "
          f"float32 CPU, median of {args.repeats} steps after 1 warm-up")
    results = {}
    for name in names:
        print(f"... {name}", file=sys.stderr, flush=True)
        results[name] = run_row(name, args)
    tokens = args.batch * (args.prompt_len + args.response_len)
    rows, notes = [], []
    for name in names:
        r = results[name]
        framework, algorithm, model, lora, extra = ROWS[name]
        ft = f"LoRA r={LORA_R}" if lora else "full"
        if algorithm == "ppo":
            ft += " + critic"
        shape = f"{args.batch} x ({args.prompt_len}+{args.response_len})"
        if "step_seconds" not in r:
            reason = r.get("skipped") or r.get("error")
            notes.append(f"- {name}: {'skipped' if 'skipped' in r else 'FAILED'}: {reason}")
            rows.append([name, framework, algorithm, model, ft, shape, "-", "-", "-", "-", "-"])
            continue
        r["median_s"] = statistics.median(r["step_seconds"])
        ref = results.get(trl_reference(name), {})
        ref_s = statistics.median(ref["step_seconds"]) if "step_seconds" in ref else None
        ratio = f"{r['median_s'] / ref_s:.2f}" if ref_s else "-"
        rows.append([name, framework, algorithm, model, ft, shape, r["median_s"], tokens / r["median_s"],
                     r["peak_rss_mib"], r["loaded_rss_mib"], ratio])
    print(table("seconds and memory per RL update step (generation excluded; same synthetic batch for all rows)",
                ["row", "framework", "algorithm", "model", "fine-tuning", "B x (P+R)", "s/step (median)", "tokens/s",
                 "peak RSS MiB", "loaded RSS MiB", "x TRL time"], rows))
    print("\nx TRL time: s/step / s/step of the TRL row with the same model and fine-tuning, as shipped "
          "(trl-grpo-full, trl-grpo-lora, trl-grpo-lora-qwen0.5b); PPO rows compare with TRL GRPO (TRL has no PPO).")
    print("Both skip the separate old-log-prob forward here (one optimizer step per batch: on-policy); "
          "trl-grpo-full-oldlp forces TRL to make it.")
    if notes:
        print("\n" + "\n".join(notes))
    save_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine(),
                         "trl": trl_version, "rows": results})
    print(f"\nraw results: {args.out}")


if __name__ == "__main__":
    main()
