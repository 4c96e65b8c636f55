"""Settings of `searchr1 train`: one of the algorithms of `searchr1.rl.algorithms` (PPO, GRPO, RLOO,
REINFORCE, REINFORCE++) over multi-turn search rollouts, in sections by concern:

  train.*          the algorithm, the batch shape and the run's bookkeeping
  train.optim      the optimizer and its schedule
  train.loss       the policy (and value) loss
  train.kl         the KL to the reference model
  train.adv        the advantages (GAE, GRPO's normalisation, REINFORCE's baseline)
  train.dapo       DAPO's dynamic sampling and overlong handling
  train.sampling   how rollouts sample
  train.questions  the training questions
  train.lora       LoRA adapters
  train.compute    precision, sharding and memory

Defaults are the Search-R1 paper's where they apply (actor lr 1e-6, critic lr 1e-5, KL 0.001, clip
0.2, GRPO group 5, temperature 1.0, 1005 steps, batch 512, mini-batch 256, gamma = lambda = 1).
The paper's batch and step counts need a GPU cluster; presets such as `paper-grpo-qwen2.5-3b` set
them, the defaults here are the paper's too so that nothing is silently smaller than it says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param
from searchr1.data.settings import QuestionSource
from searchr1.retrieval.settings import METHODS
from searchr1.rl.algorithms import ALGORITHMS, algorithm
from searchr1.rl.names import AGG_MODES, KL_KINDS

#: train.retriever_method: '' (search what retriever.* names) or a retrieval method to search instead.
RETRIEVER_METHODS = ("", *(m for m in METHODS if m != "auto"))


def _names(**row) -> str:
    """The algorithms whose row has these values, for help texts and errors."""
    return ", ".join(a.name for a in ALGORITHMS.values() if all(getattr(a, k) == v for k, v in row.items()))


@dataclass
class OptimConfig:
    lr: float = param(1e-6, "policy learning rate (AdamW)")
    critic_lr: float = param(1e-5, f"critic learning rate (algorithms with a critic: {_names(needs_critic=True)})")
    warmup_steps: int = param(0, "optimizer steps of linear learning-rate warm-up, then constant")
    weight_decay: float = param(0.01, "AdamW weight decay")
    max_grad_norm: float = param(1.0, "gradient clipping by global norm; 0 = off")
    max_skipped_updates: int = param(5, "stop the run with an error after this many consecutive optimizer "
                                        "steps skipped for a non-finite loss or gradient (the last checkpoint "
                                        "is kept); 0 = never stop")

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.critic_lr <= 0:
            raise ValueError("lr and critic_lr must be positive")
        if self.max_skipped_updates < 0:
            raise ValueError("max_skipped_updates must be >= 0 (0 = never stop)")
        if min(self.warmup_steps, self.weight_decay, self.max_grad_norm) < 0:
            raise ValueError("warmup_steps, weight_decay and max_grad_norm must be >= 0")


@dataclass
class LossConfig:
    clip_ratio: float = param(0.2, "PPO clip epsilon (lower bound, and upper bound unless clip_ratio_high)")
    clip_ratio_high: float = param(0.0, "upper clip epsilon (DAPO clip-higher); 0 = same as clip_ratio")
    dual_clip_c: float = param(0.0, "dual-clip constant (> 1) bounding the loss of negative advantages; 0 = off")
    entropy_coef: float = param(0.0, "entropy bonus coefficient")
    tis_cap: float = param(0.0, "truncated importance sampling: weigh each token's policy loss by "
                                "min(p_trainer / p_sampler, tis_cap), correcting for a sampler that is not the "
                                "trainer (vLLM, bf16 rollouts); 0 = off. The mismatch is logged either way "
                                "(rollout/logprob_diff, rollout/logprob_diff_mean)")
    agg: str = param("token-mean", f"loss aggregation: {', '.join(AGG_MODES)}")
    mode: Literal["ppo", "gspo"] = param(
        "ppo", "policy loss, with any advantage: ppo = an importance ratio per token, clipped per token; gspo = "
               "GSPO's ratio per sequence (exp of the mean log-ratio over its generated tokens), clipping whole "
               "sequences (the paper clips at clip_ratio 3e-4, clip_ratio_high 4e-4, and averages per sequence: "
               "agg seq-mean-token-mean)")
    llds_coef: float = param(0.0, "LLDS coefficient (lazy likelihood displacement): penalise the fall of a token's "
                                  "log-prob during the update, on tokens of advantage >= 0 whose unit (llds_gate) "
                                  "lost likelihood; the paper's runs use 0.1; 0 = off. Only a policy that moved can "
                                  "fall: active from the second mini-batch or epoch of a step")
    llds_gate: Literal["action", "response"] = param(
        "action", "the unit whose likelihood must have fallen for LLDS to act: action = one turn (a run of "
                  "generated tokens between injected blocks; the paper's best), response = the whole response")
    value_clip: float = param(0.5, f"value clip range ({_names(needs_critic=True)}); 0 = unclipped")
    vf_coef: float = param(1.0, f"weight of the value loss in the total loss ({_names(needs_critic=True)})")
    mask_retrieved: bool = param(True, "exclude injected tokens (<information> blocks, notes) from the loss; "
                                       "false = train on them as if generated (the paper's ablation)")
    reuse_sampler_logprobs: Literal["auto"] | bool = param(
        "auto", "use the log-probs the sampler returned as the old log-probs instead of recomputing them (one "
                "forward pass over the batch less): valid when the rollouts came from the trainer's own weights "
                "in its own precision (our engine) and only generated tokens are trained on (mask_retrieved); "
                "auto = when valid, tis_cap = 0 and llds_coef = 0 (TIS and LLDS need the trainer's recomputed "
                "log-probs: LLDS would read the sampler's precision noise as a fall in likelihood). With one "
                "optimizer step per batch the update's own forward gives them instead, either way")

    def __post_init__(self) -> None:
        if not 0 < self.clip_ratio < 1:
            raise ValueError(f"clip_ratio must be in (0, 1), got {self.clip_ratio}")
        if self.clip_ratio_high < 0:
            raise ValueError("clip_ratio_high must be >= 0 (0 = same as clip_ratio)")
        if self.dual_clip_c != 0 and self.dual_clip_c <= 1:
            raise ValueError("dual_clip_c must be > 1, or 0 for off")
        if self.tis_cap < 0:
            raise ValueError("tis_cap must be >= 0 (0 = off)")
        if self.reuse_sampler_logprobs is True and self.tis_cap > 0:
            raise ValueError("reuse_sampler_logprobs=true makes the old log-probs the sampler's, so TIS (tis_cap > 0) "
                             "would weigh every token by 1: turn one of them off")
        if self.reuse_sampler_logprobs is True and not self.mask_retrieved:
            raise ValueError("reuse_sampler_logprobs=true needs mask_retrieved=true: the sampler has no log-probs for "
                             "the injected tokens that mask_retrieved=false trains on")
        if min(self.entropy_coef, self.value_clip, self.vf_coef) < 0:
            raise ValueError("entropy_coef, value_clip and vf_coef must be >= 0")
        if self.agg not in AGG_MODES:
            raise ValueError(f"agg must be one of {', '.join(AGG_MODES)}, got {self.agg!r}")
        if self.llds_coef < 0:
            raise ValueError("llds_coef must be >= 0 (0 = off)")


@dataclass
class KLConfig:
    coef: float = param(0.001, "KL coefficient (0 = no reference model is kept)")
    kind: str = param("auto", "KL estimator: k1/kl, abs, k2/mse, k3/low_var_kl; auto = k1 in the reward, "
                              "low_var_kl as a loss, as Search-R1")
    in_reward: bool | None = param(None, "put the KL penalty in the token rewards (PPO style) instead of a loss "
                                         "term; null = the algorithm's default (in the reward for "
                                         f"{_names(kl_in_reward=True)}; {_names(kl_in_reward=False)} read outcome "
                                         "scores only and always take it as a loss)")

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError("coef must be >= 0")
        if self.kind != "auto" and self.kind not in KL_KINDS:
            raise ValueError(f"kind must be auto or one of {', '.join(KL_KINDS)}, got {self.kind!r}")


@dataclass
class AdvConfig:
    gamma: float = param(1.0, "discount per generated token (ppo's GAE, reinforce_pp's returns)")
    lam: float = param(1.0, "GAE lambda (ppo)")
    whiten: bool = param(True, "ppo: standardise the advantages over the batch's generated tokens")
    norm_by_std: bool = param(True, "grpo: divide by the group std (false = Dr. GRPO)")
    baseline: Literal["batch-mean", "none"] = param(
        "batch-mean", "reinforce: the baseline subtracted from every score: the batch's mean score, or none "
                      "(textbook REINFORCE)")

    def __post_init__(self) -> None:
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError("gamma and lam must be in [0, 1]")


@dataclass
class DapoConfig:
    dynamic_sampling: bool = param(False, "DAPO dynamic sampling: drop groups whose rewards are all equal and "
                                          "roll out further questions until prompts_per_step groups with signal "
                                          "are found or max_rounds rounds were drawn (then the batch is completed "
                                          "with dropped groups); needs group_size >= 2")
    max_rounds: int = param(3, "rollout rounds of prompts_per_step questions a step may draw under "
                               "dynamic_sampling (the first included)")
    overlong: Literal["none", "mask", "penalty"] = param(
        "none", "responses that hit agent.max_response_tokens: none = trained as any other; mask = excluded from "
                "the loss (DAPO overlong filtering); penalty = DAPO's soft overlong punishment added to the "
                "reward over the last overlong_buffer tokens of the budget")
    overlong_buffer: int = param(0, "tokens before the response limit where the overlong penalty starts")
    overlong_factor: float = param(1.0, "overlong penalty at the limit (reward units)")

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError("max_rounds must be >= 1")
        if self.overlong == "penalty" and self.overlong_buffer < 1:
            raise ValueError("overlong=penalty needs overlong_buffer >= 1 (the length of the penalty ramp)")
        if self.overlong_buffer < 0 or self.overlong_factor < 0:
            raise ValueError("overlong_buffer and overlong_factor must be >= 0")


@dataclass
class SamplingConfig:
    temperature: float = param(1.0, "rollout sampling temperature (also divides the logits of the "
                                    "training forward, so ratios compare like with like)")
    top_p: float = param(1.0, "rollout nucleus sampling mass")
    pool: int = param(0, "episodes live at once in a step's rollouts (continuous batching: when one ends the "
                         "next starts); 0 = all of the step's episodes at once. Lowered to fit pool_memory_gb")
    pool_memory_gb: float = param(0.0, "GiB the KV cache of our engine's rollouts may take (rollout.backend=engine): "
                                       "the pool is lowered until slots x longest row fits. 0 = auto: 90% of the "
                                       "GPU memory free at rollout time on CUDA, 50% of the available RAM on "
                                       "a CPU")

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("training rollouts need temperature > 0 (greedy samples have no log-probs to train on)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.pool < 0:
            raise ValueError("pool must be >= 0 (0 = all episodes at once)")
        if self.pool_memory_gb < 0:
            raise ValueError("pool_memory_gb must be >= 0 (0 = auto)")


@dataclass
class TrainQuestions(QuestionSource):
    datasets: list[str] = param(["synthetic"], "training questions: 'synthetic' (the synthetic world's train "
                                               "split, settings in world), or benchmark names / QA file paths "
                                               "(e.g. nq,hotpotqa); a benchmark may name its own split "
                                               "(nq:efficientqa_dev,hotpotqa:dev)")
    exclude_held_out: bool = param(False, "drop training questions whose normalised text is also one of the "
                                          "held-out questions (eval.datasets): train on the rest of a dev set "
                                          "that is also evaluated, never on the evaluated questions")

    def __post_init__(self) -> None:
        super().__post_init__()
        if "synthetic" in self.datasets and len(self.datasets) > 1:
            raise ValueError("datasets: 'synthetic' is the synthetic world alone; it cannot be mixed with "
                             "benchmarks or files")

    @property
    def synthetic(self) -> bool:
        """Whether these are the synthetic world's questions."""
        return self.datasets == ["synthetic"]


@dataclass
class LoRAConfig:
    r: int = param(0, "LoRA rank; 0 = full fine-tuning")
    alpha: int = param(32, "LoRA alpha")
    dropout: float = param(0.0, "LoRA dropout")
    targets: list[str] = param(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                               "module names LoRA adapts ('all-linear' also works)")

    def __post_init__(self) -> None:
        if self.r < 0 or self.dropout < 0:
            raise ValueError("r and dropout must be >= 0")
        if self.r > 0 and self.alpha <= 0:
            raise ValueError("alpha must be positive")


@dataclass
class ComputeConfig:
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = param(
        "auto", "training precision. bf16-mixed: fp32 master weights, gradients and optimizer state, forward "
                "passes (rollouts too) under bf16 autocast; bf16: pure bf16 weights (half the memory, but an "
                "update below bf16's resolution rounds away: at lr 1e-6 about 2% of the weights move); "
                "fp32; auto = bf16-mixed on CUDA and on CPUs that compute bf16 natively (x86 AVX512-BF16 or "
                "AMX), fp32 elsewhere. Training ignores model.dtype")
    sharding: Literal["auto", "none", "zero1", "zero2", "zero3"] = param(
        "auto", "under torchrun / accelerate launch (no effect in one process): none = DDP; zero1 = optimizer "
                "state split over the processes; zero2 = + gradients (FSDP2, parameters gathered per step); "
                "zero3 = + parameters (FSDP2, gathered layer by layer); auto = what the accelerate config "
                "asks for (configs/accelerate/fsdp.yaml: zero3), else none")
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass (less memory)")
    logits_chunk: int = param(512, "compute the LM head over at most this many response tokens at a time, "
                                   "recomputing each chunk in the backward: the [tokens, vocab] logits of a long "
                                   "response never exist whole (same values; one extra LM-head pass when a "
                                   "response is longer than this); 0 = all at once")
    sort_micro_batches: bool = param(True, "cut micro-batches from rows sorted by length (within each rank's share "
                                           "of a mini-batch), so that a pass holds little padding; the loss and "
                                           "gradients are the same (the accumulation is weighted); false = the "
                                           "shuffled order")
    skip_silent_rows: bool = param(True, "leave out of the update's passes the rows whose loss has exactly zero "
                                         "gradient: zero advantage at every token (a group whose rewards are "
                                         "all equal) and no KL loss, entropy bonus, LLDS or critic. The other "
                                         "rows' gradient is unchanged; a mini-batch left empty takes no "
                                         "optimizer step (no AdamW momentum or decay without data). One process "
                                         "only (data parallelism runs every row)")
    collective_timeout_minutes: float = param(120.0, "under torchrun / accelerate launch: how long a process waits "
                                                     "in a collective for the others; it must cover rank 0's "
                                                     "evaluation (eval_every), which the other ranks wait for")

    def __post_init__(self) -> None:
        if self.logits_chunk < 0:
            raise ValueError("logits_chunk must be >= 0")
        if not self.collective_timeout_minutes > 0:
            raise ValueError("collective_timeout_minutes must be > 0")


@dataclass
class TrainConfig:
    # ------------------------------------------------------------------ algorithm and batch shape
    algorithm: str = param("grpo", "; ".join(f"{a.name}: {a.help}" for a in ALGORITHMS.values()))
    critic: Literal["separate", "head"] = param(
        "separate", f"the critic of an algorithm that has one ({_names(needs_critic=True)}): separate = its own "
                    "trunk initialised from the policy (the paper), head = a value head on the policy's trunk "
                    "(half the memory)")
    steps: int = param(1005, "training steps (one rollout batch + its policy updates each)")
    prompts_per_step: int = param(512, "distinct questions sampled per step (the paper's batch size)")
    group_size: int = param(5, "rollouts per question (GRPO's n; must be >= 2 for the group-based algorithms "
                               f"({_names(group_based=True)}); 1 suits ppo unless you want several samples per "
                               "prompt there too)")
    rollout_tree: int = param(0, "tree rollouts (Tree-GRPO): M trees per question, each one chain then group_size/M - 1 "
                                 "expansions from step boundaries of that chain chosen at random (the end of an "
                                 "<information> block or of a turn), each continuing the chain's exact tokens; "
                                 "every leaf is a rollout. 0 = group_size independent chains. Needed by tree_grpo")
    mini_batch_size: int = param(256, "trajectories per optimizer step (the paper's mini-batch, counted in "
                                      "prompts x group_size trajectories)")
    micro_batch_size: int = param(4, "trajectories per forward/backward pass (gradient accumulation chunk; "
                                     "only memory, never the result, depends on it)")
    ppo_epochs: int = param(1, "passes over each rollout batch")
    format_reward: bool = param(False, "add Search-R1's format score to the exact-match reward")
    retrieval_score: float = param(0.0, "with format_reward: Search-R1's retrieval score, added to the structure "
                                        "score of a valid response that is not correct when its retrieved "
                                        "passages hold a gold answer (its scripts set 0); it pays a search that "
                                        "found the answer more than a guess in the right tags")
    format_needs_search: bool = param(False, "with format_reward: pay the format scores only to a response in which "
                                             "at least one search was answered (ours, not Search-R1's); a guess "
                                             "in the right tags then earns nothing, so the format cannot be "
                                             "learned without the tool. A right answer is paid either way")
    # ------------------------------------------------------------------ sections
    optim: OptimConfig = param(OptimConfig, "the optimizer (AdamW) and its schedule")
    loss: LossConfig = param(LossConfig, "the policy loss (clipping, entropy, importance weights) and the "
                                         "value loss")
    kl: KLConfig = param(KLConfig, "the KL to the reference model: coefficient, estimator, placement")
    adv: AdvConfig = param(AdvConfig, "the advantages: GAE, GRPO's normalisation, REINFORCE's baseline")
    dapo: DapoConfig = param(DapoConfig, "DAPO's dynamic sampling and overlong handling (all off by default)")
    sampling: SamplingConfig = param(SamplingConfig, "how training rollouts sample")
    questions: TrainQuestions = param(TrainQuestions, "the training questions")
    retriever_method: Literal[RETRIEVER_METHODS] = param(
        "", "what training rollouts search: '' = retriever.* (what evaluation searches); a method name = "
            "retriever.* with that method, e.g. simulated: train on documents a model writes (ZeroSearch, "
            "retriever.simulated.*) while held-out evaluations (eval_every) still search retriever.*")
    lora: LoRAConfig = param(LoRAConfig, "LoRA adapters (r = 0: full fine-tuning)")
    compute: ComputeConfig = param(ComputeConfig, "precision, sharding and memory")
    # ------------------------------------------------------------------ bookkeeping
    eval_every: int = param(0, "run the eval harness (cfg.eval) every N steps; 0 = never")
    save_every: int = param(100, "checkpoint every N steps (and always at the end); 0 = only at the end")
    keep_last: int = param(3, "checkpoints kept")
    run_dir: str = param("runs/train", "where checkpoints, metrics and eval reports go")
    resume: bool = param(False, "continue from the latest checkpoint in run_dir")
    overwrite: bool = param(False, "start afresh (resume=false) in a run_dir that holds an earlier run: its "
                                   "checkpoints, metrics, TensorBoard events and eval reports are moved to "
                                   "run_dir/replaced-<time>/ (nothing is deleted); without it such a run_dir is "
                                   "refused")
    seed: int = param(0, "seed of the data order, the question sample (questions.limit), the sampling noise "
                         "and the initialisation")
    tensorboard: bool = param(True, "write TensorBoard event files to run_dir")
    wandb: bool = param(False, "also log to Weights & Biases (needs wandb installed)")
    progress: bool = param(True, "show a progress bar")

    def __post_init__(self) -> None:
        algo = algorithm(self.algorithm)  # ValueError naming the choices
        if min(self.steps, self.prompts_per_step, self.group_size, self.mini_batch_size,
               self.micro_batch_size, self.ppo_epochs) < 1:
            raise ValueError("steps, prompts_per_step, group_size, mini_batch_size, micro_batch_size and "
                             "ppo_epochs must all be >= 1")
        if algo.group_based and self.group_size < 2:
            raise ValueError(f"{self.algorithm} needs group_size >= 2 (a group of one has no baseline: every "
                             "advantage is 0)")
        if self.dapo.dynamic_sampling and self.group_size < 2:
            raise ValueError("dapo.dynamic_sampling needs group_size >= 2 (it drops groups whose rewards are all "
                             "equal)")
        if self.retrieval_score < 0 or (self.retrieval_score and not self.format_reward):
            raise ValueError("retrieval_score must be >= 0 and needs format_reward: true (it is part of the "
                             "format-shaped reward)")
        if self.format_needs_search and not self.format_reward:
            raise ValueError("format_needs_search needs format_reward: true (it decides when the format score is "
                             "paid)")
        if self.rollout_tree < 0:
            raise ValueError("rollout_tree must be >= 0 (0 = independent chains)")
        if algo.needs_trees and not self.rollout_tree:
            raise ValueError(f"{self.algorithm} compares the leaves of a tree: it needs rollout_tree > 0")
        if self.rollout_tree and (self.group_size % self.rollout_tree or self.group_size <= self.rollout_tree):
            raise ValueError(f"rollout_tree={self.rollout_tree} trees per question need a group_size that is a "
                             f"larger multiple of it (each tree has group_size/rollout_tree leaves, one chain and "
                             f"at least one expansion), got group_size={self.group_size}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: resume continues the run in run_dir, "
                             "overwrite starts a new one there")
        batch = self.prompts_per_step * self.group_size
        if self.mini_batch_size > batch:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) exceeds the trajectories per step "
                             f"(prompts_per_step x group_size = {batch})")
        if batch % self.mini_batch_size:
            raise ValueError(f"the trajectories per step ({batch}) must be a multiple of mini_batch_size "
                             f"({self.mini_batch_size})")
        if min(self.eval_every, self.save_every) < 0:
            raise ValueError("eval_every and save_every must be >= 0")
        if self.keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        if self.kl.in_reward and not algo.kl_in_reward:
            raise ValueError(f"{self.algorithm} puts the KL in the loss: kl.in_reward=true is for "
                             f"{_names(kl_in_reward=True)}")

    # ------------------------------------------------------------------ derived
    @property
    def algo(self):
        """The row of `algorithm` in `searchr1.rl.algorithms.ALGORITHMS`."""
        return ALGORITHMS[self.algorithm]

    @property
    def use_kl_in_reward(self) -> bool:
        return self.algo.kl_in_reward if self.kl.in_reward is None else self.kl.in_reward

    @property
    def kl_estimator(self) -> str:
        if self.kl.kind != "auto":
            return self.kl.kind
        return "k1" if self.use_kl_in_reward else "low_var_kl"

    @property
    def needs_reference(self) -> bool:
        return self.kl.coef > 0


@dataclass
class SFTConfig:
    """Optional supervised warm-up before RL: the policy imitates ideal search episodes on the
    synthetic world's training questions (`searchr1.train.sft`). Off by default (steps = 0) and in
    the paper presets; the cpu-demo preset turns it on because a 135M model never samples the
    <search>/<answer> format on its own, and RL cannot reinforce what it never samples."""

    steps: int = param(0, "optimizer steps of supervised warm-up on demonstrations; 0 = no warm-up")
    lr: float = param(5e-5, "warm-up learning rate (AdamW, constant)")
    batch_size: int = param(4, "demonstrations per optimizer step")
    examples: int = param(64, "training questions turned into demonstrations (a seeded sample); those whose "
                              "searches do not retrieve the needed passage are dropped")

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.examples < 1:
            raise ValueError("sft needs steps >= 0, batch_size >= 1 and examples >= 1")
        if self.lr <= 0:
            raise ValueError("sft.lr must be positive")
