"""vLLM against our engine and transformers, on the real SmolLM2-135M-Instruct (fp32, CPU).

Runs in the vLLM environment (`make test-vllm`); elsewhere the module is skipped. One engine serves
the module (its start-up is most of the time: ~80 s on 2 cores); it follows the weights of the
transformers model `hf.model`, which the weight tests change and put back.
"""

import copy

import pytest

pytest.importorskip("vllm")

import torch  # noqa: E402

from fakes import Passages  # noqa: E402
from searchr1.protocol import STOP_STRINGS, build_prompt  # noqa: E402
from searchr1.rollout.agent import Agent, new_trajectory  # noqa: E402
from searchr1.rollout.step import encode_text  # noqa: E402
from searchr1.rollout.generator import SamplingParams  # noqa: E402
from searchr1.rollout.engine import EngineGenerator  # noqa: E402
from searchr1.rollout.settings import AgentConfig, VLLMConfig  # noqa: E402
from searchr1.rollout.vllm import VLLMGenerator  # noqa: E402

QUESTIONS = ["Who wrote Hamlet?", "What is the capital of Peru?", "When did the Berlin Wall fall?",
             "Which planet is largest?", "Who painted the Mona Lisa?", "What is the boiling point of water?"]
# fp32 on both sides; the engines sum in different orders (vLLM's CPU attention kernels, its fused
# layers), which moves log-probs by ~1e-5. The tolerance leaves room for long contexts.
LOGPROB_ATOL = 2e-3


@pytest.fixture(scope="module")
def engines(smollm):
    model, tok = smollm
    from searchr1.modelhub import resolve_causal_lm

    hf = EngineGenerator(model.eval(), tok)
    vl = VLLMGenerator(resolve_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct"), tok, device="cpu",
                       dtype="float32", source=model, cfg=VLLMConfig(kv_cache_gb=2))
    assert vl.max_context == hf.max_context  # the same context limit, so the same "length" endings
    yield hf, vl
    vl.close()


def prompts(tok, n=len(QUESTIONS)):
    return [encode_text(tok, build_prompt(q, tok)) for q in QUESTIONS[:n]]


def assert_same_samples(a, b, tol=LOGPROB_ATOL):
    assert a.keys() == b.keys()
    for row in a:
        assert (a[row].token_ids, a[row].finish, a[row].stop) == (b[row].token_ids, b[row].finish, b[row].stop), row
        diff = max((abs(x - y) for x, y in zip(a[row].logprobs, b[row].logprobs)), default=0.0)
        assert diff < tol, (row, diff)


def test_greedy_multi_turn_sessions_match(engines):
    """Three turns per row: stop strings, per-row budgets, injected tokens between turns."""
    hf, vl = engines
    tok = hf.tokenizer
    greedy = SamplingParams(temperature=0)
    ps = prompts(tok)
    sessions = [g.session(ps, greedy) for g in (hf, vl)]
    injected = encode_text(tok, "\n\n<information>Doc 1(Title: Peru) Lima is the capital of Peru.</information>\n\n")
    budgets = {r: 12 + 9 * r for r in range(len(ps))}
    stop = (".", "</answer>")
    for turn in range(3):
        appended = {r: ([] if turn == 0 else injected) for r in range(len(ps))}
        outs = [s.generate(appended, budgets, stop) for s in sessions]
        assert_same_samples(*outs)
        if turn == 0:  # the first turn meets a stop string somewhere, so stops are compared too
            assert "stop" in {o.finish for o in outs[0].values()}
    for s in sessions:
        s.close()


def test_agent_trajectories_match(engines):
    """The whole agent, greedy: tokens, policy masks, turns and stop reasons are the same."""
    hf, vl = engines
    tok = hf.tokenizer
    cfg = AgentConfig(max_turns=2, max_turn_tokens=60, max_obs_tokens=80)
    runs = []
    for gen in (hf, vl):
        trajs = [new_trajectory(tok, build_prompt(q, tok), q, ["x"], id=str(i)) for i, q in enumerate(QUESTIONS)]
        Agent(gen, Passages(), cfg).run(trajs, SamplingParams(temperature=0), pool=4)
        runs.append(trajs)
    for a, b in zip(*runs):
        assert a.response_ids == b.response_ids, a.id
        assert a.policy_mask == b.policy_mask
        assert a.stop_reason == b.stop_reason
        assert [t.action for t in a.turns] == [t.action for t in b.turns]
    assert any(0 in t.policy_mask for t in runs[0])  # some turn injected tokens (an invalid-action note)


def test_sampled_logprobs_match_a_fresh_forward(engines):
    hf, vl = engines
    tok = hf.tokenizer
    ps = prompts(tok, 4)
    s = vl.session(ps, SamplingParams(temperature=1.0, seed=3))
    out = s.generate({r: [] for r in range(len(ps))}, 40, STOP_STRINGS)
    s.close()
    worst = 0.0
    with torch.no_grad():
        for r, p in enumerate(ps):
            ids = torch.tensor([p + out[r].token_ids])
            logp = torch.log_softmax(hf.model(ids).logits[0, len(p) - 1:-1].float(), -1)
            ref = logp.gather(-1, torch.tensor(out[r].token_ids)[:, None]).squeeze(-1)
            worst = max(worst, float((ref - torch.tensor(out[r].logprobs)).abs().max()))
    assert worst < LOGPROB_ATOL, worst


def test_seeded_sampling_reproduces(engines):
    _, vl = engines
    ps = prompts(vl.tokenizer, 3)

    def draw(seed):
        s = vl.session(ps, SamplingParams(temperature=1.0, seed=seed))
        out = s.generate({r: [] for r in range(len(ps))}, 24, STOP_STRINGS)
        s.close()
        return [out[r].token_ids for r in range(len(ps))]

    first = draw(11)
    assert draw(11) == first
    assert draw(12) != first


def _greedy(gen, ps, n=20):
    return gen.generate(ps, n, STOP_STRINGS, SamplingParams(temperature=0))


def test_weights_follow_an_update(engines):
    hf, vl = engines
    ps = prompts(hf.tokenizer, 4)
    before = _greedy(vl, ps)
    saved = copy.deepcopy(hf.model.state_dict())
    try:
        torch.manual_seed(0)
        with torch.no_grad():  # an "update": every weight moves a little
            for p in hf.model.parameters():
                p.add_(torch.randn_like(p) * 0.02 * p.std())
        vl.weights_updated()
        after = _greedy(vl, ps)
        assert [s.token_ids for s in after] != [s.token_ids for s in before]
        for a, b in zip(after, _greedy(hf, ps)):
            assert (a.token_ids, a.finish) == (b.token_ids, b.finish)
    finally:
        hf.model.load_state_dict(saved)
        vl.weights_updated()
    assert [s.token_ids for s in _greedy(vl, ps)] == [s.token_ids for s in before]


def test_lora_weights_follow(engines):
    from searchr1.train.models import apply_lora, causal_lm

    hf, vl = engines
    ps = prompts(hf.tokenizer, 4)
    before = _greedy(vl, ps)
    policy = apply_lora(copy.deepcopy(hf.model), r=8, alpha=16, dropout=0.0, targets=["all-linear"])
    torch.manual_seed(1)
    with torch.no_grad():  # B starts at zero; a trained adapter does not
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lm, source = causal_lm(policy).eval(), vl.source
    try:
        vl.source = lm
        vl.weights_updated()
        got = _greedy(vl, ps)
        want = _greedy(EngineGenerator(lm, hf.tokenizer), ps)
        assert [s.token_ids for s in got] == [s.token_ids for s in want]
        assert [s.token_ids for s in got] != [s.token_ids for s in before]
    finally:
        vl.source = source
        vl.weights_updated()
