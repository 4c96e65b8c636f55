"""Evaluation arithmetic on hand-built trajectories: every expected number is worked out by hand."""

from __future__ import annotations

import html

import pytest

from searchr1.eval.harness import trajectory_record
from searchr1.eval.html import render_model_text, render_report
from searchr1.eval.metrics import (aggregate, average_metrics, markdown_report, markdown_table, metric_tables,
                                   score_trajectory)
from searchr1.rollout.trajectory import Trajectory, Turn

INFO = "\n\n<information>Doc 1(Title: Hamlet) Hamlet is a play by William Shakespeare.\n</information>\n\n"


def make(question, gold, turns, answer, stop, mask) -> Trajectory:
    t = Trajectory(question=question, golden_answers=gold, prompt_ids=[1, 2, 3], turns=turns, answer=answer,
                   stop_reason=stop)
    t.response_ids = list(range(len(mask)))
    t.policy_mask = list(mask)
    t.logprobs = [0.0] * len(mask)
    t.response_text = "".join(turn.text + turn.observation for turn in turns)
    return t


@pytest.fixture()
def episodes() -> list[Trajectory]:
    # 1. answered right at once: EM 1, F1 1, cover-EM 1; 1 turn, 0 searches; 6 generated tokens.
    a = make("capital of france?", ["Paris"],
             [Turn("<think>easy</think>\n<answer> paris </answer>", "answer", "paris", generated_tokens=6)],
             "paris", "answer", [1] * 6)
    # 2. one search, then a longer answer that covers the gold one: EM 0, cover-EM 1,
    #    F1: prediction {william, shakespeare}, gold {shakespeare} -> P 1/2, R 1, F1 2/3.
    #    2 turns, 1 search; 4 + 5 generated tokens, 7 injected.
    b = make("who wrote hamlet?", ["Shakespeare"],
             [Turn("<search> hamlet author </search>", "search", "hamlet author", doc_ids=["d1"],
                   observation=INFO, generated_tokens=4),
              Turn("<answer>William Shakespeare</answer>", "answer", "William Shakespeare", generated_tokens=5)],
             "William Shakespeare", "answer", [1] * 4 + [0] * 7 + [1] * 5)
    # 3. two invalid turns and a search, no answer (EOS): EM 0, F1 0, cover-EM 0; 3 turns, 1 search,
    #    2 invalid; 3 + 2 + 1 generated tokens.
    note = "\nMy previous action is invalid. Let me try again.\n"
    c = make("year of the <script>alert('x')</script> treaty?", ["1990"],
             [Turn("I think <script>alert('pwned')</script>", "invalid", observation=note, generated_tokens=3),
              Turn("<search> treaty year </search>", "search", "treaty year", doc_ids=["d2"], observation=INFO,
                   generated_tokens=2),
              Turn("hmm", "invalid", observation=note, generated_tokens=1)],
             None, "eos", [1] * 3 + [0] * 4 + [1] * 2 + [0] * 7 + [1] * 1 + [0] * 4)
    return [a, b, c]


def test_aggregate_matches_hand_computed_numbers(episodes):
    m = aggregate(episodes, seconds=2.0)
    assert m["n"] == 3
    assert m["em"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["cover_em"] == pytest.approx(2 / 3)
    assert m["searches"] == pytest.approx(2 / 3)
    assert m["invalid_rate"] == pytest.approx(2 / 6)  # 2 invalid turns of 1 + 2 + 3 turns
    assert m["turns"] == pytest.approx(2.0)
    assert m["answered"] == pytest.approx(2 / 3)
    assert m["tokens_total"] == 6 + 9 + 6
    assert m["tokens_mean"] == pytest.approx(21 / 3)
    assert m["qps"] == pytest.approx(1.5)
    assert m["stop_reasons"] == {"answer": 2, "eos": 1}


def test_aggregate_of_nothing_is_zeros():
    m = aggregate([], seconds=0.0)
    assert m["n"] == 0 and m["em"] == 0.0 and m["invalid_rate"] == 0.0 and m["qps"] == 0.0


def test_scores_given_are_used_as_is(episodes):
    scores = [{"em": 1.0, "f1": 1.0, "cover_em": 1.0, "valid_format": 1.0, "answer": "x"}] * 3
    assert aggregate(episodes, scores)["em"] == 1.0
    with pytest.raises(ValueError):
        aggregate(episodes, scores[:2])


def _metrics(em_direct, em_agent, searches):
    base = aggregate([])
    return {"direct": {**base, "n": 10, "em": em_direct, "f1": em_direct, "cover_em": em_direct},
            "agent": {**base, "n": 10, "em": em_agent, "f1": em_agent, "cover_em": em_agent, "searches": searches}}


def test_markdown_tables_have_datasets_as_rows_and_modes_as_columns():
    metrics = {"nq": _metrics(0.1, 0.4, 1.5), "hotpotqa": _metrics(0.2, 0.3, 2.5)}
    title, header, rows = metric_tables(metrics)[0]
    assert title == "EM" and header == ["dataset", "direct", "agent"]
    assert rows == [["nq", "0.100", "0.400"], ["hotpotqa", "0.200", "0.300"], ["average", "0.150", "0.350"]]
    searches = [t for t in metric_tables(metrics) if t[0] == "searches / question"][0]
    assert searches[2][-1] == ["average", "0.00", "2.00"]
    md = markdown_report({"metrics": metrics, "environment": {"model": "m"}})
    assert "| dataset | direct | agent |" in md
    assert "| nq | 0.100 | 0.400 |" in md
    assert "## cover-EM" in md and "## F1" in md and "- model: m" in md
    assert markdown_table(["a", "b"], [["x|y", "1"]]) == "| a | b |\n|---|---:|\n| x\\|y | 1 |"


def test_average_metrics_is_a_macro_average():
    a = {**aggregate([]), "n": 10, "em": 0.5, "seconds": 1.0, "tokens_total": 5}
    b = {**aggregate([]), "n": 30, "em": 0.1, "seconds": 3.0, "tokens_total": 7}
    avg = average_metrics([a, b])
    assert avg["em"] == pytest.approx(0.3) and avg["n"] == 40 and avg["qps"] == pytest.approx(10.0)
    assert avg["tokens_total"] == 12


def _records(episodes):
    return [trajectory_record(t, score_trajectory(t)) for t in episodes]


def test_html_escapes_model_text_and_shows_every_question(episodes):
    results = {"metrics": {"nq": {"agent": aggregate(episodes)}}, "environment": {"model": "<b>model</b>"}}
    page = render_report(results, {("nq", "agent"): _records(episodes)}, max_per_run=0)
    assert "<script>" not in page
    assert html.escape("I think <script>alert('pwned')</script>") in page
    assert "&lt;b&gt;model&lt;/b&gt;" in page
    for t in episodes:
        assert html.escape(t.question) in page
    assert "<details>" in page and "Hamlet is a play by William Shakespeare." in page
    assert 'class="good"' in page and 'class="bad"' in page  # right answer green, wrong one red
    assert "Showing the first" not in page


def test_html_caps_episodes_per_run_with_a_note(episodes):
    results = {"metrics": {"nq": {"agent": aggregate(episodes)}}}
    page = render_report(results, {("nq", "agent"): _records(episodes)}, max_per_run=2)
    assert "Showing the first 2 of 3 episodes" in page
    assert html.escape(episodes[1].question) in page and html.escape(episodes[2].question) not in page


def test_model_text_segments():
    out = render_model_text("<think>a<b</think>x<search>q&</search><answer>y</answer>", em=1.0)
    assert out == ('<span class="think">&lt;think&gt;a&lt;b&lt;/think&gt;</span>x'
                   '<span class="search">&lt;search&gt;q&amp;&lt;/search&gt;</span>'
                   '<span class="good">&lt;answer&gt;y&lt;/answer&gt;</span>')
    assert 'class="bad"' in render_model_text("<answer>y</answer>", em=0.0)
    assert 'class="think"' in render_model_text("<think>cut off before the end")
