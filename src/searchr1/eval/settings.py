"""Settings of `searchr1 eval`: which benchmarks, which modes, how many questions, where reports go.

Modes (the paper's comparison, on one model and one retriever):
  direct  the question alone, answer at once (no retrieval)
  rag     the question with the top-k passages retrieved for it, answer at once
  agent   the Search-R1 loop: reason, search as often as it likes (up to agent.max_turns), answer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param, redefault
from searchr1.data.settings import QuestionSource

Mode = Literal["direct", "rag", "agent"]
MODES: tuple[str, ...] = ("direct", "rag", "agent")


@dataclass
class EvalConfig(QuestionSource):
    split: str = redefault(QuestionSource, "split", "")
    limit: int = redefault(QuestionSource, "limit", 200)
    seed: int = param(0, "seed of the question sample and of the sampling noise (when temperature > 0)")
    modes: list[Mode] = param(list(MODES), "what to run: direct (no retrieval), rag (top-k passages in the "
                                           "prompt), agent (the Search-R1 multi-turn search loop, in "
                                           "agent.template)")
    batch_size: int = param(16, "episodes live at once (continuous batching: when one ends, the next starts); "
                                "our engine lowers it until its KV cache (slots x longest row) fits 90% of the "
                                "free GPU memory, or 50% of the available RAM on a CPU")
    temperature: float = param(0.0, "sampling temperature of evaluation; 0 = greedy (the paper's evaluation). "
                                    "Training samples at train.sampling.temperature")
    out_dir: str = param("runs/eval", "where results.json, results.md, report.html and the trajectories go")
    html: bool = param(True, "write report.html (every trajectory, readable in a browser)")
    html_max_per_run: int = param(50, "trajectories shown per dataset x mode in report.html; 0 = all")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.modes:
            raise ValueError(f"modes must name at least one of {', '.join(MODES)}")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("modes lists a mode twice")
        if self.batch_size < 1 or self.html_max_per_run < 0:
            raise ValueError("need batch_size >= 1 and html_max_per_run >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
