"""TrainConfig validation, derived settings, the presets and the root config wiring."""

import pytest

from searchr1.config import from_dict, load_config, preset_names
from searchr1.errors import ConfigError
from searchr1.settings import Config
from searchr1.rl.algorithms import ALGORITHMS
from searchr1.rollout.settings import AgentConfig
from searchr1.train.settings import (AdvConfig, DapoConfig, KLConfig, LoRAConfig, LossConfig, OptimConfig,
                                     SamplingConfig, TrainConfig, TrainQuestions)


def test_defaults_are_the_papers():
    t = TrainConfig()
    assert (t.optim.lr, t.optim.critic_lr, t.kl.coef, t.loss.clip_ratio, t.group_size,
            t.sampling.temperature) == (1e-6, 1e-5, 0.001, 0.2, 5, 1.0)
    assert (t.steps, t.prompts_per_step, t.mini_batch_size, t.adv.gamma, t.adv.lam) == (1005, 512, 256, 1.0, 1.0)
    assert t.loss.mask_retrieved is True


def test_derived_kl_settings():
    assert TrainConfig(algorithm="grpo").kl_estimator == "low_var_kl"
    assert not TrainConfig(algorithm="grpo").use_kl_in_reward
    ppo = TrainConfig(algorithm="ppo", group_size=1)
    assert ppo.use_kl_in_reward and ppo.kl_estimator == "k1"
    assert TrainConfig(kl=KLConfig(coef=0)).needs_reference is False
    for a in ALGORITHMS.values():  # the KL goes where the algorithm's row puts it
        trees = 1 if a.needs_trees else 0
        assert TrainConfig(algorithm=a.name, group_size=2, rollout_tree=trees).use_kl_in_reward is a.kl_in_reward


@pytest.mark.parametrize("make, match", [
    (lambda: TrainConfig(algorithm="grpo", group_size=1), "group_size >= 2"),
    (lambda: TrainConfig(algorithm="rloo", group_size=1), "group_size >= 2"),
    (lambda: TrainConfig(prompts_per_step=3, group_size=2, mini_batch_size=4), "multiple of mini_batch_size"),
    (lambda: TrainConfig(prompts_per_step=2, group_size=2, mini_batch_size=8), "exceeds"),
    (lambda: LossConfig(clip_ratio=1.5), "clip_ratio"),
    (lambda: KLConfig(kind="k9"), "kind"),
    (lambda: LossConfig(agg="mean"), "agg"),
    (lambda: SamplingConfig(temperature=0.0), "temperature"),
    (lambda: OptimConfig(lr=0.0), "positive"),
    (lambda: LossConfig(dual_clip_c=0.5), "dual_clip_c"),
    (lambda: LossConfig(llds_coef=-0.1), "llds_coef"),
    (lambda: TrainConfig(algorithm="tree_grpo"), "rollout_tree > 0"),
    (lambda: TrainConfig(rollout_tree=2, group_size=5), "larger multiple"),
    (lambda: TrainConfig(rollout_tree=5, group_size=5), "larger multiple"),
    (lambda: TrainConfig(rollout_tree=-1), "rollout_tree must be >= 0"),
    (lambda: TrainConfig(retrieval_score=0.1), "needs format_reward"),
    (lambda: TrainConfig(format_reward=True, retrieval_score=-0.1), "retrieval_score must be >= 0"),
    (lambda: TrainConfig(format_needs_search=True), "format_needs_search needs format_reward"),
    (lambda: TrainConfig(algorithm="grpo", kl=KLConfig(in_reward=True)), "in_reward"),
    (lambda: TrainConfig(algorithm="reinforce", kl=KLConfig(in_reward=True)), "in_reward"),
    (lambda: AgentConfig(template="no placeholder"), "template"),
    (lambda: TrainConfig(steps=0), ">= 1"),
    (lambda: TrainConfig(algorithm="a2c"), "unknown algorithm 'a2c': one of grpo, ppo, rloo, reinforce, reinforce_pp"),
    (lambda: AdvConfig(gamma=1.5), "gamma"),
    (lambda: DapoConfig(max_rounds=0), "max_rounds"),
    (lambda: LoRAConfig(r=-1), "r and dropout"),
    (lambda: TrainQuestions(datasets=["synthetic", "nq"]), "cannot be mixed"),
    (lambda: TrainQuestions(datasets=[]), "at least one"),
])
def test_invalid_settings_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_algorithm_is_checked_against_the_table_when_loaded():
    with pytest.raises(ConfigError, match="train: unknown algorithm 'a2c': one of grpo, ppo, rloo, reinforce"):
        load_config(Config, overrides=["train.algorithm=a2c"])
    for name, a in ALGORITHMS.items():
        trees = ["train.rollout_tree=1"] if a.needs_trees else []
        assert load_config(Config, overrides=[f"train.algorithm={name}", *trees]).train.algo is a


def test_loss_choices_are_checked_when_loaded():
    loss = load_config(Config, overrides=["train.loss.mode=gspo", "train.loss.llds_coef=0.1",
                                          "train.loss.llds_gate=response"]).train.loss
    assert (loss.mode, loss.llds_coef, loss.llds_gate) == ("gspo", 0.1, "response")
    assert (LossConfig().mode, LossConfig().llds_coef, LossConfig().llds_gate) == ("ppo", 0.0, "action")
    with pytest.raises(ConfigError, match="train.loss.mode"):
        load_config(Config, overrides=["train.loss.mode=dapo"])
    with pytest.raises(ConfigError, match="train.loss.llds_gate"):
        load_config(Config, overrides=["train.loss.llds_gate=token"])


def test_root_config_has_train_and_rejects_unknown_keys():
    cfg = from_dict(Config, {"train": {"algorithm": "ppo", "group_size": 1, "mini_batch_size": 128}})
    assert cfg.train.algorithm == "ppo"
    with pytest.raises(ConfigError, match="train.learning_rate"):
        from_dict(Config, {"train": {"learning_rate": 1.0}})
    with pytest.raises(ConfigError, match="train"):
        from_dict(Config, {"train": {"group_size": 1}})  # grpo with one sample per prompt


@pytest.mark.parametrize("name", ["paper-grpo-qwen2.5-3b", "paper-ppo-qwen2.5-3b"])
def test_paper_presets_load(name):
    assert name in preset_names()
    cfg = load_config(Config, name)
    t = cfg.train
    assert cfg.model.name == "Qwen/Qwen2.5-3B"
    assert (t.optim.lr, t.kl.coef, t.loss.clip_ratio, t.sampling.temperature, t.steps,
            t.prompts_per_step) == (1e-6, 0.001, 0.2, 1.0, 1005, 512)
    assert (cfg.agent.max_turns, cfg.agent.topk) == (4, 3)
    if t.algorithm == "grpo":
        assert t.group_size == 5 and t.mini_batch_size == 256 * 5
    else:
        assert t.optim.critic_lr == 1e-5 and (t.adv.gamma, t.adv.lam) == (1.0, 1.0) and t.mini_batch_size == 256
