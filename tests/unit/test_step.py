"""The episode step both agent loops take (`searchr1.rollout.step`), turn by turn with exact tokens.
That the two loops give the same trajectories through it is tested in test_export_verl.py."""

from __future__ import annotations

import pytest

from fakes import char_tokenizer
from searchr1.protocol import INVALID_ACTION_NOTE, format_observation
from searchr1.retrieval.base import Hit
from searchr1.rollout.agent import new_trajectory
from searchr1.rollout.generator import Sample
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.protocols import TagsProtocol
from searchr1.rollout.step import Decision, EpisodeStep, encode_prompt, turn_outcome
from searchr1.rollout.trajectory import Turn

HITS = [Hit("d1", "Cats", "Cats purr.", 1.0), Hit("d2", "Dogs", "Dogs bark.", 0.5)]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def sample(tok, text: str, finish: str = "stop", eos: bool = False) -> Sample:
    ids = tok.encode(text) + ([tok.eos_token_id] if eos else [])
    return Sample(ids, [-0.25] * len(ids), finish)


def make(tok, **cfg):
    return EpisodeStep(tok, AgentConfig(**cfg)), new_trajectory(tok, "Q?")


def test_search_turn_then_its_documents(tok):
    step, traj = make(tok)
    assert step.begin(traj) == [] and traj.response_ids == []
    assert step.budget(traj) == 500
    decision = step.turn(traj, sample(tok, "<think>a</think><search> cats </search>"))
    assert decision == Decision("search", "cats") and not decision.done
    n = len("<think>a</think><search> cats </search>")
    assert traj.policy_mask == [1] * n and traj.logprobs == [-0.25] * n
    assert traj.turns == [Turn(text="<think>a</think><search> cats </search>", action="search", content="cats",
                               generated_tokens=n, finish="stop")]
    obs = format_observation(HITS)
    ids = step.observe(traj, HITS)
    assert ids == tok.encode(obs) and traj.response_ids[n:] == ids
    assert traj.policy_mask[n:] == [0] * len(obs) and traj.logprobs[n:] == [0.0] * len(obs)
    assert (traj.turns[0].doc_ids, traj.turns[0].observation, traj.turns[0].observation_tokens) == (
        ["d1", "d2"], obs, len(obs))
    assert traj.stop_reason is None and step.budget(traj) == 500

    decision = step.turn(traj, sample(tok, "<answer> purrs </answer>"))
    assert decision == Decision("answer") and decision.done
    assert (traj.stop_reason, traj.answer, traj.queries()) == ("answer", "purrs", ["cats"])
    assert traj.response_text == tok.decode(traj.response_ids)


def test_invalid_turn_gets_the_note(tok):
    step, traj = make(tok)
    assert step.turn(traj, sample(tok, "<search> </search>")) == Decision("invalid")
    assert step.observe(traj) == tok.encode(INVALID_ACTION_NOTE)
    assert traj.turns[0].observation == INVALID_ACTION_NOTE and traj.turns[0].doc_ids == []


def test_eos_ends_before_the_search_runs(tok):
    step, traj = make(tok)
    decision = step.turn(traj, sample(tok, "<search> cats </search>", finish="eos", eos=True))
    assert decision == Decision("eos") and traj.stop_reason == "eos" and traj.answer is None
    assert traj.response_text == "<search> cats </search>"  # special tokens are not text
    with pytest.raises(ValueError, match="episode has ended"):
        step.observe(traj, HITS)


def test_budgets_and_the_final_turn(tok):
    step, traj = make(tok, max_turns=1, max_turn_tokens=30, max_response_tokens=100)
    assert step.budget(traj) == 30
    assert step.turn(traj, sample(tok, "x" * 30, finish="length")) == Decision("invalid")
    step.observe(traj)  # the note (218 tokens) is cut to the 70 left of the response
    assert traj.stop_reason == "length" and len(traj.response_ids) == 100
    assert traj.turns[0].observation == INVALID_ACTION_NOTE[:70]

    step, traj = make(tok, max_turns=1, max_response_tokens=200)
    step.turn(traj, sample(tok, "<search> a </search>"))
    assert step.observe(traj, HITS[:1]) is not None and step.budget(traj) == 200 - len(traj.response_ids)
    assert step.turn(traj, sample(tok, "<search> b </search>")) == Decision("max_turns")
    assert traj.queries() == ["a", "b"] and traj.turns[-1].observation == ""  # b was not searched
    # ... but is counted, as Search-R1's valid_search_stats counts it
    assert traj.num_searches == 2 and traj.turns[-1].doc_ids == []


def test_observation_is_cut_to_max_obs_tokens_keeping_its_tags(tok):
    step, traj = make(tok, max_obs_tokens=40)
    step.turn(traj, sample(tok, "<search> cats </search>"))
    ids = step.observe(traj, HITS)
    assert ids == TagsProtocol(tok).observation_ids(HITS, 40) and len(ids) == 40
    assert tok.decode(ids) == "\n\n<information>Doc 1(Tit</information>\n\n"  # 15 + 9 + 16


def test_observe_must_match_the_turn(tok):
    step, traj = make(tok)
    step.turn(traj, sample(tok, "<search> cats </search>"))
    with pytest.raises(ValueError, match="search turn needs the hits"):
        step.observe(traj)
    step, traj = make(tok)
    step.turn(traj, sample(tok, "no tags", finish="length"))
    with pytest.raises(ValueError, match="invalid turn has no search"):
        step.observe(traj, HITS)


def test_forced_prefix_is_injected_and_read_with_the_first_turn_only(tok):
    step, traj = make(tok, response_prefix="<search>")
    assert step.begin(traj) == tok.encode("<search>") and traj.policy_mask == [0] * len("<search>")
    assert step.turn(traj, sample(tok, " cats </search>")) == Decision("search", "cats")
    assert traj.turns[0].text == " cats </search>"
    step.observe(traj, HITS)
    assert step.turn(traj, sample(tok, " dogs </search>")) == Decision("invalid")


def test_prompt_gets_a_bos_only_where_the_tokenizer_adds_one(tok):
    class WithBos:
        bos_token_id = 7

        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for c in text]
            return {"input_ids": ([7] if add_special_tokens else []) + ids}

    assert encode_prompt(WithBos(), "ab") == [7, 97, 98]
    assert encode_prompt(WithBos(), "\x07ab") == [7, 97, 98]  # a template that wrote its own BOS
    assert encode_prompt(tok, "ab") == tok.encode("ab")  # no BOS token at all


@pytest.mark.parametrize("action, eos, tokens, turns, expected", [
    ("answer", True, 100, 9, "answer"),  # an answer counts even on EOS, at the budget, on the final turn
    ("search", True, 10, 1, "eos"),  # EOS ends the episode before its search runs
    ("search", False, 100, 1, "length"),  # the response budget is spent
    ("search", False, 99, 4, "search"),  # turn 4 of max_turns 4: still an action turn
    ("search", False, 99, 5, "max_turns"),  # the final turn: its search is not executed
    ("invalid", False, 10, 1, "invalid"),
    ("invalid", False, 10, 5, "max_turns"),
])
def test_turn_outcome_rules_in_order(action, eos, tokens, turns, expected):
    assert turn_outcome(action, eos, tokens, turns, max_turns=4, max_response_tokens=100) == expected
