"""TrainConfig validation, derived settings, the presets and the root config wiring."""

import pytest

from searchr1.config import from_dict, load_config, preset_names
from searchr1.errors import ConfigError
from searchr1.settings import Config
from searchr1.train.settings import TrainConfig


def test_defaults_are_the_papers():
    t = TrainConfig()
    assert (t.lr, t.critic_lr, t.kl_coef, t.clip_ratio, t.group_size, t.temperature) == (1e-6, 1e-5, 0.001, 0.2, 5, 1.0)
    assert (t.steps, t.prompts_per_step, t.mini_batch_size, t.gamma, t.lam) == (1005, 512, 256, 1.0, 1.0)
    assert t.mask_retrieved is True


def test_derived_kl_settings():
    assert TrainConfig(algorithm="grpo").kl_estimator == "low_var_kl"
    assert not TrainConfig(algorithm="grpo").use_kl_in_reward
    ppo = TrainConfig(algorithm="ppo", group_size=1)
    assert ppo.use_kl_in_reward and ppo.kl_estimator == "k1"
    assert TrainConfig(kl_coef=0).needs_reference is False


@pytest.mark.parametrize("kwargs, match", [
    ({"algorithm": "grpo", "group_size": 1}, "group_size >= 2"),
    ({"prompts_per_step": 3, "group_size": 2, "mini_batch_size": 4}, "multiple of mini_batch_size"),
    ({"prompts_per_step": 2, "group_size": 2, "mini_batch_size": 8}, "exceeds"),
    ({"clip_ratio": 1.5}, "clip_ratio"),
    ({"kl_kind": "k9"}, "kl_kind"),
    ({"loss_agg": "mean"}, "loss_agg"),
    ({"temperature": 0.0}, "temperature"),
    ({"lr": 0.0}, "positive"),
    ({"dual_clip_c": 0.5}, "dual_clip_c"),
    ({"algorithm": "grpo", "kl_in_reward": True}, "kl_in_reward"),
    ({"template": "no placeholder"}, "template"),
    ({"steps": 0}, ">= 1"),
])
def test_invalid_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


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
    assert (t.lr, t.kl_coef, t.clip_ratio, t.temperature, t.steps, t.prompts_per_step) == (1e-6, 0.001, 0.2, 1.0, 1005, 512)
    assert (cfg.agent.max_turns, cfg.agent.topk) == (4, 3)
    if t.algorithm == "grpo":
        assert t.group_size == 5 and t.mini_batch_size == 256 * 5
    else:
        assert t.critic_lr == 1e-5 and (t.gamma, t.lam) == (1.0, 1.0) and t.mini_batch_size == 256
