"""The real benchmark files in the shared data directory: every file reads, row counts match the
data README, and prepare() turns real NQ and HotpotQA questions into prompt parquet.

The directory is `$SEARCHR1_SHARED_DATA`, else `<repo>/../shared/data`; read in place, never copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from searchr1.data.benchmarks import load_benchmark, local_file
from searchr1.data.qa import read_qa

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEARCHR1_SHARED_DATA", REPO.parent / "shared" / "data"))

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data directory {SHARED} is not available")

# file -> rows, as stated in the shared data README
FILES = {
    "nq/NQ-open.dev.jsonl": 3610,
    "nq/NQ-open.efficientqa.dev.1.1.jsonl": 1800,
    "nq/NQ-open.efficientqa.test.1.1.jsonl": 1769,
    "nq/flashrag_test_subsample1000.jsonl": 1000,
    "hotpotqa/dev.json": 7405,
    "2wiki/dev.json": 12576,
    "triviaqa/test_sub1000.jsonl": 1000,
    "popqa/test_sub1000.jsonl": 1000,
    "musique/train.json": 19938,
}

# (benchmark, split) -> the file load_benchmark reads for it from the shared directory
BENCHMARK_FILES = {
    ("nq", "test"): "nq/NQ-open.dev.jsonl",
    ("nq", "efficientqa_dev"): "nq/NQ-open.efficientqa.dev.1.1.jsonl",
    ("nq", "efficientqa_test"): "nq/NQ-open.efficientqa.test.1.1.jsonl",
    ("triviaqa", "test"): "triviaqa/test_sub1000.jsonl",
    ("popqa", "test"): "popqa/test_sub1000.jsonl",
    ("hotpotqa", "dev"): "hotpotqa/dev.json",
    ("2wikimultihopqa", "dev"): "2wiki/dev.json",
    ("musique", "train"): "musique/train.json",
}


@pytest.mark.parametrize("rel, rows", sorted(FILES.items()))
def test_real_file_reads_with_readme_row_count(rel, rows):
    path = SHARED / rel
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    records = read_qa(path)
    assert len(records) == rows and records.skipped == []
    assert all(r["question"].strip() == r["question"] and r["question"] for r in records)
    assert all(r["golden_answers"] and all(a.strip() for a in r["golden_answers"]) for r in records)
    assert all(len(set(r["golden_answers"])) == len(r["golden_answers"]) for r in records)
    assert len({r["id"] for r in records}) == rows


@pytest.mark.parametrize("name, split", sorted(BENCHMARK_FILES))
def test_load_benchmark_finds_the_shared_files(name, split):
    rel = BENCHMARK_FILES[(name, split)]
    if not (SHARED / rel).is_file():
        pytest.skip(f"{SHARED / rel} is not available")
    assert local_file(name, split, SHARED) == SHARED / rel
    rows = load_benchmark(name, split, source="local", data_dir=SHARED)
    assert len(rows) == FILES[rel] and {r["data_source"] for r in rows} == {name}


def test_known_contents():
    nq = load_benchmark("nq", "test", source="local", data_dir=SHARED, limit=1)
    assert nq[0]["question"] == "when was the last time anyone was on the moon"
    assert nq[0]["golden_answers"] == ["14 December 1972 UTC", "December 1972"]
    hotpot = load_benchmark("hotpotqa", "", source="local", data_dir=SHARED, limit=1)
    assert hotpot[0]["golden_answers"] == ["yes"]
    popqa = read_qa(SHARED / "popqa" / "test_sub1000.jsonl")
    # FlashRAG's PopQA repeats answers inside one list; the reader keeps each once.
    assert max(len(r["golden_answers"]) for r in popqa) >= 2


def test_prepare_real_nq_and_hotpotqa(tmp_path):
    from searchr1.data.prepare import prepare, read_prepared

    summary = prepare(["nq", "hotpotqa"], "", tmp_path, data_dir=SHARED, limit=20, seed=0)
    assert {n: f["rows"] for n, f in summary["files"].items()} == {"nq": 20, "hotpotqa": 20}
    for name, split in (("nq", "test"), ("hotpotqa", "dev")):
        expected = load_benchmark(name, split, source="local", data_dir=SHARED, limit=20, seed=0)
        rows = read_prepared(tmp_path / f"{name}.{split}.parquet")
        assert [r["id"] for r in rows] == [r["id"] for r in expected]
        assert [r["golden_answers"] for r in rows] == [r["golden_answers"] for r in expected]
        for r in rows:
            assert r["data_source"] == name and r["split"] == split
            assert r["question"].rstrip("?") in r["prompt"] and "<search>" in r["prompt"]
