"""What one multi-turn episode produced, token by token.

A `Trajectory` is built by the episode step (`searchr1.rollout.step`), under our batched agent
(`searchr1.rollout.agent`) or the veRL agent loop (`searchr1.export.episode`), by concatenating
token ids, never by re-tokenising text, so `policy_mask[i]` always describes `response_ids[i]`:
1 = sampled by the policy, 0 = injected by the environment (`<information>` blocks, notes).
(Training's loss mask is this mask, unless the no-masking ablation widens it: `searchr1.train.batch`.)
Rewards, advantages, evaluation and reports all read lists of these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

ActionKind = Literal["search", "answer", "invalid"]

# Why an episode ended:
#   answer      the policy closed an <answer> tag
#   eos         the policy ended its text (EOS / end-of-turn token) without answering
#   max_turns   the forced final turn (after max_turns searches) did not produce an answer
#   length      the response hit max_response_tokens (or the model's context) first
StopReason = Literal["answer", "eos", "max_turns", "length"]


@dataclass
class Turn:
    """One generation turn: what the policy wrote and what the environment answered."""

    text: str  # decoded text the policy generated in this turn
    action: ActionKind
    content: str = ""  # the query (search), the answer (answer), "" (invalid)
    doc_ids: list[str] = field(default_factory=list)  # passages retrieved for a search
    observation: str = ""  # decoded text the environment appended after the turn
    generated_tokens: int = 0
    observation_tokens: int = 0
    finish: str = ""  # what ended the generation of this turn: "stop", "eos" or "length"


@dataclass
class Trajectory:
    """One episode. `response_ids`, `policy_mask` and `logprobs` are aligned token for token."""

    question: str
    golden_answers: list[str]
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    policy_mask: list[int] = field(default_factory=list)
    # log-prob under the sampling policy of each response token; 0.0 at injected (mask-0) positions
    logprobs: list[float] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    stop_reason: StopReason | None = None
    id: str = ""
    group: int = 0  # index of the prompt this trajectory was sampled for (GRPO groups)
    tree: int = 0  # index of its tree under tree rollouts (`searchr1.rollout.tree`); unused otherwise
    prompt_text: str = ""
    response_text: str = ""
    meta: dict = field(default_factory=dict)  # dataset name, etc.; carried through to reports

    def append(self, ids: list[int], mask: int, logprobs: list[float] | None = None) -> None:
        """Append tokens that all share one policy-mask value (1 sampled, 0 injected)."""
        if mask not in (0, 1):
            raise ValueError(f"policy mask must be 0 or 1, got {mask}")
        if logprobs is None:
            logprobs = [0.0] * len(ids)
        if len(logprobs) != len(ids):
            raise ValueError(f"{len(ids)} tokens but {len(logprobs)} log-probs")
        self.response_ids.extend(ids)
        self.policy_mask.extend([mask] * len(ids))
        self.logprobs.extend(logprobs)

    @property
    def num_searches(self) -> int:
        """Search actions the policy wrote, counted as Search-R1 counts them (its
        `valid_search_stats`): a search written on the forced final turn counts, though the episode
        ends there and it is never run. Reports and training curves compare with Search-R1's logs
        by this count; the searches actually run are the turns with documents (`doc_ids`)."""
        return sum(t.action == "search" for t in self.turns)

    @property
    def num_invalid(self) -> int:
        return sum(t.action == "invalid" for t in self.turns)

    @property
    def generated_tokens(self) -> int:
        return sum(self.policy_mask)

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def queries(self) -> list[str]:
        return [t.content for t in self.turns if t.action == "search"]

    def to_dict(self, with_ids: bool = True) -> dict:
        d = asdict(self)
        if not with_ids:
            for key in ("prompt_ids", "response_ids", "policy_mask", "logprobs"):
                d.pop(key)
        d["num_searches"] = self.num_searches
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["turns"] = [Turn(**t) for t in d.get("turns", [])]
        return cls(**d)
