"""The synthetic world on disk: its encyclopedia as a corpus file and its question split as QA files.

    {data_dir}/corpus.jsonl   one passage a line (`searchr1.retrieval.corpus`)
    {data_dir}/train.jsonl    the training questions, one `Question` a line
    {data_dir}/test.jsonl     the held-out questions

A file whose bytes would not change is left alone, mtime included, so an index built from the
corpus is reused on the next run (the index build compares the corpus's fingerprint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from searchr1.data.questions import synthetic_split, synthetic_world
from searchr1.data.synthetic import Question
from searchr1.retrieval.corpus import write_passages


def write_if_changed(path: Path, write: Callable[[Path], None]) -> None:
    """Write via `write(tmp_path)`; keep the old file (and its mtime) when the bytes are equal."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        os.replace(tmp, path)


def write_questions(questions: list[Question], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for q in questions:
                f.write(json.dumps(q.to_dict(), ensure_ascii=False) + "\n")

    write_if_changed(path, write)


def prepare_world(world_cfg, data_dir: Path) -> tuple[Path, list[Question], list[Question]]:
    """Write the world of a `WorldConfig` under `data_dir`; returns (corpus path, train, held-out)."""
    train, test = synthetic_split(world_cfg)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    corpus = data_dir / "corpus.jsonl"
    write_if_changed(corpus, lambda tmp: write_passages(synthetic_world(world_cfg).passages(), tmp))
    write_questions(train, data_dir / "train.jsonl")
    write_questions(test, data_dir / "test.jsonl")
    return corpus, train, test
