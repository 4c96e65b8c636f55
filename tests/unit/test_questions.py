"""searchr1.data.questions: the training and held-out questions every command reads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from searchr1.config import load_config
from searchr1.data.benchmarks import BenchmarkError, load_benchmark
from searchr1.data.questions import (SYNTHETIC_TEST, NoQuestionsError, as_row, dataset_label, held_out_questions,
                                     load_datasets, sources, synthetic_split, training_questions)
from searchr1.data.synthetic import build_world, make_questions, split_questions
from searchr1.settings import Config

# 2 countries, 4 cities, 6 people, 2 organisations -> 44 questions, 9 of them held out.
TINY = ["world.seed=5", "world.countries=2", "world.cities_per_country=2", "world.people=6",
        "world.organisations=2"]


def config(*overrides: str) -> Config:
    return load_config(Config, None, [*TINY, *overrides])


def write_qa(path: Path, n: int, prefix: str = "q") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "question": f"question {prefix}{i}?",
                                        "golden_answers": [f"answer {i}"]}) + "\n" for i in range(n)))
    return path


def expected_split(seed: int = 5) -> tuple[list, list]:
    world = build_world(seed, countries=2, cities_per_country=2, people=6, organisations=2)
    return split_questions(make_questions(world), 0.2, seed)


def test_synthetic_split_is_the_worlds_split():
    train, test = synthetic_split(config().world)
    want_train, want_test = expected_split()
    assert (len(train), len(test)) == (len(want_train), len(want_test)) == (35, 9)
    assert train == want_train and test == want_test


def test_as_row_is_a_qa_row():
    q = expected_split()[0][0]
    assert as_row(q) == {"id": q.id, "question": q.question, "golden_answers": list(q.golden_answers),
                         "data_source": "synthetic"}


def test_synthetic_training_questions_are_the_train_split():
    assert training_questions(config()) == [as_row(q) for q in expected_split()[0]]


def test_train_limit_is_a_seeded_sample():
    rows = training_questions(config("train.questions.limit=7", "train.seed=11"))
    assert rows == random.Random(11).sample([as_row(q) for q in expected_split()[0]], 7)
    assert training_questions(config("train.questions.limit=100")) == [as_row(q) for q in expected_split()[0]]


def test_synthetic_held_out_is_what_the_written_file_gave(tmp_path):
    """The rows `searchr1 train` used to write to synthetic_test.jsonl and read back with eval.limit."""
    test = expected_split()[1]
    path = tmp_path / "synthetic_test.jsonl"
    path.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in test))
    from_file = load_benchmark(str(path), limit=4, seed=3)
    held_out = held_out_questions(config("eval.limit=4", "eval.seed=3"))
    assert list(held_out) == [SYNTHETIC_TEST] == [dataset_label(str(path))]
    assert [{**r, "data_source": "synthetic"} for r in from_file] == held_out[SYNTHETIC_TEST]
    assert len(held_out[SYNTHETIC_TEST]) == 4
    assert held_out_questions(config("eval.limit=0"))[SYNTHETIC_TEST] == [as_row(q) for q in test]


def test_benchmark_training_questions_read_train_data_source_and_dir(tmp_path):
    data = tmp_path / "data"
    write_qa(data / "nq" / "train.jsonl", 5, "n")
    write_qa(data / "hotpotqa" / "train.jsonl", 3, "h")
    # eval's source and directory are not training's: a hub-only eval source must not matter
    cfg = config("train.questions.datasets=nq, hotpotqa", "train.questions.source=local", f"train.questions.data_dir={data}",
                 "eval.source=hub", f"eval.data_dir={tmp_path}")
    rows = training_questions(cfg)
    assert [r["id"] for r in rows] == ["n0", "n1", "n2", "n3", "n4", "h0", "h1", "h2"]
    assert [r["data_source"] for r in rows] == ["nq"] * 5 + ["hotpotqa"] * 3
    with pytest.raises(BenchmarkError, match="no local file"):
        training_questions(config("train.questions.datasets=nq", "train.questions.source=local", f"train.questions.data_dir={tmp_path}"))


def test_qa_file_training_questions_with_a_limit(tmp_path):
    qa = write_qa(tmp_path / "mine.jsonl", 10)
    rows = training_questions(config(f"train.questions.datasets={qa}", "train.questions.limit=4", "train.seed=2"))
    assert rows == random.Random(2).sample(load_benchmark(str(qa)), 4)


def test_no_training_questions_is_an_error_naming_the_datasets(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(NoQuestionsError, match=r"train\.questions\.datasets '.*empty\.jsonl' gave no questions"):
        training_questions(config(f"train.questions.datasets={empty}"))


def test_benchmark_held_out_questions_are_the_eval_datasets(tmp_path):
    a = write_qa(tmp_path / "a" / "dev.jsonl", 6, "a")
    b = write_qa(tmp_path / "b" / "dev.jsonl", 2, "b")
    cfg = config(f"train.questions.datasets={a}", f"eval.datasets={a},{b}", "eval.limit=3", "eval.seed=1")
    held_out = held_out_questions(cfg)
    assert list(held_out) == ["dev", "dev_"]  # both files are called dev: the second label is set apart
    assert held_out["dev"] == load_benchmark(str(a), limit=3, seed=1) and held_out["dev_"] == load_benchmark(str(b))
    assert held_out == {label: rows for label, (_, rows) in load_datasets(cfg.eval).items()}
    assert [info for info, _ in load_datasets(cfg.eval).values()] == [
        {"name": str(a), "split": "file", "n": 3}, {"name": str(b), "split": "file", "n": 2}]


def test_dataset_labels():
    assert dataset_label("nq") == "nq"
    assert dataset_label("/data/my set.v2.jsonl") == "my_set_v2"
    assert dataset_label("...") == "dataset"


def test_sources_say_where_questions_come_from(tmp_path):
    assert sources(config()) == {"train": "synthetic world (seed 5), train split",
                                 "val": "synthetic world (seed 5), held-out split"}
    assert sources(config("train.questions.datasets=nq,hotpotqa", "eval.datasets=nq,bamboogle")) == {
        "train": "nq,hotpotqa (train)", "val": "nq,bamboogle (evaluation split)"}


def test_exclude_held_out_trains_on_the_rest_of_an_evaluated_set(tmp_path):
    qa = write_qa(tmp_path / "dev.jsonl", 10)
    # eval: a seeded sample of 4 of the same file; a reworded copy of one training question too
    copy = tmp_path / "copy.jsonl"
    copy.write_text(json.dumps({"id": "x", "question": "The QUESTION q7", "golden_answers": ["a"]}) + "\n")
    cfg = config(f"train.questions.datasets={qa}", "train.questions.exclude_held_out=true", f"eval.datasets=[{qa},{copy}]",
                 "eval.limit=4", "eval.seed=3")
    evaluated = {r["id"] for r in held_out_questions(cfg)["dev"]}
    rows = training_questions(cfg)
    assert len(evaluated) == 4
    assert {r["id"] for r in rows} == {f"q{i}" for i in range(10)} - evaluated - {"q7"}
    # off (the default): every question trains
    assert len(training_questions(config(f"train.questions.datasets={qa}", f"eval.datasets=[{qa}]", "eval.limit=4"))) == 10


def test_a_benchmark_entry_may_name_its_own_split():
    from searchr1.data.questions import name_and_split

    assert name_and_split("nq:efficientqa_dev", "train") == ("nq", "efficientqa_dev")
    assert name_and_split(" musique:train ", "") == ("musique", "train")
    assert name_and_split("hotpotqa", "dev") == ("hotpotqa", "dev")
    assert name_and_split("runs/my:file.jsonl", "dev") == ("runs/my:file.jsonl", "dev")  # not a benchmark
    assert name_and_split("nq:", "dev") == ("nq:", "dev")
