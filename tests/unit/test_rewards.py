"""searchr1.rewards: SQuAD answer normalisation and whole-word containment."""

from __future__ import annotations

import pytest

from searchr1.rewards import contains_answer, normalize_answer


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
