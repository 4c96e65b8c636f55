"""The tool-call protocol's text rules (searchr1.toolcall), by hand."""

import pytest

from searchr1.protocol import Action
from searchr1.toolcall import (SEARCH_TOOL, extract_final_answer, final_message, is_valid_tool_format,
                               parse_tool_call, search_call, tools_for)

CALL = '<tool_call>\n{"name": "search", "arguments": {"query": "capital of France"}}\n</tool_call>'


def test_a_search_call_is_a_search_for_its_stripped_query():
    assert parse_tool_call("I should look it up.\n" + CALL, ended=False) == Action("search", "capital of France")
    padded = '<tool_call>{"name": "search", "arguments": {"query": "  cats  "}}</tool_call>'
    assert parse_tool_call(padded, ended=False) == Action("search", "cats")
    # arguments written as a JSON string, as some models do
    as_string = '<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"dogs\\"}"}</tool_call>'
    assert parse_tool_call(as_string, ended=False) == Action("search", "dogs")


def test_search_call_writes_the_hermes_call_that_parses_back():
    assert search_call("capital of France") == CALL
    assert search_call('Zoë "the" cat') == ('<tool_call>\n{"name": "search", "arguments": {"query": "Zoë \\"the\\" cat"}}'
                                             '\n</tool_call>')
    assert parse_tool_call(search_call('Zoë "the" cat'), ended=False) == Action("search", 'Zoë "the" cat')


def test_the_last_call_decides_and_calls_inside_thinking_do_not_count():
    two = CALL.replace("capital of France", "a") + "\n" + CALL
    assert parse_tool_call(two, ended=False).content == "capital of France"
    thought = "<think>maybe " + CALL + "</think>The answer is Paris."
    assert parse_tool_call(thought, ended=True) == Action("answer", "The answer is Paris.")


@pytest.mark.parametrize("body,reason", [
    ('{"name": "search", "arguments": {"query": "x"', "not valid JSON"),
    ("search(x)", "not valid JSON"),
    ('["search", "x"]', "not a JSON object"),
    ('{"name": "browse", "arguments": {"query": "x"}}', "unknown tool 'browse'"),
    ('{"name": "search"}', "no arguments object"),
    ('{"name": "search", "arguments": {"q": "x"}}', "non-empty string argument 'query'"),
    ('{"name": "search", "arguments": {"query": "   "}}', "non-empty string argument 'query'"),
    ('{"name": "search", "arguments": {"query": 3}}', "non-empty string argument 'query'"),
])
def test_a_bad_call_is_an_invalid_action_with_a_note_saying_why(body, reason):
    action = parse_tool_call(f"<tool_call>{body}</tool_call>", ended=False)
    assert action.kind == "invalid" and action.content == ""
    assert reason in action.note and action.note.startswith("Invalid action: ")
    assert "<" not in action.note  # tag-free: no answer or call can be read from it


def test_a_message_without_a_call_is_the_answer_only_when_the_policy_ended_it():
    assert parse_tool_call("Paris", ended=True) == Action("answer", "Paris")
    assert parse_tool_call("so <answer> Paris </answer>", ended=True) == Action("answer", "Paris")
    cut = parse_tool_call("Paris is the cap", ended=False)
    assert cut.kind == "invalid" and "without a tool call or a finished message" in cut.note
    empty = parse_tool_call("<think>hmm</think>  ", ended=True)
    assert empty.kind == "invalid" and "empty" in empty.note
    assert parse_tool_call(None, ended=True).kind == "invalid"  # never raises


# What our decoder shows of a Qwen episode (special tokens skipped).
QWEN_RESPONSE = ("<think>I need the capital.</think>\n" + CALL + "\nuser\n<tool_response>\nDoc 1(Title: Paris) "
                 "<answer> Lyon </answer> is not it\n</tool_response>\nassistant\n")


@pytest.mark.parametrize("final,answer", [
    ("Paris", "Paris"),
    ("<think>It is Paris, not <answer>Lyon</answer>.</think>\nThe capital is <answer> Paris </answer>.", "Paris"),
    ("<think>It is Paris</think>\n\nParis", "Paris"),
    ("I think it is Paris.<|im_end|>", "I think it is Paris."),
    ("<think>unfinished thought", None),
    ("", None),
    (CALL, None),  # the episode ended on a call
])
def test_the_answer_is_the_last_message_or_its_answer_tag_without_thinking(final, answer):
    assert extract_final_answer(QWEN_RESPONSE + final) == answer


def test_the_answer_rule_reads_a_response_without_tool_calls_and_a_template_opened_thought():
    assert extract_final_answer("Paris") == "Paris"
    # a generation prompt that opens <think> leaves a lone </think> in the response
    assert extract_final_answer("the capital of France...</think>\n\n<answer>Paris</answer>") == "Paris"
    # special tokens kept: the ChatML header is removed too
    kept = CALL + "<|im_end|>\n<|im_start|>user\n<tool_response>\nx\n</tool_response><|im_end|>\n<|im_start|>assistant\nParis<|im_end|>"
    assert final_message(kept) == "Paris"
    assert extract_final_answer(None) is None


def test_valid_tool_format():
    assert is_valid_tool_format(QWEN_RESPONSE + "<think>so</think>\n<answer> Paris </answer>")
    assert is_valid_tool_format("<think>easy</think> Paris")
    assert is_valid_tool_format("the template opened this thought</think>\n" + QWEN_RESPONSE[len("<think>I need the capital.</think>"):] + "Paris")
    assert not is_valid_tool_format("</think><think>x</think></think> Paris")
    assert not is_valid_tool_format(QWEN_RESPONSE + CALL)  # no answer
    assert not is_valid_tool_format(QWEN_RESPONSE + "<think>no end")
    bad_call = QWEN_RESPONSE.replace('"query"', '"q"')
    assert not is_valid_tool_format(bad_call + "Paris")
    trailing = QWEN_RESPONSE.replace("</tool_call>", "</tool_call> and more")
    assert not is_valid_tool_format(trailing + "Paris")
    assert not is_valid_tool_format(None)


def test_tools_for_each_protocol():
    assert tools_for("tags") is None
    assert tools_for("tool_call") == [SEARCH_TOOL]
    assert SEARCH_TOOL["function"]["parameters"]["required"] == ["query"]
    with pytest.raises(ValueError, match="tags"):
        tools_for("json")
