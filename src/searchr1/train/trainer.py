"""`searchr1 train`: PPO / GRPO over multi-turn search rollouts, one readable loop.

    for step in steps:
        questions  <- the next prompts_per_step of a seeded shuffle (its position is checkpointed)
        rollouts   <- the Agent plays group_size episodes per question with the policy itself
        rewards    <- reward_fn(trajectory) (default: exact match, optionally format-shaped)
        tensors    <- [prompt left-padded | response right-padded], loss mask (1 generated, 0 injected)
        old / ref log-probs, values <- forward passes without grad (sampling log-probs are only
                      compared, as the metric rollout/logprob_diff, never trusted for the ratio)
        advantages <- GRPO: group-normalised outcome; PPO: KL-penalised token rewards + GAE
        update     <- ppo_epochs x shuffled mini-batches, gradient accumulation over micro-batches,
                      clipping; a non-finite loss or gradient norm skips the optimizer step
        metrics, eval every eval_every, checkpoint every save_every and at the end

Resume (`train.resume=true`) loads the latest checkpoint of run_dir and continues exactly: same
weights, optimizer and scheduler state, data position and RNG; rollout seeds derive from the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from searchr1.atomic import write_text_atomic
from searchr1.errors import SearchR1Error
from searchr1.rewards import compute_score
from searchr1.rl import (aggregate_loss, gae_advantages, grpo_advantages, kl_loss, kl_penalized_rewards,
                         kl_penalty, masked_mean, policy_loss, value_loss)
from searchr1.rollout.trajectory import Trajectory
from searchr1.train.distributed import DataParallel
from searchr1.train.models import TrainModels, build_models, causal_lm, resolve_precision

ALONE = DataParallel()  # the single-process group: every collective is a no-op

RewardFn = Callable[[Trajectory], float]


# ============================================================================ data


class PromptSampler:
    """Seeded epochs of shuffled question indices; `state_dict()` is the data position."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise SearchR1Error("no training questions")
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != self.n:
            raise SearchR1Error(f"the checkpoint was trained on {state.get('n')} questions, this config gives "
                                f"{self.n}: resume needs the same training data")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation()


def load_training_questions(cfg, run_dir: Path) -> tuple[list[dict], str | None]:
    """(training rows {id, question, golden_answers}, path of held-out questions for eval or None)."""
    tc = cfg.train
    if tc.train_data == "synthetic":
        from searchr1.data.synthetic import build_world, make_questions, split_questions

        w = cfg.demo.world
        world = build_world(w.seed, w.countries, w.cities_per_country, w.people, w.organisations)
        train, test = split_questions(make_questions(world), w.test_fraction, w.seed)
        rows = [{"id": q.id, "question": q.question, "golden_answers": list(q.golden_answers),
                 "data_source": "synthetic"} for q in train]
        held_out = run_dir / "data" / "synthetic_test.jsonl"
        held_out.parent.mkdir(parents=True, exist_ok=True)
        # atomic: under data parallelism every rank writes the same file
        write_text_atomic(held_out, "".join(json.dumps(q.to_dict(), ensure_ascii=False) + "\n" for q in test))
        eval_path: str | None = str(held_out)
    else:
        from searchr1.data.benchmarks import load_benchmark

        rows = []
        for name in [n.strip() for n in tc.train_data.split(",") if n.strip()]:
            rows += load_benchmark(name, tc.train_split, source=cfg.eval.source, data_dir=cfg.eval.data_dir or None)
        eval_path = None
    if tc.train_limit and len(rows) > tc.train_limit:
        rows = random.Random(tc.seed).sample(rows, tc.train_limit)
    if not rows:
        raise SearchR1Error(f"train_data {tc.train_data!r} gave no questions")
    return rows, eval_path


def make_trajectories(rows: Sequence[dict], tokenizer, template: str, chat: bool | None,
                      group_size: int, first_group: int = 0) -> list[Trajectory]:
    """group_size fresh episodes per row, all of one row sharing `group` = first_group + the row's position."""
    from searchr1.protocol import build_prompt
    from searchr1.rollout.agent import new_trajectory

    out = []
    for g, row in enumerate(rows, start=first_group):
        prompt = build_prompt(row["question"], tokenizer, template=template, chat=chat)
        for k in range(group_size):
            out.append(new_trajectory(tokenizer, prompt, row["question"], row["golden_answers"],
                                      id=f"{row['id']}#{k}", group=g,
                                      meta={"data_source": row.get("data_source", "")}))
    return out


# ============================================================================ rewards


def default_reward_fn(format_reward: bool) -> RewardFn:
    def reward(traj: Trajectory) -> float:
        return float(compute_score(traj.response_text, traj.golden_answers, format_reward=format_reward))

    return reward


def score_trajectories(trajectories: Sequence[Trajectory], reward_fn: RewardFn) -> torch.Tensor:
    """``[B]`` float32 rewards; a non-finite or non-numeric reward is an error naming the trajectory."""
    scores = []
    for t in trajectories:
        value = reward_fn(t)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise SearchR1Error(f"reward_fn returned {value!r} for trajectory {t.id!r}; expected a number") from None
        if not math.isfinite(value):
            raise SearchR1Error(f"reward_fn returned {value} for trajectory {t.id!r}")
        scores.append(value)
    return torch.tensor(scores, dtype=torch.float32)


def exact_match(traj: Trajectory) -> float:
    return float(compute_score(traj.response_text, traj.golden_answers) >= 1.0) if traj.golden_answers else 0.0


# ============================================================================ tensors


@dataclass
class Batch:
    """Trajectories as tensors. Columns ``[0, response_start)`` are prompts (left-padded), the rest
    responses (right-padded). Token-level tensors over the response are ``[B, T]``."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T] 1 = real token
    response_start: int  # P
    valid: torch.Tensor  # [B, T] 1 = a real response token (generated or injected)
    generated: torch.Tensor  # [B, T] 1 = generated by the policy (the trajectory's own loss mask)
    loss_mask: torch.Tensor  # [B, T] what the loss sees: `generated`, or `valid` without masking
    sample_logprobs: torch.Tensor  # [B, T] sampling-time log-probs (0 at injected / padding)
    group_ids: torch.Tensor  # [B]

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "Batch":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def rows(self, index: torch.Tensor) -> "Batch":
        """The rows `index`, with padding columns shared by all of them trimmed away."""
        ids, attn = self.input_ids[index], self.attention_mask[index]
        P = self.response_start
        lead = int((attn[:, :P] == 0).all(0).long().cumprod(0).sum())  # prompt columns that are pad for all
        valid = self.valid[index]
        t_len = max(int(valid.sum(1).max()) if valid.numel() else 1, 1)
        return Batch(ids[:, lead:P + t_len], attn[:, lead:P + t_len], P - lead, valid[:, :t_len],
                     self.generated[index][:, :t_len], self.loss_mask[index][:, :t_len],
                     self.sample_logprobs[index][:, :t_len], self.group_ids[index])


def collate(trajectories: Sequence[Trajectory], pad_id: int, mask_retrieved: bool = True) -> Batch:
    """Pad trajectories into a `Batch`. With ``mask_retrieved=False`` the loss mask covers every real
    response token, injected ones included (the paper's ablation)."""
    if not trajectories:
        raise ValueError("no trajectories to collate")
    P = max(len(t.prompt_ids) for t in trajectories)
    if P < 1:
        raise ValueError("every trajectory needs a non-empty prompt")
    T = max(1, max(len(t.response_ids) for t in trajectories))
    B = len(trajectories)
    input_ids = torch.full((B, P + T), int(pad_id), dtype=torch.long)
    attention = torch.zeros((B, P + T), dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.long)
    generated = torch.zeros((B, T), dtype=torch.long)
    logprobs = torch.zeros((B, T), dtype=torch.float32)
    for i, t in enumerate(trajectories):
        p, r = len(t.prompt_ids), len(t.response_ids)
        if len(t.loss_mask) != r or len(t.logprobs) != r:
            raise ValueError(f"trajectory {t.id!r}: {r} response tokens, {len(t.loss_mask)} mask entries, "
                             f"{len(t.logprobs)} log-probs")
        input_ids[i, P - p:P] = torch.tensor(t.prompt_ids, dtype=torch.long)
        attention[i, P - p:P + r] = 1
        if r:
            input_ids[i, P:P + r] = torch.tensor(t.response_ids, dtype=torch.long)
            valid[i, :r] = 1
            generated[i, :r] = torch.tensor(t.loss_mask, dtype=torch.long)
            logprobs[i, :r] = torch.tensor(t.logprobs, dtype=torch.float32)
    loss_mask = generated.clone() if mask_retrieved else valid.clone()
    groups = torch.tensor([t.group for t in trajectories], dtype=torch.long)
    return Batch(input_ids, attention, P, valid, generated, loss_mask, logprobs, groups)


def _pad_to(x: torch.Tensor, T: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, T - x.shape[1])) if x.shape[1] < T else x


@torch.no_grad()
def batch_forward(models: TrainModels, batch: Batch, micro: int, temperature: float, *, reference: bool = False,
                  critic: bool = False, dist: DataParallel = ALONE) -> torch.Tensor:
    """``[B, T]`` log-probs of the policy (or the reference) or the critic's values, in micro-batches.
    Under data parallelism each rank computes its block of rows and the blocks are all-gathered."""
    T = batch.valid.shape[1]
    outs = []
    mine = torch.arange(batch.size, device=batch.input_ids.device)[dist.shard(batch.size)]
    if critic:
        module = models.actor if models.shared_critic else models.value_model
    else:
        module = models.ref_model if reference else models.actor
    # every rank runs the same number of forwards here: one all-gather of a sharded model for all of them
    with dist.gathered(module):
        for idx in mine.split(micro):
            mb = batch.rows(idx)
            with models.compute():
                if critic and models.shared_critic:
                    out = module(mb.input_ids, mb.attention_mask, mb.response_start, temperature=temperature).values
                elif critic:
                    out = module(mb.input_ids, mb.attention_mask, mb.response_start)
                else:
                    with models.reference_context() if reference else contextlib.nullcontext():
                        out = module(mb.input_ids, mb.attention_mask, mb.response_start,
                                     temperature=temperature).logprobs
            outs.append(_pad_to(out.float(), T))
    return dist.gather_rows(torch.cat(outs, 0))


# ============================================================================ the update


def _set_mode(models: TrainModels, training: bool) -> None:
    for m in (models.policy, models.critic):
        if m is not None:
            m.train(training)


def _params(module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad] if module is not None else []


class _Mean:
    """Weighted running means of scalar stats (and running maxima of others)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.maxima: dict[str, float] = {}

    def peak(self, stats: dict) -> None:
        for k, v in stats.items():
            v = float(v)
            if math.isfinite(v):
                self.maxima[k] = max(v, self.maxima.get(k, v))

    def add(self, stats: dict, weight: float = 1.0) -> None:
        for k, v in stats.items():
            v = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            if math.isfinite(v):
                self.sums[k] = self.sums.get(k, 0.0) + v * weight
                self.weights[k] = self.weights.get(k, 0.0) + weight


def _micro_step(models: TrainModels, mb: Batch, old: torch.Tensor | None, adv: torch.Tensor,
                ref: torch.Tensor | None, old_values: torch.Tensor | None, returns: torch.Tensor | None,
                weight: float, tc, use_kl_loss: bool, stats: "_Mean") -> bool:
    """Forward and backward of one micro-batch (its rows' ``[b, T]`` slices); False if the loss was not
    finite. The backward runs even then under data parallelism (the other ranks wait for its
    all-reduce); the optimizer step is skipped everywhere instead. ``old=None``: the old log-probs
    are this forward's own, detached (see `learn`)."""
    mask = mb.loss_mask
    agg = tc.loss_agg
    with models.compute():
        out = models.actor(mb.input_ids, mb.attention_mask, mb.response_start, temperature=tc.temperature,
                           with_entropy=True, entropy_grad=tc.entropy_coef > 0)
        if models.critic is None:
            values = None
        elif models.shared_critic:
            values = out.values
        else:
            values = models.value_model(mb.input_ids, mb.attention_mask, mb.response_start)
    if old is None:
        old = out.logprobs.detach()
        generated = mb.generated.bool()
        if generated.any():
            stats.peak({"rollout/logprob_diff": (old - mb.sample_logprobs).abs()[generated].max()})
        if ref is not None:
            stats.add({"actor/kl": masked_mean(kl_penalty(old, ref, "k1"), mask)}, weight)
    pg, pg_stats = policy_loss(out.logprobs, old, adv, mask, tc.clip_ratio, tc.clip_ratio_high or None,
                               tc.dual_clip_c or None, agg)
    loss = pg
    micro_stats = {"actor/pg_loss": pg, "actor/clip_fraction": pg_stats["clip_fraction"],
                   "actor/approx_kl": pg_stats["approx_kl"], "actor/ratio_max": pg_stats["ratio_max"]}
    entropy = aggregate_loss(out.entropy, mask, agg)
    micro_stats["actor/entropy"] = entropy
    if tc.entropy_coef > 0:
        loss = loss - tc.entropy_coef * entropy
    if use_kl_loss:
        kl, _ = kl_loss(out.logprobs, ref, mask, tc.kl_estimator, agg)
        loss = loss + tc.kl_coef * kl
        micro_stats["actor/kl_loss"] = kl
    if values is not None:
        vl, v_stats = value_loss(values, old_values, returns, mask, tc.value_clip or None, agg)
        loss = loss + tc.vf_coef * vl
        micro_stats["critic/value_loss"] = vl
        micro_stats["critic/clip_fraction"] = v_stats["clip_fraction"]
    finite = bool(torch.isfinite(loss))
    (loss * weight).backward()
    if finite:
        stats.add(micro_stats, weight)
    return finite


def update(models: TrainModels, batch: Batch, old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None,
           advantages: torch.Tensor, old_values: torch.Tensor | None, returns: torch.Tensor | None,
           optimizers: dict, schedulers: dict, tc, step: int, dist: DataParallel = ALONE) -> dict[str, float]:
    """ppo_epochs x shuffled mini-batches; gradient accumulation over micro-batches.

    `batch` and the ``[B, T]`` tensors are the whole step's, on every rank; under data parallelism
    rank r trains on its 1/W of each mini-batch with the loss scaled by W (DDP averages gradients).
    """
    _set_mode(models, True)
    policy_params = _params(models.policy)
    critic_params = [] if models.critic is None else _params(models.critic)
    use_kl_loss = ref_logprobs is not None and not tc.use_kl_in_reward and tc.kl_coef > 0
    agg = tc.loss_agg
    stats = _Mean()
    skipped = 0
    optimizer_steps = 0
    max_norm = tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf")
    gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
    B = batch.size
    for _epoch in range(tc.ppo_epochs):
        perm = torch.randperm(B, generator=gen).to(batch.input_ids.device)
        for mini in perm.split(tc.mini_batch_size):
            mini_tokens = float(batch.loss_mask[mini].sum())
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            finite = True
            micros = mini[dist.shard(len(mini))].split(tc.micro_batch_size)
            for i, micro in enumerate(micros):
                mb = batch.rows(micro)
                T = mb.valid.shape[1]
                mask = mb.loss_mask
                if agg == "token-mean":
                    weight = float(mask.sum()) / mini_tokens if mini_tokens > 0 else 0.0
                else:
                    weight = len(micro) / len(mini)
                weight *= dist.world
                sync_later = i < len(micros) - 1  # gradients are all-reduced once, after the last micro-batch
                with dist.no_sync(models.actor, sync_later), dist.no_sync(models.value_model, sync_later):
                    finite = _micro_step(models, mb, None if old_logprobs is None else old_logprobs[micro][:, :T],
                                         advantages[micro][:, :T],
                                         None if ref_logprobs is None else ref_logprobs[micro][:, :T],
                                         None if old_values is None else old_values[micro][:, :T],
                                         None if returns is None else returns[micro][:, :T],
                                         weight, tc, use_kl_loss, stats) and finite
                if not finite and not dist.distributed:
                    break  # alone, no other rank waits for this backward
            finite = dist.all_true(finite)
            grad_norm = dist.clip_grad_norm(policy_params, max_norm) if policy_params else torch.tensor(0.)
            critic_norm = dist.clip_grad_norm(critic_params, max_norm) if critic_params else None
            norms_finite = bool(torch.isfinite(grad_norm)) and (critic_norm is None or bool(torch.isfinite(critic_norm)))
            if not finite or not norms_finite:
                skipped += 1
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                continue
            for opt in optimizers.values():
                opt.step()
            for sched in schedulers.values():
                sched.step()
            optimizer_steps += 1
            stats.add({"actor/grad_norm": grad_norm})
            if critic_norm is not None:
                stats.add({"critic/grad_norm": critic_norm})
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    _set_mode(models, False)
    out = dist.merge_stats(stats.sums, stats.weights, stats.maxima)
    out["train/skipped_updates"] = skipped
    out["train/optimizer_steps"] = optimizer_steps
    return out


# ============================================================================ the loop


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _warmup(warmup_steps: int):
    return lambda n: min(1.0, (n + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _rollout_metrics(trajs: Sequence[Trajectory], batch: Batch, scores: torch.Tensor) -> dict[str, float]:
    n = len(trajs)
    turns = sum(len(t.turns) for t in trajs)
    valid_tokens = float(batch.valid.sum())
    metrics = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if n > 1 else 0.0,
        "reward/em": sum(exact_match(t) for t in trajs) / n,
        "rollout/searches_per_traj": sum(t.num_searches for t in trajs) / n,
        "rollout/invalid_rate": sum(t.num_invalid for t in trajs) / turns if turns else 0.0,
        "rollout/answered": sum(t.stop_reason == "answer" for t in trajs) / n,
        "rollout/response_length": valid_tokens / n,
        "rollout/generated_length": float(batch.generated.sum()) / n,
        "rollout/masked_share": 1.0 - float(batch.loss_mask.sum()) / valid_tokens if valid_tokens else 0.0,
        "rollout/injected_share": 1.0 - float(batch.generated.sum()) / valid_tokens if valid_tokens else 0.0,
    }
    return metrics


def _eval_config(cfg, run_dir: Path, step: int, eval_path: str | None):
    ev = cfg.eval
    changes = {"out_dir": str(run_dir / "eval" / f"step_{step:06d}")}
    if eval_path is not None:
        changes["datasets"] = [eval_path]
    return dataclasses.replace(cfg, eval=dataclasses.replace(ev, **changes))


def _eval_metrics(results: dict) -> dict[str, float]:
    out = {}
    for label, modes in results.get("metrics", {}).items():
        for mode, m in modes.items():
            for key in ("em", "f1", "searches", "answered"):
                if isinstance(m.get(key), (int, float)):
                    out[f"eval/{label}/{mode}/{key}"] = float(m[key])
    return out


def _progress(tc, total: int, initial: int):
    if not tc.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"train {tc.algorithm}", unit="step", dynamic_ncols=True)


def learn(models: TrainModels, batch: Batch, scores: torch.Tensor, optimizers: dict, schedulers: dict, tc,
          step: int, dist: DataParallel = ALONE) -> dict[str, float]:
    """One batch of scored trajectories -> one round of updates; returns the step's learning metrics.

    Under data parallelism `batch` and `scores` are the whole step's (the same on every rank); the
    forward passes and the update are split between the ranks (see `searchr1.train.distributed`).

    Old log-probs are recomputed with the current weights (the sampling log-probs are only compared,
    as `rollout/logprob_diff`), reference log-probs and critic values too; advantages are GRPO's
    group-normalised scores, or GAE over the KL-penalised token rewards (PPO).

    GRPO with a single optimizer step per batch (one epoch, one mini-batch) skips the recomputation:
    the policy taking that step is the one that would recompute them, so the update uses its own
    forward's log-probs, detached (as TRL does on-policy): one forward pass less, same update.
    """
    t_prep = time.perf_counter()
    mb = tc.micro_batch_size
    single_step = tc.algorithm == "grpo" and tc.ppo_epochs == 1 and tc.mini_batch_size >= batch.size
    old_logprobs = None if single_step else batch_forward(models, batch, mb, tc.temperature, dist=dist)
    ref_logprobs = (batch_forward(models, batch, mb, tc.temperature, reference=True, dist=dist)
                    if models.reference is not None else None)
    old_values = (batch_forward(models, batch, mb, tc.temperature, critic=True, dist=dist)
                  if models.critic is not None else None)
    mask = batch.loss_mask
    metrics: dict[str, float] = {}
    if old_logprobs is None and ref_logprobs is None:
        metrics["actor/kl"] = 0.0
    if old_logprobs is not None:  # else the update reports both from its own forward
        gen_mask = batch.generated.bool()
        diff = (old_logprobs - batch.sample_logprobs).abs()
        metrics["rollout/logprob_diff"] = float(diff[gen_mask].max()) if gen_mask.any() else 0.0
        metrics["actor/kl"] = float(masked_mean(kl_penalty(old_logprobs, ref_logprobs, "k1"), mask)) \
            if ref_logprobs is not None else 0.0
    returns = None
    if tc.algorithm == "grpo":
        advantages, gstats = grpo_advantages(scores, batch.group_ids, mask, tc.norm_adv_by_std)
        metrics["adv/zero_variance_groups"] = float(gstats["zero_variance_groups"])
        metrics["adv/zero_variance_fraction"] = float(gstats["zero_variance_fraction"])
    else:
        kl_coef = tc.kl_coef if (tc.use_kl_in_reward and ref_logprobs is not None) else 0.0
        kl = kl_penalty(old_logprobs, ref_logprobs, tc.kl_estimator) \
            if ref_logprobs is not None else torch.zeros_like(old_logprobs)
        token_rewards = kl_penalized_rewards(scores, kl, mask, kl_coef)
        advantages, returns = gae_advantages(token_rewards, old_values, mask, tc.gamma, tc.lam,
                                             whiten=tc.whiten_advantages)
        from searchr1.rl import explained_variance

        metrics["critic/explained_variance"] = float(explained_variance(old_values, returns, mask))
        metrics["critic/values_mean"] = float(masked_mean(old_values, mask))
    metrics["adv/mean"] = float(masked_mean(advantages, mask))
    metrics["adv/abs_mean"] = float(masked_mean(advantages.abs(), mask))
    t_update = time.perf_counter()
    metrics.update(update(models, batch, old_logprobs, ref_logprobs, advantages, old_values, returns,
                          optimizers, schedulers, tc, step, dist))
    metrics["time/prepare_s"] = t_update - t_prep
    metrics["time/update_s"] = time.perf_counter() - t_update
    return metrics


def train(cfg, console=None, generator_factory=None, retriever=None, reward_fn: RewardFn | None = None) -> dict:
    """Run `cfg.train`; returns {"step", "metrics" (last step), "history" (per step), "checkpoint", "run_dir",
    "models" (the trained `TrainModels`), "tokenizer", "rank", "world_size"}.

    `generator_factory(model, tokenizer) -> Generator` samples from the trained model itself
    (default `HFGenerator`); `retriever`: an open retriever (default: `cfg.retriever`'s, opened
    when `cfg.agent.max_turns > 0`); `reward_fn(trajectory) -> float` (default: exact match of the
    last answer, with Search-R1's format score when `train.format_reward`).

    Launched by `torchrun` / `accelerate launch` with N processes, every process runs this function
    and the step's work is split between them (`searchr1.train.distributed`); rank 0 logs, validates
    and checkpoints. The result is that of the calling rank.
    """
    from searchr1.modelhub import load_causal_lm, pick_device
    from searchr1.rollout.agent import Agent
    from searchr1.rollout.generator import SamplingParams
    from searchr1.errors import CheckpointError
    from searchr1.train.checkpoint import (find_latest_checkpoint, list_checkpoints, load_trainer_state,
                                           load_weights, save_checkpoint, verify_checkpoint)
    from searchr1.train.logging import MetricsLogger

    tc = cfg.train
    run_dir = Path(tc.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    dist = DataParallel.from_env(cfg.model.device, tc.sharding)
    dist.check_divisible("train.prompts_per_step", tc.prompts_per_step)
    dist.check_divisible("train.mini_batch_size", tc.mini_batch_size)
    _seed_everything(tc.seed)
    say = (lambda text: console.print(text, markup=False)) if console is not None and dist.is_main \
        else (lambda text: None)

    # ---------------------------------------------------------------- data, models, optimizers
    rows, eval_path = load_training_questions(cfg, run_dir)
    say(f"train: {len(rows)} questions; loading {cfg.model.name} ...")
    device = str(dist.device) if dist.distributed else cfg.model.device
    weights_dtype, autocast_dtype = resolve_precision(tc.precision, pick_device(device))
    model, tokenizer = load_causal_lm(cfg.model.name, device, weights_dtype)
    models = build_models(model, tc, autocast_dtype)
    sampler = PromptSampler(len(rows), tc.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    # ---------------------------------------------------------------- resume: weights, before sharding
    latest = None
    if tc.resume:
        latest = find_latest_checkpoint(run_dir)
        saved = list_checkpoints(run_dir)
        if latest is None and saved:
            try:  # say what is wrong with the newest one
                verify_checkpoint(saved[-1])
            except CheckpointError as e:
                raise CheckpointError(f"cannot resume: no checkpoint in {run_dir} verifies ({e}); delete the "
                                      "damaged checkpoints or set train.resume=false to start over") from None
        if latest is not None and saved and latest != saved[-1]:
            say(f"train: the newest checkpoint {saved[-1].name} does not verify; resuming from {latest.name}")
        if latest is not None:
            load_weights(latest, policy=models.policy, critic=models.critic, verify=False)
        else:
            say(f"train: resume asked but {run_dir} has no checkpoint; starting fresh")

    # ---------------------------------------------------------------- data parallelism, optimizers
    models.distribute(dist)
    if dist.distributed:
        say(f"train: data parallel over {dist.world} processes ({tc.prompts_per_step // dist.world} prompts each; "
            f"sharding {dist.sharding})")
    optimizers = {"policy": dist.optimizer(_params(models.policy), lr=tc.lr, weight_decay=tc.weight_decay)}
    if models.critic is not None:
        optimizers["critic"] = dist.optimizer(_params(models.critic), lr=tc.critic_lr, weight_decay=tc.weight_decay)
    schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, _warmup(tc.warmup_steps))
                  for name, opt in optimizers.items()}
    optimized = models.optimized_modules()

    # ---------------------------------------------------------------- resume: optimizer, data position, RNG
    start, skipped_total, history = 0, 0, []
    logger = (MetricsLogger(run_dir, tensorboard=tc.tensorboard, wandb=tc.wandb, config=dataclasses.asdict(cfg))
              if dist.is_main else None)
    if latest is not None:
        state = load_trainer_state(latest, optimizers=optimizers, schedulers=schedulers, restore_rng=True,
                                   load_optimizer=dist.optimizer_loader(optimized))
        start = int(state["step"])
        sampler.load_state_dict(state["sampler"])
        skipped_total = int(state.get("skipped_steps", 0))
        history = list(state.get("history", []))
        if logger is not None:
            logger.truncate_after(start + 1)  # drop what was logged after the checkpoint
        say(f"train: resumed from {latest} (step {start})")

    # ---------------------------------------------------------------- rollout machinery
    policy_lm = causal_lm(models.policy)  # the generator samples from the trained weights themselves
    if generator_factory is None:
        from searchr1.rollout.hf import HFGenerator

        generator_factory = HFGenerator
    generator = generator_factory(policy_lm, tokenizer)
    own_retriever = False
    if retriever is None and cfg.agent.max_turns > 0:
        from searchr1.retrieval.local import open_retriever

        retriever = open_retriever(cfg.retriever)
        own_retriever = True
    agent = Agent(generator, retriever, cfg.agent)
    reward_fn = reward_fn or default_reward_fn(tc.format_reward)
    device = next(models.policy.parameters()).device
    chat = cfg.model.use_chat_template

    def save(step: int) -> Path | None:
        """Every rank gathers its shards (sharded runs); rank 0 writes."""
        policy_state, critic_state = dist.full_state_dict(models.policy), dist.full_state_dict(models.critic)
        optimizer_states = dist.optimizer_states(optimizers, optimized)
        if not dist.is_main:
            return None
        state = {"step": step, "sampler": sampler.state_dict(), "skipped_steps": skipped_total,
                 "history": history, "algorithm": tc.algorithm}
        return save_checkpoint(run_dir, step, policy=models.policy, tokenizer=tokenizer, critic=models.critic,
                               optimizers=optimizers, schedulers=schedulers, state=state, keep_last=tc.keep_last,
                               policy_state=policy_state, critic_state=critic_state,
                               optimizer_states=optimizer_states)

    bar = _progress(tc, tc.steps, start) if dist.is_main else None
    last_ckpt: Path | None = None
    metrics: dict[str, float] = {}
    step = start
    try:
        for step in range(start + 1, tc.steps + 1):
            t_step = time.perf_counter()
            # 1. questions -> episodes (this rank's share of the prompts, whole groups)
            batch_rows = [rows[i] for i in sampler.take(tc.prompts_per_step)]
            mine = dist.shard(len(batch_rows))
            trajs = make_trajectories(batch_rows[mine], tokenizer, tc.template, chat, tc.group_size, mine.start)
            # 2. rollouts with the policy itself, then every rank gets every rank's trajectories
            _set_mode(models, False)
            params = SamplingParams(temperature=tc.temperature, top_p=tc.top_p,
                                    seed=tc.seed * 1_000_003 + step + dist.rank * 1_000_000_007)
            with dist.gathered(models.actor), models.compute():
                rollout = agent.run(trajs, params)
            trajs = dist.gather_objects(trajs)
            # 3. rewards
            scores = score_trajectories(trajs, reward_fn)
            # 4-6. tensors -> old / reference log-probs, values -> advantages -> policy (and critic) update
            batch = collate(trajs, pad_id, tc.mask_retrieved).to(device)
            metrics = _rollout_metrics(trajs, batch, scores)
            up = learn(models, batch, scores.to(device), optimizers, schedulers, tc, step, dist)
            skipped_total += int(up.pop("train/skipped_updates"))
            metrics.update(up)
            t_end = time.perf_counter()
            # 7. metrics
            tokens = float(batch.valid.sum())
            metrics.update({
                "train/skipped_steps": float(skipped_total),
                "train/lr": float(schedulers["policy"].get_last_lr()[0]),
                "time/rollout_s": rollout.seconds,
                "time/generate_s": rollout.generate_seconds,
                "time/retrieval_s": rollout.retrieve_seconds,
                "time/step_s": t_end - t_step,
                "perf/tokens_per_s": tokens / max(t_end - t_step, 1e-9),
                "perf/rollout_tokens_per_s": rollout.generated_tokens / max(rollout.generate_seconds, 1e-9),
            })
            history.append({"step": step, "reward": metrics["reward/mean"], "em": metrics["reward/em"]})
            if logger is not None:
                logger.log(metrics, step)
            if bar is not None:
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", em=f"{metrics['reward/em']:.3f}")
                bar.update(1)
            # 8. evaluation and checkpoints (rank 0; the others wait)
            if tc.eval_every and step % tc.eval_every == 0:
                with dist.gathered(models.actor):
                    if dist.is_main:
                        from searchr1.eval.harness import evaluate

                        _set_mode(models, False)
                        with models.compute():
                            results = evaluate(_eval_config(cfg, run_dir, step, eval_path), console, generator,
                                               retriever)
                        eval_metrics = _eval_metrics(results)
                        logger.log(eval_metrics, step)
                        metrics.update(eval_metrics)
                    dist.barrier()
            if step == tc.steps or (tc.save_every and step % tc.save_every == 0):
                last_ckpt = save(step)
                dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        if own_retriever:
            getattr(retriever, "close", lambda: None)()
    # Leave the process group only on success: after an error torchrun stops every rank anyway,
    # and a barrier here could pair with another rank's unrelated collective.
    models.undistribute()
    dist.close()
    if last_ckpt is None and start >= tc.steps:
        say(f"train: already at step {start} of {tc.steps}; nothing to do")
    return {"step": step, "metrics": metrics, "history": history,
            "checkpoint": str(last_ckpt) if last_ckpt else None, "run_dir": str(run_dir),
            "models": models, "tokenizer": tokenizer, "rank": dist.rank, "world_size": dist.world}
