"""End to end: `train()` on a tiny random Llama with a character tokenizer (seconds on a CPU).

The task is easy on purpose ("write the letter a"), so a few GRPO / PPO steps must raise the
reward; the rest checks resume, corrupted checkpoints, the retrieved-token mask and the guards.
"""

import json
from pathlib import Path

import pytest
import torch

from searchr1.config import deep_merge, from_dict
from searchr1.errors import CheckpointError
from searchr1.rl.algorithms import ALGORITHMS
from searchr1.retrieval.base import Hit
from searchr1.settings import Config
from searchr1.train.metrics_log import read_metrics
from searchr1.train.trainer import train
from fakes import SyncRecordingGenerator, char_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("train")
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=False))
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    qa = root / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": str(i), "question": f"q{i}", "golden_answers": ["x"]}) + "\n"
                          for i in range(8)))
    return root


def make_cfg(world, run_dir, **train):
    """The test config; `train` is merged into the train section (sections as nested dicts)."""
    base = {"algorithm": "grpo", "steps": 15, "prompts_per_step": 4, "group_size": 4, "mini_batch_size": 8,
            "micro_batch_size": 4, "optim": {"lr": 3e-3, "critic_lr": 3e-3},
            "questions": {"datasets": [str(world / "qa.jsonl")]}, "run_dir": str(run_dir), "save_every": 0,
            "tensorboard": False, "progress": False, "compute": {"precision": "fp32"}}
    return from_dict(Config, {"model": {"name": str(world / "tiny"), "device": "cpu", "chat": "raw"},
                              "agent": {"max_turns": 0, "max_turn_tokens": 12, "template": "Q: {question}\n"},
                              "train": deep_merge(base, train)})


def share_of_a(traj) -> float:
    return sum(c == "a" for c in traj.response_text) / max(len(traj.response_ids), 1)


def _rewards(result):
    return [h["reward"] for h in result["history"]]


def test_grpo_raises_the_reward_and_logs_metrics(world, tmp_path):
    result = train(make_cfg(world, tmp_path / "run"), reward_fn=share_of_a)
    rewards = _rewards(result)
    assert len(rewards) == 15
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 16))
    for key in ("reward/mean", "reward/em", "rollout/searches_per_traj", "rollout/invalid_rate",
                "rollout/response_length", "rollout/masked_share", "rollout/logprob_diff", "actor/kl",
                "actor/clip_fraction", "actor/entropy", "actor/pg_loss", "actor/grad_norm", "perf/tokens_per_s",
                "time/rollout_s", "time/retrieval_s", "time/update_s", "train/skipped_steps",
                "adv/zero_variance_groups"):
        assert key in rows[-1], key
    assert rows[-1]["rollout/logprob_diff"] < 1e-3  # the recomputed log-probs are the sampled ones
    # two mini-batches: the old log-probs are the sampler's (our engine over the policy), no pass for them
    assert all(r["train/old_logprobs_from_sampler"] == 1.0 for r in rows)
    assert result["checkpoint"] and Path(result["checkpoint"]).name == "step-000015"


def test_the_trainer_drives_the_generator_contract(world, tmp_path):
    made = []

    def factory(model, tokenizer):
        made.append(SyncRecordingGenerator(model, tokenizer))
        return made[-1]

    train(make_cfg(world, tmp_path / "run", steps=2), generator_factory=factory, reward_fn=share_of_a)
    (generator,) = made
    assert generator.updates == 2  # once after every update
    assert not generator.closed  # a generator from the caller's factory is the caller's to close
    syncs = [r["time/weight_sync_s"] for r in read_metrics(tmp_path / "run")]
    assert syncs == [SyncRecordingGenerator.SYNC_SECONDS] * 2  # each step's share of the running total


@pytest.mark.parametrize("algorithm", ["rloo", "reinforce", "reinforce_pp"])
def test_critic_free_algorithms_raise_the_reward(world, tmp_path, algorithm):
    result = train(make_cfg(world, tmp_path / "run", algorithm=algorithm), reward_fn=share_of_a)
    rewards = _rewards(result)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards
    row = read_metrics(tmp_path / "run")[-1]
    assert "critic/value_loss" not in row and "actor/pg_loss" in row
    # the KL is a loss (rloo, reinforce), or in the reward (reinforce_pp)
    assert ("actor/kl_loss" in row) == (not ALGORITHMS[algorithm].kl_in_reward)


@pytest.mark.parametrize("loss", [{"mode": "gspo", "agg": "seq-mean-token-mean"}, {"llds_coef": 0.1}],
                         ids=["gspo", "llds"])
def test_loss_choices_raise_the_reward(world, tmp_path, loss):
    result = train(make_cfg(world, tmp_path / "run", loss=loss), reward_fn=share_of_a)
    rewards = _rewards(result)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards
    rows = read_metrics(tmp_path / "run")
    if "llds_coef" in loss:
        # 2 mini-batches a step: the second is trained by a policy that moved, so LLDS can act
        for key in ("actor/llds_loss", "actor/llds_active_tokens", "actor/llds_active_responses"):
            assert all(key in row for row in rows), key
        assert any(row["actor/llds_active_tokens"] > 0 for row in rows)
        assert all(0 <= row["actor/llds_active_responses"] <= 1 for row in rows)
    else:
        assert "actor/llds_loss" not in rows[-1]


def test_tree_grpo_raises_the_reward_and_reports_its_budget(world, tmp_path):
    # one action turn: each chain has a step boundary (after the note or documents) to branch from
    cfg = make_cfg(world, tmp_path / "run", algorithm="tree_grpo", rollout_tree=2)
    cfg.agent.max_turns = 1
    # the share of "a" in what the policy wrote (the injected note would swamp share_of_a)
    result = train(cfg, retriever=OneDocRetriever(),
                   reward_fn=lambda t: sum(c == "a" for x in t.turns for c in x.text) / max(t.generated_tokens, 1))
    rewards = _rewards(result)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards
    rows = read_metrics(tmp_path / "run")
    for row in rows:
        assert row["budget/generated_tokens"] > 0 and "budget/searches" in row
        # 16 leaves a step, half of them branches that share their chain's first step
        assert row["budget/generated_tokens"] < 16 * row["rollout/generated_length"]


def test_dapo_options_train_and_report(world, tmp_path):
    cfg = make_cfg(world, tmp_path / "run", steps=3, dapo={"dynamic_sampling": True, "max_rounds": 2, "overlong": "mask"},
                   loss={"clip_ratio_high": 0.28, "tis_cap": 2.0})
    cfg.agent.max_response_tokens = 6  # below the turn's 12 tokens: most responses hit the limit
    result = train(cfg, reward_fn=share_of_a)
    rows = read_metrics(tmp_path / "run")
    for row in rows:
        assert 1 <= row["dynamic/rounds"] <= 2 and row["dynamic/prompts_drawn"] == 4 * row["dynamic/rounds"]
        assert 0 <= row["dynamic/informative_groups"] <= 4
        # nothing is injected without searches: what is masked is the truncated responses
        assert row["rollout/truncated"] > 0 and row["rollout/masked_share"] > 0
        assert row["rollout/injected_share"] == 0
        if row["rollout/masked_share"] < 1:  # a step whose every response was truncated trains on nothing
            assert 0 < row["actor/tis_weight_mean"] <= 2.0
    assert any(row["rollout/masked_share"] < 1 for row in rows)
    assert result["metrics"]["train/optimizer_steps"] == 2


def test_bf16_mixed_training_reports_the_sampler_mismatch_and_applies_tis(world, tmp_path):
    # bf16 autocast for rollouts, log-prob passes and the update; fp32 master weights. The sampler
    # (KV-cached decode) and the trainer (one forward) round differently in bf16: the mismatch is
    # logged and TIS weighs it.
    result = train(make_cfg(world, tmp_path / "run", steps=2, compute={"precision": "bf16-mixed"},
                            loss={"tis_cap": 2.0}), reward_fn=share_of_a)
    assert result["models"].autocast_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in result["models"].policy.parameters())
    for row in read_metrics(tmp_path / "run"):
        assert 1e-4 < row["rollout/logprob_diff"] < 0.5, row["rollout/logprob_diff"]
        assert 0 < row["actor/tis_weight_mean"] <= 2.0
        assert row["train/optimizer_steps"] == 2 and row["train/skipped_steps"] == 0
        assert row["train/old_logprobs_from_sampler"] == 0.0  # TIS compares the sampler with a recomputation


def test_ppo_raises_the_reward(world, tmp_path):
    cfg = make_cfg(world, tmp_path / "run", algorithm="ppo", group_size=2, steps=25, ppo_epochs=2)
    result = train(cfg, reward_fn=share_of_a)
    rewards = _rewards(result)
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.1, rewards
    row = read_metrics(tmp_path / "run")[-1]
    assert "critic/value_loss" in row and "critic/explained_variance" in row


def _params(result):
    return {n: p.detach().clone() for n, p in result["models"].policy.named_parameters()}


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_resume_continues_exactly(world, tmp_path, algorithm):
    kw = {"algorithm": algorithm, "group_size": 4 if algorithm == "grpo" else 2, "steps": 4, "save_every": 2}
    full = train(make_cfg(world, tmp_path / "full", **kw), reward_fn=share_of_a)
    train(make_cfg(world, tmp_path / "split", **{**kw, "steps": 2}), reward_fn=share_of_a)
    resumed = train(make_cfg(world, tmp_path / "split", **{**kw, "resume": True}), reward_fn=share_of_a)
    assert _rewards(resumed) == _rewards(full)
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if algorithm == "ppo":
        for (n, p), (_, q) in zip(full["models"].critic.named_parameters(),
                                  resumed["models"].critic.named_parameters()):
            assert torch.equal(p, q), n
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == [1, 2, 3, 4]


def test_resume_is_exact_with_a_generator_that_reseeds_the_global_rngs(world, tmp_path):
    # vLLM's engine reseeds Python's, numpy's and torch's global generators when it starts
    import random

    from searchr1.rollout.backend import open_generator

    def reseeding(cfg):
        def factory(model, tok):
            random.seed(12345), torch.manual_seed(12345)
            return open_generator(cfg, model, tok, seed=0)
        return factory

    def noisy_reward(traj):  # draws from the global generator the checkpoint restores
        return share_of_a(traj) + random.random()

    kw = {"steps": 4, "save_every": 2}
    full_cfg = make_cfg(world, tmp_path / "full", **kw)
    full = train(full_cfg, generator_factory=reseeding(full_cfg), reward_fn=noisy_reward)
    split_cfg = make_cfg(world, tmp_path / "split", **{**kw, "steps": 2})
    train(split_cfg, generator_factory=reseeding(split_cfg), reward_fn=noisy_reward)
    resumed_cfg = make_cfg(world, tmp_path / "split", **{**kw, "resume": True})
    resumed = train(resumed_cfg, generator_factory=reseeding(resumed_cfg), reward_fn=noisy_reward)
    assert _rewards(resumed) == _rewards(full)


def test_corrupted_checkpoint_gives_a_clear_error(world, tmp_path):
    train(make_cfg(world, tmp_path / "run", steps=2), reward_fn=share_of_a)
    weights = next((tmp_path / "run" / "checkpoints" / "step-000002" / "policy").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="cannot resume.*sha256"):
        train(make_cfg(world, tmp_path / "run", steps=4, resume=True), reward_fn=share_of_a)


class OneDocRetriever:
    def search(self, queries, k):
        return [[Hit("d1", "Title", "some text", 1.0)] for _ in queries]


def test_mask_retrieved_false_trains_on_injected_tokens(world, tmp_path):
    # One action turn: the random policy's first turn is an invalid action, so the environment
    # injects Search-R1's note (loss mask 0) before the final turn.
    results = {}
    for flag in (True, False):
        cfg = make_cfg(world, tmp_path / f"run-{flag}", steps=1, loss={"mask_retrieved": flag})
        cfg.agent.max_turns = 1
        results[flag] = train(cfg, retriever=OneDocRetriever(), reward_fn=share_of_a)["metrics"]
    assert results[True]["rollout/injected_share"] > 0.3
    assert results[True]["rollout/injected_share"] == results[False]["rollout/injected_share"]
    assert results[True]["rollout/masked_share"] == results[True]["rollout/injected_share"]
    assert results[False]["rollout/masked_share"] == 0.0
    assert results[True]["actor/entropy"] != results[False]["actor/entropy"]


def test_non_finite_loss_skips_the_optimizer_step(world, tmp_path, monkeypatch):
    import searchr1.train.learner as learner

    def nan_loss(logprob, *args, **kwargs):
        return logprob.sum() * float("nan"), {"clip_fraction": 0.0, "approx_kl": 0.0, "ratio_max": 1.0}

    monkeypatch.setattr(learner, "policy_loss", nan_loss)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(world / "tiny").state_dict()
    result = train(make_cfg(world, tmp_path / "run", steps=2), reward_fn=share_of_a)
    assert result["metrics"]["train/skipped_steps"] == 4  # 2 steps x 2 mini-batches
    assert result["metrics"]["train/optimizer_steps"] == 0
    for name, p in result["models"].policy.state_dict().items():
        assert torch.equal(p, before[name]), name


def test_consecutive_skipped_updates_stop_the_run_and_keep_the_last_checkpoint(world, tmp_path, monkeypatch):
    import searchr1.train.learner as learner
    from searchr1.errors import TrainingDivergedError

    def nan_loss(logprob, *args, **kwargs):
        return logprob.sum() * float("nan"), {"clip_fraction": 0.0, "approx_kl": 0.0, "ratio_max": 1.0}

    monkeypatch.setattr(learner, "policy_loss", nan_loss)
    run = tmp_path / "run"
    # 2 mini-batches a step: step 1 skips 2 (saved), step 2 reaches 4 in a row
    with pytest.raises(TrainingDivergedError, match=r"step 2: the last 4 optimizer steps were all skipped.*"
                                                    r"step-000001.*is kept"):
        train(make_cfg(world, run, steps=5, save_every=1, optim={"max_skipped_updates": 3}), reward_fn=share_of_a)
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-000001"]
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


def _listing(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_fresh_run_in_a_used_run_dir_is_refused_and_nothing_is_deleted(world, tmp_path, monkeypatch):
    import searchr1.train.trainer as trainer
    from searchr1.errors import ConfigError

    run = tmp_path / "run"
    train(make_cfg(world, run, steps=2, save_every=1), reward_fn=share_of_a)
    before = _listing(run)
    assert {"checkpoints/step-000001/MANIFEST.json", "checkpoints/step-000002/MANIFEST.json"} <= set(before)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the run_dir was checked")

    monkeypatch.setattr(trainer, "load_causal_lm", no_loading)
    with pytest.raises(ConfigError, match=r"holds an earlier run \(2 checkpoint\(s\).*train\.resume=true.*"
                                          r"train\.overwrite=true"):
        train(make_cfg(world, run, steps=1), reward_fn=share_of_a)
    assert _listing(run) == before


def test_overwrite_moves_the_earlier_run_aside(world, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(world, run, steps=2, save_every=1), reward_fn=share_of_a)
    before = _listing(run)
    result = train(make_cfg(world, run, steps=1, overwrite=True), reward_fn=share_of_a)
    (aside,) = run.glob("replaced-*")
    assert _listing(aside) == before  # every byte of the earlier run, moved
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-000001"]
    assert [r["step"] for r in read_metrics(run)] == [1]
    assert result["step"] == 1


def _cache_peaks(cfg, peaks):
    """A generator factory (our engine) that records the KV cache's bytes after every step."""
    from searchr1.rollout.backend import open_generator

    def factory(model, tok):
        gen = open_generator(cfg, model, tok, seed=0)
        open_session = gen.session

        def session(prompts, params):
            s = open_session(prompts, params)
            step = s.step

            def recording_step():
                out = step()
                peaks.append(sum(t.numel() * t.element_size() for layer in s.cache.layers if layer.is_initialized
                                 for t in (layer.keys, layer.values)))
                return out

            s.step = recording_step
            return s

        gen.session = session
        return gen

    return factory


@pytest.mark.parametrize("precision, budget_mib, peak", [
    ("fp32", 1, 4 * 256 * 1024),  # the pool is lowered to 4, its cache full-width
    ("fp32", 0, 16 * 256 * 1024),  # unbounded on CPU: every episode at once
    ("bf16-mixed", 1, 8 * 256 * 512),  # the cache holds bf16: twice the rows
])
def test_the_rollout_kv_cache_stays_within_its_budget(world, tmp_path, precision, budget_mib, peak):
    # 16 episodes of up to ~40 tokens: 1 KiB a token in fp32 (2 layers x K,V x 4 heads x 16 x 4 bytes),
    # 256 tokens a slot; all 16 at once take 4 MiB
    cfg = make_cfg(world, tmp_path / "run", steps=2, sampling={"pool_memory_gb": budget_mib / 1024},
                   compute={"precision": precision})
    cfg.agent.max_response_tokens, cfg.agent.max_obs_tokens = 24, 8
    peaks = []
    result = train(cfg, generator_factory=_cache_peaks(cfg, peaks), reward_fn=share_of_a)
    assert result["step"] == 2 and max(peaks) == peak
    if budget_mib:
        assert max(peaks) <= budget_mib << 20


def test_periodic_eval_and_cli(world, tmp_path, capsys):
    from searchr1.cli import main

    run = tmp_path / "run"
    rc = main(["train", f"model.name={world / 'tiny'}", "model.device=cpu", "model.chat=raw", "agent.max_turns=0",
               "agent.max_turn_tokens=8", "train.steps=2", "train.prompts_per_step=2", "train.group_size=2",
               "train.mini_batch_size=4", f"train.questions.datasets={world / 'qa.jsonl'}", "agent.template='Q: {question}'",
               f"train.run_dir={run}", "train.tensorboard=false", "train.progress=false", "train.eval_every=2",
               "eval.modes=direct", f"eval.datasets={world / 'qa.jsonl'}", "eval.limit=4", "eval.html=false"])
    assert rc == 0
    assert "trained grpo to step 2" in capsys.readouterr().out
    assert (run / "eval" / "step_000002" / "results.json").is_file()
    rows = read_metrics(run)
    assert any(k.startswith("eval/") and k.endswith("/direct/em") for r in rows for k in r)
    assert (run / "checkpoints" / "step-000002").is_dir()


@pytest.mark.parametrize("variant", [
    {"algorithm": "grpo", "lora": {"r": 4, "targets": ["q_proj", "v_proj"]}},
    {"algorithm": "ppo", "group_size": 2, "critic": "head"},
    {"algorithm": "ppo", "group_size": 2, "lora": {"r": 4, "targets": ["q_proj", "v_proj"]}, "critic": "separate"},
], ids=["grpo-lora", "ppo-head", "ppo-lora"])
def test_variants_train_and_resume_exactly(world, tmp_path, variant):
    kw = {**variant, "steps": 3, "save_every": 1, "optim": {"lr": 1e-2}}
    full = train(make_cfg(world, tmp_path / "full", **kw), reward_fn=share_of_a)
    train(make_cfg(world, tmp_path / "split", **{**kw, "steps": 1}), reward_fn=share_of_a)
    resumed = train(make_cfg(world, tmp_path / "split", **{**kw, "resume": True}), reward_fn=share_of_a)
    assert _rewards(resumed) == _rewards(full)
    assert all(v == v for v in full["metrics"].values())  # no NaN metric
    a, b = _params(full), _params(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    if variant.get("lora"):
        trained = [n for n, p in full["models"].policy.named_parameters() if p.requires_grad]
        assert trained and all("lora_" in n for n in trained)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_micro_batch_size_changes_memory_not_the_result(world, tmp_path, agg):
    kw = {"steps": 2, "save_every": 0, "loss": {"agg": agg}}
    a = train(make_cfg(world, tmp_path / "a", micro_batch_size=1, **kw), reward_fn=share_of_a)
    b = train(make_cfg(world, tmp_path / "b", micro_batch_size=8, **kw), reward_fn=share_of_a)
    pa, pb = _params(a), _params(b)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], atol=2e-5, rtol=1e-4)


class CurriculumRetriever(OneDocRetriever):
    """A retriever with a training-step curriculum and counters (as simulated and web search have)."""

    def __init__(self):
        self.steps = []

    def set_step(self, step, total_steps):
        self.steps.append((step, total_steps))

    def metrics(self):
        return {"search/cost_usd": 0.25 * len(self.steps)}  # grows each step: read after the step


def test_the_trainer_reports_the_step_to_the_retriever_and_logs_its_metrics(world, tmp_path):
    cfg = make_cfg(world, tmp_path / "run", steps=2)
    cfg.agent.max_turns = 1
    retriever = CurriculumRetriever()
    result = train(cfg, retriever=retriever, reward_fn=share_of_a)
    assert retriever.steps == [(1, 2), (2, 2)]
    assert result["metrics"]["search/cost_usd"] == 0.5


def scripted_searcher(answer: str = "x"):
    """A generator factory: our engine on a scripted LM that searches the question once, then answers
    `answer`, or "Doc 1's title" when `answer` is None (the trainer still trains the real policy on
    these episodes)."""
    import re

    from fakes import ScriptedLM, continue_script
    from searchr1.rollout.engine import EngineGenerator

    def policy(ctx: str):
        if "</information>" in ctx:
            said = answer
            if said is None:
                doc = re.search(r'Doc 1\(Title: "?([^")]*)"?\)', ctx.rsplit("<information>", 1)[1])
                said = doc.group(1) if doc else "none"
            return continue_script(ctx, f"<answer> {said} </answer>")
        return continue_script(ctx, f"<search> {re.search(r'Q: (.*)', ctx).group(1)} </search>")

    return lambda model, tok: EngineGenerator(ScriptedLM(tok, policy), tok)


class RecordingRetriever(OneDocRetriever):
    """Records the queries it is asked; counts them as `search/requests`."""

    def __init__(self):
        self.asked = []

    def search(self, queries, k):
        self.asked += list(queries)
        return super().search(queries, k)

    def metrics(self):
        return {"search/requests": float(len(self.asked))}


def test_rollouts_search_train_retriever_method_and_held_out_evals_the_retriever(world, tmp_path):
    """train.retriever_method=simulated (ZeroSearch): training rollouts search documents a model writes
    (the tiny model here), with the noise curriculum following the steps; the held-out evaluation
    searches the retriever of retriever.* (given here), and results.json records its counters."""
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"id": f"h{i}", "question": f"h{i}", "golden_answers": ["x"]}) + "\n"
                                for i in range(2)))
    cfg = make_cfg(world, tmp_path / "run", steps=2, eval_every=2, prompts_per_step=2, group_size=2,
                   mini_batch_size=4, retriever_method="simulated")
    cfg.agent.max_turns, cfg.agent.max_turn_tokens = 1, 40
    cfg.eval.datasets, cfg.eval.modes = [str(held_out)], ["agent"]
    sim = cfg.retriever.simulated
    sim.model.name, sim.model.device, sim.model.chat, sim.max_new_tokens = str(world / "tiny"), "cpu", "raw", 8
    cfg.retriever.cache.path = str(tmp_path / "cache.sqlite")
    given = RecordingRetriever()
    result = train(cfg, generator_factory=scripted_searcher(), retriever=given, reward_fn=share_of_a)
    rows = read_metrics(tmp_path / "run")
    train_rows = [r for r in rows if "search/simulated_queries" in r]
    # every training episode searched once, on the simulated engine: 2 steps x 2 prompts x 2 samples
    assert [r["search/simulated_queries"] for r in train_rows] == [4.0, 8.0]
    assert train_rows[-1]["search/cache_misses"] + train_rows[-1]["search/cache_hits"] == 8.0
    # ZeroSearch's curriculum over train.steps=2: p_s + (4^(i/2) - 1)/3 * (p_e - p_s) with p_s 0, p_e 0.5
    assert [r["search/noise_p"] for r in train_rows] == pytest.approx([0.5 / 3, 0.5])
    assert all("search/requests" not in r for r in rows)  # the given retriever's counters are not training's
    assert sorted(given.asked) == ["h0?", "h1?"]  # only the held-out questions searched it
    results = json.loads((tmp_path / "run" / "eval" / "step_000002" / "results.json").read_text())
    assert results["retriever_metrics"]["total"] == {"search/requests": 2.0}
    assert (result["metrics"]["eval/held_out/agent/em"], result["metrics"]["eval/held_out/agent/searches"]) == (1.0, 1.0)


def test_train_and_eval_on_a_web_stub_replay_offline_identically(world, tmp_path, monkeypatch):
    """A short run trains and evaluates against a stub web search API (Serper's JSON, on 127.0.0.1)
    through the query cache; then, with the stub stopped and no API key, the same run replays from
    the cache (retriever.cache.mode=replay) and gets identical weights, metrics and episodes. The
    reward (exact match of Doc 1's title, which the policy answers) depends on what was retrieved,
    so the update does too."""
    from transformers import LlamaForCausalLM
    from web_stubs import StubSearchAPI

    qa = tmp_path / "qa.jsonl"  # half the questions are answered by their first result's title
    qa.write_text("".join(json.dumps({"id": str(i), "question": f"q{i}",
                                      "golden_answers": [f"Result 1 for q{i}?" if i % 2 else "elsewhere"]}) + "\n"
                          for i in range(8)))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"id": f"h{i}", "question": f"h{i}", "golden_answers": ["Result 1 for h0?"]})
                                + "\n" for i in range(2)))
    monkeypatch.setenv("SERPER_API_KEY", "test-key-not-real")

    def run(name, stub_url, *mode):
        cfg = make_cfg(world, tmp_path / name, algorithm="reinforce", steps=2, eval_every=2, prompts_per_step=4,
                       group_size=2, mini_batch_size=8, questions={"datasets": [str(qa)]})
        cfg.agent.max_turns, cfg.agent.max_turn_tokens, cfg.agent.topk = 1, 40, 2
        cfg.eval.datasets, cfg.eval.modes = [str(held_out)], ["agent"]
        r = cfg.retriever
        r.method, r.web.serper.url, r.web.serper.requests_per_s, r.web.backoff_s = "serper", stub_url, 0, 0.05
        r.cache.path = str(tmp_path / "search.sqlite")
        r.cache.mode = mode[0] if mode else "auto"
        return train(cfg, generator_factory=scripted_searcher(answer=None))

    with StubSearchAPI("serper") as stub:
        live = run("live", stub.url)
    sent = len(stub.requests)
    monkeypatch.delenv("SERPER_API_KEY")
    replay = run("replay", stub.url, "replay")
    assert len(stub.requests) == sent  # nothing was sent (the stub is stopped anyway)

    a, b = _params(live), _params(replay)
    assert all(torch.equal(a[n], b[n]) for n in a)
    initial = dict(LlamaForCausalLM.from_pretrained(world / "tiny").named_parameters())
    assert any(not torch.equal(a[n], initial[n]) for n in a)  # it trained
    assert replay["history"] == live["history"] and any(0 < h["em"] < 1 for h in live["history"])

    def untimed(rows):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/", "search/", "timestamp"))}
                for r in rows]

    live_rows, replay_rows = read_metrics(tmp_path / "live"), read_metrics(tmp_path / "replay")
    assert untimed(replay_rows) == untimed(live_rows)
    # every query the stub saw is counted: training's in the step rows, the 2 held-out ones by the eval
    last = [r for r in live_rows if "search/requests" in r][-1]
    assert last["search/requests"] + 2 == sent >= 4 + 2
    assert last["search/cost_usd"] == pytest.approx(last["search/requests"] / 1000)  # Serper's $1 per 1,000
    assert all(r["search/requests"] == 0 and r["search/cache_misses"] == 0 for r in replay_rows if "search/requests" in r)
    # the held-out evaluation: the same scores and episodes, and what it cost
    step = Path("eval") / "step_000002"
    live_eval, replay_eval = (json.loads((tmp_path / n / step / "results.json").read_text()) for n in ("live", "replay"))
    drop = ("seconds", "qps")
    assert ({k: v for k, v in replay_eval["metrics"]["held_out"]["agent"].items() if k not in drop}
            == {k: v for k, v in live_eval["metrics"]["held_out"]["agent"].items() if k not in drop})
    assert live_eval["metrics"]["held_out"]["agent"]["em"] == 0.5
    assert live_eval["retriever_metrics"]["total"]["search/requests"] == 2
    assert replay_eval["retriever_metrics"]["total"]["search/cache_hits"] == 2
    assert replay_eval["retriever_metrics"]["total"]["search/requests"] == 0
    episodes = [(tmp_path / n / step / "trajectories.held_out.agent.jsonl").read_text() for n in ("live", "replay")]
    assert episodes[0] == episodes[1] and "Result 1 for h0?" in episodes[0]


# A tool-call chat template for the tiny model: short, so prompts stay small in characters.
TINY_TOOL_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}U:{{ m.content }}\n"
    "{% elif m.role == 'assistant' %}{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>"
    "{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>"
    "{% elif m.role == 'tool' %}<tool_response>{{ m.content }}</tool_response>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant\n{% endif %}"
)


def test_grpo_raises_the_reward_under_the_tool_call_protocol(tmp_path):
    """agent.protocol=tool_call end to end on a tiny model whose tokenizer has a tool template: prompts
    through the chat template, turns stopped at </tool_call>, the answer read by the protocol's rule
    (the last message), and GRPO raises the reward (the share of "a" in that answer). With one action
    turn, the random policy's first turn is invalid, so every episode also trains around the note the
    template renders as a tool message (mask 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fakes import chat_tokenizer
    from searchr1.rewards import read_answer

    tok = chat_tokenizer()
    tok.chat_template = TINY_TOOL_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0, eos_token_id=tok.eos_token_id,
        bos_token_id=None, tie_word_embeddings=False))
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": str(i), "question": f"q{i}", "golden_answers": ["x"]}) + "\n"
                          for i in range(8)))
    cfg = make_cfg(tmp_path, tmp_path / "run")
    cfg.model.chat = "template"
    cfg.model.name = str(tmp_path / "tiny")
    cfg.agent.protocol, cfg.agent.max_turns = "tool_call", 1
    seen = []

    def share_of_a_in_the_answer(traj) -> float:
        seen.append(traj)
        answer = read_answer(traj.response_text, traj.meta["protocol"]) or ""
        return sum(c == "a" for c in answer) / max(len(answer), 1)

    result = train(cfg, retriever=OneDocRetriever(), reward_fn=share_of_a_in_the_answer)
    rewards = _rewards(result)
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.15, rewards
    assert all(t.meta["protocol"] == "tool_call" for t in seen)
    assert tok.decode(seen[0].prompt_ids).endswith("?\n\nassistant\n")  # the template's prompt
    invalid_first = [t for t in seen if t.turns[0].action == "invalid" and len(t.turns) > 1]
    assert invalid_first and all("<tool_response>Invalid action: " in t.response_text for t in invalid_first)
