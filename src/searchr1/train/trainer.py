"""`searchr1 train`: PPO / GRPO / RLOO / REINFORCE++ over multi-turn search rollouts, one readable loop.

    for step in steps:
        rollouts   <- the next questions, group_size episodes each, played by the policy itself, and
                      their rewards (`searchr1.train.rollouts`)
        batch      <- [prompt left-padded | response right-padded] with masks (`searchr1.train.batch`)
        update     <- old / reference log-probs, values -> advantages -> ppo_epochs x mini-batches
                      (`searchr1.train.learner`)
        metrics, eval every eval_every, checkpoint every save_every and at the end

Resume (`train.resume=true`) loads the latest checkpoint of run_dir and continues exactly: same
weights, optimizer and scheduler state, data position and RNG; rollout seeds derive from the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from pathlib import Path

import torch

from searchr1.data.questions import held_out_questions, training_questions
from searchr1.errors import CheckpointError, ConfigError, RetrieverUnavailableError, TrainingDivergedError
from searchr1.eval.harness import evaluate
from searchr1.modelhub import load_causal_lm, pick_device
from searchr1.retrieval.local import open_retriever, with_method
from searchr1.rollout.agent import Agent
from searchr1.rollout.backend import open_generator
from searchr1.train.batch import collate
from searchr1.train.checkpoint import (CHECKPOINTS_DIRNAME, find_latest_checkpoint, list_checkpoints,
                                       load_trainer_state, load_weights, rng_state, save_checkpoint,
                                       verify_checkpoint)
from searchr1.train.distributed import DataParallel
from searchr1.train.learner import Learner
from searchr1.rollout.memory import engine_pool
from searchr1.train.memory import check_training_fits
from searchr1.train.metrics_log import METRICS_FILE, TENSORBOARD_DIR, MetricsLogger
from searchr1.train.models import build_models, causal_lm, resolve_precision
from searchr1.train.rollouts import PromptSampler, RewardFn, RolloutCollector, default_reward_fn, rollout_metrics


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


#: What a run writes into its run_dir: a fresh run in a used run_dir refuses, or moves them aside.
_RUN_FILES = (CHECKPOINTS_DIRNAME, METRICS_FILE, TENSORBOARD_DIR, "eval")


def _claim_run_dir(run_dir: Path, tc, dist, say) -> None:
    """A fresh run (train.resume=false) never deletes, prunes or appends to an earlier run's files:
    a run_dir holding checkpoints or metrics is refused unless train.overwrite moves them aside."""
    if tc.resume:
        return
    checkpoints = list_checkpoints(run_dir)
    metrics = run_dir / METRICS_FILE
    if not checkpoints and not (metrics.is_file() and metrics.stat().st_size > 0):
        return
    if not tc.overwrite:
        raise ConfigError(
            f"train.run_dir {run_dir} holds an earlier run ({len(checkpoints)} checkpoint(s) and its "
            f"{METRICS_FILE}); set train.resume=true to continue it, train.overwrite=true to start over (its files "
            f"are moved to {run_dir}/replaced-<time>/), or choose another train.run_dir")
    if dist.is_main:
        aside = run_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
        aside.mkdir()
        for name in _RUN_FILES:
            if (run_dir / name).exists():
                os.rename(run_dir / name, aside / name)
        say(f"train: train.overwrite: the earlier run's files are now in {aside}")
    dist.barrier()


def _checkpoint_to_resume(run_dir: Path, dist, say) -> Path | None:
    """The newest checkpoint of run_dir that verifies, found by rank 0 (hashing it once) and sent to
    the others; a clear error on every rank when some exist and none does."""
    found = None
    if dist.is_main:
        try:
            latest = _verified_latest(run_dir, say)
            found = ("ok", None if latest is None else str(latest))
        except CheckpointError as e:
            found = ("error", str(e))
    kind, value = dist.broadcast_object(found)
    if kind == "error":
        raise CheckpointError(value)
    return None if value is None else Path(value)


def _verified_latest(run_dir: Path, say) -> Path | None:
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
    if latest is None:
        say(f"train: resume asked but {run_dir} has no checkpoint; starting fresh")
    return latest


@contextlib.contextmanager
def _generating(models, dist):
    """The policy whole (sharded runs gather it once), in eval mode, under the compute precision."""
    models.set_training(False)
    with dist.gathered(models.policy_forward), models.generation(cache_frozen_casts=not dist.sharded):
        yield


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


def train(cfg, console=None, generator_factory=None, retriever=None, reward_fn: RewardFn | None = None) -> dict:
    """Run `cfg.train`; returns {"step", "metrics" (last step), "history" (per step), "checkpoint", "run_dir",
    "models" (the trained `TrainModels`), "tokenizer", "rank", "world_size"}.

    `generator_factory(model, tokenizer) -> Generator` samples from the trained model itself
    (default: the engine `cfg.rollout.backend` names, `searchr1.rollout.backend.open_generator`);
    the trainer calls its `weights_updated()` after every update and reads `weight_sync_seconds`;
    a generator from `generator_factory` is the caller's to close;
    `retriever`: an open retriever for `cfg.retriever` (default: opened here when `cfg.agent.max_turns > 0`).
    Training rollouts search it, unless `train.retriever_method` names another method: then they search
    that one (opened and closed here) and only the held-out evaluations search `cfg.retriever`'s;
    `reward_fn(trajectory) -> float` (default: exact match of the last answer, with Search-R1's
    format score when `train.format_reward`).

    Launched by `torchrun` / `accelerate launch` with N processes, every process runs this function
    and the step's work is split between them (`searchr1.train.distributed`); rank 0 logs, validates
    and checkpoints. The result is that of the calling rank.
    """
    tc = cfg.train
    run_dir = Path(tc.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    dist = DataParallel.from_env(cfg.model.device, tc.compute.sharding, tc.compute.collective_timeout_minutes)
    dist.check_divisible("train.prompts_per_step", tc.prompts_per_step)
    dist.check_divisible("train.mini_batch_size", tc.mini_batch_size)
    say = (lambda text: console.print(text, markup=False)) if console is not None and dist.is_main \
        else (lambda text: None)
    _claim_run_dir(run_dir, tc, dist, say)
    _seed_everything(tc.seed)

    # ---------------------------------------------------------------- data and models
    rows = training_questions(cfg)
    held_out = held_out_questions(cfg) if tc.eval_every else {}
    say(f"train: {len(rows)} questions; loading {cfg.model.name} ...")
    device = str(dist.device) if dist.distributed else cfg.model.device
    weights_dtype, autocast_dtype = resolve_precision(tc.compute.precision, pick_device(device))
    say(f"train: precision {tc.compute.precision} -> {'bf16 autocast over ' if autocast_dtype else ''}"
        f"{weights_dtype} weights")
    model, tokenizer = load_causal_lm(cfg.model.name, device, weights_dtype)
    models = build_models(model, tc, autocast_dtype)
    sampler = PromptSampler(len(rows), tc.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    # ---------------------------------------------------------------- resume: weights, before sharding
    latest = _checkpoint_to_resume(run_dir, dist, say) if tc.resume else None
    if latest is not None:
        load_weights(latest, policy=models.policy, critic=models.critic, verify=False)

    # ---------------------------------------------------------------- the state fits, before any step
    on = next(models.policy.parameters()).device
    vllm_share = 0
    if cfg.rollout.backend == "vllm" and on.type == "cuda" and not cfg.rollout.vllm.sleep:
        vllm_share = int(cfg.rollout.vllm.gpu_memory_utilization * torch.cuda.mem_get_info(on)[1])
    check_training_fits(models, on, dist.world, dist.sharding, reserved=vllm_share)

    # ---------------------------------------------------------------- data parallelism, the learner
    models.distribute(dist)
    if dist.distributed:
        say(f"train: data parallel over {dist.world} processes ({tc.prompts_per_step // dist.world} prompts each; "
            f"sharding {dist.sharding})")
    learner = Learner(models, tc, dist, agg_norm=cfg.agent.max_response_tokens)
    optimized = models.optimized_modules()

    # ---------------------------------------------------------------- the generator, then resume's RNG
    # The generator samples from the trained weights themselves (vLLM: follows them, see below). It
    # is built before the checkpoint's RNG state is restored: vLLM's engine reseeds the global
    # generators when it starts, which would otherwise undo the restore (resume no longer exact).
    factory = generator_factory or (lambda model, tok: open_generator(cfg, model, tok, seed=tc.seed))
    generator = factory(causal_lm(models.policy), tokenizer)
    # our engine runs the policy module itself, under models.generation() (`_generating`): its log-probs are the old ones
    learner.sampler_is_policy = getattr(generator, "model", None) is causal_lm(models.policy)
    start, skipped_total, history = 0, 0, []
    logger = None
    try:
        logger = (MetricsLogger(run_dir, tensorboard=tc.tensorboard, wandb=tc.wandb, config=dataclasses.asdict(cfg))
                  if dist.is_main else None)
        if latest is not None:
            state = load_trainer_state(latest, optimizers=learner.optimizers, schedulers=learner.schedulers,
                                       restore_rng=True, load_optimizer=dist.optimizer_loader(optimized),
                                       verify=False, rank=dist.rank)  # verified by rank 0 above
            start = int(state["step"])
            sampler.load_state_dict(state["sampler"])
            skipped_total = int(state.get("skipped_steps", 0))
            history = list(state.get("history", []))
            say(f"train: resumed from {latest} (step {start})")
        if tc.resume and logger is not None:
            logger.truncate_after(start + 1)  # drop what was logged after the checkpoint (all of it when none)
    except BaseException:
        if logger is not None:
            logger.close()
        if generator_factory is None:
            generator.close()
        raise

    # ---------------------------------------------------------------- rollout machinery
    # `retriever` is what training rollouts search; held-out evaluations search `eval_retriever`, which
    # is cfg.retriever's (evaluate opens it when it is None). They differ under train.retriever_method,
    # e.g. simulated search for training and the real index for evaluation (ZeroSearch's setting).
    own_retrievers = []
    eval_retriever = retriever
    if cfg.agent.max_turns > 0:
        if tc.retriever_method:
            retriever = open_retriever(with_method(cfg.retriever, tc.retriever_method))
            own_retrievers.append(retriever)
        elif retriever is None:
            retriever = eval_retriever = open_retriever(cfg.retriever)
            own_retrievers.append(retriever)
    device = next(models.policy.parameters()).device
    # the slot cache holds the compute dtype: autocast's under mixed precision, else the weights'
    kv_dtype = models.autocast_dtype or next(models.policy.parameters()).dtype

    def pool_for(trajs) -> int:
        """Our engine's pool, bounded by the KV budget (vLLM sizes its own cache)."""
        return engine_pool(generator, trajs, tc.sampling.pool, cfg.agent, tc.sampling.pool_memory_gb, kv_dtype)

    reward_fn = reward_fn or default_reward_fn(tc.format_reward, tc.retrieval_score, tc.format_needs_search)
    collector = RolloutCollector(
        Agent(generator, retriever, cfg.agent), tokenizer, rows, sampler, tc, cfg.model.use_chat_template,
        reward_fn, cfg.agent.max_response_tokens, dist,
        gathered=lambda: _generating(models, dist), pool_for=pool_for)

    def save(step: int) -> Path | None:
        """Every rank gathers its shards (sharded runs); rank 0 writes."""
        policy_state, critic_state = dist.full_state_dict(models.policy), dist.full_state_dict(models.critic)
        optimizer_states = dist.optimizer_states(learner.optimizers, optimized)
        rngs = dist.gather_objects([rng_state()]) if dist.distributed else None  # each rank samples on its own
        if not dist.is_main:
            return None
        state = {"step": step, "sampler": sampler.state_dict(), "skipped_steps": skipped_total,
                 "history": history, "algorithm": tc.algorithm}
        return save_checkpoint(run_dir, step, policy=models.policy, tokenizer=tokenizer, critic=models.critic,
                               optimizers=learner.optimizers, schedulers=learner.schedulers, state=state,
                               keep_last=tc.keep_last, policy_state=policy_state, critic_state=critic_state,
                               optimizer_states=optimizer_states, drop_newer=tc.resume, rng_by_rank=rngs)

    saved_step = start  # the newest step on disk (resume: the checkpoint resumed from)

    def collect(step: int):
        """The step's rollouts. A retriever still unreachable after the client's retries raises
        RetrieverUnavailableError: the step's prompts are put back, the last completed step is
        checkpointed, and the step is played again once the server answers (its sampling is seeded
        by the step, so it draws the same), so no step is lost or repeated. Past
        `retriever.wait_deadline_s` the error ends the run."""
        nonlocal last_ckpt, saved_step
        deadline = None  # of this step's outage: a server whose /health answers but whose searches fail counts too
        while True:
            sampler_state = sampler.state_dict()
            try:
                return collector.collect(step)
            except RetrieverUnavailableError as e:
                if not hasattr(retriever, "wait_until_healthy"):
                    raise
                sampler.load_state_dict(sampler_state)
                # a sharded save is a collective: only a single process saves while the others run on
                if step - 1 > saved_step and not dist.distributed:
                    last_ckpt, saved_step = save(step - 1), step - 1
                deadline = deadline or time.monotonic() + cfg.retriever.wait_deadline_s
                if time.monotonic() >= deadline:
                    raise RetrieverUnavailableError(
                        f"{e}; still failing after retriever.wait_deadline_s={cfg.retriever.wait_deadline_s:g} s. "
                        f"The checkpoint of step {saved_step} is kept: resume with train.resume=true") from None
                say(f"train: step {step}: {e}; the checkpoint of step {saved_step} is kept; waiting up to "
                    f"{cfg.retriever.wait_deadline_s:g} s (retriever.wait_deadline_s) for the retriever")
                retriever.wait_until_healthy(max(deadline - time.monotonic(), 0.0), cfg.retriever.backoff_s or 1.0)

    bar = _progress(tc, tc.steps, start) if dist.is_main else None
    last_ckpt: Path | None = None
    skipped_in_a_row = 0  # optimizer steps skipped since the last one taken
    metrics: dict[str, float] = {}
    step = start
    try:
        for step in range(start + 1, tc.steps + 1):
            t_step = time.perf_counter()
            sync_seconds = generator.weight_sync_seconds  # total so far
            # a retriever with a curriculum over training (simulated search's noise) follows the step
            if (set_step := getattr(retriever, "set_step", None)) is not None:
                set_step(step, tc.steps)
            # 1-3. questions -> episodes played by the policy -> rewards
            rollouts = collect(step)
            trajs, rollout = rollouts.trajectories, rollouts.stats
            # 4. tensors; DAPO's overlong filtering keeps truncated responses out of the loss
            batch = collate(trajs, pad_id, tc.loss.mask_retrieved, trees=tc.rollout_tree > 0).to(device)
            if tc.dapo.overlong == "mask":
                batch = batch.excluding(batch.truncated)
            metrics = {**rollout_metrics(trajs, batch, rollouts.scores), **rollouts.metrics}
            # 5-6. old / reference log-probs, values -> advantages -> policy (and critic) update
            up = learner.learn(batch, rollouts.scores.to(device), step)
            generator.weights_updated()  # an engine with its own copy (vLLM) reloads before its next rollout
            skipped_total += int(up.pop("train/skipped_updates"))
            trailing = int(up.pop("train/trailing_skipped_updates"))
            skipped_in_a_row = skipped_in_a_row + trailing if up["train/optimizer_steps"] == 0 else trailing
            metrics.update(up)
            t_end = time.perf_counter()
            # 7. metrics
            metrics.update({
                "train/skipped_steps": float(skipped_total),
                "train/lr": learner.lr,
                "time/rollout_s": rollout.seconds,
                "time/generate_s": rollout.generate_seconds,
                "time/retrieval_s": rollout.retrieve_seconds,
                "rollout/queries_cut": float(rollout.queries_cut),
                "time/weight_sync_s": generator.weight_sync_seconds - sync_seconds,
                "time/step_s": t_end - t_step,
                "perf/tokens_per_s": float(batch.response_mask.sum()) / max(t_end - t_step, 1e-9),
                "perf/rollout_tokens_per_s": rollout.generated_tokens / max(rollout.generate_seconds, 1e-9),
                # the rollout budget: a tree's branches cost only what they generate past their shared prefix
                "budget/generated_tokens": float(rollout.generated_tokens),
                "budget/searches": float(rollout.searches),
            })
            # the retriever's own counters, cumulative: web requests and their cost, cache hits, noise
            metrics.update(getattr(retriever, "metrics", dict)())
            history.append({"step": step, "reward": metrics["reward/mean"], "em": metrics["reward/em"]})
            if logger is not None:
                logger.log(metrics, step)
            if bar is not None:
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", em=f"{metrics['reward/em']:.3f}")
                bar.update(1)
            # diverged: stop after logging the step, before another checkpoint (the last one is kept)
            if tc.optim.max_skipped_updates and skipped_in_a_row >= tc.optim.max_skipped_updates:
                raise TrainingDivergedError(
                    f"train: step {step}: the last {skipped_in_a_row} optimizer steps were all skipped (non-finite "
                    f"loss or gradient; train.optim.max_skipped_updates={tc.optim.max_skipped_updates}): training "
                    f"has diverged. The last checkpoint ({last_ckpt or 'none written by this run'}) is kept; try a "
                    "lower train.optim.lr or train.optim.max_grad_norm, or train.compute.precision=fp32, and resume "
                    "or start over")
            # 8. evaluation and checkpoints (rank 0; the others wait)
            if tc.eval_every and step % tc.eval_every == 0:
                with dist.gathered(models.policy_forward):
                    if dist.is_main:
                        eval_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(
                            cfg.eval, out_dir=str(run_dir / "eval" / f"step_{step:06d}")))
                        with models.generation(cache_frozen_casts=not dist.sharded):
                            results = evaluate(eval_cfg, console, generator, eval_retriever, questions=held_out)
                        eval_metrics = _eval_metrics(results)
                        logger.log(eval_metrics, step)
                        metrics.update(eval_metrics)
                    dist.barrier()
            if step == tc.steps or (tc.save_every and step % tc.save_every == 0):
                last_ckpt, saved_step = save(step), step
                dist.barrier()
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        for own in own_retrievers:
            getattr(own, "close", lambda: None)()
        if generator_factory is None:  # ours to shut down (a vLLM engine's process)
            generator.close()
    # Leave the process group only on success: after an error torchrun stops every rank anyway,
    # and a barrier here could pair with another rank's unrelated collective.
    models.undistribute()
    dist.close()
    if last_ckpt is None and start >= tc.steps:
        say(f"train: already at step {start} of {tc.steps}; nothing to do")
    return {"step": step, "metrics": metrics, "history": history,
            "checkpoint": str(last_ckpt) if last_ckpt else None, "run_dir": str(run_dir),
            "models": models, "tokenizer": tokenizer, "rank": dist.rank, "world_size": dist.world}
