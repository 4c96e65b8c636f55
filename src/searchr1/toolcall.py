"""The tool-call protocol's text rules (`agent.protocol=tool_call`): pure functions, text in, text out.

Under this protocol the policy searches the way current chat models call tools: its chat template
lists a `search` tool (`SEARCH_TOOL`), the policy writes
`<tool_call>{"name": "search", "arguments": {"query": "..."}}</tool_call>` (generation stops at the
closing tag), and the results come back as a tool message, which Hermes/Qwen-style templates wrap in
`<tool_response>...</tool_response>`. A message the policy ends itself (EOS) without a call is its
final answer. The tokens around a tool message come from the template (`searchr1.rollout.protocols`);
the rules here read the text: what a turn asks for, and what answer a response gives.

The tag names are those of the Hermes/Qwen tool format (Qwen2.5, Qwen3 and the models trained on
their templates); `searchr1.rollout.protocols` checks that the tokenizer's template renders them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from searchr1.protocol import Action

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "PROTOCOLS",
    "RESPONSE_CLOSE",
    "SEARCH_TOOL",
    "search_call",
    "extract_final_answer",
    "final_message",
    "invalid_call_note",
    "is_valid_tool_format",
    "parse_tool_call",
    "tools_for",
]

#: the values of `agent.protocol`
PROTOCOLS = ("tags", "tool_call")

#: The tool schema the chat template lists (OpenAI function format, which HF templates render).
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the knowledge base and return the top passages for a query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "the search query"}},
            "required": ["query"],
        },
    },
}

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S)
_TOOL_RESPONSE = re.compile(re.escape(RESPONSE_OPEN) + r".*?" + re.escape(RESPONSE_CLOSE), re.S)
# What a ChatML template writes between a tool message and the next assistant message once special
# tokens are skipped ("\nassistant\n"), or kept ("<|im_end|>\n<|im_start|>assistant\n").
_ROLE_HEADER = re.compile(r"\A\s*(?:<\|im_end\|>\s*)?(?:<\|im_start\|>)?assistant[ \t]*\n")
_END_MARKERS = re.compile(r"(?:<\|im_end\|>|<\|endoftext\|>)\s*\Z")
# ... and between a tool call and its tool response (the tool message's "user" or "tool" header).
_CALL_TO_RESPONSE = re.compile(r"\s*(?:<\|im_end\|>\s*)?(?:<\|im_start\|>)?(?:user|tool)?\s*")


def tools_for(protocol: str) -> list[dict[str, Any]] | None:
    """The tool list a prompt under `protocol` renders: [SEARCH_TOOL] for tool_call, None for tags."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown agent.protocol {protocol!r}: use one of {list(PROTOCOLS)}")
    return [SEARCH_TOOL] if protocol == "tool_call" else None


def search_call(query: str) -> str:
    """A search call as Hermes/Qwen chat templates render an assistant's tool call (what a policy
    under this protocol writes, and what demonstrations of it show)."""
    return f"{CALL_OPEN}\n{json.dumps({'name': 'search', 'arguments': {'query': query}}, ensure_ascii=False)}\n{CALL_CLOSE}"


def invalid_call_note(reason: str) -> str:
    """The tool message after an invalid turn. Tag-free, so no answer or call can be read from it."""
    return (f"Invalid action: {reason}. To search, call the search tool with a JSON object "
            '{"name": "search", "arguments": {"query": "..."}}; to answer, write the final answer.')


def _strip_thinking(text: str) -> str:
    """The text without thinking: complete <think> blocks removed; the part before a lone </think>
    (a block the template's generation prompt opened) removed; an unclosed <think> and what follows
    it (thinking cut short) removed."""
    text = _THINK_BLOCK.sub("", text)
    if _THINK_CLOSE in text:
        text = text[text.rfind(_THINK_CLOSE) + len(_THINK_CLOSE):]
    if _THINK_OPEN in text:
        text = text[:text.find(_THINK_OPEN)]
    return text


def _closed_thinking_removed(message: str) -> str:
    """A message without its thinking, for the format check: a `</think>` before any `<think>` ends a
    block the template's generation prompt opened (its text goes too); complete blocks go. Any
    think tag left over is a block the policy opened or closed wrongly."""
    close, open_ = message.find(_THINK_CLOSE), message.find(_THINK_OPEN)
    if close >= 0 and (open_ < 0 or close < open_):
        message = message[close + len(_THINK_CLOSE):]
    return _THINK_BLOCK.sub("", message)


def _call_of(turn_text: str) -> tuple[str | None, str]:
    """(query, "") for a valid search call in the LAST complete <tool_call> block, else (None, reason)."""
    start = turn_text.rfind(CALL_OPEN, 0, turn_text.rfind(CALL_CLOSE))
    body = turn_text[start + len(CALL_OPEN):turn_text.rfind(CALL_CLOSE)].strip()
    try:
        call = json.loads(body)
    except ValueError as e:
        return None, f"the tool call is not valid JSON ({e.msg})"
    if not isinstance(call, dict):
        return None, "the tool call is not a JSON object"
    if call.get("name") != "search":
        return None, f"unknown tool {call.get('name')!r} (the only tool is 'search')"
    args = call.get("arguments", call.get("parameters"))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            pass
    if not isinstance(args, dict):
        return None, "the tool call has no arguments object"
    query = args.get("query")
    if not isinstance(query, str) or not query.strip():
        return None, "the search call needs a non-empty string argument 'query'"
    return query.strip(), ""


def parse_tool_call(turn_text: str, ended: bool) -> Action:
    """The action of one generated turn under the tool-call protocol. Never raises.

    * A complete `<tool_call>...</tool_call>` (the last one, outside thinking) decides: a JSON object
      `{"name": "search", "arguments": {"query": q}}` with a non-empty q is a search for q.strip();
      malformed JSON, another tool, a missing or empty query are invalid, with `note` saying why.
    * Otherwise, a turn the policy `ended` itself (EOS) is its final message: an answer, read by
      `extract_final_answer` (an `<answer>` span if present, else the message without thinking).
      An empty message is invalid.
    * Anything else (the turn budget ran out mid-message) is invalid.
    """
    if not isinstance(turn_text, str):
        return Action("invalid", "", invalid_call_note("no text"))
    visible = _THINK_BLOCK.sub("", turn_text)
    if CALL_OPEN in visible and CALL_CLOSE in visible[visible.find(CALL_OPEN):]:
        query, reason = _call_of(visible)
        return Action("search", query) if query else Action("invalid", "", invalid_call_note(reason))
    if not ended:
        return Action("invalid", "", invalid_call_note("the turn ended without a tool call or a finished message"))
    answer = extract_final_answer(turn_text)
    if not answer:
        return Action("invalid", "", invalid_call_note("the final message is empty"))
    return Action("answer", answer)


def final_message(response_text: str) -> str | None:
    """The policy's last message in a response: the text after the last `</tool_response>` (the
    whole response when it has none), without the template's role header and end marker. None when
    that message holds a tool call (the episode ended on a call, not an answer)."""
    if not isinstance(response_text, str):
        return None
    cut = response_text.rfind(RESPONSE_CLOSE)
    message = response_text
    if cut >= 0:
        message = _ROLE_HEADER.sub("", response_text[cut + len(RESPONSE_CLOSE):], count=1)
    message = _END_MARKERS.sub("", message)
    if CALL_OPEN in _THINK_BLOCK.sub("", message):
        return None
    return message


def extract_final_answer(response_text: str) -> str | None:
    """The answer of a response under the tool-call protocol: in the policy's last message
    (`final_message`), with its thinking removed, the last `<answer>` span's stripped content if
    there is one, else the whole message stripped. None when there is no message or it is empty.

    A final message cut by the response budget is read too: the decoded text does not show whether
    the policy ended it."""
    message = final_message(response_text)
    if message is None:
        return None
    message = _strip_thinking(message)
    spans = _ANSWER.findall(message)
    answer = (spans[-1] if spans else message).strip()
    return answer or None


def is_valid_tool_format(response_text: str) -> bool:
    """The tool-call counterpart of `rewards.is_valid_format`: every message but the last is one
    valid search call (any text or thinking before it, nothing after it but the template's header
    of the tool message) answered by a tool response, every thinking block is closed (one the
    template opened ends at a message's first `</think>`), and the last message gives a non-empty
    answer."""
    if not isinstance(response_text, str):
        return False
    messages = _TOOL_RESPONSE.split(response_text)
    for i, message in enumerate(messages[:-1]):
        body = _closed_thinking_removed(_ROLE_HEADER.sub("", message, count=1) if i else message)
        if _THINK_OPEN in body or _THINK_CLOSE in body or body.count(CALL_OPEN) != 1:
            return False
        end = body.rfind(CALL_CLOSE) + len(CALL_CLOSE)
        if end < len(CALL_CLOSE) or not _CALL_TO_RESPONSE.fullmatch(body[end:]) or _call_of(body[:end])[0] is None:
            return False
    last = final_message(messages[-1] if len(messages) == 1 else RESPONSE_CLOSE + messages[-1])
    if last is None or RESPONSE_OPEN in last or RESPONSE_CLOSE in last:
        return False
    last = _closed_thinking_removed(last)
    if _THINK_OPEN in last or _THINK_CLOSE in last:
        return False
    return extract_final_answer(last) is not None
