"""searchr1.rewards: normalisation, EM / F1 / cover EM, the format check and the reward."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from searchr1.protocol import INVALID_ACTION_NOTE, build_prompt, format_observation
from searchr1.retrieval.base import Hit
from searchr1.rewards import (compute_score, contains_answer, cover_exact_match, exact_match, f1_score,
                              is_valid_format, normalize_answer, retrieved_gold, score_breakdown,
                              searched)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  An   apple,  a day!  ", "apple day"),
        ("U.S.A.", "usa"),
        ("Theatre", "theatre"),              # 'the' inside a word is not an article
        ("anthem of a nation", "anthem of nation"),
        ("Rock 'n' Roll", "rock n roll"),
        ("The", ""),
        ("", ""),
        ("tab\tand\nnewline", "tab and newline"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_strips_punctuation_before_articles():
    # As in SQuAD's script: hyphens are deleted (not spaced), so "the" inside is no longer a word...
    assert normalize_answer("state-of-the-art") == "stateoftheart"
    # ...while an article wrapped in punctuation becomes a word and is dropped.
    assert normalize_answer("(the) end") == "end"


def test_contains_answer_ignores_case_punctuation_and_articles():
    assert contains_answer("It was built by THE Romans, in 120 AD.", ["romans"])
    assert contains_answer("Capital: Paris.", ["the city of Paris"]) is False
    assert contains_answer("the capital is Paris, France", ["Paris France"])


def test_contains_answer_whole_words_only():
    assert not contains_answer("concatenate the strings", ["cat"])
    assert contains_answer("the cat sat", ["cat"])
    assert not contains_answer("catalog", ["cat"])
    assert contains_answer("cat", ["cat"])  # the whole text is the answer


def test_contains_answer_multiword_must_be_contiguous():
    assert contains_answer("born in new york city", ["New York"])
    assert not contains_answer("new jersey and york", ["New York"])


def test_contains_answer_any_of_several_gold_answers():
    assert contains_answer("he was born in 1879", ["Ulm", "1879"])
    assert not contains_answer("he was born in 1879", ["Ulm", "1880"])


def test_contains_answer_empty_answers_never_match():
    assert not contains_answer("anything at all", [])
    assert not contains_answer("the a an", ["the"])  # normalises to empty
    assert not contains_answer("some text", [""])


# ------------------------------------------------------------------------------ EM / F1 / cover EM

@pytest.mark.parametrize(
    "pred, golds, expected",
    [
        ("The Eiffel Tower!", ["eiffel tower"], 1.0),
        ("eiffel tower", ["Paris", "The Eiffel Tower"], 1.0),
        ("Eiffel Tower in Paris", ["Eiffel Tower"], 0.0),
        ("eiffel tower", "Eiffel Tower", 1.0),  # a bare string is one gold, not its characters
        ("e", "Eiffel Tower", 0.0),
        (None, ["anything"], 0.0),
        ("", [""], 0.0),  # empty never matches
        ("the", ["a"], 0.0),  # both normalise to empty
        ("x", [], 0.0),
        ("x", None, 0.0),
        ("1879", [1879], 1.0),  # non-string golds are compared as text
        ("paris", {"target": ["Paris"]}, 1.0),  # veRL ground truth
        ("paris", np.array(["Paris", "France"]), 1.0),  # parquet column
    ],
)
def test_exact_match(pred, golds, expected):
    assert exact_match(pred, golds) == expected


@pytest.mark.parametrize(
    "pred, golds, expected",
    [
        # 3 tokens vs 2: common 2, precision 2/3, recall 1 -> F1 = 2*(2/3)/(5/3) = 0.8
        ("Eiffel Tower Paris", ["the Eiffel Tower"], 0.8),
        # multiplicity: [new york new york] vs [new york]: common 2, P 1/2, R 1 -> 2/3
        ("new york new york", ["New York"], 2 / 3),
        # 1 common of 3 and 2: P 1/3, R 1/2 -> 2*(1/6)/(5/6) = 0.4
        ("red green blue", ["green yellow"], 0.4),
        ("red green blue", ["green yellow", "blue green red"], 1.0),  # max over golds, order-free
        ("red", ["green"], 0.0),
        # HotpotQA's yes/no/noanswer rule: credit only for the exact word
        ("no", ["no way"], 0.0),
        ("no way", ["no"], 0.0),
        ("Yes.", ["yes"], 1.0),
        ("yes", ["no"], 0.0),
        ("noanswer", ["noanswer"], 1.0),
        (None, ["x"], 0.0),
        ("", ["x"], 0.0),
        ("the", ["a"], 0.0),
        ("x", [], 0.0),
        ("x", ["", "x"], 1.0),
    ],
)
def test_f1_score(pred, golds, expected):
    assert f1_score(pred, golds) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "pred, golds, expected",
    [
        ("It is in Paris, France.", ["paris"], 1.0),
        ("It is in Paris, France.", ["Paris France"], 1.0),
        ("born in 1879", ["1"], 0.0),  # whole words: "1" does not cover "1879"
        ("concatenate", ["cat"], 0.0),
        ("not sure", ["no"], 0.0),
        ("the answer is no", ["no"], 1.0),
        ("France", ["Paris, France"], 0.0),  # the gold must be inside the prediction, not vice versa
        (None, ["x"], 0.0),
        ("anything", [""], 0.0),
    ],
)
def test_cover_exact_match(pred, golds, expected):
    assert cover_exact_match(pred, golds) == expected


def test_metrics_are_ordered():
    # EM implies cover EM and F1 1; cover EM 0 allows partial F1
    assert exact_match("Paris", ["paris"]) == cover_exact_match("Paris", ["paris"]) == f1_score("Paris", ["paris"]) == 1
    assert cover_exact_match("Paris France", ["paris"]) == 1 and exact_match("Paris France", ["paris"]) == 0
    assert f1_score("Paris France", ["paris"]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------ format


def obs(*texts: str) -> str:
    return format_observation([Hit(str(i), f"T{i}", t, 1.0) for i, t in enumerate(texts)])


VALID = [
    "<think>a</think><answer>b</answer>",
    "<think></think><answer></answer>",  # empty blocks are structurally fine (Search-R1 agrees)
    "  \n<think> I know this. </think>\n<answer> Paris </answer>\n\n",
    "<think>need info</think>\n<search> q </search>" + obs("doc text") + "<think>found</think>\n<answer> x </answer>",
    "<think>1</think><search>q1</search>" + obs("a", "b") + "<think>2</think><search>q2</search>"
    + obs("c") + "<think>3</think><answer>y</answer>",
    "<think>a < b, <b>bold</b>, </thinking></think><answer>a<b</answer>",  # unknown tags are content
    "<think>x</think><search>q</search><information></information><think>y</think><answer>z</answer>",
]

INVALID = [
    "",
    "just text",
    "<answer>x</answer>",  # no think first
    "ok <think>a</think><answer>b</answer>",  # text before
    "<think>a</think> so <answer>b</answer>",  # text between
    "<think>a</think><answer>b</answer> done",  # text after
    "<think>a</think><answer>b</answer><|im_end|>",  # a special token decoded as text
    "<think>a</think><answer>b</answer><answer>c</answer>",  # two answers
    "<think>a</think><think>b</think><answer>c</answer>",  # think twice in a row
    "<think>a</think><search>q</search><think>b</think><answer>c</answer>",  # search without information
    "<think>a</think><search>q</search>" + obs("d") + "<answer>c</answer>",  # no think after information
    "<think>a</think><search>q</search>" + obs("d"),  # no answer
    "<think>a</think><search>q</search> text" + obs("d") + "<think>b</think><answer>c</answer>",
    "<think>a <search>q</search></think><answer>b</answer>",  # nested
    "<think>a</think><answer>b <think>c</think></answer>",  # nested in the answer
    "<think>a</think><answer>b",  # unclosed
    "<think>a<answer>b</answer>",  # think never closed
    "<think>a</think></answer>",  # stray closing tag
    "<think>a</think>" + INVALID_ACTION_NOTE + "<think>b</think><answer>c</answer>",  # got the note
    "<think>a</think><search>q</search><information>d<information>e</information></information>"
    "<think>b</think><answer>c</answer>",  # a tag inside the information block
]


@pytest.mark.parametrize("text", VALID)
def test_is_valid_format_accepts(text):
    assert is_valid_format(text) is True


@pytest.mark.parametrize("text", INVALID)
def test_is_valid_format_rejects(text):
    assert is_valid_format(text) is False


def test_is_valid_format_scores_the_response_not_the_prompt():
    prompt = build_prompt("capital of france")
    response = "<think>easy</think><answer> Paris </answer>"
    assert is_valid_format(response)
    assert not is_valid_format(prompt + response)  # the prompt is text outside any block


# An independent statement of the same language, as one regular expression, for the property test.
_BLOCK = r"<{0}>(?:(?!</?(?:think|search|information|answer)>).)*</{0}>"
_GRAMMAR = re.compile(
    r"\s*{t}\s*(?:{s}\s*{i}\s*{t}\s*)*{a}\s*".format(
        t=_BLOCK.format("think"), s=_BLOCK.format("search"), i=_BLOCK.format("information"),
        a=_BLOCK.format("answer")),
    re.DOTALL,
)

PIECES = st.sampled_from(
    ["<think>", "</think>", "<search>", "</search>", "<information>", "</information>", "<answer>",
     "</answer>", " ", "\n", "x", "Paris", "<", "</", "<|im_end|>", "\u00a0"]
)
TAGGY = st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=25).map("".join)


STRUCTURED = st.builds(
    lambda searches, ws, body: (
        f"{ws}<think>{body}</think>{ws}"
        + "".join(f"<search>{q}</search>{ws}<information>{body}</information>{ws}<think>{body}</think>{ws}"
                  for q in searches)
        + f"<answer>{body}</answer>{ws}"
    ),
    st.lists(st.text(alphabet="abc <>/", max_size=6), max_size=3),
    st.sampled_from(["", " ", "\n\n", "\t"]),
    st.text(alphabet="xyz </>", max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(TAGGY, STRUCTURED, st.text()))
@example("<think>a</think><answer>b</answer>")
@example("\x1c<think>a</think><answer>b</answer>\u2028")
def test_is_valid_format_matches_the_grammar(text):
    assert is_valid_format(text) is (_GRAMMAR.fullmatch(text) is not None)


@settings(max_examples=100, deadline=None)
@given(STRUCTURED)
def test_structured_responses_are_valid(text):
    # the generated bodies cannot spell a recognised tag, so every one is well formed
    assert is_valid_format(text) and _GRAMMAR.fullmatch(text)


# ------------------------------------------------------------------------------ compute_score

GOOD_VALID = "<think>t</think><answer> Paris </answer>"
GOOD_INVALID = "<answer> Paris </answer>"
BAD_VALID = "<think>t</think><answer> Lyon </answer>"
BAD_INVALID = "Lyon? <answer> Lyon </answer>"
NO_ANSWER_VALIDISH = "<think>t</think>"
NO_ANSWER = "I am thinking" + INVALID_ACTION_NOTE + "still thinking"


@pytest.mark.parametrize(
    "response, plain, shaped",
    [
        (GOOD_VALID, 1.0, 1.0),
        (GOOD_INVALID, 1.0, 0.8),
        (BAD_VALID, 0.0, 0.2),
        (BAD_INVALID, 0.0, 0.1),
        (NO_ANSWER_VALIDISH, 0.0, 0.0),
        (NO_ANSWER, 0.0, 0.0),  # the note's "<answer> and </answer>" is not an answer
        ("", 0.0, 0.0),
    ],
)
def test_compute_score_table(response, plain, shaped):
    golds = ["Paris", "Paris, France"]
    assert compute_score(response, golds) == plain
    assert compute_score(response, golds, format_reward=True) == pytest.approx(shaped, abs=1e-12)


def test_compute_score_custom_weights():
    kw = dict(format_reward=True, structure_format_score=0.3, final_format_score=0.05, score=2.0)
    assert compute_score(GOOD_VALID, ["paris"], **kw) == 2.0
    assert compute_score(GOOD_INVALID, ["paris"], **kw) == pytest.approx(1.7)
    assert compute_score(BAD_VALID, ["paris"], **kw) == 0.3
    assert compute_score(BAD_INVALID, ["paris"], **kw) == 0.05
    assert compute_score(GOOD_VALID, ["paris"], score=2.0) == 2.0


SEARCHED = ("<think>t</think><search> capital of france </search><information>Doc 1(Title: France) Its capital "
            "is Paris.</information><think>t</think><answer> {} </answer>")


@pytest.mark.parametrize("answer, golds, expected", [
    ("Lyon", ["Paris"], 0.2 + 0.15),  # wrong, but the passages held the gold answer (Search-R1: 0.2 + r)
    ("Paris", ["Paris"], 1.0),  # correct: the full score, never more
    ("Lyon", ["Marseille"], 0.2),  # the passages did not hold it
    ("Lyon", ["Par"], 0.2),  # whole words: "Par" is not found in "Paris" (Search-R1's substring test finds it)
])
def test_retrieval_score_pays_a_search_that_found_the_answer(answer, golds, expected):
    response = SEARCHED.format(answer)
    assert compute_score(response, golds, format_reward=True, retrieval_score=0.15) == pytest.approx(expected)
    assert compute_score(response, golds, format_reward=True) == pytest.approx(min(expected, 0.2) if expected < 1
                                                                               else 1.0)


def test_retrieval_score_needs_a_valid_response_and_a_retrieved_block():
    invalid = "Lyon? " + SEARCHED.format("Lyon")  # text outside the tags: not valid
    assert compute_score(invalid, ["Paris"], format_reward=True, retrieval_score=0.15) == 0.1
    # the gold answer in the policy's own thinking is not a retrieval
    guessed = "<think>Paris or Lyon</think><answer> Lyon </answer>"
    assert compute_score(guessed, ["Paris"], format_reward=True, retrieval_score=0.15) == 0.2
    assert retrieved_gold(SEARCHED.format("Lyon"), {"target": ["paris"]})
    assert not retrieved_gold(guessed, ["Paris"])
    tool = "<tool_call>{}</tool_call><tool_response>Paris is the capital</tool_response>"
    assert retrieved_gold(tool, ["Paris"], protocol="tool_call")
    assert not retrieved_gold(tool, ["Paris"])  # under tags only <information> blocks are retrievals


@pytest.mark.parametrize("response, golds, expected", [
    (SEARCHED.format("Lyon"), ["Marseille"], 0.2),  # searched, valid, wrong: the structure score
    (SEARCHED.format("Lyon"), ["Paris"], 0.2 + 0.15),  # ... and the retrieval score when the passages held it
    ("Lyon? " + SEARCHED.format("Lyon"), ["Marseille"], 0.1),  # searched, invalid, answered: the final score
    ("<think>t</think><answer> Lyon </answer>", ["Paris"], 0.0),  # a guess in valid tags: nothing
    ("Lyon? <think>t</think><answer> Lyon </answer>", ["Paris"], 0.0),  # invalid, no search: nothing
    ("<think>t</think><answer> Paris </answer>", ["Paris"], 1.0),  # a right answer is paid without a search
    ("Paris? <think>t</think><answer> Paris </answer>", ["Paris"], 0.8),  # ... in an invalid format as usual
    # an <information> block the model wrote itself, not after a </search>, is not a search
    ("<think>t</think><information>Lyon</information><think>t</think><answer> Lyon </answer>", ["Paris"], 0.0),
])
def test_format_needs_search_pays_the_format_only_after_a_search(response, golds, expected):
    assert compute_score(response, golds, format_reward=True, retrieval_score=0.15,
                         format_needs_search=True) == pytest.approx(expected)


def test_searched_reads_the_environments_blocks():
    assert searched(SEARCHED.format("Lyon"))
    assert searched("<search>q</search>\n\n<information>x</information>")
    assert not searched("<think>t</think><answer> Lyon </answer>")
    assert not searched("<information>x</information>")
    assert not searched(None)
    tool = "<tool_call>{}</tool_call><tool_response>Paris</tool_response>"
    assert searched(tool, protocol="tool_call") and not searched(tool)
    with pytest.raises(ValueError):
        searched(tool, protocol="json")


def test_reward_ignores_the_prompts_example_answer():
    prompt = build_prompt("capital of china")
    # Search-R1 scores prompt + response and would read this as the answer "Beijing".
    assert compute_score("<think>no idea</think>", ["Beijing"]) == 0.0
    assert compute_score("<think>no idea</think>", ["Beijing"], format_reward=True) == 0.0
    assert compute_score("<think>t</think><answer> Beijing </answer>", ["Beijing"]) == 1.0
    assert score_breakdown("<think>t</think>", ["Beijing"])["answer"] is None
    assert "<answer> Beijing </answer>" in prompt


def test_the_last_answer_counts():
    assert compute_score("<answer> Lyon </answer> no wait <answer> Paris </answer>", ["paris"]) == 1.0
    assert compute_score("<answer> Paris </answer> no wait <answer> Lyon </answer>", ["paris"]) == 0.0


def test_score_breakdown():
    r = "<think>t</think><search> q </search>" + obs("doc") + "<think>u</think><answer> the Eiffel Tower, Paris </answer>"
    assert score_breakdown(r, ["Eiffel Tower"]) == {
        "answer": "the Eiffel Tower, Paris",
        "em": 0.0,
        "f1": pytest.approx(0.8),  # [eiffel tower paris] vs [eiffel tower]
        "cover_em": 1.0,
        "lenient_answer": "the Eiffel Tower, Paris",  # the tag, as under the strict rule
        "em_lenient": 0.0,
        "f1_lenient": pytest.approx(0.8),
        "cover_em_lenient": 1.0,
        "valid_format": True,
    }
    assert score_breakdown("nothing", ["x"]) == {
        "answer": None, "em": 0.0, "f1": 0.0, "cover_em": 0.0, "lenient_answer": "nothing", "em_lenient": 0.0,
        "f1_lenient": 0.0, "cover_em_lenient": 0.0, "valid_format": False}


ALLOWED_SHAPED = {0.0, 0.1, 0.2, 0.8, 1.0}
GOLDS = st.one_of(st.text(max_size=10), st.lists(st.text(max_size=10), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.one_of(TAGGY, STRUCTURED, st.text()), GOLDS)
def test_scores_are_total_and_in_the_allowed_sets(text, golds):
    assert compute_score(text, golds) in {0.0, 1.0}
    assert round(compute_score(text, golds, format_reward=True), 12) in ALLOWED_SHAPED
    b = score_breakdown(text, golds)
    assert set(b) == {"answer", "em", "f1", "cover_em", "lenient_answer", "em_lenient", "f1_lenient",
                      "cover_em_lenient", "valid_format"}
    assert b["answer"] is None or isinstance(b["answer"], str)
    assert isinstance(b["valid_format"], bool)
    for k in ("em", "f1", "cover_em", "em_lenient", "f1_lenient", "cover_em_lenient"):
        assert isinstance(b[k], float) and 0.0 <= b[k] <= 1.0
    assert b["em"] <= b["f1"] + 1e-12 and b["em"] <= b["cover_em"]
    assert b["em"] <= b["em_lenient"]  # the lenient rule reads the same tag, or a line where there is none
    assert compute_score(text, golds) == b["em"]


def test_huge_responses_are_fast():
    big = "<think>" + "x" * 1_000_000 + "</think><answer> y </answer>"
    assert compute_score(big, ["y"], format_reward=True) == 1.0
    assert compute_score("<answer>" * 100_000, ["y"], format_reward=True) == 0.0
    assert is_valid_format("<think></think>" * 100_000) is False


@pytest.mark.parametrize("response, strict, lenient", [
    ("Paris", None, "Paris"),  # bare correct answer: only the lenient rule reads it
    ("<answer> Paris </answer>", "Paris", "Paris"),  # tagged: both rules agree
    ("Paris\n<answer> Rome </answer>", "Rome", "Rome"),  # both: the tag wins under both rules
    ("", None, None),  # empty
    (" \n\t\n", None, None),  # blank
    ("\n  Paris, France \nIt is the capital.", None, "Paris, France"),  # multi-line: the first non-empty line
    ("<answer></answer>", "", ""),  # an empty tag is an (empty) answer under both
])
def test_strict_and_lenient_answer_rules(response, strict, lenient):
    from searchr1.protocol import extract_answer
    from searchr1.rewards import lenient_answer

    assert extract_answer(response) == strict
    assert lenient_answer(response) == lenient


def test_score_breakdown_reports_both_rules():
    from searchr1.rewards import score_breakdown

    bare = score_breakdown("Paris", ["Paris"])
    assert (bare["em"], bare["em_lenient"], bare["cover_em"], bare["cover_em_lenient"]) == (0.0, 1.0, 0.0, 1.0)
    chatty = score_breakdown("The capital is Paris.\nDone.", ["Paris"])
    assert (chatty["em_lenient"], chatty["cover_em_lenient"]) == (0.0, 1.0)
    assert chatty["f1_lenient"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # "capital is paris" vs "paris"
    tagged = score_breakdown("<answer> Paris </answer>", ["Paris"])
    assert tagged["em"] == tagged["em_lenient"] == 1.0
    # the training reward keeps Search-R1's rule: no tag, no score
    assert compute_score("Paris", ["Paris"]) == 0.0


# ----------------------------------------------------------------------------- the answer rule per protocol

TOOL_RESPONSE = ('<tool_call>\n{"name": "search", "arguments": {"query": "q"}}\n</tool_call>\nuser\n<tool_response>\n'
                 "Doc 1(Title: x) <answer> Lyon </answer>\n</tool_response>\nassistant\n")


def test_each_protocol_reads_its_own_answer():
    from searchr1.rewards import read_answer, valid_format

    # tags: the last <answer> span anywhere but injected text; tool_call: the last message only
    assert read_answer("<answer> Paris </answer>") == "Paris"
    assert read_answer(TOOL_RESPONSE + "Paris", "tool_call") == "Paris"
    assert read_answer(TOOL_RESPONSE + "Paris", "tags") == "Lyon"  # a tool response is not tags' injected text
    assert read_answer(TOOL_RESPONSE + "<think>no <answer>Rome</answer></think>It is <answer>Paris</answer>",
                       "tool_call") == "Paris"
    assert compute_score(TOOL_RESPONSE + "paris.", ["Paris"], protocol="tool_call") == 1.0
    assert compute_score(TOOL_RESPONSE + "Paris", ["Paris"]) == 0.0  # tags never reads an untagged message
    # the format reward under tool_call: a valid call sequence and a final answer
    assert compute_score(TOOL_RESPONSE + "Paris", ["Paris"], protocol="tool_call", format_reward=True) == 1.0
    assert compute_score(TOOL_RESPONSE + "Rome", ["Paris"], protocol="tool_call", format_reward=True) == 0.2
    broken = TOOL_RESPONSE.replace('"query"', '"q"')
    assert compute_score(broken + "Paris", ["Paris"], protocol="tool_call", format_reward=True) == pytest.approx(0.8)
    assert valid_format(TOOL_RESPONSE + "Paris", "tool_call") and not valid_format(TOOL_RESPONSE + "Paris")
    parts = score_breakdown(TOOL_RESPONSE + "Paris", ["Paris"], "tool_call")
    assert (parts["answer"], parts["lenient_answer"], parts["em"], parts["valid_format"]) == ("Paris", "Paris", 1.0, True)
    with pytest.raises(ValueError, match="tool_call"):
        read_answer("x", "json")
