"""Rollouts on real transformer models: the cached multi-turn generation computes exactly what a
fresh forward pass of the final sequence computes, and masks line up with the tokens."""

from __future__ import annotations

import pytest
import torch

from fakes import Passages
from searchr1.rollout.agent import Agent, new_trajectory
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.settings import AgentConfig


def fresh_logprobs(model, prompt_ids, response_ids) -> torch.Tensor:
    """log p(response_ids[i] | everything before it), one unpadded forward pass."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    steps = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return steps.gather(-1, torch.tensor(response_ids)[:, None]).squeeze(-1)


def test_uneven_multiturn_logprobs_match_a_fresh_forward(tiny_llama):
    model, tok = tiny_llama
    gen = EngineGenerator(model, tok)
    prompts = [tok.encode("a short one"), tok.encode("a considerably longer prompt here"), tok.encode("mid size")]
    s = gen.session(prompts, SamplingParams(temperature=1.0, seed=3))
    responses = [[], [], []]
    logprobs = [[], [], []]
    injected = {0: tok.encode("<information>doc</information>"), 1: [], 2: tok.encode("!")}
    appended = {0: [], 1: [], 2: []}
    for turn in range(3):
        out = s.generate(appended, {0: 7, 1: 11, 2: 5}, stop=())
        for row, sample in out.items():
            responses[row] += sample.token_ids
            logprobs[row] += sample.logprobs
        if turn == 1:
            s.finish([2])
        appended = {row: injected[row] for row in out if row != 2 or turn == 0}
        for row, ids in appended.items():
            responses[row] += ids
            logprobs[row] += [None] * len(ids)
    for row in range(3):
        fresh = fresh_logprobs(model, prompts[row], responses[row])
        sampled = [(i, lp) for i, lp in enumerate(logprobs[row]) if lp is not None]
        assert len(sampled) >= 5
        got = torch.tensor([lp for _, lp in sampled])
        assert torch.allclose(got, fresh[[i for i, _ in sampled]], atol=1e-4), row


def test_cache_reuse_gives_the_same_greedy_tokens_as_reencoding(tiny_llama):
    model, tok = tiny_llama
    outs = []
    for reuse in (True, False):
        s = EngineGenerator(model, tok, reuse_cache=reuse).session(
            [tok.encode("first"), tok.encode("second prompt")], SamplingParams(temperature=0))
        a = s.generate({0: [], 1: []}, 9, stop=())
        b = s.generate({0: tok.encode("<information>x</information>"), 1: tok.encode("y")}, 9, stop=())
        outs.append([x.token_ids for x in (*a.values(), *b.values())])
    assert outs[0] == outs[1]


def test_batched_generation_matches_one_at_a_time(tiny_llama):
    model, tok = tiny_llama
    gen = EngineGenerator(model, tok)
    prompts = [tok.encode("x"), tok.encode("a much longer prompt than the first")]
    batched = gen.generate(prompts, 12, (), SamplingParams(temperature=0))
    single = [gen.generate([p], 12, (), SamplingParams(temperature=0))[0] for p in prompts]
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
    for b, s in zip(batched, single):
        assert b.logprobs == pytest.approx(s.logprobs, abs=1e-4)


def test_smollm_agent_rollout_masks_and_logprobs(smollm):
    model, tok = smollm
    gen = EngineGenerator(model, tok)
    # Every response is made to start with "<search>" (SmolLM2 never opens the tag itself), so that
    # episodes that close the tag have retrieved tokens.
    chat = tok.apply_chat_template([{"role": "user", "content": "Who wrote the novel Dracula?"}],
                                   add_generation_prompt=True, tokenize=False)
    trajs = [new_trajectory(tok, chat, question="Who wrote Dracula?", golden_answers=["Bram Stoker"],
                            id=str(i)) for i in range(6)]
    cfg = AgentConfig(max_turns=2, max_turn_tokens=40, max_obs_tokens=80, retrieval_backoff_s=0,
                      response_prefix="<search>")
    # a pool of 3: episodes join the running cache as others end
    Agent(gen, Passages(), cfg).run(trajs, SamplingParams(temperature=1.0, seed=0), pool=3)
    searched = [t for t in trajs if t.num_searches and t.turns[0].observation]
    assert searched, [t.turns[0].text for t in trajs]
    for t in trajs:
        mask = torch.tensor(t.policy_mask, dtype=torch.bool)
        fresh = fresh_logprobs(model, t.prompt_ids, t.response_ids)
        assert torch.allclose(torch.tensor(t.logprobs)[mask], fresh[mask], atol=2e-3)
        # the response is the turns in order: what the policy wrote (mask 1), what was injected (mask 0)
        expected = [(0, "<search>")] + [(1, turn.text) if k == 0 else (0, turn.observation)
                                        for turn in t.turns for k in (0, 1) if k == 0 or turn.observation]
        assert mask_runs(tok, t) == expected
        assert sum(t.policy_mask) == sum(turn.generated_tokens for turn in t.turns)


def mask_runs(tok, t) -> list[tuple[int, str]]:
    out, start = [], 0
    for i in range(1, len(t.policy_mask) + 1):
        if i == len(t.policy_mask) or t.policy_mask[i] != t.policy_mask[start]:
            out.append((t.policy_mask[start], tok.decode(t.response_ids[start:i], skip_special_tokens=True)))
            start = i
    return out


def test_bf16_autocast_rollout_keeps_its_kv_cache_in_bf16(tiny_llama):
    # Rotary embeddings promote the keys to fp32 under autocast; the cache holds the compute dtype.
    model, tok = tiny_llama
    s = EngineGenerator(model, tok).session([tok.encode("first"), tok.encode("second prompt")],
                                            SamplingParams(temperature=1.0, seed=0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = s.generate({0: [], 1: []}, 6, stop=())
    assert all(len(sample.token_ids) == 6 for sample in out.values())
    layers = s.cache.layers
    assert layers and all(layer.keys.dtype == layer.values.dtype == torch.bfloat16 for layer in layers)
    s.close()
    fp32 = EngineGenerator(model, tok).session([tok.encode("first")], SamplingParams(temperature=0))
    fp32.generate({0: []}, 2, stop=())
    assert all(layer.keys.dtype == torch.float32 for layer in fp32.cache.layers)


def _greedy_episodes(gen, tok):
    """Uneven rows over two turns (an injected block between them), then a bigger batch, greedy."""
    s = gen.session([tok.encode("x"), tok.encode("a much longer prompt than the first"), tok.encode("mid")],
                    SamplingParams(temperature=0))
    first = s.generate({0: [], 1: [], 2: []}, {0: 9, 1: 14, 2: 5}, stop=())
    second = s.generate({0: tok.encode("<information>doc</information>"), 1: tok.encode("y")}, 11, stop=())
    s.close()
    more = gen.generate([tok.encode(p) for p in ("one", "two", "three", "four")], 6, (), SamplingParams(temperature=0))
    return ([first[r].token_ids for r in sorted(first)] + [second[r].token_ids for r in sorted(second)]
            + [m.token_ids for m in more])


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_decode_gives_the_same_greedy_tokens(tiny_llama, backend):
    # "eager" traces the decode step through torch.compile's graph capture (dynamo) in seconds;
    # "inductor" also generates the kernels (minutes of compilation on 2 cores: slow)
    model, tok = tiny_llama
    want = _greedy_episodes(EngineGenerator(model, tok), tok)
    compiled = EngineGenerator(model, tok, compile_decode=backend)
    assert _greedy_episodes(compiled, tok) == want
    assert compiled.decode_model is not model
