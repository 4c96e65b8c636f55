"""Where questions come from (`QuestionSource`, shared by train, eval and data), and the settings
of `searchr1 data prepare`: which QA sets become prompt parquet files, and where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param


@dataclass
class QuestionSource:
    """A list of QA benchmarks or files, read from disk or the hub: `train.questions`, and the
    questions of `eval` and `data` (whose sections extend it)."""

    datasets: list[str] = param(
        ["nq", "hotpotqa"],
        "benchmarks (nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa/2wiki, musique, bamboogle) or paths to QA "
        "files ({id, question, golden_answers} JSONL / JSON); a benchmark may name its own split (musique:train)")
    split: str = param(
        "train", "split of every benchmark (train, dev, test; nq also efficientqa_dev/efficientqa_test locally); "
                 "'' = each benchmark's evaluation split (test for nq/triviaqa/popqa/bamboogle, dev otherwise, as "
                 "in the paper)")
    source: Literal["auto", "local", "hub"] = param(
        "auto", "local: read data_dir; hub: FlashRAG's copy on the Hugging Face hub (RUC-NLPIR/FlashRAG_datasets); "
                "auto: the local file if there is one, else the hub")
    data_dir: str = param("", "directory holding the benchmark files; '' = $SEARCHR1_DATA_DIR, else "
                              "../shared/data if it exists")
    limit: int = param(0, "questions per benchmark (a seeded sample when the set is larger); 0 = all")

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets must name at least one benchmark or QA file")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")


@dataclass
class DataConfig(QuestionSource):
    seed: int = param(0, "seed of the subset drawn when limit > 0")
    out_dir: str = param("runs/data", "where {dataset}.{split}.parquet files are written (prompts in "
                                      "agent.template)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.out_dir:
            raise ValueError("out_dir must not be empty")
