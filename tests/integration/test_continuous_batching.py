"""Continuous batching on real transformer models: the pool engine plays each episode exactly as the
turn-batched engine it replaced (benchmarks/_turn_engine.py), whatever the pool size; seeded
sampling does not depend on the pool; sampled log-probs are those of a fresh forward pass."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fakes import Passages
from searchr1.rollout.agent import Agent, new_trajectory
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.settings import AgentConfig

REPO = Path(__file__).resolve().parents[2]


def turn_engine():
    spec = importlib.util.spec_from_file_location("turn_engine", REPO / "benchmarks" / "_turn_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TurnEngine


def play(generator, tok, prompts, cfg, params, **run):
    trajs = [new_trajectory(tok, p, question=p, id=str(i)) for i, p in enumerate(prompts)]
    stats = Agent(generator, Passages(), cfg).run(trajs, params, **run)
    return trajs, stats


def same(a, b) -> bool:
    return (a.response_ids, a.policy_mask, a.stop_reason, [t.finish for t in a.turns]) == \
        (b.response_ids, b.policy_mask, b.stop_reason, [t.finish for t in b.turns])


PROMPTS = ["a", "a somewhat longer prompt", "mid size", "x" * 40, "q?", "another one here", "z"]


def test_greedy_episodes_match_the_turn_engine_for_every_pool(tiny_llama):
    model, tok = tiny_llama
    # short turns (they end by budget: invalid actions get the note), and a context limit that prompts
    # of different lengths reach at different turns, so episodes end at different times
    gen = EngineGenerator(model, tok, max_context=480)
    cfg = AgentConfig(max_turns=3, max_turn_tokens=9, max_response_tokens=1000, retrieval_backoff_s=0,
                      response_prefix="<search>")
    before, _ = play(turn_engine()(gen), tok, PROMPTS, cfg, SamplingParams(temperature=0))
    assert len({len(t.response_ids) for t in before}) > 1
    for pool in (1, 3, None):
        after, stats = play(gen, tok, PROMPTS, cfg, SamplingParams(temperature=0), pool=pool)
        assert [same(a, b) for a, b in zip(before, after)] == [True] * len(PROMPTS), pool
        for a, b in zip(before, after):
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-5)


def test_seeded_sampling_is_the_same_with_any_pool_and_run_to_run(tiny_llama):
    model, tok = tiny_llama
    gen = EngineGenerator(model, tok)
    cfg = AgentConfig(max_turns=2, max_turn_tokens=12, max_response_tokens=80, retrieval_backoff_s=0)
    params = SamplingParams(temperature=1.0, seed=11)
    ref, _ = play(gen, tok, PROMPTS, cfg, params, pool=None)
    for pool in (None, 2):
        again, _ = play(gen, tok, PROMPTS, cfg, params, pool=pool)
        assert [same(a, b) for a, b in zip(ref, again)] == [True] * len(PROMPTS), pool
    other, _ = play(gen, tok, PROMPTS, cfg, SamplingParams(temperature=1.0, seed=12))
    assert not all(same(a, b) for a, b in zip(ref, other))


def test_pooled_logprobs_match_a_fresh_forward(tiny_llama):
    model, tok = tiny_llama
    cfg = AgentConfig(max_turns=2, max_turn_tokens=10, max_response_tokens=70, retrieval_backoff_s=0,
                      response_prefix="<search>")
    trajs, stats = play(EngineGenerator(model, tok), tok, PROMPTS, cfg, SamplingParams(temperature=1.0, seed=5), pool=2)
    assert stats.max_live == 2
    for t in trajs:
        ids = torch.tensor([t.prompt_ids + t.response_ids])
        with torch.no_grad():
            logits = model(ids).logits[0].float()
        fresh = torch.log_softmax(logits[len(t.prompt_ids) - 1:-1], -1).gather(
            -1, torch.tensor(t.response_ids)[:, None]).squeeze(-1)
        mask = torch.tensor(t.policy_mask, dtype=torch.bool)
        assert mask.sum() > 0 and torch.allclose(torch.tensor(t.logprobs)[mask], fresh[mask], atol=1e-4)


def test_smollm_greedy_episodes_match_the_turn_engine(smollm):
    model, tok = smollm
    gen = EngineGenerator(model, tok)
    questions = ["Who wrote Dracula?", "What is the capital of France?", "Who painted the Mona Lisa?",
                 "When did the Berlin wall fall?"]
    chats = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
             for q in questions]
    cfg = AgentConfig(max_turns=2, max_turn_tokens=24, max_obs_tokens=60, retrieval_backoff_s=0,
                      response_prefix="<search>")
    before, _ = play(turn_engine()(gen), tok, chats, cfg, SamplingParams(temperature=0))
    after, stats = play(gen, tok, chats, cfg, SamplingParams(temperature=0), pool=2)
    assert sum(t.num_searches for t in after) > 0
    assert [same(a, b) for a, b in zip(before, after)] == [True] * len(questions)
