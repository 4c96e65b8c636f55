"""Settings of `searchr1 eval`: which benchmarks, which modes, how many questions, where reports go.

Modes (the paper's comparison, on one model and one retriever):
  direct  the question alone, answer at once (no retrieval)
  rag     the question with the top-k passages retrieved for it, answer at once
  agent   the Search-R1 loop: reason, search as often as it likes (up to agent.max_turns), answer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param

Mode = Literal["direct", "rag", "agent"]
MODES: tuple[str, ...] = ("direct", "rag", "agent")


@dataclass
class EvalConfig:
    datasets: list[str] = param(["nq", "hotpotqa"],
                                "benchmarks (nq, triviaqa, popqa, hotpotqa, 2wiki, musique, bamboogle) or paths "
                                "to QA files ({id, question, golden_answers} JSONL / JSON); a benchmark may name "
                                "its own split (musique:train)")
    split: str = param("", "split of every benchmark; '' = each benchmark's evaluation split (test for "
                           "nq/triviaqa/popqa/bamboogle, dev otherwise, as in the paper)")
    source: Literal["auto", "local", "hub"] = param(
        "auto", "local: read data_dir; hub: FlashRAG's copy on the Hugging Face hub; auto: local file if there "
                "is one, else the hub")
    data_dir: str = param("", "directory holding the benchmark files; '' = $SEARCHR1_DATA_DIR, else "
                              "../shared/data if it exists")
    limit: int = param(200, "questions per benchmark (a seeded sample when the set is larger); 0 = all")
    seed: int = param(0, "seed of the question sample and of the sampling noise (when temperature > 0)")
    modes: list[Mode] = param(list(MODES), "what to run: direct (no retrieval), rag (top-k passages in the "
                                           "prompt), agent (the Search-R1 multi-turn search loop)")
    agent_template: str = param("search-r1", "prompt template of the agent mode: a template name or text with "
                                             "{question}")
    batch_size: int = param(16, "episodes live at once (continuous batching: when one ends, the next starts)")
    temperature: float = param(0.0, "sampling temperature; 0 = greedy (the paper's evaluation)")
    out_dir: str = param("runs/eval", "where results.json, results.md, report.html and the trajectories go")
    html: bool = param(True, "write report.html (every trajectory, readable in a browser)")
    html_max_per_run: int = param(50, "trajectories shown per dataset x mode in report.html; 0 = all")

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets must name at least one benchmark or QA file")
        if not self.modes:
            raise ValueError(f"modes must name at least one of {', '.join(MODES)}")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("modes lists a mode twice")
        if self.limit < 0 or self.batch_size < 1 or self.html_max_per_run < 0:
            raise ValueError("need limit >= 0, batch_size >= 1 and html_max_per_run >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        from searchr1.protocol import get_template

        get_template(self.agent_template)  # a typo in a template name fails here, not after loading
