"""The scripted teacher and the synthetic-world demonstrations, played through the real agent."""

from __future__ import annotations

from fakes import char_tokenizer, chat_tokenizer
from searchr1.data.synthetic import Question
from searchr1.data.warmup import demonstration, observations_support
from searchr1.retrieval.base import Hit
from searchr1.rollout.agent import Agent, new_trajectory
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.scripted import ScriptedGenerator
from searchr1.rollout.settings import AgentConfig
from searchr1.toolcall import search_call


class TitleRetriever:
    """Returns the passage titled like the query, with a fact about it."""

    def search(self, queries, k):
        return [[Hit(f"id-{q}", q, f"{q} is in Kora.", 1.0)] for q in queries]


def test_two_hop_demonstration_plays_through_the_agent():
    tok = char_tokenizer()
    q = Question("q1", "In which country was Ana Bel born?", ["Kora"], 2, "birth_country", ["Ana Bel", "Tovi"])
    script = demonstration(q)
    assert script == [
        "<think> I need to find information about Ana Bel. </think>\n<search> Ana Bel </search>",
        "<think> Now I need to find information about Tovi. </think>\n<search> Tovi </search>",
        "<think> The documents say the answer is Kora. </think>\n<answer> Kora </answer>",
    ]
    traj = new_trajectory(tok, "Q?", q.question, q.golden_answers)
    Agent(ScriptedGenerator(tok, [script]), TitleRetriever(), AgentConfig(retrieval_backoff_s=0)).run(
        [traj], SamplingParams(temperature=0))
    assert [(t.action, t.content) for t in traj.turns] == [("search", "Ana Bel"), ("search", "Tovi"), ("answer", "Kora")]
    assert traj.stop_reason == "answer" and traj.answer == "Kora"
    generated = tok.decode([i for i, m in zip(traj.response_ids, traj.policy_mask) if m])
    assert generated == "".join(script)
    assert observations_support(traj, q)
    # a retriever that misses the second passage makes the demonstration unusable
    traj2 = new_trajectory(tok, "Q?", q.question, q.golden_answers)

    class Missing(TitleRetriever):
        def search(self, queries, k):
            return [[Hit("x", "Other", "nothing", 1.0)] for _ in queries]

    Agent(ScriptedGenerator(tok, [script]), Missing(), AgentConfig(retrieval_backoff_s=0)).run(
        [traj2], SamplingParams(temperature=0))
    assert not observations_support(traj2, q)


def test_tool_call_demonstrations_search_with_the_search_tool():
    q = Question("q1", "In which country was Ana Bel born?", ["Kora"], 2, "birth_country", ["Ana Bel", "Tovi"])
    assert demonstration(q, "tool_call") == [
        "<think> I need to find information about Ana Bel. </think>\n" + search_call("Ana Bel"),
        "<think> Now I need to find information about Tovi. </think>\n" + search_call("Tovi"),
        "<think> The documents say the answer is Kora. </think>\n<answer> Kora </answer>",
    ]


def test_a_turn_ending_with_the_eos_text_ends_as_the_policy_ends_it():
    tok = chat_tokenizer()
    trajs = [new_trajectory(tok, "Q?")]
    script = [["<answer> Kora </answer>" + tok.eos_token]]
    Agent(ScriptedGenerator(tok, script), None, AgentConfig(max_turns=0, protocol="tool_call")).run(
        trajs, SamplingParams(temperature=0))
    assert trajs[0].turns[0].action == "answer" and trajs[0].answer == "Kora"  # tool_call reads an EOS as "ended"
    assert trajs[0].response_ids[-1] == tok.eos_token_id and trajs[0].policy_mask[-1] == 1


def test_a_finished_script_ends_with_eos():
    tok = char_tokenizer()
    trajs = [new_trajectory(tok, "Q?"), new_trajectory(tok, "R?")]
    Agent(ScriptedGenerator(tok, [["thinking only"], []]), None, AgentConfig(max_turns=0)).run(
        trajs, SamplingParams(temperature=0))
    assert trajs[0].turns[0].action == "invalid" and trajs[0].stop_reason == "max_turns"
    assert trajs[1].stop_reason == "eos" and trajs[1].response_ids == [tok.eos_token_id]
