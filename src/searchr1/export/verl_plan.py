"""veRL's hydra overrides for a searchr1 config: `train.*` and the agent's limits in veRL's terms.

`verl_plan` gives the `key=value` list `train.sh` passes to `verl.trainer.main_ppo`, and notes on
every setting veRL cannot reproduce (they go into the export's README).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchr1.errors import ConfigError
from searchr1.rl.algorithms import ALGORITHMS

#: veRL's agent_name of each --agent: the paper's protocol loop, or veRL's own tool-calling loop.
AGENT_NAMES = {"searchr1": "searchr1_agent", "tool": "tool_agent"}
#: veRL imports the reward from the installed searchr1 package: there is no reward file to ship.
REWARD_PATH = "pkg://searchr1.export.verl_reward"
REWARD_NAME = "compute_score"
#: Prompt budget: the Search-R1 instruction is ~120 tokens, the longest benchmark questions ~100.
MAX_PROMPT_TOKENS = 512


@dataclass
class Override:
    """One `key=value` of veRL's hydra command line. `shell` is the value as shell text (it may
    expand $HERE, $NNODES, ...); plain values are quoted."""

    key: str
    value: Any
    shell: str | None = None

    def literal(self) -> str:
        return f"{self.key}={_hydra_value(self.value)}"

    def shell_arg(self) -> str:
        return f"{self.key}={self.shell}" if self.shell is not None else shlex.quote(self.literal())


def _hydra_value(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(json.dumps(x) if isinstance(x, str) else _hydra_value(x) for x in v) + "]"
    return str(v)


@dataclass
class Plan:
    overrides: list[Override] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, value: Any, shell: str | None = None) -> None:
        self.overrides.append(Override(key, value, shell))

    def as_dict(self) -> dict[str, Any]:
        return {o.key: o.value for o in self.overrides}


def mini_batch_prompts(tc) -> int:
    """veRL's ppo_mini_batch_size (in prompts): train.mini_batch_size / group_size when that is a whole
    number dividing prompts_per_step, else the largest divisor of prompts_per_step below it."""
    target = max(1, tc.mini_batch_size // tc.group_size)
    return max(d for d in range(1, target + 1) if tc.prompts_per_step % d == 0)


def optimizer_steps_per_step(tc) -> int:
    return (tc.prompts_per_step // mini_batch_prompts(tc)) * tc.ppo_epochs


def verl_plan(cfg, *, agent: str = "searchr1", rollout: str = "vllm", train_files: str = "train.parquet",
              val_files: str = "val.parquet", agent_loop_path: str = "agent_loop.yaml",
              tool_config_path: str = "tool_config.yaml", nnodes: int = 1, gpus_per_node: int = 8,
              train_rows: int | None = None, shell: dict[str, str] | None = None) -> Plan:
    """veRL overrides that reproduce `cfg.train` (and the agent's limits), plus notes on what differs.

    `shell` maps a key to the shell text of its value in train.sh (paths under $HERE, $NNODES).
    """
    tc, a, shell = cfg.train, cfg.agent, shell or {}
    p = Plan()
    mini_prompts = mini_batch_prompts(tc)
    if mini_prompts * tc.group_size != tc.mini_batch_size:
        p.notes.append(f"veRL counts mini-batches in prompts: train.mini_batch_size={tc.mini_batch_size} trajectories "
                       f"is not a whole number of prompts of {tc.group_size} that divides "
                       f"{tc.prompts_per_step}; exported as {mini_prompts} prompts "
                       f"({mini_prompts * tc.group_size} trajectories) per optimizer step.")
    add = lambda key, value: p.add(key, value, shell.get(key))  # noqa: E731
    A, R = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    algo = tc.algo
    if algo.verl_name is None:
        exportable = ", ".join(a.name for a in ALGORITHMS.values() if a.verl_name)
        raise ConfigError(f"train.algorithm={tc.algorithm} has no veRL advantage estimator; veRL trains "
                          f"{exportable}")

    add("algorithm.adv_estimator", algo.verl_name)
    add("data.train_files", train_files)
    add("data.val_files", val_files)
    add("data.train_batch_size", tc.prompts_per_step)
    add("data.max_prompt_length", MAX_PROMPT_TOKENS)
    add("data.max_response_length", a.max_response_tokens)
    add("data.filter_overlong_prompts", True)
    add("data.truncation", "error")
    add("data.return_raw_chat", True)
    add("data.shuffle", True)
    add("data.seed", tc.seed)

    add("actor_rollout_ref.model.path", cfg.model.name)
    add("actor_rollout_ref.model.use_remove_padding", True)
    add("actor_rollout_ref.model.enable_gradient_checkpointing", tc.compute.gradient_checkpointing)
    if tc.lora.r > 0:
        add("actor_rollout_ref.model.lora_rank", tc.lora.r)
        add("actor_rollout_ref.model.lora_alpha", tc.lora.alpha)
        targets = tc.lora.targets
        add("actor_rollout_ref.model.target_modules",
            "all-linear" if list(targets) == ["all-linear"] else list(targets))

    opt_steps = optimizer_steps_per_step(tc)
    add(f"{A}.optim.lr", tc.optim.lr)
    if tc.optim.warmup_steps > 0:
        # veRL steps its scheduler once per training step, ours once per optimizer step
        add(f"{A}.optim.lr_warmup_steps", max(1, int(tc.optim.warmup_steps / opt_steps)))
    add(f"{A}.optim.weight_decay", tc.optim.weight_decay)
    if tc.optim.max_grad_norm > 0:
        add(f"{A}.optim.clip_grad", tc.optim.max_grad_norm)
    else:
        p.notes.append("train.optim.max_grad_norm=0 (no clipping) has no veRL equivalent; veRL clips at 1.0.")
    add(f"{A}.ppo_mini_batch_size", mini_prompts)
    add(f"{A}.ppo_micro_batch_size_per_gpu", tc.micro_batch_size)
    add(f"{A}.ppo_epochs", tc.ppo_epochs)
    add(f"{A}.clip_ratio_low", tc.loss.clip_ratio)
    add(f"{A}.clip_ratio_high", tc.loss.clip_ratio_high or tc.loss.clip_ratio)
    if tc.loss.dual_clip_c:
        add(f"{A}.clip_ratio_c", tc.loss.dual_clip_c)
    else:
        p.notes.append("train.loss.dual_clip_c=0 (off): veRL always applies dual clipping (clip_ratio_c=3.0), "
                       "which only changes updates whose ratio exceeds 3 on a negative advantage.")
    add(f"{A}.entropy_coeff", tc.loss.entropy_coef)
    add(f"{A}.loss_agg_mode", tc.loss.agg)
    if tc.loss.mode == "gspo":  # veRL's default, "vanilla", is the per-token ratio (mode ppo)
        add(f"{A}.policy_loss.loss_mode", "gspo")
    if tc.loss.llds_coef > 0:
        p.notes.append("train.loss.llds_coef (LLDS) is not exported: veRL has no likelihood-preserving regulariser; "
                       "the exported run trains without it.")
    kl_in_loss = tc.kl.coef > 0 and not tc.use_kl_in_reward
    add(f"{A}.use_kl_loss", kl_in_loss)
    if kl_in_loss:
        add(f"{A}.kl_loss_coef", tc.kl.coef)
        add(f"{A}.kl_loss_type", tc.kl_estimator)
    add("algorithm.use_kl_in_reward", tc.kl.coef > 0 and tc.use_kl_in_reward)
    if tc.kl.coef > 0 and tc.use_kl_in_reward:
        add("algorithm.kl_penalty", tc.kl_estimator)
        add("algorithm.kl_ctrl.kl_coef", tc.kl.coef)
    if algo.verl_name == "grpo":
        add("algorithm.norm_adv_by_std_in_grpo", tc.adv.norm_by_std)
    if algo.verl_name == "reinforce_plus_plus":
        add("algorithm.gamma", tc.adv.gamma)
    if tc.loss.tis_cap > 0:
        add(f"{R}.calculate_log_probs", True)
        add("algorithm.rollout_correction.rollout_is", "token")
        add("algorithm.rollout_correction.rollout_is_threshold", tc.loss.tis_cap)
    for key, on in (("dynamic_sampling", tc.dapo.dynamic_sampling), ("overlong", tc.dapo.overlong != "none")):
        if on:
            p.notes.append(f"train.dapo.{key} is not exported: veRL's main trainer has no switch for it (its DAPO "
                           "recipe does); the exported run trains without it.")
    if algo.needs_critic:
        add("algorithm.gamma", tc.adv.gamma)
        add("algorithm.lam", tc.adv.lam)
        add("critic.model.path", cfg.model.name)
        add("critic.model.enable_gradient_checkpointing", tc.compute.gradient_checkpointing)
        add("critic.model.use_remove_padding", True)
        add("critic.optim.lr", tc.optim.critic_lr)
        if tc.optim.warmup_steps > 0:
            add("critic.optim.lr_warmup_steps", max(1, int(tc.optim.warmup_steps / opt_steps)))
        add("critic.optim.weight_decay", tc.optim.weight_decay)
        add("critic.ppo_micro_batch_size_per_gpu", tc.micro_batch_size)
        if tc.loss.value_clip > 0:
            add("critic.cliprange_value", tc.loss.value_clip)
        else:
            p.notes.append("train.loss.value_clip=0 (unclipped) has no veRL switch; veRL clips values at 0.5.")
        if tc.critic != "separate":
            p.notes.append("train.critic=head (a value head on the policy) has no veRL equivalent: veRL trains "
                           "a separate critic initialised from the model, as the paper does.")
        if not tc.adv.whiten:
            p.notes.append("train.adv.whiten=false: veRL's GAE always whitens the advantages.")
    add("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", tc.micro_batch_size)
    add("actor_rollout_ref.ref.fsdp_config.param_offload", True)

    add(f"{R}.name", rollout)
    add(f"{R}.mode", "async")
    add(f"{R}.n", tc.group_size)
    if tc.rollout_tree:
        p.notes.append(f"train.rollout_tree={tc.rollout_tree} (tree rollouts) is not exported: veRL samples "
                       f"{tc.group_size} independent chains per prompt (rollout.n).")
    add(f"{R}.temperature", tc.sampling.temperature)
    add(f"{R}.top_p", tc.sampling.top_p)
    add(f"{R}.tensor_model_parallel_size", 1)
    add(f"{R}.gpu_memory_utilization", 0.6)
    add(f"{R}.log_prob_micro_batch_size_per_gpu", tc.micro_batch_size)
    add(f"{R}.val_kwargs.temperature", cfg.eval.temperature)
    add(f"{R}.val_kwargs.do_sample", cfg.eval.temperature > 0)
    if agent == "searchr1":
        add(f"{R}.agent.agent_loop_config_path", agent_loop_path)
        add(f"{R}.agent.default_agent_loop", AGENT_NAMES["searchr1"])
    else:
        add(f"{R}.multi_turn.enable", True)
        add(f"{R}.multi_turn.tool_config_path", tool_config_path)
        add(f"{R}.multi_turn.format", "hermes")
        add(f"{R}.multi_turn.max_assistant_turns", a.max_turns + 1)
        add(f"{R}.multi_turn.max_tool_response_length", 4 * a.max_obs_tokens)  # characters, ~4 per token
        add(f"{R}.agent.default_agent_loop", AGENT_NAMES["tool"])
        p.notes.append("--agent tool uses veRL's JSON tool calls (hermes format, chat template) instead of the "
                       "paper's <search> tags; responses are scored by exact match only (the format reward "
                       "checks the paper's tag sequence).")

    add("reward.custom_reward_function.path", REWARD_PATH)
    add("reward.custom_reward_function.name", REWARD_NAME)
    if tc.format_reward:
        add("+reward.custom_reward_function.reward_kwargs.format_reward", True)
        if tc.retrieval_score:
            add("+reward.custom_reward_function.reward_kwargs.retrieval_score", tc.retrieval_score)
        if tc.format_needs_search:
            add("+reward.custom_reward_function.reward_kwargs.format_needs_search", True)
    if agent == "searchr1" and a.protocol != "tags":  # the reward reads the answer as the agent loop wrote it
        add("+reward.custom_reward_function.reward_kwargs.protocol", a.protocol)

    add("trainer.total_training_steps", tc.steps)
    epochs = math.ceil(tc.steps * tc.prompts_per_step / train_rows) if train_rows else 1
    add("trainer.total_epochs", max(1, epochs))
    add("trainer.save_freq", tc.save_every if tc.save_every > 0 else -1)
    add("trainer.test_freq", tc.eval_every if tc.eval_every > 0 else -1)
    add("trainer.max_actor_ckpt_to_keep", tc.keep_last)
    if algo.needs_critic:
        add("trainer.max_critic_ckpt_to_keep", tc.keep_last)
    add("trainer.critic_warmup", 0)
    add("trainer.logger", ["console", "tensorboard"] + (["wandb"] if tc.wandb else []))
    add("trainer.project_name", "searchr1")
    add("trainer.experiment_name", Path(tc.run_dir).name or "searchr1")
    add("trainer.default_local_dir", str(Path(tc.run_dir) / "verl"))
    add("trainer.nnodes", nnodes)
    add("trainer.n_gpus_per_node", gpus_per_node)
    if not tc.loss.mask_retrieved:
        p.notes.append("train.loss.mask_retrieved=false (training on retrieved tokens) is not exported: veRL masks "
                       "every injected token out of the loss.")
    return p
