"""The learner's algorithm menu and corrections, and a step's rollouts (dynamic sampling, overlong
handling): each against the pure functions they promise to apply, or by hand."""

import contextlib
import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fakes import char_tokenizer
from searchr1.rl import (kl_penalized_rewards, kl_penalty, overlong_penalty, reinforce_advantages,
                         reinforce_pp_advantages, rloo_advantages)
from searchr1.rollout.agent import RolloutStats
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.trajectory import Trajectory
from searchr1.train.batch import collate
from searchr1.train.learner import ALONE, Learner
from searchr1.train.models import build_models
from searchr1.train.rollouts import PromptSampler, RolloutCollector, rollout_metrics
from searchr1.train.settings import (AdvConfig, ComputeConfig, DapoConfig, KLConfig, LossConfig, OptimConfig,
                                     SamplingConfig, TrainConfig)

torch.set_num_threads(1)


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                        pad_token_id=0, eos_token_id=1, bos_token_id=None)).eval()


def _trajs():
    """Two groups of two, uneven lengths, an injected run in the first row."""
    spec = [([3, 4, 5], [7, 8, 9, 10, 11], [1, 1, 0, 1, 1]), ([3, 4, 5], [12, 13, 14], [1, 1, 1]),
            ([6, 7], [15, 16, 17, 18], [1, 0, 0, 1]), ([6, 7], [19, 20], [1, 1])]
    out = []
    for i, (prompt, response, mask) in enumerate(spec):
        t = Trajectory(question="q", golden_answers=[], prompt_ids=prompt, group=i // 2)
        for tok, m in zip(response, mask):
            t.append([tok], m, [-1.5] if m else None)
        out.append(t)
    return out


SCORES = torch.tensor([1.0, 0.0, 0.0, 0.5])


def _learner(kl_coef=0.01, **kw):
    settings = dict(prompts_per_step=2, group_size=2, mini_batch_size=4, micro_batch_size=2,
                    optim=OptimConfig(lr=0.1), kl=KLConfig(coef=kl_coef))
    tc = TrainConfig(**{**settings, **kw})
    return Learner(build_models(tiny_llama(), tc), tc, optimizer_cls=torch.optim.SGD, weight_decay=0.0)


def _weights(learner):
    return torch.cat([p.detach().flatten() for p in learner.models.policy.parameters()])


def test_rloo_uses_the_leave_one_out_baseline():
    learner = _learner(algorithm="rloo")
    batch = collate(_trajs(), 0)
    prepared, _ = learner.prepare(batch, SCORES)
    expected, _ = rloo_advantages(SCORES, batch.group_ids, batch.loss_mask)
    assert torch.equal(prepared.advantages, expected)
    # group 0: 1 - 0 = 1 and 0 - 1 = -1 (n/(n-1) x deviation from the mean, n = 2)
    assert prepared.advantages[0, 0].item() == 1.0 and prepared.advantages[1, 0].item() == -1.0
    assert prepared.old_logprobs is None  # one optimizer step on outcome advantages: reuses its own forward
    assert "actor/kl_loss" in learner.update(prepared, step=1)  # the KL to the reference is a loss term


@pytest.mark.parametrize("baseline", ["batch-mean", "none"])
def test_reinforce_subtracts_its_baseline_from_the_outcome_scores(baseline):
    learner = _learner(algorithm="reinforce", adv=AdvConfig(baseline=baseline))
    assert not learner.tc.use_kl_in_reward
    batch = collate(_trajs(), 0)
    prepared, metrics = learner.prepare(batch, SCORES)
    expected, _ = reinforce_advantages(SCORES, batch.loss_mask, baseline=baseline)
    assert torch.equal(prepared.advantages, expected)
    b = 0.375 if baseline == "batch-mean" else 0.0  # mean of 1, 0, 0, 0.5
    assert prepared.advantages[0, 0].item() == pytest.approx(1.0 - b) and prepared.advantages[0, 2].item() == 0.0
    assert "adv/zero_variance_groups" not in metrics and prepared.returns is None  # not group-based, no critic
    assert "actor/kl_loss" in learner.update(prepared, step=1)


def test_reinforce_pp_whitens_returns_of_kl_penalised_token_rewards():
    learner = _learner(algorithm="reinforce_pp", kl_coef=0.5)
    assert learner.tc.use_kl_in_reward and learner.tc.kl_estimator == "k1"
    batch = collate(_trajs(), 0)
    prepared, metrics = learner.prepare(batch, SCORES)
    old, ref = learner.forward(batch, "policy"), learner.forward(batch, "reference")
    assert torch.equal(prepared.old_logprobs, old)  # the KL in the reward needs them first
    rewards = kl_penalized_rewards(SCORES, kl_penalty(old, ref, "k1"), batch.loss_mask, 0.5)
    expected, _ = reinforce_pp_advantages(rewards, batch.loss_mask, 1.0)
    assert torch.allclose(prepared.advantages, expected)
    assert prepared.returns is None and prepared.values is None  # no critic
    out = learner.update(prepared, step=1)
    assert "actor/kl_loss" not in out and out["train/optimizer_steps"] == 1


def test_tis_with_matching_sampler_log_probs_changes_nothing():
    batch = collate(_trajs(), 0)
    updates = []
    for cap in (0.0, 2.0):
        learner = _learner(algorithm="grpo", loss=LossConfig(tis_cap=cap))
        exact = learner.forward(batch, "policy") * batch.policy_mask  # the sampler is the trainer
        metrics = learner.learn(dataclasses.replace(batch, sample_logprobs=exact), SCORES, step=1)
        updates.append(_weights(learner))
    assert metrics["actor/tis_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["actor/tis_capped_fraction"] == 0.0
    assert metrics["rollout/logprob_diff"] < 1e-5
    torch.testing.assert_close(updates[0], updates[1], atol=1e-6, rtol=0)


def test_tis_reweights_tokens_the_sampler_over_sampled():
    batch = collate(_trajs(), 0)
    learner = _learner(algorithm="grpo", loss=LossConfig(tis_cap=2.0))
    exact = learner.forward(batch, "policy") * batch.policy_mask
    # the sampler gave the first row's tokens e^1 times the trainer's probability: weight e^-1
    skewed = exact.clone()
    skewed[0] += batch.policy_mask[0] * 1.0
    before = _weights(learner)
    metrics = learner.learn(dataclasses.replace(batch, sample_logprobs=skewed), SCORES, step=1)
    moved = _weights(learner) - before
    plain = _learner(algorithm="grpo")
    plain.learn(dataclasses.replace(batch, sample_logprobs=exact), SCORES, step=1)
    assert (moved - (_weights(plain) - before)).abs().max() > 1e-4  # a different update
    generated = batch.policy_mask.sum().item()
    assert metrics["actor/tis_weight_mean"] == pytest.approx(
        (batch.policy_mask[0].sum().item() * torch.exp(torch.tensor(-1.0)).item()
         + generated - batch.policy_mask[0].sum().item()) / generated, rel=1e-4)
    assert metrics["rollout/logprob_diff"] == pytest.approx(1.0, abs=1e-5)


def test_excluding_truncated_rows_clears_their_loss_mask_only():
    trajs = _trajs()
    trajs[1].stop_reason = "length"
    batch = collate(trajs, 0)
    assert batch.truncated.tolist() == [False, True, False, False]
    kept = batch.excluding(batch.truncated)
    assert kept.loss_mask[1].sum() == 0
    assert torch.equal(kept.loss_mask[[0, 2, 3]], batch.loss_mask[[0, 2, 3]])
    assert torch.equal(kept.policy_mask, batch.policy_mask)  # metrics still see the row


# ----------------------------------------------------------------------------- a step's rollouts


class AnswerAgent:
    """Answers episode k of question i with ANSWERS[i][k]; counts the rounds it is asked to play."""

    cfg = AgentConfig(template="Q: {question}\n")

    def __init__(self, answers) -> None:
        self.answers, self.rounds = answers, 0

    def run(self, trajs, params, pool=None):
        self.rounds += 1
        for t in trajs:
            i, k = int(t.question[1:]), int(t.id.split("#")[1])
            t.response_text = f"<answer> {self.answers[i][k]} </answer>"
            t.response_ids = [5] * (3 + 4 * k)
            t.policy_mask, t.logprobs = [1] * len(t.response_ids), [0.0] * len(t.response_ids)
            t.stop_reason = "answer"
        return RolloutStats(seconds=1.0, generated_tokens=len(trajs))


# question i is informative (one episode right, one wrong) only when i % 3 == 0
ANSWERS = [["x", "y"] if i % 3 == 0 else ["x", "x"] for i in range(12)]
ROWS = [{"id": str(i), "question": f"q{i}", "golden_answers": ["x"]} for i in range(12)]


def _collector(agent, rounds, **dapo):
    tc = TrainConfig(prompts_per_step=2, group_size=2, mini_batch_size=4,
                     dapo=DapoConfig(dynamic_sampling=rounds > 0, max_rounds=max(rounds, 1), **dapo))
    reward = lambda t: float(" x " in t.response_text)  # noqa: E731
    return RolloutCollector(agent, char_tokenizer(), ROWS, PromptSampler(len(ROWS), 0), tc, False, reward,
                            max_response_tokens=10, dist=ALONE, gathered=contextlib.nullcontext)


@pytest.mark.parametrize("rounds", [1, 3, 6])
def test_dynamic_sampling_keeps_groups_with_signal_until_full_or_capped(rounds):
    agent = AnswerAgent(ANSWERS)
    out = _collector(agent, rounds).collect(step=1)
    # the same sampler order, read independently: informative questions until two are found
    order = PromptSampler(len(ROWS), 0).take(2 * rounds)
    informative, needed = [], rounds
    for r in range(rounds):
        informative += [i for i in order[2 * r:2 * r + 2] if i % 3 == 0]
        if len(informative) >= 2:
            needed = r + 1
            break
    assert agent.rounds == needed == out.metrics["dynamic/rounds"]
    assert out.metrics["dynamic/informative_groups"] == min(len(informative), 2)
    assert out.metrics["dynamic/filled"] == float(len(informative) >= 2)
    assert len(out.trajectories) == 4 and out.stats.seconds == needed  # the batch keeps its shape
    questions = [int(t.question[1:]) for t in out.trajectories[::2]]
    assert questions[:len(informative[:2])] == informative[:2]  # groups with signal first, in rollout order
    assert out.scores.tolist() == [float(ANSWERS[int(t.question[1:])][int(t.id[-1])] == "x")
                                   for t in out.trajectories]


def test_without_dynamic_sampling_one_round_is_played():
    agent = AnswerAgent(ANSWERS)
    out = _collector(agent, 0).collect(step=1)
    assert agent.rounds == 1 and out.metrics == {} and len(out.trajectories) == 4


def test_overlong_penalty_is_added_to_the_reward():
    agent = AnswerAgent([["x", "x"]] * 12)
    out = _collector(agent, 0, overlong="penalty", overlong_buffer=4).collect(step=1)
    lengths = torch.tensor([len(t.response_ids) for t in out.trajectories])  # 3 and 7 tokens, budget 10
    assert torch.allclose(out.scores, 1.0 + overlong_penalty(lengths, 10, 4))
    assert out.scores.tolist() == pytest.approx([1.0, 0.75, 1.0, 0.75])


@pytest.mark.parametrize("make,message", [
    (lambda: dict(algorithm="rloo", group_size=1, mini_batch_size=2), "rloo needs group_size >= 2"),
    (lambda: dict(algorithm="rloo", kl=KLConfig(in_reward=True)), "rloo puts the KL in the loss"),
    (lambda: dict(algorithm="ppo", group_size=1, mini_batch_size=2, dapo=DapoConfig(dynamic_sampling=True)),
     "dynamic_sampling needs"),
    (lambda: dict(dapo=DapoConfig(max_rounds=0)), "max_rounds must be >= 1"),
    (lambda: dict(sampling=SamplingConfig(pool=-1)), "pool must be >= 0"),
    (lambda: dict(loss=LossConfig(tis_cap=-1.0)), "tis_cap must be >= 0"),
    (lambda: dict(dapo=DapoConfig(overlong="penalty")), "overlong=penalty needs overlong_buffer >= 1"),
    (lambda: dict(loss=LossConfig(reuse_sampler_logprobs=True, tis_cap=2.0)), "would weigh every token by 1"),
    (lambda: dict(loss=LossConfig(reuse_sampler_logprobs=True, mask_retrieved=False)), "needs mask_retrieved=true"),
])
def test_bad_algorithm_settings_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**dict(prompts_per_step=2, group_size=2, mini_batch_size=4), **make()})


@pytest.mark.parametrize("sampler_is_policy, kw, source", [
    (True, {}, "sampler"),
    (False, {}, "forward"),  # another engine sampled (vLLM, a scripted generator)
    (True, {"reuse_sampler_logprobs": False}, "forward"),
    (False, {"reuse_sampler_logprobs": True}, "sampler"),
    (True, {"tis_cap": 2.0}, "forward"),  # TIS compares the sampler with the trainer
    (True, {"mask_retrieved": False}, "forward"),  # injected tokens have no sampler log-probs
    (True, {"llds_coef": 0.1}, "forward"),  # LLDS compares the trainer before and after the update
    (True, {"mini_batch_size": 4}, "update"),  # one optimizer step: the update's own forward
])
def test_old_logprobs_come_from_the_sampler_when_it_is_the_policy(sampler_is_policy, kw, source):
    loss = {k: v for k, v in kw.items() if k != "mini_batch_size"}
    tc = TrainConfig(prompts_per_step=2, group_size=2, mini_batch_size=kw.get("mini_batch_size", 2),
                     micro_batch_size=2, optim=OptimConfig(lr=0.1), kl=KLConfig(coef=0.01), loss=LossConfig(**loss))
    learner = Learner(build_models(tiny_llama(), tc), tc, optimizer_cls=torch.optim.SGD, weight_decay=0.0,
                      sampler_is_policy=sampler_is_policy)
    passes = []
    forward = learner.forward
    learner.forward = lambda batch, which="policy": passes.append(which) or forward(batch, which)
    batch = collate(_trajs(), 0)
    assert learner.old_logprobs_source(batch) == source
    prepared, metrics = learner.prepare(batch, SCORES)
    assert passes.count("policy") == (source == "forward") and passes.count("reference") == 1
    assert metrics["train/old_logprobs_from_sampler"] == float(source == "sampler")
    if source == "sampler":
        assert torch.equal(prepared.old_logprobs, batch.sample_logprobs)
        assert "rollout/logprob_diff" not in metrics
    stats = learner.update(prepared, step=1, measure_sampler=source == "sampler")
    # the mismatch is reported once either way: by the old-log-prob pass, or by the update's first forward
    assert ("rollout/logprob_diff" in metrics) != ("rollout/logprob_diff" in stats)
    assert stats["train/optimizer_steps"] == 4 // tc.mini_batch_size


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_sorted_by_length_give_the_same_gradients_with_less_padding(agg):
    # seq-mean-token-sum-norm: Dr. GRPO's constant divides every micro-batch (it was each micro-batch's own width)
    # SGD at lr 1 without clipping: the weights move by minus the accumulated gradient itself
    batch = collate(_trajs(), 0)
    moves, metrics = [], []
    for sort in (False, True):
        learner = _learner(optim=OptimConfig(lr=1.0, max_grad_norm=0.0), loss=LossConfig(agg=agg),
                           compute=ComputeConfig(sort_micro_batches=sort))
        prepared, _ = learner.prepare(batch, SCORES)
        before = _weights(learner)
        metrics.append(learner.update(prepared, step=4))
        moves.append(_weights(learner) - before)
    assert moves[0].abs().max() > 1e-3
    torch.testing.assert_close(moves[1], moves[0], atol=1e-5, rtol=0)
    # sorted (response lengths 2, 3 | 4, 5): micro-batches of 2 x (3 + 3) and 2 x (3 + 5) positions, 4 of them pad
    assert metrics[1]["batch/pad_fraction"] == pytest.approx(4 / 28)
    assert metrics[0]["batch/pad_fraction"] > metrics[1]["batch/pad_fraction"]  # this seed's shuffle pairs 5 with 2


def test_sorted_forward_passes_return_rows_in_batch_order():
    batch = collate(_trajs(), 0)
    unsorted, ordered = _learner(compute=ComputeConfig(sort_micro_batches=False)), _learner()
    real = batch.response_mask.bool()  # padding columns hold whatever their micro-batch computed there
    for which in ("policy", "reference"):
        torch.testing.assert_close(ordered.forward(batch, which)[real], unsorted.forward(batch, which)[real],
                                   atol=1e-6, rtol=0)
    # a row alone gives what it gives in any micro-batch (the rows are not mixed up)
    alone = ordered.forward(dataclasses.replace(batch.rows(torch.tensor([3])), old_logprobs=None), "policy")
    torch.testing.assert_close(ordered.forward(batch, "policy")[3, :2], alone[0, :2], atol=1e-6, rtol=0)



# group 0's rewards differ; group 1's are equal, so its advantages are 0 under GRPO
SOME_SILENT = torch.tensor([1.0, 0.0, 0.5, 0.5])


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_silent_rows_are_left_out_and_the_gradient_is_unchanged(agg):
    batch = collate(_trajs(), 0)
    moves, metrics, rows = [], [], []
    for skip in (False, True):
        learner = _learner(kl_coef=0.0, optim=OptimConfig(lr=1.0, max_grad_norm=0.0), loss=LossConfig(agg=agg),
                           compute=ComputeConfig(skip_silent_rows=skip))
        seen = []
        forward = learner.models.policy_forward
        learner.models.policy_forward = lambda ids, *a, **k: seen.append(ids.shape[0]) or forward(ids, *a, **k)
        prepared, _ = learner.prepare(batch, SOME_SILENT)
        if skip:
            assert learner.silent_rows(prepared).tolist() == [False, False, True, True]
        before = _weights(learner)
        metrics.append(learner.update(prepared, step=4))
        moves.append(_weights(learner) - before)
        rows.append(sum(seen))
    assert moves[0].abs().max() > 1e-3
    torch.testing.assert_close(moves[1], moves[0], atol=1e-6, rtol=0)
    assert rows == [4, 2]  # the update's forwards ran over 2 rows instead of 4
    assert metrics[1]["train/silent_rows_left_out"] == 2 and metrics[0]["train/silent_rows_left_out"] == 0
    assert metrics[1]["train/optimizer_steps"] == 1


def test_a_mini_batch_without_signal_takes_no_optimizer_step():
    batch = collate(_trajs(), 0)
    flat = torch.tensor([0.5, 0.5, 1.0, 1.0])  # every group's rewards are equal: all advantages 0
    for skip in (False, True):
        tc = TrainConfig(prompts_per_step=2, group_size=2, mini_batch_size=2, micro_batch_size=2,
                         optim=OptimConfig(lr=0.1, weight_decay=0.1), kl=KLConfig(coef=0.0),
                         compute=ComputeConfig(skip_silent_rows=skip))
        learner = Learner(build_models(tiny_llama(), tc), tc)  # AdamW: it moves weights on a zero gradient
        prepared, _ = learner.prepare(batch, flat)
        before = _weights(learner)
        stats = learner.update(prepared, step=1)
        moved = (_weights(learner) - before).abs().max()
        if skip:
            assert moved == 0 and stats["train/optimizer_steps"] == 0 and stats["train/empty_mini_batches"] == 2
            assert not learner.optimizers["policy"].state  # no moments were started either
        else:
            assert moved > 0 and stats["train/optimizer_steps"] == 2  # weight decay alone


@pytest.mark.parametrize("kw", [
    {"kl_coef": 0.01},  # the KL loss reads every row
    {"kl_coef": 0.0, "loss": LossConfig(entropy_coef=0.01)},
    {"kl_coef": 0.0, "loss": LossConfig(llds_coef=0.1)},
    {"kl_coef": 0.0, "algorithm": "ppo"},  # the value loss reads every row (and GAE is rarely exactly 0)
])
def test_no_row_is_silent_when_another_loss_term_reads_it(kw):
    learner = _learner(**kw)
    prepared, _ = learner.prepare(collate(_trajs(), 0), SOME_SILENT)
    assert learner.silent_rows(prepared) is None


def test_rollout_metrics_count_the_episodes_whose_passages_held_a_gold_answer():
    trajs = _trajs()
    texts = ["<search> q </search><information>Paris is there</information><answer> Lyon </answer>",
             "<think>Paris</think><answer> Paris </answer>",  # named by the policy, not retrieved
             "<information>nothing</information>", ""]
    for t, text in zip(trajs, texts):
        t.response_text, t.golden_answers = text, ["Paris"]
    metrics = rollout_metrics(trajs, collate(trajs, 0), SCORES)
    assert metrics["rollout/retrieved_gold"] == 0.25
