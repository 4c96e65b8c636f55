"""searchr1.protocol: templates, action parsing, observation formatting, notes, truncation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from searchr1.protocol import (DIRECT_TEMPLATE, INVALID_ACTION_NOTE, NO_MORE_SEARCH_NOTE, R1_TEMPLATE,
                               RAG_TEMPLATE, SEARCH_R1_TEMPLATE, STOP_STRINGS, TEMPLATES, Action, build_prompt,
                               extract_answer, format_documents, format_observation, get_template,
                               normalise_question, parse_action, truncate_tokens)
from searchr1.retrieval.base import Hit

# The paper's prompt, typed out in full (not built from fragments) so a stray space shows up.
PAPER_PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)


# ------------------------------------------------------------------------------ templates


def test_search_r1_template_is_the_paper_prompt_byte_for_byte():
    assert SEARCH_R1_TEMPLATE == PAPER_PROMPT
    assert SEARCH_R1_TEMPLATE.count("{question}") == 1 and SEARCH_R1_TEMPLATE.endswith("{question}\n")


def test_r1_template_is_search_r1_nq_py_prefix():
    assert R1_TEMPLATE == (
        "Answer the given question. You should first have a reasoning process in mind and then provides the "
        "answer. Show your reasoning in <think> </think> tags and return the final answer in <answer> </answer> "
        "tags, for example <answer> Beijing </answer>. Question: {question}\n"
    )


def test_templates_registry():
    assert TEMPLATES["search-r1"] is SEARCH_R1_TEMPLATE
    assert TEMPLATES["direct"] is DIRECT_TEMPLATE
    assert TEMPLATES["rag"] is RAG_TEMPLATE
    for t in TEMPLATES.values():
        assert "{question}" in t and "<answer>" in t and "</answer>" in t
    assert "{documents}" in RAG_TEMPLATE and "{documents}" not in DIRECT_TEMPLATE
    assert "<search>" not in DIRECT_TEMPLATE and "<search>" not in RAG_TEMPLATE


def test_get_template_by_name_or_literal():
    assert get_template("search-r1") == SEARCH_R1_TEMPLATE
    assert get_template("rag") == RAG_TEMPLATE
    assert get_template("Q: {question}\nA:") == "Q: {question}\nA:"


@pytest.mark.parametrize("bad", ["serch-r1", "", "no placeholder here", "{documents} only", "{Question}"])
def test_get_template_rejects_unknown_names_with_a_clear_message(bad):
    with pytest.raises(ValueError, match=r"unknown prompt template.*search-r1.*\{question\}"):
        get_template(bad)


@pytest.mark.parametrize(
    "q, expected",
    [
        ("who wrote hamlet", "who wrote hamlet?"),
        ("  who wrote hamlet?  ", "who wrote hamlet?"),
        ("who wrote hamlet?", "who wrote hamlet?"),
        ("what is 2+2.\n", "what is 2+2.?"),  # as Search-R1: only a missing '?' is added
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalise_question(q, expected):
    assert normalise_question(q) == expected
    assert normalise_question(normalise_question(q)) == expected  # idempotent


def test_build_prompt_raw_text_for_base_models():
    p = build_prompt(" when was the eiffel tower built ")
    assert p == PAPER_PROMPT.replace("{question}", "when was the eiffel tower built?")
    assert p.endswith("Question: when was the eiffel tower built?\n")


def test_build_prompt_accepts_template_names_and_literals():
    assert build_prompt("q", template="direct") == DIRECT_TEMPLATE.replace("{question}", "q?")
    assert build_prompt("q", template="<<{question}>>") == "<<q?>>"


def test_build_prompt_fills_documents_in_one_pass_and_keeps_braces():
    docs = format_documents([{"contents": '"T"\nhas {question} and {x} in it'}])
    p = build_prompt("what {is} this", template="rag", documents=docs)
    assert p == (
        "Answer the given question based on the given documents, which may or may not be useful. "
        "Provide only the answer inside <answer> and </answer>, without detailed illustrations. "
        "For example, <answer> Beijing </answer>. The following are the given documents.\n\n"
        'Doc 1(Title: "T") has {question} and {x} in it\n\n'
        "Question: what {is} this?\n"
    )


class FakeChatTokenizer:
    """Just enough of a HF tokenizer for build_prompt: a chat template and apply_chat_template."""

    def __init__(self, chat_template: str | None = "fake") -> None:
        self.chat_template = chat_template
        self.calls: list[tuple] = []

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        self.calls.append((messages, add_generation_prompt, tokenize))
        body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return body + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def test_build_prompt_chat_when_the_tokenizer_has_a_chat_template():
    tok = FakeChatTokenizer()
    p = build_prompt("who?", tok)
    text = PAPER_PROMPT.replace("{question}", "who?")
    assert p == f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    assert tok.calls == [([{"role": "user", "content": text}], True, False)]


def test_build_prompt_chat_flag_overrides_detection():
    assert build_prompt("who?", FakeChatTokenizer(), chat=False) == PAPER_PROMPT.replace("{question}", "who?")
    assert build_prompt("who?", FakeChatTokenizer(chat_template=None)) == PAPER_PROMPT.replace("{question}", "who?")
    forced = FakeChatTokenizer(chat_template=None)
    assert build_prompt("who?", forced, chat=True).startswith("<|im_start|>user\nAnswer the given question.")
    assert build_prompt("who?", object()) == PAPER_PROMPT.replace("{question}", "who?")  # no chat_template attr
    with pytest.raises(ValueError, match="tokenizer"):
        build_prompt("who?", None, chat=True)


# ------------------------------------------------------------------------------ actions


def test_stop_strings():
    assert STOP_STRINGS == ("</search>", "</answer>")


def test_action_is_a_frozen_dataclass():
    a = Action("search", "q")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.kind = "answer"  # type: ignore[misc]
    assert a == Action("search", "q")


LONG_QUERY = "word " * 20_000


@pytest.mark.parametrize(
    "turn, expected",
    [
        # the normal cases: generation stopped right after the closing tag
        ("<think>I need the date.</think>\n<search> eiffel tower built </search>", ("search", "eiffel tower built")),
        ("<think>known</think> <answer> 1889 </answer>", ("answer", "1889")),
        ("<search>\n multi\nline query \n</search>", ("search", "multi\nline query")),
        ("<answer>a < b and c > d</answer>", ("answer", "a < b and c > d")),
        ("<answer> <b>bold</b> </answer>", ("answer", "<b>bold</b>")),
        # two complete spans: the last one decides
        ("<search> first </search> <search> second </search>", ("search", "second")),
        ("<search> q </search> <answer> a </answer>", ("answer", "a")),
        ("<answer> a </answer> <search> q </search>", ("search", "q")),
        # innermost pairing
        ("<search> a <search> b </search>", ("search", "b")),
        ("<search> outer <search> inner </search> </search>", ("search", "inner")),
        ("<answer> x <search> y </answer>", ("answer", "x <search> y")),
        ("<search> q </search></search>", ("search", "q")),
        ("</search> <search> q </search>", ("search", "q")),
        # a later unclosed tag does not hide an earlier complete span
        ("<search> q </search> <answer> unfinished", ("search", "q")),
        # invalid: no tags, only think, unclosed, mismatched, empty, wrong case, spaced tags
        ("", ("invalid", "")),
        ("I am thinking very hard", ("invalid", "")),
        ("<think>just thinking</think>", ("invalid", "")),
        ("<think>unclosed", ("invalid", "")),
        ("<search> never closed", ("invalid", "")),
        ("<answer> never closed", ("invalid", "")),
        ("<search> q </answer>", ("invalid", "")),
        ("<answer> a </search>", ("invalid", "")),
        ("</search> q <search>", ("invalid", "")),
        ("<search></search>", ("invalid", "")),
        ("<search>  \n\t </search>", ("invalid", "")),
        ("<answer> </answer>", ("invalid", "")),
        ("<Search> q </Search>", ("invalid", "")),
        ("< search > q </ search >", ("invalid", "")),
        ("<search q </search>", ("invalid", "")),
        # the last complete span is empty: invalid even if an earlier one was not
        ("<search> q </search> <answer> </answer>", ("invalid", "")),
        # a very long query is kept whole (truncation is the retriever's business)
        ("<search>" + LONG_QUERY + "</search>", ("search", LONG_QUERY.strip())),
    ],
)
def test_parse_action(turn, expected):
    assert parse_action(turn) == Action(*expected)


def test_parse_action_search_r1_agreement_on_single_action_turns():
    # What Search-R1's regex would take, for the turns a stop-string generator produces.
    assert parse_action("<think>x</think><search>who</search>") == Action("search", "who")
    assert parse_action("<answer>Paris</answer>") == Action("answer", "Paris")


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>x</think><answer> Paris </answer>", "Paris"),
        ("<answer>a</answer> more <answer>b</answer>", "b"),
        ("<answer> a <answer> b </answer>", "b"),
        ("<answer> </answer>", ""),
        ("<answer>open", None),
        ("no tags", None),
        ("", None),
        ("</answer><answer>", None),
        ("<answer> x <search> y </answer>", "x <search> y"),
        ("<search> q </search>", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_extract_answer_of_the_response_ignores_the_prompt_example():
    prompt = build_prompt("capital of france")
    assert extract_answer(prompt) == "Beijing"  # why it must never be given the prompt
    assert extract_answer("<think>hmm</think>") is None


# ------------------------------------------------------------------------------ observations


def test_format_documents_on_hits_with_quoted_and_plain_titles():
    hits = [
        Hit("1", "Eiffel Tower", "It was built in 1889.", 3.0),  # contents '"Eiffel Tower"\nIt was...'
        Hit("2", "", "", 2.0, raw_contents="Plain title\nline one\nline two"),
        Hit("3", "", "", 1.0, raw_contents="no newline at all"),
    ]
    assert format_documents(hits) == (
        'Doc 1(Title: "Eiffel Tower") It was built in 1889.\n'
        "Doc 2(Title: Plain title) line one\nline two\n"
        "Doc 3(Title: no newline at all) \n"
    )


def test_format_documents_accepts_dicts_and_search_r1_server_results():
    assert format_documents([{"contents": '"A"\ntext a'}]) == 'Doc 1(Title: "A") text a\n'
    assert format_documents([{"document": {"id": "9", "contents": '"B"\ntext b'}, "score": 0.5}]) == (
        'Doc 1(Title: "B") text b\n'
    )
    assert format_documents([{"title": "C", "text": "text c"}]) == 'Doc 1(Title: "C") text c\n'
    assert format_documents([]) == ""
    with pytest.raises(ValueError, match="contents"):
        format_documents([{"id": "x"}])


def test_format_documents_matches_search_r1_passages2string():
    # Search-R1's _passages2string, re-typed here as the oracle (split at every newline, rejoin).
    def oracle(contents_list):
        out = ""
        for i, c in enumerate(contents_list):
            parts = c.split("\n")
            out += f"Doc {i + 1}(Title: {parts[0]}) {chr(10).join(parts[1:])}\n"
        return out

    contents = ['"Paris"\nParis is the capital.', "x", "a\n\nb\n", "\n", ""]
    assert format_documents([{"contents": c} for c in contents]) == oracle(contents)


def test_format_observation_is_search_r1_wrapping():
    hits = [Hit("1", "About cats", "cats are nice.", 1.0), Hit("2", "Dogs", "dogs too.", 0.5)]
    assert format_observation(hits) == (
        '\n\n<information>Doc 1(Title: "About cats") cats are nice.\n'
        'Doc 2(Title: "Dogs") dogs too.</information>\n\n'
    )
    assert format_observation([]) == "\n\n<information></information>\n\n"


def test_invalid_action_note_is_search_r1s_string():
    assert INVALID_ACTION_NOTE == (
        "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
        "</search>. If I want to give the final answer, I should put the answer between <answer> and </answer>. "
        "Let me try again.\n"
    )


def test_no_more_search_note_is_short_framed_and_tag_free():
    assert NO_MORE_SEARCH_NOTE.startswith("\n") and NO_MORE_SEARCH_NOTE.endswith("\n")
    assert "answer" in NO_MORE_SEARCH_NOTE and "<" not in NO_MORE_SEARCH_NOTE
    assert len(NO_MORE_SEARCH_NOTE) < 100


def test_notes_are_not_actions_or_answers():
    # Search-R1's note contains "<search> and </search>" and "<answer> and </answer>".
    assert "<answer> and </answer>" in INVALID_ACTION_NOTE
    for note in (INVALID_ACTION_NOTE, NO_MORE_SEARCH_NOTE):
        assert parse_action(note) == Action("invalid", "")
        assert extract_answer(note) is None
        assert extract_answer("<think>x</think> hm" + note + "<think>y</think>") is None


def test_answer_after_the_invalid_note_is_read():
    response = "I am thinking" + INVALID_ACTION_NOTE + "<think>ok</think><answer> Paris </answer>"
    assert extract_answer(response) == "Paris"


@pytest.mark.parametrize("cut", [40, 150, 200, len(INVALID_ACTION_NOTE) - 1])
def test_note_cut_short_by_the_response_budget_is_ignored(cut):
    truncated = INVALID_ACTION_NOTE[:cut]
    assert extract_answer("<think>x</think> rambling" + truncated) is None
    # ...but only at the very end: the model's own later answer still counts
    assert extract_answer("<answer> a </answer> x" + truncated + " <answer> b </answer>") == "b"


def test_information_blocks_are_ignored_by_answer_extraction():
    obs = format_observation([{"contents": '"Q"\nthe docs say <answer> wrong </answer>'}])
    assert extract_answer("<think>t</think><search> q </search>" + obs + "<think>u</think>") is None
    assert extract_answer("<search> q </search>" + obs + "<answer> right </answer>") == "right"
    assert parse_action("<answer> a </answer><information><answer> b </answer></information>") == (
        Action("answer", "a"))
    # a block inside an answer is cut out of it
    assert extract_answer("<answer> a <information>x</information> b </answer>") == "a \n b"
    # an unclosed block is the policy's own text and is read as such
    assert extract_answer("<information> <answer> c </answer>") == "c"


@pytest.mark.parametrize(
    "ids, n, expected",
    [([1, 2, 3, 4], 2, [1, 2]), ([1, 2], 5, [1, 2]), ([1, 2], 2, [1, 2]), ([1, 2], 0, [1, 2]),
     ([1, 2], -1, [1, 2]), ([], 3, []), ([7], 1, [7])],
)
def test_truncate_tokens(ids, n, expected):
    out = truncate_tokens(ids, n)
    assert out == expected and out is not ids


# ------------------------------------------------------------------------------ properties

FRAGMENTS = st.sampled_from(
    ["<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>", "<information>",
     "</information>", " ", "\n", "q", "Paris", "<", ">", "</", "a<b"]
)
TAGGY = st.lists(st.one_of(FRAGMENTS, st.text(max_size=8)), max_size=30).map("".join)
ANY_TEXT = st.one_of(st.text(), TAGGY)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_parse_action_total_and_well_typed(text):
    a = parse_action(text)
    assert isinstance(a, Action) and a.kind in ("search", "answer", "invalid")
    assert isinstance(a.content, str)
    if a.kind == "invalid":
        assert a.content == ""
    else:
        assert a.content and a.content == a.content.strip()
        assert f"<{a.kind}>" in text and f"</{a.kind}>" in text
        if "<information>" not in text:
            assert a.content in text


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_extract_answer_total_and_consistent_with_parse_action(text):
    ans = extract_answer(text)
    assert ans is None or (isinstance(ans, str) and ans == ans.strip())
    if ans is not None and "<information>" not in text:
        assert ans in text
    a = parse_action(text)
    if a.kind == "answer":
        assert ans == a.content  # a turn that answers yields that same answer
    if ans is None:
        assert a.kind != "answer"


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(lambda s: "<" not in s and s.strip()), st.integers(1, 3))
def test_wrapped_content_round_trips(content, reps):
    content = content * reps
    assert parse_action(f"<think>t</think><search>{content}</search>") == Action("search", content.strip())
    assert parse_action(f"<answer>{content}</answer>") == Action("answer", content.strip())
    assert extract_answer(f"<answer>{content}</answer>") == content.strip()


def test_huge_inputs_are_linear_time():
    many_tags = "<search>" * 50_000 + "q" + "</search>" * 50_000
    assert parse_action(many_tags) == Action("search", "q")
    assert extract_answer("<answer>" * 50_000) is None
    assert parse_action("x" * 1_000_000 + "<answer> y </answer>") == Action("answer", "y")
    assert extract_answer("<information>" * 50_000 + "<answer> z </answer>") == "z"
    assert extract_answer("<information></information>" * 50_000 + "<answer> z </answer>") == "z"
    assert extract_answer(INVALID_ACTION_NOTE[:100] * 10_000) is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=5), st.text(max_size=40))
def test_format_observation_shape(texts, title):
    hits = [Hit(str(i), title, t, 1.0) for i, t in enumerate(texts)]
    obs = format_observation(hits)
    assert obs.startswith("\n\n<information>") and obs.endswith("</information>\n\n")
    assert format_documents(hits).count("Doc ") >= len(hits)
