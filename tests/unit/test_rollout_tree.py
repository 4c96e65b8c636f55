"""searchr1.rollout.tree: step boundaries, branches that continue a chain's exact tokens, and the
agent playing them on, on a scripted model with known outputs."""

from __future__ import annotations

import random

import pytest

from fakes import ScriptedLM, char_tokenizer, continue_script
from searchr1.retrieval.base import Hit
from searchr1.rollout.agent import Agent, new_trajectory
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.trajectory import Trajectory, Turn
from searchr1.rollout.tree import branch, expansions, step_boundaries

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


class EchoRetriever:
    def search(self, queries, k):
        return [[Hit(f"id-{q}", f"About {q}", f"{q} are nice.", 1.0)] for q in queries]


def searches_then_answers(ctx: str) -> str:
    """Question k searches k times, then answers."""
    k = int(next(c for c in ctx if c.isdigit()))
    if ctx.count("<information>") < k:
        return continue_script(ctx, f"<search> q{ctx.count('<information>')} </search>")
    return continue_script(ctx, "<answer> dogs </answer>")


def play(tok, trajs, cfg=None):
    agent = Agent(EngineGenerator(ScriptedLM(tok, searches_then_answers), tok), EchoRetriever(),
                  cfg or AgentConfig(retrieval_backoff_s=0.0))
    return agent.run(trajs, GREEDY)


def hand_made() -> Trajectory:
    """A forced prefix of 2 tokens, then 3 turns: 4 generated + 5 injected, 3 + 6, 2 (the answer)."""
    t = Trajectory("q", ["a"], [7], id="c", group=3, tree=5, stop_reason="answer")
    t.append([1, 2], 0)
    for gen, obs in ((4, 5), (3, 6), (2, 0)):
        t.append(list(range(10, 10 + gen)), 1, [-0.5] * gen)
        t.append(list(range(50, 50 + obs)), 0)
        t.turns.append(Turn(text="x", action="search", doc_ids=["d"], generated_tokens=gen, observation_tokens=obs))
    return t


def one_step() -> Trajectory:
    """`hand_made` ended after its first step."""
    t = hand_made()
    t.turns = t.turns[:1]
    t.response_ids, t.policy_mask, t.logprobs = t.response_ids[:11], t.policy_mask[:11], t.logprobs[:11]
    return t


def test_step_boundaries_are_the_ends_of_the_non_final_steps():
    assert step_boundaries(hand_made()) == [(2 + 9, 1), (2 + 9 + 9, 2)]
    assert step_boundaries(one_step()) == []


def test_a_branch_is_the_chain_cut_at_a_boundary_with_its_masks():
    chain = hand_made()
    b = branch(chain, 11, 1, "c/0")
    assert (b.response_ids, b.policy_mask, b.logprobs) == (chain.response_ids[:11], chain.policy_mask[:11],
                                                           chain.logprobs[:11])
    assert b.policy_mask == [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert (b.prompt_ids, b.group, b.tree, b.id, len(b.turns)) == ([7], 3, 5, "c/0", 1)
    assert b.stop_reason is None and not b.done and b.meta["branched_at_turn"] == 1
    b.turns[0].doc_ids.append("e")  # a copy: the chain keeps its own
    assert chain.turns[0].doc_ids == ["d"] and len(chain.response_ids) == 22


def test_expansions_draw_boundaries_per_tree_and_fall_back_to_the_root():
    chain, single = hand_made(), one_step()
    single.id = "s"
    got = expansions([chain, single], 3, random.Random(0))
    assert [b.id for b in got] == ["c/0", "c/1", "c/2", "s/0", "s/1", "s/2"]
    assert all(len(b.turns) in (1, 2) for b in got[:3])
    assert {len(b.response_ids) for b in got[:3]} <= {11, 20}
    # a chain of one step has no inner node: its branches restart after the forced prefix
    assert all((len(b.turns), b.response_ids) == (0, [1, 2]) for b in got[3:])
    live = hand_made()
    live.stop_reason = None
    with pytest.raises(ValueError, match="has not ended"):
        expansions([live], 1, random.Random(0))


def test_the_agent_plays_a_branch_on_from_its_exact_prefix(tok):
    chains = [new_trajectory(tok, "Q2?", question="Q2", golden_answers=["dogs"], id="c")]
    play(tok, chains)
    (chain,) = chains
    assert [t.action for t in chain.turns] == ["search", "search", "answer"]
    nodes = step_boundaries(chain)
    branches = [branch(chain, tokens, turns, f"c/{turns}") for tokens, turns in nodes]
    stats = play(tok, branches)
    for b, (tokens, turns) in zip(branches, nodes):
        # greedy and the same context: the branch re-plays the chain's rest, token for token, mask for mask
        assert (b.response_ids, b.policy_mask, b.stop_reason, b.answer) == (chain.response_ids, chain.policy_mask,
                                                                            "answer", "dogs")
        assert [t.action for t in b.turns] == ["search", "search", "answer"]
        assert b.response_ids[:tokens] == chain.response_ids[:tokens]
    # the budget counts only what the branches generated past their shared prefixes
    per_turn = [t.generated_tokens for t in chain.turns]
    assert stats.generated_tokens == sum(per_turn[1:]) + sum(per_turn[2:])
    assert stats.searches == 1  # the branch from the first step searched once more, the other not at all


def test_a_root_branch_with_a_forced_prefix_is_not_prefixed_twice(tok):
    cfg = AgentConfig(retrieval_backoff_s=0.0, response_prefix="<search>")
    chains = [new_trajectory(tok, "Q0?", question="Q0", golden_answers=["dogs"], id="c")]
    play(tok, chains, cfg)
    (root,) = expansions(chains, 1, random.Random(0))
    assert root.response_ids == chains[0].response_ids[:len(tok.encode("<search>", add_special_tokens=False))]
    play(tok, [root], cfg)
    assert root.response_ids == chains[0].response_ids and root.policy_mask == chains[0].policy_mask
