"""Answer matching and rewards, shared by retrieval metrics, training rewards and evaluation.

One implementation serves training and evaluation, so a reported EM is the reward the policy was
trained on. Normalisation is SQuAD's (Rajpurkar et al. 2016; the official evaluation script):
lowercase, drop punctuation, drop the articles a/an/the, squeeze whitespace.

Scores are computed on the model's RESPONSE only (everything it generated plus injected
observations), never the prompt: the Search-R1 prompt itself contains "<answer> Beijing </answer>".

The answer is read by the episode's protocol (`read_answer`): under `tags` (Search-R1's) the last
complete `<answer>` span; under `tool_call` the policy's last message (after the last tool
response), its `<answer>` span if present, thinking removed.

Gold answers may be one string, any iterable of strings (a list, a parquet/numpy array), or veRL's
`{"target": [...]}` ground-truth mapping. Gold or prediction strings that normalise to nothing
never match (SQuAD would count "" == "" as a match; an empty answer is never right here).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from searchr1.protocol import extract_answer
from searchr1.toolcall import PROTOCOLS, extract_final_answer, is_valid_tool_format

__all__ = [
    "compute_score",
    "contains_answer",
    "cover_exact_match",
    "exact_match",
    "f1_score",
    "is_valid_format",
    "lenient_answer",
    "normalize_answer",
    "read_answer",
    "retrieved_gold",
    "valid_format",
    "score_breakdown",
    "searched",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """True when some normalised gold answer occurs in the normalised text as whole words."""
    haystack = f" {normalize_answer(text)} "
    return any((needle := normalize_answer(a)) and f" {needle} " in haystack for a in answers)


def _golds(golden_answers: Any) -> list[str]:
    """Gold answers as a list of strings: accepts a string, an iterable, or {"target": [...]}.

    A bare string must not be iterated character by character, and a mapping must not be
    iterated by its keys: both would silently score against the wrong golds.
    """
    if golden_answers is None:
        return []
    if isinstance(golden_answers, Mapping):
        golden_answers = golden_answers.get("target", [])
    if isinstance(golden_answers, str):
        return [golden_answers]
    return [str(g) for g in golden_answers]


def exact_match(prediction: str | None, golden_answers: Any) -> float:
    """1.0 when the normalised prediction equals some normalised gold answer, else 0.0 (None -> 0)."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(bool(pred) and any(pred == normalize_answer(g) for g in _golds(golden_answers)))


def cover_exact_match(prediction: str | None, golden_answers: Any) -> float:
    """"Cover EM": 1.0 when some normalised gold answer occurs in the normalised prediction as a
    run of WHOLE words (the same test as `contains_answer`), else 0.0 (None -> 0).

    Search-R1's `subem_check` (and FlashRAG's "acc") use a raw substring test, under which gold
    "1" covers "1879" and gold "no" covers "not sure". Whole words remove those false hits, so
    this score is never above the substring one; with single-word answers inside longer text the
    two agree.
    """
    if prediction is None:
        return 0.0
    return float(contains_answer(prediction, _golds(golden_answers)))


_YES_NO = frozenset({"yes", "no", "noanswer"})


def _f1(pred: str, gold: str) -> float:
    if pred in _YES_NO or gold in _YES_NO:
        # HotpotQA's convention: a yes/no/noanswer answer earns credit only when it is exact,
        # so "no" gets nothing for sharing the token with "no way".
        return float(pred == gold)
    pred_tokens, gold_tokens = pred.split(), gold.split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str | None, golden_answers: Any) -> float:
    """SQuAD token F1 of the normalised prediction, the maximum over gold answers (None -> 0).

    Tokens are the whitespace-split words of the normalised strings, counted with multiplicity.
    yes/no/noanswer follow HotpotQA's rule (0 unless both sides are that same word).
    """
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    if not pred:
        return 0.0
    return max((_f1(pred, g) for g in map(normalize_answer, _golds(golden_answers)) if g), default=0.0)


_FORMAT_TAG = re.compile(r"(</?(?:think|search|information|answer)>)")

# state -> {tag: next state}; the accepted language is
#   <think>…</think> (<search>…</search> <information>…</information> <think>…</think>)* <answer>…</answer>
# with only whitespace between the blocks and nothing but whitespace after </answer>.
_FORMAT_MACHINE: dict[str, dict[str, str]] = {
    "start": {"<think>": "in_think"},
    "in_think": {"</think>": "after_think"},
    "after_think": {"<search>": "in_search", "<answer>": "in_answer"},
    "in_search": {"</search>": "after_search"},
    "after_search": {"<information>": "in_information"},
    "in_information": {"</information>": "after_information"},
    "after_information": {"<think>": "in_think"},
    "in_answer": {"</answer>": "end"},
    "end": {},
}
_INSIDE = frozenset({"in_think", "in_search", "in_information", "in_answer"})


def is_valid_format(response_text: str) -> bool:
    """Search-R1 v0.3's structure check (`is_valid_sequence` in qa_em_format.py), on the response.

    Valid: think -> (search -> information -> think)* -> answer, every block opened and closed
    with no other recognised tag (think/search/information/answer) inside it, only whitespace
    between blocks, nothing but whitespace after the answer. Any text inside a block is fine.

    Differences from Search-R1: it first looks for the "<|im_start|>assistant" marker in the full
    prompt+response and fails without it (so every base-model response was "invalid"); we are
    given the response itself, so no marker is needed. Its tag-count balance check is implied by
    the state machine and not repeated. Pass text decoded without special tokens: a trailing
    "<|im_end|>" is content after the answer and makes the response invalid (Search-R1 cut
    responses at "</answer>", so it never saw one).
    """
    if not isinstance(response_text, str):
        return False
    state = "start"
    for i, part in enumerate(_FORMAT_TAG.split(response_text)):
        if i % 2:  # a tag (re.split puts the captured separators at odd indices)
            state = _FORMAT_MACHINE[state].get(part, "")
            if not state:
                return False
        elif state not in _INSIDE and part.strip():
            return False
    return state == "end"


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}: use one of {list(PROTOCOLS)}")


def read_answer(response_text: str, protocol: str = "tags") -> str | None:
    """The answer a response gives under `protocol`: tags -> `protocol.extract_answer` (the last
    `<answer>` span); tool_call -> `toolcall.extract_final_answer` (the last message's `<answer>`
    span, else the message, thinking removed)."""
    _check_protocol(protocol)
    return extract_final_answer(response_text) if protocol == "tool_call" else extract_answer(response_text)


def valid_format(response_text: str, protocol: str = "tags") -> bool:
    """`is_valid_format` (tags) or `toolcall.is_valid_tool_format` (tool_call)."""
    _check_protocol(protocol)
    return is_valid_tool_format(response_text) if protocol == "tool_call" else is_valid_format(response_text)


_RETRIEVED = {"tags": re.compile(r"<information>(.*?)</information>", re.DOTALL),
              "tool_call": re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)}


# A search the environment answered: under tags the engine stops at </search> and appends the
# <information> block, so a block right after a </search> is the environment's, while one the model
# wrote itself elsewhere is not counted.
_SEARCHED = {"tags": re.compile(r"</search>\s*<information>"), "tool_call": re.compile(r"<tool_response>")}


def searched(response_text: str, protocol: str = "tags") -> bool:
    """The environment answered at least one search of the response (an `<information>` block right
    after a `</search>` under tags, a `<tool_response>` under tool_call)."""
    _check_protocol(protocol)
    return isinstance(response_text, str) and _SEARCHED[protocol].search(response_text) is not None


def retrieved_gold(response_text: str, golden_answers: Any, protocol: str = "tags") -> bool:
    """Search-R1's `is_retrieval_correct`: some gold answer occurs in a retrieved block of the
    response (`<information>` under tags, `<tool_response>` under tool_call). The test is
    `contains_answer`'s, on whole words: Search-R1 tests a raw substring of the normalised text, under
    which gold "1" is found in "1879"."""
    _check_protocol(protocol)
    if not isinstance(response_text, str):
        return False
    golds = _golds(golden_answers)
    return any(contains_answer(block, golds) for block in _RETRIEVED[protocol].findall(response_text))


def compute_score(
    response_text: str,
    golden_answers: Any,
    *,
    format_reward: bool = False,
    structure_format_score: float = 0.2,
    final_format_score: float = 0.1,
    retrieval_score: float = 0.0,
    format_needs_search: bool = False,
    score: float = 1.0,
    protocol: str = "tags",
) -> float:
    """The outcome reward of one response: the function training and evaluation both call.

    format_reward=False (Search-R1 `qa_em`): `score` if the last answer exactly matches a gold
    answer, else 0.

    format_reward=True (Search-R1 v0.3 `qa_em_format`, retrieval_score=0 as in its scripts):

        answer     valid format    invalid format
        correct    score (1)       score - structure_format_score (0.8)
        wrong      structure (0.2) final_format_score (0.1)
        none       structure (0.2) 0

    `retrieval_score` (Search-R1 v0.3's; its scripts set 0): a valid response that is not correct
    earns it on top of the structure score when its retrieved passages hold a gold answer
    (`retrieved_gold`): 0.2 + r. A guess in the right tags then earns less than a search that found
    the answer, which the format score alone does not say.

    `format_needs_search` (ours, not Search-R1's): the format scores (structure, final, retrieval) are
    paid only to a response in which at least one search was answered (`searched`); without
    one a response earns only its answer (1, or 0.8 in an invalid format). A guess in the right tags
    then earns nothing, so the format cannot be learned without the tool. A correct answer is paid
    either way.

    A response without an answer cannot pass `is_valid_format` (it must end in an answer
    block), so "none" always scores 0; the valid branch is kept for parity with Search-R1.
    In Search-R1 itself "none" hardly happens: it extracts from prompt + response, and the prompt
    holds "<answer> Beijing </answer>", so a response that never answers is scored as the
    answer "Beijing" (0.1, or full marks when the gold is Beijing). Here it scores 0.

    `protocol` says how the answer is read and the format checked (`read_answer`, `valid_format`).
    """
    answer = read_answer(response_text, protocol)
    correct = exact_match(answer, golden_answers) == 1.0
    if not format_reward:
        return score if correct else 0.0
    valid = valid_format(response_text, protocol)
    if correct:
        return score if valid else score - structure_format_score
    if format_needs_search and not searched(response_text, protocol):
        return 0.0
    shaped = structure_format_score
    if valid and retrieval_score and retrieved_gold(response_text, golden_answers, protocol):
        shaped += retrieval_score
    if answer is None:
        return shaped if valid else 0.0
    return shaped if valid else final_format_score


def lenient_answer(response_text: str) -> str | None:
    """The answer a response gives under the lenient rule (FlashRAG's baselines score the generated
    text itself; they ask for no tags): the `<answer>` span when there is one (`extract_answer`),
    else the response's first non-empty line, stripped. None for a blank response.

    Training rewards never use this: Search-R1's rule (no answer tag, no score) is `extract_answer`.
    """
    answer = extract_answer(response_text)
    if answer is not None or not isinstance(response_text, str):
        return answer
    return next((line.strip() for line in response_text.splitlines() if line.strip()), None)


def score_breakdown(response_text: str, golden_answers: Any, protocol: str = "tags") -> dict[str, Any]:
    """Per-response metrics for evaluation reports, under both answer rules:

    strict (Search-R1's, the training reward's): answer, em, f1, cover_em; the answer is the last
    `<answer>` span, None when there is none.
    lenient (`lenient_answer`, FlashRAG-style): lenient_answer, em_lenient, f1_lenient,
    cover_em_lenient.
    valid_format: bool. Scores are floats in [0, 1]. Under protocol tool_call the answer rule already
    reads the untagged last message, so the lenient answer is the strict one."""
    answer = read_answer(response_text, protocol)
    loose = answer if protocol == "tool_call" else lenient_answer(response_text)
    return {
        "answer": answer,
        "em": exact_match(answer, golden_answers),
        "f1": f1_score(answer, golden_answers),
        "cover_em": cover_exact_match(answer, golden_answers),
        "lenient_answer": loose,
        "em_lenient": exact_match(loose, golden_answers),
        "f1_lenient": f1_score(loose, golden_answers),
        "cover_em_lenient": cover_exact_match(loose, golden_answers),
        "valid_format": valid_format(response_text, protocol),
    }
