"""The interface between the agent loop and whatever samples tokens.

A `Generator` opens a `GenerationSession` over the prompts of a rollout (rows 0..n-1). The
session is stateful on purpose: between turns the agent appends tokens (retrieved
`<information>`, notes) to a row and starts its next turn, and a backend that keeps each row's
KV cache (ours, on transformers; vLLM with prefix caching) then encodes only the appended tokens.

Two ways to drive it. Turn by turn, every listed row together:

    session = generator.session(prompt_ids, SamplingParams(temperature=1.0, seed=0))
    out = session.generate({0: [], 1: []}, max_new_tokens=500, stop=("</search>", "</answer>"))
    out = session.generate({0: info_ids}, max_new_tokens=500, stop=...)   # row 1 finished: not asked
    session.finish([0]); session.close()

Or step by step, which is what continuous batching needs: `submit` starts one row's turn, `step`
advances all generating rows and returns the turns that ended, so a row whose turn ended can be
given its documents (or a new row started) while the others keep generating:

    session.submit(0, [], 500, stop); session.submit(1, [], 500, stop)
    while ...: for row, sample in session.step().items(): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

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
    def submit(self, row: int, tokens: Sequence[int], max_new_tokens: int, stop: Sequence[str] = ()) -> None:
        """Append `tokens` to the row's context and start its next turn."""
        ...

    def step(self) -> dict[int, Sample]:
        """Advance the generating rows; the turns that ended since the last call, by row."""
        ...

    def generate(self, appended: Mapping[int, Sequence[int]], max_new_tokens: int | Mapping[int, int],
                 stop: Sequence[str] = ()) -> dict[int, Sample]:
        """Append `appended[row]` to each listed row's context, then sample a continuation for
        each listed row until a stop string, EOS, or its `max_new_tokens`. Rows not listed wait."""
        ...

    def finish(self, rows: Iterable[int]) -> None:
        """Release rows whose episode is over (their cache is freed)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Generator(Protocol):
    """What the agent, the trainer and evaluation need of an engine. Engines inherit the defaults of
    `GeneratorBase`; only one that keeps its own copy of the weights (vLLM) overrides them."""

    tokenizer: object
    #: seconds spent copying the sampled module's weights into the engine, summed over its life
    #: (the trainer logs the difference per step as time/weight_sync_s)
    weight_sync_seconds: float

    def session(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> GenerationSession: ...

    def weights_updated(self) -> None:
        """The module the generator samples from changed (the trainer calls this after every update):
        its next session must sample from the new weights."""
        ...

    def close(self) -> None:
        """Release what the engine holds (vLLM: its process and memory); its owner calls this once."""
        ...


class GeneratorBase:
    """The defaults of the `Generator` contract, for an engine that runs the sampled module itself
    (ours) or none at all (a script): no weights of its own to sync, nothing to shut down."""

    weight_sync_seconds: float = 0.0

    def weights_updated(self) -> None:
        pass

    def close(self) -> None:
        pass


class TurnBatchedSession:
    """`submit` / `step` for a backend that generates whole turns (`generate`): each `step` runs one
    turn for every row submitted since the last one, together. Scripted teachers and turn-synchronous
    baselines use it; they cannot interleave rows within a turn, and need not. Subclasses define
    `generate` and call `TurnBatchedSession.__init__`."""

    def __init__(self) -> None:
        self._submitted: dict[int, tuple[list[int], int, tuple[str, ...]]] = {}

    def submit(self, row: int, tokens: Sequence[int], max_new_tokens: int, stop: Sequence[str] = ()) -> None:
        if self._submitted and next(iter(self._submitted.values()))[2] != tuple(stop):
            raise ValueError("rows submitted for one turn must share their stop strings")
        self._submitted[row] = (list(tokens), int(max_new_tokens), tuple(stop))

    def step(self) -> dict[int, Sample]:
        batch, self._submitted = self._submitted, {}
        if not batch:
            return {}
        stop = next(iter(batch.values()))[2]
        return self.generate({r: ids for r, (ids, _, _) in batch.items()}, {r: n for r, (_, n, _) in batch.items()}, stop)


class SingleTurn(GeneratorBase):
    """`generate` for a `Generator`: one turn for a batch of prompts, in a session of its own
    (single-turn use: evaluation baselines, benchmarks, tests). Subclasses define `session`."""

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: Sequence[str] = (),
                 params: SamplingParams = SamplingParams()) -> list[Sample]:
        session = self.session(prompts, params)
        try:
            out = session.generate({i: [] for i in range(len(prompts))}, max_new_tokens, stop)
        finally:
            session.close()
        return [out[i] for i in range(len(prompts))]


class SteppedSession:
    """`generate` for a backend that works by `submit` / `step` (ours, vLLM's): the inverse of
    `TurnBatchedSession`. Subclasses define `submit` and `step`."""

    def generate(self, appended: Mapping[int, Sequence[int]], max_new_tokens: int | Mapping[int, int],
                 stop: Sequence[str] = ()) -> dict[int, Sample]:
        """One turn for each row of `appended`, all at once: `submit` each, `step` until all ended."""
        for row, ids in appended.items():
            self.submit(row, ids, max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[row], stop)
        out: dict[int, Sample] = {}
        while len(out) < len(appended):
            out.update(self.step())
        return out


def find_stop(text: str, stop: Sequence[str]) -> str | None:
    """The stop string that occurs in `text` at the earliest position, or None."""
    best, best_at = None, len(text) + 1
    for s in stop:
        at = text.find(s)
        if at != -1 and at < best_at:
            best, best_at = s, at
    return best
