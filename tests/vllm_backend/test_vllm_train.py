"""`train()` with rollout.backend=vllm: the engine follows every update, so the reward rises as on our engine.

The task of tests/e2e/test_train.py: a random 2-layer Llama over a character tokenizer (vLLM loads
both like any checkpoint) learns to write the letter a; the reward of a response is its share of
a's (about 1% by chance). A few GRPO steps raise it, but only if each rollout samples from the
updated weights: an engine that kept the first weights would stay at chance.
"""

import pytest

pytest.importorskip("vllm")

import json  # noqa: E402

import torch  # noqa: E402

from fakes import char_tokenizer  # noqa: E402
from searchr1.config import from_dict  # noqa: E402
from searchr1.settings import Config  # noqa: E402
from searchr1.train.metrics_log import read_metrics  # noqa: E402
from searchr1.train.trainer import train  # noqa: E402

STEPS = 15


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("vllm-train")
    tok = char_tokenizer()
    torch.manual_seed(0)
    # head_dim 64: a size vLLM's CPU attention kernels have
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                 pad_token_id=0, eos_token_id=1, bos_token_id=None,
                                 tie_word_embeddings=False)).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "qa.jsonl").write_text("".join(json.dumps({"id": str(i), "question": f"q{i}", "golden_answers": ["x"]})
                                           + "\n" for i in range(8)))
    return root


def share_of_a(traj) -> float:
    return sum(c == "a" for c in traj.response_text) / max(len(traj.response_ids), 1)


def run(world, backend: str):
    cfg = from_dict(Config, {
        "model": {"name": str(world / "tiny"), "device": "cpu", "chat": "raw"},
        "agent": {"max_turns": 0, "max_turn_tokens": 12, "template": "Q: {question}\n"},
        "rollout": {"backend": backend},
        "train": {"algorithm": "grpo", "steps": STEPS, "prompts_per_step": 4, "group_size": 4, "mini_batch_size": 8,
                  "micro_batch_size": 8, "optim": {"lr": 3e-3}, "questions": {"datasets": [str(world / "qa.jsonl")]},
                  "run_dir": str(world / backend), "save_every": 0, "tensorboard": False, "progress": False,
                  "compute": {"precision": "fp32"}}})
    result = train(cfg, reward_fn=share_of_a)
    return [h["reward"] for h in result["history"]], read_metrics(world / backend)


def test_reward_rises_on_vllm_as_on_our_engine(world):
    curves = {}
    for backend in ("engine", "vllm"):
        rewards, rows = run(world, backend)
        curves[backend] = rewards
        first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
        assert last > first + 0.15, (backend, rewards)
        if backend == "vllm":
            syncs = [r["time/weight_sync_s"] for r in rows if "time/weight_sync_s" in r]
            assert len(syncs) == STEPS and all(s > 0 for s in syncs[1:])  # a reload before every later rollout
            # the sampler's log-probs are the trainer's, up to fp32 rounding (the TIS / mismatch metric)
            diffs = [r["rollout/logprob_diff"] for r in rows if "rollout/logprob_diff" in r]
            assert diffs and max(diffs) < 1e-2, diffs
    print(json.dumps(curves))
