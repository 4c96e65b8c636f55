"""The interface between the agent loop and whatever samples tokens.

A `Generator` opens a `GenerationSession` over a batch of prompts. The session is stateful on
purpose: between turns the agent appends tokens (retrieved `<information>`, notes) to some rows
and asks for the next turn, and a backend that keeps each row's KV cache (ours, on transformers;
vLLM with prefix caching) then encodes only the appended tokens instead of the whole context.

    session = generator.session(prompt_ids, SamplingParams(temperature=1.0, seed=0))
    out = session.generate({0: [], 1: []}, max_new_tokens=500, stop=("</search>", "</answer>"))
    out = session.generate({0: info_ids}, max_new_tokens=500, stop=...)   # row 1 finished: not asked
    session.finish([0]); session.close()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Finish = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    seed: int | None = None  # fixes the sampling noise of a session (same inputs -> same outputs)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Sample:
    """One row's continuation in one `generate` call.

    `token_ids` end with the token that completed the stop string or with EOS, if either
    happened. `logprobs[i]` is log p(token_ids[i]) under softmax(logits / T) (T = 1 when greedy),
    the same quantity a fresh forward pass of the policy gives for PPO's ratio.
    """

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: Finish = "length"
    stop: str | None = None  # the stop string that ended the sample, when finish == "stop"


class GenerationSession(Protocol):
    def generate(self, appended: Mapping[int, Sequence[int]], max_new_tokens: int | Mapping[int, int],
                 stop: Sequence[str] = ()) -> dict[int, Sample]:
        """Append `appended[row]` to each listed row's context, then sample a continuation for
        each listed row until a stop string, EOS, or its `max_new_tokens`. Rows not listed wait."""
        ...

    def finish(self, rows: Iterable[int]) -> None:
        """Release rows whose episode is over (their cache is freed)."""
        ...

    def close(self) -> None: ...


class Generator(Protocol):
    tokenizer: object

    def session(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> GenerationSession: ...


def find_stop(text: str, stop: Sequence[str]) -> str | None:
    """The stop string that occurs in `text` at the earliest position, or None."""
    best, best_at = None, len(text) + 1
    for s in stop:
        at = text.find(s)
        if at != -1 and at < best_at:
            best, best_at = s, at
    return best
