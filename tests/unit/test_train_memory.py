"""searchr1.train.memory: the KV budget's pool and the training-state check, with exact values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from searchr1.errors import ConfigError
from searchr1.rollout.memory import (CPU_KV_SHARE, GiB, cache_bytes, engine_pool, kv_bytes_per_token, longest_row,
                                     pool_for_budget, rollout_budget)
from searchr1.train.memory import check_training_fits, training_state_bytes
from searchr1.train.models import build_models
from searchr1.train.settings import KLConfig, LoRAConfig, TrainConfig

KiB = 1024


def _llama(**kw):
    cfg = dict(vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512)
    return LlamaConfig(**{**cfg, **kw})


def test_kv_bytes_per_token():
    assert kv_bytes_per_token(_llama(), torch.float32) == 2 * 2 * 2 * 16 * 4  # layers x K,V x kv heads x dim x 4
    assert kv_bytes_per_token(_llama(), torch.bfloat16) == 256
    assert kv_bytes_per_token(_llama(num_key_value_heads=None), torch.float32) == 1024  # MHA: kv heads = heads
    # Qwen2.5-3B: 36 layers, 2 KV heads of 128, bf16
    qwen = LlamaConfig(num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2, hidden_size=2048)
    assert kv_bytes_per_token(qwen, torch.bfloat16) == 36_864


def test_cache_bytes_follows_the_slot_caches_doubling():
    # SlotCache starts at 4 slots x 256 tokens and doubles each
    assert cache_bytes(1, 10, 512) == 4 * 256 * 512
    assert cache_bytes(5, 300, 512) == 8 * 512 * 512
    assert cache_bytes(8, 512, 512) == 8 * 512 * 512


def test_pool_for_budget():
    slot = 512 * 512  # one row of up to 300 tokens (capacity 512) at 512 bytes a token
    assert pool_for_budget(40, 0, None, 300, 512) == 40  # unbounded: all episodes
    assert pool_for_budget(40, 6, None, 300, 512) == 6
    assert pool_for_budget(40, 0, 4 * slot, 300, 512) == 4
    assert pool_for_budget(40, 0, 15 * slot, 300, 512) == 8  # 16 slots would not fit
    assert pool_for_budget(40, 0, 16 * slot, 300, 512) == 16
    assert pool_for_budget(40, 3, 16 * slot, 300, 512) == 3  # a smaller wish stands
    assert pool_for_budget(12, 0, 16 * slot, 300, 512) == 12  # 12 rows grow to 16 slots: fits
    for pool in range(1, 41):
        for budget in (4 * slot, 9 * slot, 33 * slot):
            chosen = pool_for_budget(40, pool, budget, 300, 512)
            assert cache_bytes(chosen, 300, 512) <= budget and chosen <= pool
    with pytest.raises(ConfigError, match=r"smallest size \(4 rows of 512 tokens.*train.sampling.pool_memory_gb"):
        pool_for_budget(40, 0, 3 * slot, 300, 512)


def test_rollout_budget_on_cpu_is_the_setting_or_a_share_of_available_ram(monkeypatch):
    assert rollout_budget(0.5, torch.device("cpu")) == GiB // 2
    monkeypatch.setattr("searchr1.rollout.memory.available_bytes", lambda device: 10 * GiB)
    assert rollout_budget(0.0, torch.device("cpu")) == int(10 * GiB * CPU_KV_SHARE)


class _Engine:
    """What `engine_pool` reads of an EngineGenerator: its model and device."""

    def __init__(self, model):
        self.model, self.device = model, torch.device("cpu")


def _rows(n, prompt_tokens=100):
    return [SimpleNamespace(prompt_ids=[1] * prompt_tokens) for _ in range(n)]


def test_longest_row_is_the_longest_prompt_and_the_whole_response_budget():
    agent = SimpleNamespace(max_response_tokens=2500, max_obs_tokens=400)
    assert longest_row(_rows(3, 100) + _rows(1, 150), agent) == 150 + 2500 + 400


def test_engine_pool_bounds_our_engine_by_the_budget_and_leaves_other_backends_alone():
    model = LlamaForCausalLM(_llama())
    per_token = kv_bytes_per_token(model.config, torch.float32)  # 512 bytes
    rows, agent = _rows(96), SimpleNamespace(max_response_tokens=2500, max_obs_tokens=400)  # 3,000 tokens
    # 96 rows of up to 3,000 tokens: 128 slots x 4,096 tokens x 512 bytes = 256 MiB unbounded
    assert engine_pool(_Engine(model), rows, 96, agent, memory_gb=1.0) == 96
    # 100 MiB: 32 slots x 4,096 x 512 bytes = 64 MiB fits, 64 slots = 128 MiB does not
    assert engine_pool(_Engine(model), rows, 96, agent, memory_gb=100 / 1024) == 32
    assert engine_pool(_Engine(model), rows, 0, agent, memory_gb=100 / 1024) == 32  # 0 = all, then bounded
    assert cache_bytes(32, 3000, per_token) == 64 * 1024 * KiB
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the cache holds bf16 there: half the bytes a token
        assert engine_pool(_Engine(model), rows, 96, agent, memory_gb=100 / 1024) == 64
    assert engine_pool(_Engine(model), rows, 96, agent, memory_gb=100 / 1024, dtype=torch.bfloat16) == 64
    assert engine_pool(object(), rows, 16, agent, memory_gb=1e-6) == 16  # vLLM sizes its own cache
    assert engine_pool(object(), rows, 0, agent) == 96


def _models(**train):
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama())
    tc = TrainConfig(prompts_per_step=2, group_size=2, mini_batch_size=4, **train)
    return model, build_models(model, tc)


def test_training_state_bytes_counts_weights_reference_critic_gradients_and_adamw():
    model, models = _models()  # grpo with a KL: a frozen reference copy
    n = sum(p.numel() for p in model.parameters())
    assert training_state_bytes(models) == {"weights": 2 * 4 * n, "gradients": 4 * n, "optimizer": 8 * n}
    assert training_state_bytes(models, world=4, sharding="zero1") == {"weights": 8 * n, "gradients": 4 * n,
                                                                      "optimizer": 2 * n}
    assert training_state_bytes(models, world=4, sharding="zero3") == {"weights": 2 * n, "gradients": n,
                                                                      "optimizer": 2 * n}
    _, no_kl = _models(kl=KLConfig(coef=0.0))
    assert training_state_bytes(no_kl)["weights"] == 4 * n
    model, lora = _models(lora=LoRAConfig(r=4, targets=["q_proj"]))
    trainable = sum(p.numel() for p in lora.policy.parameters() if p.requires_grad)
    assert 0 < trainable < n // 10 and training_state_bytes(lora)["optimizer"] == 8 * trainable


def test_a_state_that_does_not_fit_is_refused_with_the_options():
    model, models = _models()
    n = sum(p.numel() for p in model.parameters())
    check_training_fits(models, torch.device("cpu"), available=12 * n)  # gradients + AdamW: 12 bytes a weight
    with pytest.raises(ConfigError, match=r"does not fit cpu.*need .* GiB.*LoRA.*sharding.*smaller model"):
        check_training_fits(models, torch.device("cpu"), available=12 * n - 1)
    with pytest.raises(ConfigError, match="vLLM engine"):
        check_training_fits(models, torch.device("cpu"), reserved=1, available=12 * n)
    assert check_training_fits(models, torch.device("cpu"))["weights"] == 8 * n  # this machine's RAM
