"""The learner on the real SmolLM2-135M: the sampler's log-probs are the old log-probs the trainer
would recompute (so `train.reuse_sampler_logprobs` may skip that pass), in fp32 and under bf16
autocast, and the reference agrees with the policy at step 0 in both (an honest KL)."""

from __future__ import annotations

import pytest
import torch

from searchr1.rl import kl_penalty, masked_mean
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.trajectory import Trajectory
from searchr1.train.batch import collate
from searchr1.train.learner import Learner, sampler_mismatch
from searchr1.train.models import build_models, resolve_precision
from searchr1.train.settings import KLConfig, TrainConfig


def _rollouts(model, tok, models) -> list[Trajectory]:
    """Two questions x two samples, two turns each with an injected block between them, sampled by
    the engine over `model` under the trainer's compute context."""
    questions = ["What is the capital of France?", "Who wrote Hamlet?"]
    trajs = [Trajectory(question=q, golden_answers=[], prompt_ids=tok.encode(q), group=i // 2)
             for i, q in enumerate(q for q in questions for _ in range(2))]
    s = EngineGenerator(model, tok).session([t.prompt_ids for t in trajs], SamplingParams(temperature=1.0, seed=0))
    injected = {row: [] for row in range(len(trajs))}
    with models.compute():
        for _turn in range(2):
            for row, sample in s.generate(injected, 12, stop=()).items():
                trajs[row].append(sample.token_ids, 1, sample.logprobs)
            injected = {row: tok.encode(" <information>Paris. Shakespeare.</information>") for row in injected}
            for row, ids in injected.items():
                trajs[row].append(ids, 0)
    s.close()
    return trajs


# max / mean |sampler - recomputed| over generated tokens. Measured (2026-12-06, this CPU: AMX):
# fp32 2.7e-5 / 7.6e-6; bf16 autocast 0.14 / 0.028 (cached one-token decode and a whole-sequence
# forward round differently in bf16; the KV cache's dtype does not change these figures).
@pytest.mark.parametrize("precision, max_diff, mean_diff", [("fp32", 1e-4, 2e-5), ("bf16-mixed", 0.25, 0.05)])
def test_sampler_logprobs_are_the_recomputed_old_logprobs(smollm, precision, max_diff, mean_diff):
    model, tok = smollm
    _, autocast = resolve_precision(precision, "cpu")
    tc = TrainConfig(prompts_per_step=2, group_size=2, mini_batch_size=2, micro_batch_size=2, kl=KLConfig(coef=0.001))
    models = build_models(model, tc, autocast)
    learner = Learner(models, tc, sampler_is_policy=True)
    batch = collate(_rollouts(model, tok, models), tok.pad_token_id)
    assert learner.old_logprobs_source(batch) == "sampler"
    recomputed = learner.forward(batch, "policy")
    diff = sampler_mismatch(recomputed, batch.sample_logprobs, batch.policy_mask)
    assert diff["max"] < max_diff and diff["mean"] < mean_diff
    # The reference (a copy, computed under the same autocast) is the policy at step 0: KL 0, in bf16 too
    ref = learner.forward(batch, "reference")
    kl = float(masked_mean(kl_penalty(recomputed, ref, "k1"), batch.loss_mask))
    low_var = float(masked_mean(kl_penalty(recomputed, ref, "low_var_kl"), batch.loss_mask))
    assert abs(kl) < 1e-6 and 0 <= low_var < 1e-6
