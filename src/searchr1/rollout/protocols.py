"""The agent's protocol (`agent.protocol`) over one tokenizer: how a turn is read and an answer written back.

`EpisodeStep` applies the environment's rules; a protocol supplies what differs between the two
ways a policy talks to the search engine:

    stop_strings                 where generation of a turn stops
    parse(text, finish)          a finished turn -> Action (search / answer / invalid, with a note)
    observation_ids(hits, n)     the search results as ids to append (mask 0), at most n
    note_ids(action)             the ids appended after an invalid action (mask 0)

`TagsProtocol` is Search-R1's: `<search>`/`<answer>` tags, `<information>` blocks, its
invalid-action note (`searchr1.protocol`). `ToolCallProtocol` uses the tokenizer's chat template
with the `search` tool (`searchr1.toolcall`): the turn stops at `</tool_call>`, the results are a
tool message rendered by the template, and every token the template adds (the end of the
assistant's turn, the tool message's framing, the next assistant header) has mask 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from searchr1.errors import ConfigError
from searchr1.protocol import (INVALID_ACTION_NOTE, OBSERVATION_CLOSE, OBSERVATION_OPEN, STOP_STRINGS, Action,
                               format_documents, parse_action, truncate_tokens)
from searchr1.toolcall import CALL_CLOSE, SEARCH_TOOL, parse_tool_call


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def framed_ids(tokenizer, head: list[int], body: str, tail: list[int], max_tokens: int) -> list[int]:
    """head + body's ids + tail, at most max_tokens: the body is cut, the framing kept (when even the
    framing does not fit, its head is kept)."""
    room = max_tokens - len(head) - len(tail)
    if room <= 0:
        return (head + tail)[:max_tokens]
    return head + truncate_tokens(encode_text(tokenizer, body), room) + tail


class TagsProtocol:
    """Search-R1's text protocol (the default)."""

    name = "tags"
    stop_strings = STOP_STRINGS

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._head = encode_text(tokenizer, OBSERVATION_OPEN)
        self._tail = encode_text(tokenizer, OBSERVATION_CLOSE)
        self._note = encode_text(tokenizer, INVALID_ACTION_NOTE)

    def parse(self, text: str, finish: str) -> Action:
        return parse_action(text)

    def observation_ids(self, hits: Sequence[Any], max_tokens: int) -> list[int]:
        """`\\n\\n<information>Doc 1(Title: ...) ...</information>\\n\\n`: the documents are cut, the tags
        kept (Search-R1 cuts the whole block, closing tag included)."""
        return framed_ids(self.tokenizer, self._head, format_documents(hits).strip(), self._tail, max_tokens)

    def note_ids(self, action: Action) -> list[int]:
        return list(self._note)


#: stands for the tool message's content while the template's framing around it is found
_CONTENT = "@@searchr1-tool-content@@"


class ToolCallProtocol:
    """The chat template's tool calls, with the `search` tool (see the module docstring)."""

    name = "tool_call"
    stop_strings = (CALL_CLOSE,)

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._head_text, self._tail_text = tool_message_framing(tokenizer)
        self._head, self._tail = encode_text(tokenizer, self._head_text), encode_text(tokenizer, self._tail_text)

    def parse(self, text: str, finish: str) -> Action:
        return parse_tool_call(text, ended=finish == "eos")

    def observation_ids(self, hits: Sequence[Any], max_tokens: int) -> list[int]:
        return self._tool_message_ids(format_documents(hits).strip(), max_tokens)

    def note_ids(self, action: Action) -> list[int]:
        return self._tool_message_ids(action.note, 1 << 30)

    def _tool_message_ids(self, content: str, max_tokens: int) -> list[int]:
        """The template's tool message around `content`, tokenised as ONE text, as the template's
        rendering of the conversation is (BPE merges across the framing: Qwen writes "France." +
        "\n</tool_response>" as "France", ".\n", "</", ...), at most max_tokens: the content is cut
        in tokens, the framing kept. A cut content is decoded and the message re-tokenised, cutting
        further until it fits."""
        tok, head, tail = self.tokenizer, self._head_text, self._tail_text
        ids = encode_text(tok, head + content + tail)
        if len(ids) <= max_tokens:
            return ids
        body = encode_text(tok, content)
        room = max_tokens - len(self._head) - len(self._tail)
        while room > 0:
            ids = encode_text(tok, head + tok.decode(body[:room]) + tail)
            if len(ids) <= max_tokens:
                return ids
            room -= len(ids) - max_tokens
        return (self._head + self._tail)[:max_tokens]


def tool_message_framing(tokenizer) -> tuple[str, str]:
    """(head, tail): the text the chat template writes between the end of a tool call the policy
    generated and the tool message's content, and from the content to the next assistant message's
    first generated token.

    Found by rendering a conversation that ends with a search call, with and without a tool message
    (and the generation prompt after it): what the second adds after the call's `</tool_call>` is
    head + content + tail. A template that cannot render this is a ConfigError.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("agent.protocol=tool_call needs a tokenizer with a chat template that supports tools")
    call = {"type": "function", "function": {"name": "search", "arguments": {"query": "q"}}}
    convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    tool = {"role": "tool", "name": "search", "content": _CONTENT}
    try:
        base = tokenizer.apply_chat_template(convo, tools=[SEARCH_TOOL], tokenize=False)
        full = tokenizer.apply_chat_template(convo + [tool], tools=[SEARCH_TOOL], tokenize=False,
                                             add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - any template failure is the same configuration problem
        raise ConfigError(f"agent.protocol=tool_call: the chat template cannot render a tool call and its "
                          f"response: {type(e).__name__}: {e}") from None
    end = base.rfind(CALL_CLOSE) + len(CALL_CLOSE)
    if end < len(CALL_CLOSE) or full[:end] != base[:end] or full.count(_CONTENT) != 1:
        raise ConfigError(f"agent.protocol=tool_call: the chat template does not render tool calls as "
                          f"{CALL_CLOSE}-terminated blocks followed by the tool message (Hermes/Qwen style)")
    head, _, tail = full[end:].partition(_CONTENT)
    return head, tail


def make_protocol(name: str, tokenizer) -> TagsProtocol | ToolCallProtocol:
    if name == "tags":
        return TagsProtocol(tokenizer)
    if name == "tool_call":
        return ToolCallProtocol(tokenizer)
    raise ConfigError(f"unknown agent.protocol {name!r}: use tags or tool_call")
