"""Our reward as a veRL custom reward function.

veRL calls `compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)`
once per trajectory, with `solution_str` the decoded RESPONSE (special tokens skipped) and
`ground_truth` the row's `reward_model.ground_truth` (`{"target": [...]}` in our export). Point it
here without any file path (the package only has to be installed on every node):

    reward.custom_reward_function.path=pkg://searchr1.export.verl_reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.format_reward=true     # optional
    +reward.custom_reward_function.reward_kwargs.protocol=tool_call     # agent.protocol=tool_call

The score is `searchr1.rewards.compute_score`, the function `searchr1 train` and `searchr1 eval`
use, so a number logged by veRL means what it means here: exact match (Search-R1's `qa_em`), or
with `format_reward=true` Search-R1 v0.3's format-shaped reward. `compute_score_with_metrics`
returns a dict (`score` plus em, f1, cover_em, valid_format) that veRL logs per data source.

This module imports nothing from veRL.
"""

from __future__ import annotations

from typing import Any

from searchr1 import rewards

__all__ = ["compute_score", "compute_score_with_metrics"]

_SCORE_KWARGS = ("format_reward", "structure_format_score", "final_format_score", "retrieval_score",
                 "format_needs_search", "score", "protocol")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _score_kwargs(kwargs: dict) -> dict:
    out = {k: kwargs[k] for k in _SCORE_KWARGS if k in kwargs and kwargs[k] is not None}
    for k in ("format_reward", "format_needs_search"):
        if k in out:
            out[k] = _truthy(out[k])
    for k in ("structure_format_score", "final_format_score", "retrieval_score", "score"):
        if k in out:
            out[k] = float(out[k])
    if "protocol" in out:
        out["protocol"] = str(out["protocol"])
    return out


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> float:
    """veRL's reward signature; the value is `searchr1.rewards.compute_score(solution_str, ground_truth)`.

    Keyword arguments veRL adds (reward_router_address, ...) are ignored; `format_reward`,
    `structure_format_score`, `final_format_score`, `retrieval_score`, `format_needs_search`, `score` and `protocol` (tags or tool_call: how
    the answer is read; from `reward_kwargs`) are passed on.
    """
    return float(rewards.compute_score(solution_str, ground_truth, **_score_kwargs(kwargs)))


def compute_score_with_metrics(data_source: str, solution_str: str, ground_truth: Any,
                               extra_info: dict | None = None, **kwargs: Any) -> dict[str, float]:
    """`compute_score` as veRL's dict form: {"score", "em", "f1", "cover_em", "valid_format"}."""
    parts = rewards.score_breakdown(solution_str, ground_truth, str(kwargs.get("protocol") or "tags"))
    return {
        "score": compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs),
        "em": float(parts["em"]),
        "f1": float(parts["f1"]),
        "cover_em": float(parts["cover_em"]),
        "valid_format": float(parts["valid_format"]),
    }
