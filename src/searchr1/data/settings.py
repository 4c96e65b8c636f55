"""Settings of `searchr1 data prepare`: which QA sets become prompt parquet files, and where."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from searchr1.config import param


@dataclass
class DataConfig:
    datasets: list[str] = param(
        ["nq", "hotpotqa"],
        "benchmarks (nq, triviaqa, popqa, hotpotqa, 2wikimultihopqa/2wiki, musique, bamboogle) or paths to "
        "QA files; Search-R1 trains on nq + hotpotqa train",
    )
    split: str = param(
        "train", "split of every dataset (train, dev, test; nq also efficientqa_dev/efficientqa_test locally); "
                 "'' = each benchmark's evaluation split (test for nq/triviaqa/popqa/bamboogle, dev otherwise)"
    )
    source: Literal["auto", "local", "hub"] = param(
        "auto", "local: read data_dir; hub: FlashRAG's copy (RUC-NLPIR/FlashRAG_datasets); auto: local file if "
                "there is one, else the hub"
    )
    data_dir: str = param(
        "", "directory holding the benchmark files; '' = $SEARCHR1_DATA_DIR, else ../shared/data if it exists"
    )
    limit: int = param(0, "questions per dataset (a seeded random subset, kept in file order); 0 = all")
    seed: int = param(0, "seed of the subset drawn when limit > 0")
    template: str = param("search-r1", "prompt template: a name (search-r1, direct, rag, r1) or text with {question}")
    out_dir: str = param("runs/data", "where {dataset}.{split}.parquet files are written")

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets must name at least one benchmark or QA file")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if not self.out_dir:
            raise ValueError("out_dir must not be empty")
