"""The text protocol between the policy and its environment: pure functions, text in, text out.

Everything a Search-R1 policy reads or writes passes through here: the instruction that wraps a
question, the rule that turns one generation turn into an action, the `<information>` block the
environment injects, and the notes it appends. Training, evaluation and export (veRL) all use
these functions, so a model sees byte-identical text wherever it runs.

The formats follow the Search-R1 repository (github.com/PeterGriffinJin/Search-R1): the prompt of
`scripts/data_process/nq_search.py`, the observation and invalid-action note of
`search_r1/llm_agent/generation.py`. Where a rule here differs from that code, the function's
docstring says how and why.

This module imports nothing from the rest of searchr1 at run time, so anything (rewards,
retrieval, rollout) may import it without cycles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # only for annotations; protocol stays import-light
    from searchr1.retrieval.base import Hit

__all__ = [
    "Action",
    "DIRECT_TEMPLATE",
    "INVALID_ACTION_NOTE",
    "NO_MORE_SEARCH_NOTE",
    "R1_TEMPLATE",
    "RAG_TEMPLATE",
    "SEARCH_R1_TEMPLATE",
    "STOP_STRINGS",
    "TEMPLATES",
    "TOOL_CALL_TEMPLATE",
    "build_prompt",
    "extract_answer",
    "format_documents",
    "format_observation",
    "get_template",
    "normalise_question",
    "parse_action",
    "truncate_tokens",
]

# --------------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------------

#: The Search-R1 instruction, byte for byte as in Search-R1's `make_prefix` (note "as your want"
#: and the single trailing newline: trained checkpoints saw exactly this).
SEARCH_R1_TEMPLATE = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query "
    "</search> and it will return the top searched results between <information> and </information>. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside <answer> "
    "and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

#: No retrieval: the model answers from its parameters. FlashRAG's direct-generation instruction
#: ("answer based on your own knowledge, only the answer"), with the <answer> tag convention so
#: that the same `extract_answer` + reward score it.
DIRECT_TEMPLATE = (
    "Answer the given question based on your own knowledge. "
    "Provide only the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

#: Retrieve once, then answer: FlashRAG's standard-RAG instruction ("answer based on the given
#: documents") with the <answer> tag convention. `{documents}` is `format_documents(hits)`, the
#: same "Doc i(Title: ...) text" lines Search-R1 shows inside <information>.
RAG_TEMPLATE = (
    "Answer the given question based on the given documents, which may or may not be useful. "
    "Provide only the answer inside <answer> and </answer>, without detailed illustrations. "
    "For example, <answer> Beijing </answer>. "
    "The following are the given documents.\n\n"
    "{documents}\n"
    "Question: {question}\n"
)

#: Search-R1's "R1" baseline (RL with reasoning but no search engine; `scripts/data_process/nq.py`),
#: byte for byte, so that baseline can be trained and evaluated like for like.
R1_TEMPLATE = (
    "Answer the given question. "
    "You should first have a reasoning process in mind and then provides the answer. "
    "Show your reasoning in <think> </think> tags and return the final answer in <answer> </answer> tags, "
    "for example <answer> Beijing </answer>. "
    "Question: {question}\n"
)

#: The Search-R1 instruction for a policy that searches through the chat template's tool call
#: (`agent.protocol=tool_call`, and the veRL export's `--agent tool`): the search tool replaces the
#: <search>/<information> tags; the answer tag stays, so the same answer rule reads it.
TOOL_CALL_TEMPLATE = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call the search tool with your queries "
    "and it will return the top searched results. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside <answer> "
    "and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

TEMPLATES: dict[str, str] = {
    "search-r1": SEARCH_R1_TEMPLATE,
    "direct": DIRECT_TEMPLATE,
    "rag": RAG_TEMPLATE,
    "r1": R1_TEMPLATE,
    "tool_call": TOOL_CALL_TEMPLATE,
}

_PLACEHOLDER = re.compile(r"\{(question|documents)\}")


def get_template(name_or_text: str) -> str:
    """A template by name (a key of TEMPLATES) or a literal template containing `{question}`.

    Configs hold one string for the prompt; accepting both a name and a literal lets users try
    their own wording without code, while a typo in a name fails loudly instead of becoming a
    prompt that never mentions the question.
    """
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    if isinstance(name_or_text, str) and "{question}" in name_or_text:
        return name_or_text
    raise ValueError(
        f"unknown prompt template {name_or_text!r}: use one of {sorted(TEMPLATES)} "
        "or a literal template that contains the placeholder {question}"
    )


def normalise_question(question: str) -> str:
    """Strip the question and end it with '?', as Search-R1's data scripts do before prompting.

    Search-R1 checkpoints were trained on questions normalised this way, so the evaluation prompt
    must match. Idempotent; an empty question stays empty (Search-R1 would crash on it).
    """
    q = question.strip()
    if q and not q.endswith("?"):
        q += "?"
    return q


def build_prompt(
    question: str,
    tokenizer: Any = None,
    template: str = SEARCH_R1_TEMPLATE,
    chat: bool | None = None,
    documents: str = "",
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The prompt text for one question.

    `template` is a template or a name in TEMPLATES. The question is normalised
    (`normalise_question`). Placeholders are filled in one pass by literal replacement, not
    `str.format`, so braces in questions, documents or user templates are safe and a document
    that happens to contain "{question}" is not expanded.

    Chat: with `chat=True`, or `chat=None` and a tokenizer that has a `chat_template`
    (instruct models), the text becomes one user message rendered with the tokenizer's chat
    template and the generation prompt, as Search-R1 does for instruct models. Otherwise
    (base models) the raw text is returned.

    `tools` (the tool-call protocol's `[SEARCH_TOOL]`) are passed to the chat template, which lists
    them in the prompt; they need the chat template (`chat=False` with tools is an error).
    """
    text = get_template(template)
    values = {"question": normalise_question(question), "documents": documents}
    filled = _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    if chat is None:
        chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if tools and (not chat or tokenizer is None):
        raise ValueError("a prompt with tools (agent.protocol=tool_call) needs a tokenizer's chat template; "
                         "model.chat=raw cannot list them")
    if not chat:
        return filled
    if tokenizer is None:
        raise ValueError("build_prompt(chat=True) needs a tokenizer with a chat template")
    extra = {"tools": [dict(t) for t in tools]} if tools else {}
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": filled}], add_generation_prompt=True, tokenize=False, **extra
    )


# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------

#: Generation of a turn stops right after either closing tag (or at EOS / the token budget).
STOP_STRINGS = ("</search>", "</answer>")

ActionKind = Literal["search", "answer", "invalid"]
_ACTION_TAG = re.compile(r"<(/?)(search|answer)>")
_ANSWER_TAG = re.compile(r"<(/?)(answer)>")


@dataclass(frozen=True)
class Action:
    """What one turn asks the environment to do. `content` is the stripped query or answer
    ("" for invalid); `note` says why an action is invalid, where the protocol tells the policy
    (the tool-call protocol does; the tags protocol's note is Search-R1's fixed text)."""

    kind: ActionKind
    content: str
    note: str = ""


def _complete_spans(text: str, tag_re: re.Pattern[str]) -> list[tuple[str, str]]:
    """(tag, inner text) of every complete span, in order of their closing tags.

    A complete span of tag T is `<T>` ... `</T>` with no other `<T>` or `</T>` in between (the
    innermost pairing: a repeated opening tag restarts the span, a stray closing tag is ignored).
    Tags of the other kind inside are plain content. One linear scan; never raises.
    """
    open_at: dict[str, int] = {}
    spans: list[tuple[str, str]] = []
    for m in tag_re.finditer(text):
        closing, tag = m.group(1), m.group(2)
        if not closing:
            open_at[tag] = m.end()
        elif tag in open_at:
            spans.append((tag, text[open_at.pop(tag) : m.start()]))
    return spans


def parse_action(turn_text: str) -> Action:
    """The action of one generation turn: the LAST complete `<search>` or `<answer>` span.

    Rule: among complete spans (see `_complete_spans`; tags are case-sensitive and exact, as in
    Search-R1) of either kind, the one whose closing tag comes last decides. Its content is
    stripped; an empty query or answer is invalid. No complete span (no tags, unclosed or
    mismatched tags, only `<think>`) is invalid. Never raises.

    How this differs from Search-R1 (`_postprocess_responses` + `postprocess_predictions` in
    search_r1/llm_agent/generation.py), and why:
      * Search-R1 cuts the turn at the first `</search>` if there is one (even when an
        `</answer>` comes earlier), else at the first `</answer>`, then takes the FIRST
        `<(search|answer)>(.*?)</\\1>` match. We take the last complete span. When generation
        stops at the first stop string (the normal case) a turn has one closing tag, at its end,
        and both rules agree. They differ only when a backend overshoots a stop string; then the
        closing tag the model wrote last is its latest decision, and Search-R1's own `infer.py`
        also uses the last `<search>`.
      * Innermost pairing: "<search> a <search> b </search>" searches "b"; Search-R1's regex
        would search "a <search> b", a query no retriever should see.
      * Empty content: Search-R1 executes an empty search / accepts an empty answer. We mark it
        invalid so the model gets the invalid-action note instead of a wasted retrieval or an
        episode that ends with nothing.
      * Injected text (the notes, complete `<information>` blocks) is ignored, as in
        `extract_answer`, so both functions agree on a text that contains them (see
        `_without_injected`). A generated turn normally contains none.
    """
    if not isinstance(turn_text, str):
        return Action("invalid", "")
    spans = _complete_spans(_without_injected(turn_text), _ACTION_TAG)
    if not spans:
        return Action("invalid", "")
    kind, inner = spans[-1]
    content = inner.strip()
    if not content:
        return Action("invalid", "")
    return Action("search" if kind == "search" else "answer", content)


def extract_answer(response_text: str) -> str | None:
    """The stripped content of the last complete `<answer>...</answer>` in a response, or None.

    Pass the RESPONSE only: the Search-R1 prompt itself contains two complete answer spans,
    "<answer> and </answer>" and "<answer> Beijing </answer>". (Search-R1 scores prompt +
    response and demands at least two matches, meant to skip the prompt's example; as the prompt
    holds two, a response that never answers is read there as answering "Beijing".) Pairing is
    innermost, as in
    `parse_action`, so the answer of a finished episode is exactly its final action's content.
    An empty span gives "" (present but empty), which no gold answer matches.

    Text the environment injected is ignored (`_without_injected`): Search-R1's invalid-action
    note says "<answer> and </answer>", which is not the policy's answer.
    """
    if not isinstance(response_text, str):
        return None
    spans = _complete_spans(_without_injected(response_text), _ANSWER_TAG)
    return spans[-1][1].strip() if spans else None


# --------------------------------------------------------------------------------------------
# Observations and notes
# --------------------------------------------------------------------------------------------

#: Search-R1's feedback after a turn without a valid action (generation.py, execute_predictions),
#: byte for byte: a leading and a trailing newline, first person.
INVALID_ACTION_NOTE = (
    "\nMy previous action is invalid. "
    "If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. "
    "Let me try again.\n"
)

#: Appended when the search budget is spent and the model must answer now (our wording, in the
#: same first-person voice and newline framing as Search-R1's note). Deliberately tag-free: a
#: note that said "between <answer> and </answer>" would itself contain a complete answer span.
NO_MORE_SEARCH_NOTE = "\nI have used all my searches. I must give my final answer now.\n"

_NOTES = (INVALID_ACTION_NOTE, NO_MORE_SEARCH_NOTE)
_INFO_OPEN, _INFO_CLOSE = "<information>", "</information>"


def _without_injected(text: str) -> str:
    """`text` with what the environment injects replaced by a newline: the notes and complete
    `<information>` blocks, plus a note cut short at the very end (the agent truncates a note
    that does not fit the response budget).

    Search-R1's own invalid-action note contains "<search> and </search>" and
    "<answer> and </answer>": read naively, every response that received the note and never
    answered would have answered "and" (Search-R1's reward reads it so). Retrieved passages
    could contain tags too. Actions and answers are the policy's, so only its own text counts. A newline can never
    join two fragments into a tag. Plain string scans, linear in the text (a non-greedy regex
    would be quadratic on many unclosed `<information>` tags).
    """
    parts, pos = [], 0
    while (start := text.find(_INFO_OPEN, pos)) >= 0:
        end = text.find(_INFO_CLOSE, start + len(_INFO_OPEN))
        if end < 0:
            break
        parts += [text[pos:start], "\n"]
        pos = end + len(_INFO_CLOSE)
    text = "".join(parts) + text[pos:]
    for note in _NOTES:
        text = text.replace(note, "\n")
    for note in _NOTES:
        cut = text.rfind(note[:16])
        if cut >= 0 and note.startswith(text[cut:]):
            text = text[:cut]
    return text


def _contents_of(hit: Any) -> str:
    """The Search-R1 `contents` string of a hit: `"Title"\\ntext` by the FlashRAG convention.

    Accepts Hit-like objects (`.contents`), dicts with "contents", Search-R1 server results
    ({"document": {...}, "score": s}), and dicts with "title"/"text".
    """
    if isinstance(hit, Mapping):
        if "document" in hit and isinstance(hit["document"], Mapping):
            return _contents_of(hit["document"])
        if "contents" in hit:
            return str(hit["contents"])
        if "title" in hit or "text" in hit:
            return f'"{hit.get("title", "")}"\n{hit.get("text", "")}'
        raise ValueError(f"a document needs 'contents' or 'title'/'text', got keys {sorted(hit)}")
    return str(hit.contents)


def format_documents(hits: Iterable[Hit | Mapping[str, Any]]) -> str:
    """Passages as Search-R1 shows them: one `Doc i(Title: T) text` line per hit, 1-based.

    T and text come from splitting `contents` at its first newline, exactly as Search-R1's
    `_passages2string` does, so with FlashRAG contents the title keeps its double quotes:
    `Doc 1(Title: "Paris") Paris is ...`. Byte-identical to what Search-R1 checkpoints saw.
    """
    lines = []
    for i, hit in enumerate(hits, start=1):
        title, _, text = _contents_of(hit).partition("\n")
        lines.append(f"Doc {i}(Title: {title}) {text}\n")
    return "".join(lines)


# Search-R1's exact wrapping of the documents injected after a search.
OBSERVATION_OPEN = "\n\n<information>"
OBSERVATION_CLOSE = "</information>\n\n"


def format_observation(hits: Iterable[Hit | Mapping[str, Any]]) -> str:
    """The text injected after a search: OBSERVATION_OPEN + documents.strip() + OBSERVATION_CLOSE."""
    return OBSERVATION_OPEN + format_documents(hits).strip() + OBSERVATION_CLOSE


def truncate_tokens(ids: list[int], max_tokens: int) -> list[int]:
    """The first `max_tokens` ids (a new list); `max_tokens <= 0` means no limit.

    Search-R1's `max_obs_length`: a long observation is cut in tokens, keeping its head (the
    best-ranked documents come first).
    """
    ids = list(ids)
    return ids[:max_tokens] if max_tokens > 0 else ids
