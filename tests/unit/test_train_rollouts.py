"""Reward plumbing: the default reward is rewards.compute_score; custom rewards are checked."""

import pytest

from searchr1.errors import SearchR1Error
from searchr1.rewards import compute_score
from searchr1.rollout.trajectory import Trajectory
from searchr1.eval.metrics import aggregate
from searchr1.train.rollouts import default_reward_fn, score_trajectories


def _t(text, gold=("Paris",)):
    return Trajectory(question="q", golden_answers=list(gold), prompt_ids=[1], response_text=text, id="t")


def test_default_reward_is_exact_match_of_the_last_answer():
    fn = default_reward_fn(format_reward=False)
    assert fn(_t("<answer> paris </answer>")) == 1.0
    assert fn(_t("<answer> Lyon </answer>")) == 0.0
    assert fn(_t("no answer")) == 0.0


def test_format_reward_matches_compute_score():
    text = "<think> x </think><search> q </search><information> d </information><answer> Lyon </answer>"
    assert default_reward_fn(True)(_t(text)) == compute_score(text, ["Paris"], format_reward=True)
    assert default_reward_fn(False)(_t(text)) == compute_score(text, ["Paris"], format_reward=False)


def test_format_needs_search_reaches_the_reward():
    guess = "<think> x </think><answer> Lyon </answer>"
    searched = "<think> x </think><search> q </search><information> d </information><think> y </think><answer> Lyon </answer>"
    assert default_reward_fn(True)(_t(guess)) == 0.2
    assert default_reward_fn(True, format_needs_search=True)(_t(guess)) == 0.0
    assert default_reward_fn(True, format_needs_search=True)(_t(searched)) == 0.2


def test_score_trajectories_tensor_and_errors():
    scores = score_trajectories([_t("a"), _t("b")], lambda t: len(t.response_text))
    assert scores.tolist() == [1.0, 1.0]
    with pytest.raises(SearchR1Error, match="expected a number"):
        score_trajectories([_t("a")], lambda t: "high")
    with pytest.raises(SearchR1Error, match="nan"):
        score_trajectories([_t("a")], lambda t: float("nan"))


def test_exact_match_metric():
    # reward/em of a step is evaluation's aggregate over its episodes
    assert aggregate([_t("<answer> Paris </answer>")])["em"] == 1.0
    assert aggregate([_t("<answer> Paris </answer>", gold=())])["em"] == 0.0
