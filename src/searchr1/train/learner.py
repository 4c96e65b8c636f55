"""The learner: one scored batch -> one round of policy (and critic) updates.

    prepare   old / reference log-probs and critic values (forward passes without grad), the token
              rewards (the outcome score, less the KL penalty when the KL goes in the reward), then
              the advantages of the algorithm's row in `searchr1.rl.algorithms` (GRPO, RLOO and
              REINFORCE read the outcome scores; PPO's GAE and REINFORCE++ the token rewards)
    update    ppo_epochs x shuffled mini-batches, gradient accumulation over micro-batches (rows of
              similar length together, `train.compute.sort_micro_batches`; metric batch/pad_fraction),
              clipped surrogate (per token, or GSPO's per sequence; clip-higher, dual clip, truncated
              importance weights when asked), entropy bonus, KL loss, LLDS, value loss; a non-finite
              loss or gradient norm skips the optimizer step. Rows whose loss has exactly zero
              gradient (zero advantages and no other term: `silent_rows`) are left out of the
              passes; the rows kept are weighted as in the whole mini-batch, so the gradient is the
              same, and a mini-batch left empty takes no optimizer step

Old log-probs (the ratio's denominator) come from one of three places (`old_logprobs_source`):
    update    one optimizer step per batch: the update's own forward, detached (no pass at all)
    sampler   the rollouts came from the trainer's own weights in its precision (`sampler_is_policy`,
              `train.loss.reuse_sampler_logprobs`): the log-probs the sampler returned (no pass)
    forward   otherwise: a forward pass over the batch before the update
The sampler's log-probs are compared with the trainer's (the metrics `rollout/logprob_diff*`: with
the forward pass, or the update's first forward while the policy is still the sampler's); with
`train.loss.tis_cap` they also give the truncated importance weights that correct for a sampler
that is not the trainer.

Under data parallelism the batch and scores are the whole step's (the same on every rank); the
forward passes and the update are split between the ranks (`searchr1.train.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch

from searchr1.rl import (AdvantageInputs, aggregate_loss, explained_variance, informative_groups, kl_loss,
                         kl_penalized_rewards, kl_penalty, llds_loss, masked_mean, policy_loss, truncated_is_weights,
                         value_loss)
from searchr1.train.batch import Batch
from searchr1.train.distributed import DataParallel
from searchr1.train.models import TrainModels

ALONE = DataParallel()  # the single-process group: every collective is a no-op


def trainable(module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates (LoRA: the adapters only)."""
    return [p for p in module.parameters() if p.requires_grad] if module is not None else []


def warmup_schedule(warmup_steps: int):
    """LambdaLR factor: linear warm-up over `warmup_steps` optimizer steps, then constant."""
    return lambda n: min(1.0, (n + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _pad_to(x: torch.Tensor, T: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, T - x.shape[1])) if x.shape[1] < T else x


class RunningStats:
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


def sampler_mismatch(old: torch.Tensor, sample: torch.Tensor, policy_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far the sampler's log-probs are from the trainer's (max and mean |diff| over generated tokens)."""
    m = policy_mask.bool()
    diff = (old - sample).abs()
    if not m.any():
        zero = torch.zeros(())
        return {"max": zero, "mean": zero}
    return {"max": diff[m].max(), "mean": diff[m].mean()}


class Learner:
    """Owns the optimizers and schedulers of `models` and turns scored batches into updates.

    `optimizer_cls` / `weight_decay` choose the optimizer (AdamW with `train.optim.weight_decay` by
    default; tests use SGD, whose updates are linear in the gradient). Build it after
    `models.distribute(dist)`: under zero1 the optimizer itself is sharded.

    `sampler_is_policy`: the batches' rollouts are sampled by the policy module itself under
    `models.compute()` (our engine over the trained weights), so their log-probs are the old ones.

    `agg_norm`: the constant length of Dr. GRPO's ``seq-mean-token-sum-norm`` (the trainer passes the
    agent's response budget); None = each step's longest response."""

    def __init__(self, models: TrainModels, tc, dist: DataParallel = ALONE, optimizer_cls=torch.optim.AdamW,
                 weight_decay: float | None = None, sampler_is_policy: bool = False,
                 agg_norm: float | None = None) -> None:
        self.models, self.tc, self.dist = models, tc, dist
        self.sampler_is_policy = sampler_is_policy
        self.agg_norm = agg_norm
        decay = tc.optim.weight_decay if weight_decay is None else weight_decay
        self.optimizers = {"policy": dist.optimizer(trainable(models.policy), optimizer_cls, lr=tc.optim.lr,
                                                    weight_decay=decay)}
        if models.critic is not None:
            self.optimizers["critic"] = dist.optimizer(trainable(models.critic), optimizer_cls, lr=tc.optim.critic_lr,
                                                       weight_decay=decay)
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(tc.optim.warmup_steps))
                           for name, opt in self.optimizers.items()}

    @property
    def lr(self) -> float:
        return float(self.schedulers["policy"].get_last_lr()[0])

    # ------------------------------------------------------------------ forward passes without grad
    @torch.no_grad()
    def forward(self, batch: Batch, which: str = "policy") -> torch.Tensor:
        """``[B, T]`` log-probs of the policy or the reference, or the critic's values, in
        micro-batches. Under data parallelism each rank computes its block of rows and the blocks
        are all-gathered."""
        models, tc, dist = self.models, self.tc, self.dist
        module = {"policy": models.policy_forward, "reference": models.reference_forward,
                  "critic": models.policy_forward if models.shared_critic else models.critic_forward}[which]
        outs = []
        mine = torch.arange(batch.size, device=batch.input_ids.device)[dist.shard(batch.size)]
        order = batch.by_length(mine) if tc.compute.sort_micro_batches else mine
        # every rank runs the same number of forwards here: one all-gather of a sharded model for all of them
        with dist.gathered(module):
            for idx in order.split(tc.micro_batch_size):
                mb = batch.rows(idx)
                with models.compute():
                    if which == "critic" and not models.shared_critic:
                        out = module(mb.input_ids, mb.attention_mask, mb.response_start)
                    else:
                        context = models.reference_context() if which == "reference" else contextlib.nullcontext()
                        with context:
                            res = module(mb.input_ids, mb.attention_mask, mb.response_start,
                                         temperature=tc.sampling.temperature, positions=mb.scored)
                        out = res.values if which == "critic" else res.logprobs
                outs.append(_pad_to(out.float(), batch.response_len))
        # back to row order (`mine` is ascending, so the rank of each row in it is its place)
        return dist.gather_rows(torch.cat(outs, 0)[torch.argsort(order)])

    # ------------------------------------------------------------------ targets
    def reuses_own_forward(self, batch: Batch) -> bool:
        """One optimizer step on outcome advantages: the policy taking it is the one that would
        recompute the old log-probs, so the update uses its own forward's, detached (as TRL does
        on-policy): one forward pass less, same update. Not with a critic, nor when the advantages
        read the old log-probs (the KL in the reward)."""
        tc = self.tc
        return (not tc.algo.needs_critic and not tc.use_kl_in_reward and tc.ppo_epochs == 1
                and tc.mini_batch_size >= batch.size)

    def reuses_sampler_logprobs(self) -> bool:
        """`train.loss.reuse_sampler_logprobs`; auto: the sampler is the policy itself (same weights, same
        precision), the loss covers generated tokens only (the sampler has no log-probs for injected
        ones), TIS is off (it compares the sampler's log-probs with the trainer's) and so is LLDS: it
        asks whether the update lowered a token's likelihood, which only the trainer's own forward
        before the update can say. The sampler's log-probs differ from it by the precision's noise
        (0.028 nats on average in bf16), which LLDS would read as displacement and penalise."""
        tc = self.tc
        setting = tc.loss.reuse_sampler_logprobs
        if setting != "auto":
            return bool(setting)
        return self.sampler_is_policy and tc.loss.mask_retrieved and tc.loss.tis_cap == 0 and tc.loss.llds_coef == 0

    def old_logprobs_source(self, batch: Batch) -> str:
        """"update", "sampler" or "forward" (see the module docstring)."""
        if self.reuses_own_forward(batch):
            return "update"
        return "sampler" if self.reuses_sampler_logprobs() else "forward"

    def prepare(self, batch: Batch, scores: torch.Tensor) -> tuple[Batch, dict[str, float]]:
        """The batch with its training targets filled in, and the metrics of the preparation."""
        tc, models = self.tc, self.models
        source = self.old_logprobs_source(batch)
        old = {"update": None, "sampler": batch.sample_logprobs}.get(source)
        if source == "forward":
            old = self.forward(batch, "policy")
        # The reference's log-probs: bf16 autocast under bf16-mixed, over weights in the policy's dtype
        # (`build_models`). The cheapest precision that keeps the KL honest: the update's policy
        # forward runs the same computation, so the KL at step 0 is 0 and carries no precision bias
        # (a bf16-stored copy gave 5e-3; tests/integration/test_learner_model.py).
        ref = self.forward(batch, "reference") if models.reference is not None else None
        values = self.forward(batch, "critic") if models.critic is not None else None
        mask = batch.loss_mask
        metrics: dict[str, float] = {}
        if old is None and ref is None:
            metrics["actor/kl"] = 0.0
        if source == "forward":  # else the update reports the mismatch from its first forward
            diff = sampler_mismatch(old, batch.sample_logprobs, batch.policy_mask)
            metrics["rollout/logprob_diff"] = float(diff["max"])
            metrics["rollout/logprob_diff_mean"] = float(diff["mean"])
        if old is not None:  # else the update reports the KL from its own forward
            metrics["actor/kl"] = float(masked_mean(kl_penalty(old, ref, "k1"), mask)) if ref is not None else 0.0
        metrics["train/old_logprobs_from_sampler"] = float(source == "sampler")
        kl_coef = tc.kl.coef if (tc.use_kl_in_reward and ref is not None) else 0.0
        kl = kl_penalty(old, ref, tc.kl_estimator) if kl_coef > 0 else torch.zeros_like(mask, dtype=torch.float32)
        inputs = AdvantageInputs(scores, batch.group_ids, mask, kl_penalized_rewards(scores, kl, mask, kl_coef),
                                 values, gamma=tc.adv.gamma, lam=tc.adv.lam, whiten=tc.adv.whiten,
                                 norm_by_std=tc.adv.norm_by_std, baseline=tc.adv.baseline, tree_ids=batch.tree_ids)
        advantages, returns = tc.algo.advantage(inputs)
        if tc.algo.group_based:
            groups = torch.unique(batch.group_ids)
            informative = torch.unique(batch.group_ids[informative_groups(scores, batch.group_ids)])
            metrics["adv/zero_variance_groups"] = float(len(groups) - len(informative))
            metrics["adv/zero_variance_fraction"] = metrics["adv/zero_variance_groups"] / max(len(groups), 1)
        if returns is not None:
            metrics["critic/explained_variance"] = float(explained_variance(values, returns, mask))
            metrics["critic/values_mean"] = float(masked_mean(values, mask))
        metrics["adv/mean"] = float(masked_mean(advantages, mask))
        metrics["adv/abs_mean"] = float(masked_mean(advantages.abs(), mask))
        return dataclasses.replace(batch, old_logprobs=old, ref_logprobs=ref, advantages=advantages, values=values,
                                   returns=returns), metrics

    def learn(self, batch: Batch, scores: torch.Tensor, step: int) -> dict[str, float]:
        """`prepare` then `update` (`step` seeds the mini-batch shuffle); the learning metrics, with
        their timings."""
        t_prep = time.perf_counter()
        batch, metrics = self.prepare(batch, scores)
        t_update = time.perf_counter()
        metrics.update(self.update(batch, step, measure_sampler=self.old_logprobs_source(batch) == "sampler"))
        metrics["batch/tokens"] = float(batch.attention_mask.sum())  # what a step's passes must compute
        metrics["batch/response_tokens"] = float(batch.response_mask.sum())
        metrics["time/prepare_s"] = t_update - t_prep
        metrics["time/update_s"] = time.perf_counter() - t_update
        return metrics

    # ------------------------------------------------------------------ the update
    def silent_rows(self, batch: Batch) -> torch.Tensor | None:
        """``[B]`` bool: the rows of a prepared batch whose loss has exactly zero gradient, or None when
        this configuration cannot tell. A row is silent when its advantage is 0 at every loss token
        (a GRPO / RLOO group whose rewards are all equal, a row outside the loss) and no other term
        reads it: no KL loss, entropy bonus, LLDS or value loss. Its clipped surrogate is then
        ``-0 * ratio`` whatever the ratio, so leaving it out of the forward and backward passes
        changes nothing but their cost. Off under data parallelism (every rank must run the same
        passes for the collectives) and with `train.compute.skip_silent_rows` false."""
        tc, models = self.tc, self.models
        kl_term = models.reference is not None and not tc.use_kl_in_reward and tc.kl.coef > 0
        if (not tc.compute.skip_silent_rows or self.dist.distributed or models.critic is not None or kl_term
                or tc.loss.entropy_coef != 0 or tc.loss.llds_coef != 0 or batch.advantages is None):
            return None
        return ((batch.advantages != 0) & batch.loss_mask.bool()).sum(1) == 0

    def update(self, batch: Batch, step: int, measure_sampler: bool = False) -> dict[str, float]:
        """ppo_epochs x shuffled mini-batches of a prepared batch; gradient accumulation over
        micro-batches. Under data parallelism rank r trains on its 1/W of each mini-batch with the
        loss scaled by W (DDP averages gradients). `measure_sampler`: report the sampler/trainer
        mismatch from the forwards before the first optimizer step (the policy is still the sampler's)."""
        models, tc, dist = self.models, self.tc, self.dist
        agg_norm = float(self.agg_norm or batch.response_len)
        models.set_training(True)
        policy_params, critic_params = trainable(models.policy), trainable(models.critic)
        stats = RunningStats()
        skipped = trailing_skipped = optimizer_steps = 0
        max_norm = tc.optim.max_grad_norm if tc.optim.max_grad_norm > 0 else float("inf")
        gen = torch.Generator().manual_seed(tc.seed * 1_000_003 + step)
        silent = self.silent_rows(batch)
        left_out = empty = 0
        for epoch in range(tc.ppo_epochs):
            perm = torch.randperm(batch.size, generator=gen).to(batch.input_ids.device)
            for mini in perm.split(tc.mini_batch_size):
                # the weights below divide by the whole mini-batch's tokens (rows), so leaving out the
                # silent rows keeps the gradient of the rest as it was
                mini_tokens, mini_rows = float(batch.loss_mask[mini].sum()), len(mini)
                if silent is not None:
                    left_out += int(silent[mini].sum())
                    mini = mini[~silent[mini]]
                    if len(mini) == 0:
                        # no gradient at all: an optimizer step would only apply AdamW's momentum and
                        # weight decay, which no data asked for
                        empty += 1
                        continue
                for opt in self.optimizers.values():
                    opt.zero_grad(set_to_none=True)
                finite = True
                share = mini[dist.shard(len(mini))]
                order = batch.by_length(share) if tc.compute.sort_micro_batches else share
                micros = order.split(tc.micro_batch_size)
                for i, micro in enumerate(micros):
                    mb = batch.rows(micro)
                    cells, padded = mb.padding()
                    stats.add({"batch/pad_fraction": padded / cells}, cells)
                    if tc.loss.agg == "token-mean":
                        weight = float(mb.loss_mask.sum()) / mini_tokens if mini_tokens > 0 else 0.0
                    else:
                        weight = len(micro) / mini_rows
                    sync_later = i < len(micros) - 1  # gradients are all-reduced once, after the last micro-batch
                    with dist.no_sync(models.policy_forward, sync_later), \
                            dist.no_sync(models.critic_forward, sync_later):
                        finite = self._micro_step(mb, weight * dist.world, stats,
                                                  measure_sampler and epoch == optimizer_steps == 0,
                                                  agg_norm) and finite
                    if not finite and not dist.distributed:
                        break  # alone, no other rank waits for this backward
                finite = dist.all_true(finite)
                grad_norm = dist.clip_grad_norm(policy_params, max_norm) if policy_params else torch.tensor(0.)
                critic_norm = dist.clip_grad_norm(critic_params, max_norm) if critic_params else None
                norms_finite = bool(torch.isfinite(grad_norm)) and (critic_norm is None
                                                                    or bool(torch.isfinite(critic_norm)))
                if not finite or not norms_finite:
                    skipped += 1
                    trailing_skipped += 1
                    for opt in self.optimizers.values():
                        opt.zero_grad(set_to_none=True)
                    continue
                for opt in self.optimizers.values():
                    opt.step()
                for sched in self.schedulers.values():
                    sched.step()
                optimizer_steps += 1
                trailing_skipped = 0
                stats.add({"actor/grad_norm": grad_norm})
                if critic_norm is not None:
                    stats.add({"critic/grad_norm": critic_norm})
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        models.set_training(False)
        out = dist.merge_stats(stats.sums, stats.weights, stats.maxima)
        out["train/skipped_updates"] = skipped
        out["train/optimizer_steps"] = optimizer_steps
        out["train/silent_rows_left_out"] = left_out / max(tc.ppo_epochs, 1)
        out["train/empty_mini_batches"] = empty
        out["train/trailing_skipped_updates"] = trailing_skipped  # since the last optimizer step taken
        return out

    def _micro_step(self, mb: Batch, weight: float, stats: RunningStats, measure_sampler: bool = False,
                    agg_norm: float | None = None) -> bool:
        """Forward and backward of one micro-batch; False if the loss was not finite. The backward
        runs even then under data parallelism (the other ranks wait for its all-reduce); the
        optimizer step is skipped everywhere instead."""
        models, tc = self.models, self.tc
        mask = mb.loss_mask
        with models.compute():
            out = models.policy_forward(mb.input_ids, mb.attention_mask, mb.response_start,
                                        temperature=tc.sampling.temperature, with_entropy=True,
                                        entropy_grad=tc.loss.entropy_coef > 0, positions=mb.scored)
            if models.critic is None:
                values = None
            elif models.shared_critic:
                values = out.values
            else:
                values = models.critic_forward(mb.input_ids, mb.attention_mask, mb.response_start)
        old, ref = mb.old_logprobs, mb.ref_logprobs
        if (measure_sampler or old is None) and mb.policy_mask.any():
            diff = sampler_mismatch(out.logprobs.detach(), mb.sample_logprobs, mb.policy_mask)
            stats.peak({"rollout/logprob_diff": diff["max"]})
            stats.add({"rollout/logprob_diff_mean": diff["mean"]}, weight)
        if old is None:  # this forward's own, detached (`reuses_own_forward`)
            old = out.logprobs.detach()
            if ref is not None:
                stats.add({"actor/kl": masked_mean(kl_penalty(old, ref, "k1"), mask)}, weight)
        micro_stats = {}
        is_weights = None
        if tc.loss.tis_cap > 0:
            is_weights, tis = truncated_is_weights(old, mb.sample_logprobs, mb.policy_mask, tc.loss.tis_cap)
            micro_stats.update({"actor/tis_capped_fraction": tis["capped_fraction"],
                                "actor/tis_weight_mean": tis["weight_mean"]})
        pg, pg_stats = policy_loss(out.logprobs, old, mb.advantages, mask, tc.loss.clip_ratio, tc.loss.clip_ratio_high or None,
                                   tc.loss.dual_clip_c or None, tc.loss.agg, token_weights=is_weights, mode=tc.loss.mode,
                                   agg_norm=agg_norm)
        loss = pg
        micro_stats.update({"actor/pg_loss": pg, "actor/clip_fraction": pg_stats["clip_fraction"],
                            "actor/approx_kl": pg_stats["approx_kl"], "actor/ratio_max": pg_stats["ratio_max"]})
        if tc.loss.llds_coef > 0:
            llds, llds_stats = llds_loss(out.logprobs, old, mb.advantages, mask, tc.loss.llds_gate, tc.loss.agg,
                                           agg_norm)
            loss = loss + tc.loss.llds_coef * llds
            micro_stats.update({"actor/llds_loss": llds, "actor/llds_active_tokens": llds_stats["active_tokens"],
                                "actor/llds_active_responses": llds_stats["active_responses"]})
        entropy = aggregate_loss(out.entropy, mask, tc.loss.agg, agg_norm)
        micro_stats["actor/entropy"] = entropy
        if tc.loss.entropy_coef > 0:
            loss = loss - tc.loss.entropy_coef * entropy
        if ref is not None and not tc.use_kl_in_reward and tc.kl.coef > 0:
            kl, _ = kl_loss(out.logprobs, ref, mask, tc.kl_estimator, tc.loss.agg, agg_norm)
            loss = loss + tc.kl.coef * kl
            micro_stats["actor/kl_loss"] = kl
        if values is not None:
            vl, v_stats = value_loss(values, mb.values, mb.returns, mask, tc.loss.value_clip or None, tc.loss.agg,
                                     agg_norm)
            loss = loss + tc.loss.vf_coef * vl
            micro_stats["critic/value_loss"] = vl
            micro_stats["critic/clip_fraction"] = v_stats["clip_fraction"]
        finite = bool(torch.isfinite(loss))
        (loss * weight).backward()
        if finite:
            stats.add(micro_stats, weight)
        return finite
