"""QA readers (every native shape of the seven benchmarks), the benchmark registry and prepare().

Everything here runs on tiny files written to tmp_path; the hub is a fake `datasets` module.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import types
from pathlib import Path

import pytest

from searchr1.data.benchmarks import (
    BENCHMARKS,
    HUB_ID,
    BenchmarkError,
    HubUnavailableError,
    default_data_dir,
    get_benchmark,
    load_benchmark,
    resolve_split,
)
from searchr1.data.qa import QAFormatError, read_qa
from searchr1.errors import ConfigError, MissingDependencyError, SearchR1Error


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- native shapes


def test_nq_open_jsonl(tmp_path):
    p = write_jsonl(tmp_path / "NQ-open.dev.jsonl", [
        {"question": "when was the last time anyone was on the moon", "answer": ["14 December 1972 UTC", "December 1972"]},
        {"question": "who wrote lyrics", "answer": ["Bobby Scott", "Bob Russell"]},
    ])
    assert read_qa(p) == [
        {"id": "0", "question": "when was the last time anyone was on the moon",
         "golden_answers": ["14 December 1972 UTC", "December 1972"]},
        {"id": "1", "question": "who wrote lyrics", "golden_answers": ["Bobby Scott", "Bob Russell"]},
    ]


def test_efficientqa_predictions_are_not_gold(tmp_path):
    p = write_jsonl(tmp_path / "eqa.jsonl", [{
        "question": "q", "answer": ["6 geese a-laying"], "def_correct_predictions": ["six geese a-laying"],
        "poss_correct_predictions": ["gifts"], "answer_and_def_correct_predictions": ["6 geese a-laying", "x"],
    }])
    assert read_qa(p)[0]["golden_answers"] == ["6 geese a-laying"]


def test_flashrag_jsonl_with_metadata(tmp_path):
    p = write_jsonl(tmp_path / "test.jsonl", [
        {"id": "test_6233", "question": "Who wrote it?", "golden_answers": ["Mark Twain", "Sam Clemens"],
         "metadata": {"subj": "x", "o_aliases": "[\"y\"]"}},
    ])
    assert read_qa(p) == [{"id": "test_6233", "question": "Who wrote it?", "golden_answers": ["Mark Twain", "Sam Clemens"]}]


def test_popqa_possible_answers_json_string_and_duplicates(tmp_path):
    p = write_jsonl(tmp_path / "popqa.jsonl", [
        {"id": 7, "question": "What is George Rankin's occupation?",
         "possible_answers": "[\"politician\", \"political leader\", \"politician\"]"},
        # FlashRAG's PopQA sometimes repeats an answer: deduplicated, order kept.
        {"id": "test_1", "question": "Where?", "golden_answers": ["Bohemia", "Czechia", "Bohemia"]},
    ])
    assert read_qa(p) == [
        {"id": "7", "question": "What is George Rankin's occupation?", "golden_answers": ["politician", "political leader"]},
        {"id": "test_1", "question": "Where?", "golden_answers": ["Bohemia", "Czechia"]},
    ]


def test_popqa_tsv(tmp_path):
    p = tmp_path / "popQA.tsv"
    p.write_text('id\tsubj\tquestion\tpossible_answers\n'
                 '4222362\tGeorge Rankin\tWhat is George Rankin\'s occupation?\t["politician", "political leader"]\n',
                 encoding="utf-8")
    assert read_qa(p) == [{"id": "4222362", "question": "What is George Rankin's occupation?",
                           "golden_answers": ["politician", "political leader"]}]


def test_hotpotqa_json_list(tmp_path):
    p = write_json(tmp_path / "dev.json", [
        {"question": "Were Scott Derrickson and Ed Wood of the same nationality?", "answer": "yes", "type": "comparison"},
        {"_id": "5a8b57f25542995d1e6f1371", "question": " Trailing space? ", "answer": "Chief of Protocol",
         "type": "bridge", "level": "hard", "supporting_facts": [["A", 0]], "context": [["A", ["s"]]]},
    ])
    assert read_qa(p) == [
        {"id": "0", "question": "Were Scott Derrickson and Ed Wood of the same nationality?", "golden_answers": ["yes"]},
        {"id": "5a8b57f25542995d1e6f1371", "question": "Trailing space?", "golden_answers": ["Chief of Protocol"]},
    ]


def test_2wiki_answer_only(tmp_path):
    p = write_json(tmp_path / "dev.json", [{"question": "Who is the mother?", "answer": "Małgorzata Braunek"}])
    assert read_qa(p) == [{"id": "0", "question": "Who is the mother?", "golden_answers": ["Małgorzata Braunek"]}]


def test_musique_json_list_and_official_jsonl_merge_aliases(tmp_path):
    official = {
        "id": "2hop__13548_13529", "paragraphs": [{"idx": 0, "title": "t", "paragraph_text": "p", "is_supporting": True}],
        "question": "When was the institute that owned The Collegian founded?",
        "question_decomposition": [{"id": 13548, "question": "q1", "answer": "a1", "paragraph_support_idx": 0}],
        "answer": "1960", "answer_aliases": ["in 1960", "1960", " 1960 AD "], "answerable": True,
    }
    expected = [{"id": "2hop__13548_13529", "question": "When was the institute that owned The Collegian founded?",
                 "golden_answers": ["1960", "in 1960", "1960 AD"]}]
    assert read_qa(write_jsonl(tmp_path / "musique_ans_v1.0_dev.jsonl", [official])) == expected
    assert read_qa(write_json(tmp_path / "dev.json", [official])) == expected
    short = write_json(tmp_path / "train.json", [{"question": "When?", "answer": "1994"}])
    assert read_qa(short) == [{"id": "0", "question": "When?", "golden_answers": ["1994"]}]


def test_triviaqa_original_and_bamboogle_capitalised_keys(tmp_path):
    trivia = write_json(tmp_path / "verified-web-dev.json", {"Version": 1.0, "Data": [
        {"Question": "Which Lloyd Webber musical?", "QuestionId": "tc_33",
         "Answer": {"Value": "Sunset Boulevard", "Aliases": ["Sunset Blvd", "Sunset Boulevard"],
                    "NormalizedAliases": ["sunset blvd"]}},
    ]})
    assert read_qa(trivia) == [{"id": "tc_33", "question": "Which Lloyd Webber musical?",
                                "golden_answers": ["Sunset Boulevard", "Sunset Blvd"]}]
    squad_like = write_jsonl(tmp_path / "squad.jsonl", [{"question": "q", "answers": {"text": ["a", "b"], "answer_start": [1, 2]}}])
    assert read_qa(squad_like)[0]["golden_answers"] == ["a", "b"]
    bamboogle = write_jsonl(tmp_path / "bamboogle.jsonl", [{"Question": "Who was president?", "Answer": "Calvin Coolidge"}])
    assert read_qa(bamboogle) == [{"id": "0", "question": "Who was president?", "golden_answers": ["Calvin Coolidge"]}]


def test_canonical_answer_strings_are_not_json_decoded_and_numbers_become_text(tmp_path):
    p = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "a", "answer": "[1]"},
        {"question": "b", "answer": 1960},
        {"question": "c", "answer": 3.0},
    ])
    assert [r["golden_answers"] for r in read_qa(p)] == [["[1]"], ["1960"], ["3"]]


def test_gzip_and_json_named_jsonl(tmp_path):
    rows = [{"id": "a", "question": "q1", "golden_answers": ["x"]}, {"id": "b", "question": "q2", "golden_answers": ["y"]}]
    gz = tmp_path / "test.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    assert read_qa(gz) == rows
    json_named = write_jsonl(tmp_path / "lines.json", rows)  # JSONL under a .json name
    assert read_qa(json_named) == rows


def test_limit_and_plain_list_behaviour(tmp_path):
    p = write_jsonl(tmp_path / "q.jsonl", [{"question": f"q{i}", "answer": ["a"]} for i in range(5)])
    out = read_qa(p, 2)
    assert isinstance(out, list) and [r["id"] for r in out] == ["0", "1"] and out.skipped == []
    assert read_qa(p, limit=0) == read_qa(p)


# ----------------------------------------------------------------------------- malformed rows


def test_invalid_json_line_names_file_and_line(tmp_path):
    p = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": ["a"]}, "", "{not json"])
    with pytest.raises(QAFormatError, match=r"bad\.jsonl, line 3: invalid JSON"):
        read_qa(p)


@pytest.mark.parametrize("row, reason", [
    ({"answer": ["a"]}, "'question' string"),
    ({"question": "  ", "answer": ["a"]}, "empty question"),
    ({"question": "q"}, "no answer field"),
    ({"question": "q", "answer": []}, "no non-empty answer"),
    ({"question": "q", "golden_answers": ["", "  "]}, "no non-empty answer"),
    ({"question": "q", "answer": [{"text": "a"}]}, "holds a dict"),
    ({"question": "q", "possible_answers": "[broken"}, "not valid JSON"),
    ([1, 2], "expected an object"),
])
def test_malformed_row_errors(tmp_path, row, reason):
    p = write_jsonl(tmp_path / "q.jsonl", [{"question": "ok", "answer": ["a"]}, row])
    with pytest.raises(QAFormatError) as e:
        read_qa(p)
    assert f"{p}, line 2: " in str(e.value) and reason in str(e.value)


def test_json_list_error_names_item(tmp_path):
    p = write_json(tmp_path / "dev.json", [{"question": "ok", "answer": "a"}, {"question": "no answer"}])
    with pytest.raises(QAFormatError, match=r"dev\.json, item 1 \(0-based\): no answer field"):
        read_qa(p)


def test_broken_json_file_and_wrong_top_level(tmp_path):
    p = tmp_path / "dev.json"
    p.write_text('[{"question": "q", "answer": "a"},\n {"question": ', encoding="utf-8")
    with pytest.raises(QAFormatError, match=r"dev\.json: invalid JSON .* line 2"):
        read_qa(p)
    write_json(p, {"rows": []})
    with pytest.raises(QAFormatError, match="expected a JSON list"):
        read_qa(p)
    with pytest.raises(SearchR1Error, match="QA file not found"):
        read_qa(tmp_path / "missing.jsonl")


def test_skip_mode_counts_and_reports(tmp_path, caplog):
    p = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "q0", "answer": ["a"]},
        "{broken",
        {"question": "q2"},
        {"question": "q3", "answer": ["b"]},
    ])
    with caplog.at_level(logging.WARNING, logger="searchr1.data.qa"):
        out = read_qa(p, on_error="skip")
    assert [r["question"] for r in out] == ["q0", "q3"]
    assert out.num_skipped == 2 and [s.where for s in out.skipped] == ["line 2", "line 3"]
    assert "no answer field" in out.skipped[1].reason
    assert "skipped 2 malformed row(s)" in caplog.text and str(p) in caplog.text
    with pytest.raises(ValueError, match="on_error"):
        read_qa(p, on_error="ignore")


# ----------------------------------------------------------------------------- registry and load_benchmark


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A data dir in the layout of ../shared/data (native file names), plus a FlashRAG-layout bamboogle."""
    root = tmp_path / "data"
    write_jsonl(root / "nq" / "NQ-open.dev.jsonl", [{"question": f"nq question {i}", "answer": [f"a{i}"]} for i in range(30)])
    write_json(root / "hotpotqa" / "dev.json",
               [{"question": f"hotpot question {i}", "answer": f"h{i}", "type": "bridge"} for i in range(12)])
    write_json(root / "2wiki" / "dev.json", [{"question": "2wiki question", "answer": "w"}])
    write_jsonl(root / "bamboogle" / "test.jsonl",
                [{"id": "test_0", "question": "bamboogle question", "golden_answers": ["b"]}])
    return root


def test_registry_covers_the_seven_benchmarks():
    assert list(BENCHMARKS) == ["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"]
    assert {n: b.hub_splits for n, b in BENCHMARKS.items()} == {
        "nq": ("train", "dev", "test"), "triviaqa": ("train", "dev", "test"), "popqa": ("test",),
        "hotpotqa": ("train", "dev"), "2wikimultihopqa": ("train", "dev"), "musique": ("train", "dev"),
        "bamboogle": ("test",),
    }
    assert {n for n, b in BENCHMARKS.items() if b.multi_hop} == {"hotpotqa", "2wikimultihopqa", "musique", "bamboogle"}
    assert get_benchmark("2wiki").name == "2wikimultihopqa" and get_benchmark("HotpotQA").name == "hotpotqa"
    assert resolve_split("nq") == "test" and resolve_split("musique", "") == "dev"
    assert resolve_split("hotpotqa", "validation") == "dev"
    with pytest.raises(BenchmarkError, match="popqa has no split 'train'; it has test"):
        resolve_split("popqa", "train")
    with pytest.raises(BenchmarkError, match="did you mean 'hotpotqa'"):
        get_benchmark("hotpotq")


def test_load_local_native_layout(data_dir):
    nq = load_benchmark("nq", "test", source="local", data_dir=data_dir)
    assert len(nq) == 30 and nq[0] == {"id": "0", "question": "nq question 0", "golden_answers": ["a0"], "data_source": "nq"}
    wiki = load_benchmark("2wiki", "", source="local", data_dir=str(data_dir))
    assert wiki == [{"id": "0", "question": "2wiki question", "golden_answers": ["w"], "data_source": "2wikimultihopqa"}]
    bam = load_benchmark("bamboogle", "test", data_dir=data_dir)  # auto -> local FlashRAG layout
    assert bam[0]["id"] == "test_0" and bam[0]["data_source"] == "bamboogle"


def test_limit_first_n_and_seeded_subset(data_dir):
    first = load_benchmark("nq", "test", data_dir=data_dir, limit=5)
    assert [r["id"] for r in first] == ["0", "1", "2", "3", "4"]
    a = load_benchmark("nq", "test", data_dir=data_dir, limit=5, seed=1)
    b = load_benchmark("nq", "test", data_dir=data_dir, limit=5, seed=1)
    c = load_benchmark("nq", "test", data_dir=data_dir, limit=5, seed=2)
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len(set(ids(a))) == 5 and ids(a) == sorted(ids(a), key=int)  # file order kept
    assert len(load_benchmark("nq", "test", data_dir=data_dir, limit=500, seed=3)) == 30


def test_literal_path_as_name(data_dir, tmp_path):
    p = write_jsonl(tmp_path / "my_questions.jsonl", [{"id": "x", "question": "mine?", "golden_answers": ["yes"]}])
    assert load_benchmark(str(p)) == [{"id": "x", "question": "mine?", "golden_answers": ["yes"], "data_source": "my_questions"}]
    with pytest.raises(SearchR1Error, match="QA file not found"):
        load_benchmark(str(tmp_path / "nope.jsonl"))
    with pytest.raises(BenchmarkError, match="unknown benchmark 'bamboogel'.*did you mean 'bamboogle'"):
        load_benchmark("bamboogel")


def test_local_missing_names_files_and_suggests_hub(data_dir):
    with pytest.raises(BenchmarkError) as e:
        load_benchmark("musique", "dev", source="local", data_dir=data_dir)
    assert "musique/dev.json" in str(e.value) and str(data_dir) in str(e.value) and "source='hub'" in str(e.value)
    with pytest.raises(BenchmarkError, match="not a directory"):
        load_benchmark("nq", data_dir=data_dir / "missing")
    with pytest.raises(BenchmarkError, match="not on the hub"):
        load_benchmark("nq", "efficientqa_dev", source="hub", data_dir=data_dir)
    with pytest.raises(BenchmarkError, match="source must be one of"):
        load_benchmark("nq", source="web")


def test_default_data_dir_from_env(data_dir, monkeypatch):
    monkeypatch.setenv("SEARCHR1_DATA_DIR", str(data_dir))
    assert default_data_dir() == data_dir
    assert len(load_benchmark("hotpotqa", source="local")) == 12


# ----------------------------------------------------------------------------- the hub (a fake datasets module)


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []
    module = types.ModuleType("datasets")

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return [
            {"id": f"{split}_{i}", "question": f"{name} hub question {i}", "golden_answers": [f"g{i}", f"g{i}"],
             "metadata": {"type": "x"}}
            for i in range(8)
        ]

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hub_source_uses_flashrag_config(fake_datasets, data_dir):
    rows = load_benchmark("2wiki", "dev", source="hub", data_dir=data_dir, limit=3, seed=0)
    assert fake_datasets == [(HUB_ID, "2wikimultihopqa", "dev")]
    assert len(rows) == 3 and all(r["data_source"] == "2wikimultihopqa" for r in rows)
    assert rows[0]["golden_answers"] == [rows[0]["golden_answers"][0]]  # deduplicated
    assert rows == load_benchmark("2wiki", "dev", source="hub", data_dir=data_dir, limit=3, seed=0)


def test_auto_prefers_local_then_hub(fake_datasets, data_dir):
    assert load_benchmark("nq", "test", data_dir=data_dir)[0]["question"] == "nq question 0"
    assert fake_datasets == []
    rows = load_benchmark("musique", "", data_dir=data_dir)
    assert fake_datasets == [(HUB_ID, "musique", "dev")] and rows[0]["question"] == "musique hub question 0"


def test_skipped_rows_survive_load_benchmark(monkeypatch, data_dir, tmp_path):
    p = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": ["a"]}, {"question": "no answer"}])
    rows = load_benchmark(str(p), on_error="skip")
    assert len(rows) == 1 and rows.num_skipped == 1 and rows.skipped[0].where == "line 2"
    module = types.ModuleType("datasets")
    module.load_dataset = lambda *a, **kw: [{"question": "ok", "golden_answers": ["a"]}, {"question": "bad"}]
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(QAFormatError, match=r"FlashRAG_datasets/bamboogle\[test\], row 1: no answer field"):
        load_benchmark("bamboogle", source="hub")
    rows = load_benchmark("bamboogle", source="hub", on_error="skip")
    assert [r["question"] for r in rows] == ["ok"] and rows.skipped[0].where == "row 1"


def test_hub_unreachable_is_a_clear_error(monkeypatch, data_dir):
    module = types.ModuleType("datasets")

    def load_dataset(*a, **kw):
        raise ConnectionError("Couldn't reach 'RUC-NLPIR/FlashRAG_datasets' on the Hub (LocalEntryNotFoundError)")

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(HubUnavailableError) as e:
        load_benchmark("popqa", "test", data_dir=data_dir)
    msg = str(e.value)
    assert "could not load popqa split 'test' from the Hugging Face hub" in msg
    assert "ConnectionError" in msg and "data_dir" in msg and "popqa/" in msg


def test_hub_without_datasets_installed(monkeypatch, data_dir):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(MissingDependencyError, match="pip install datasets"):
        load_benchmark("triviaqa", "test", source="hub", data_dir=data_dir)


# ----------------------------------------------------------------------------- prepare() and DataConfig


def test_prepare_writes_parquet_atomically(data_dir, tmp_path):
    from searchr1.data.prepare import COLUMNS, prepare, prepared_metadata, read_prepared

    out = tmp_path / "prepared"
    summary = prepare(["nq", "hotpot"], "", out, data_dir=data_dir, limit=4, seed=0)
    assert summary["total_rows"] == 8 and set(summary["files"]) == {"nq", "hotpotqa"}
    assert sorted(p.name for p in out.iterdir()) == ["hotpotqa.dev.parquet", "nq.test.parquet"]  # no temp files left
    rows = read_prepared(summary["files"]["nq"]["path"])
    assert list(rows[0]) == list(COLUMNS)
    expected = load_benchmark("nq", "test", data_dir=data_dir, limit=4, seed=0)
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert all(r["split"] == "test" and r["data_source"] == "nq" for r in rows)
    assert rows[0]["golden_answers"] == expected[0]["golden_answers"]
    assert rows[0]["prompt"].startswith("Answer the given question.") and rows[0]["question"] + "?" in rows[0]["prompt"]
    meta = prepared_metadata(summary["files"]["nq"]["path"])
    assert meta["searchr1.source"].endswith("NQ-open.dev.jsonl") and "{question}" in meta["searchr1.template"]


def test_prepare_custom_template_and_errors(data_dir, tmp_path):
    from searchr1.data.prepare import prepare, read_prepared

    s = prepare(["bamboogle"], "test", tmp_path / "o", template="Q: {question}\nA:", data_dir=data_dir)
    assert read_prepared(s["files"]["bamboogle"]["path"])[0]["prompt"] == "Q: bamboogle question?\nA:"
    with pytest.raises(ConfigError, match="unknown prompt template"):
        prepare(["nq"], "test", tmp_path / "o", template="no-such-template", data_dir=data_dir)
    with pytest.raises(BenchmarkError, match="would both write"):
        prepare(["2wiki", "2wikimultihopqa"], "dev", tmp_path / "o", data_dir=data_dir)
    with pytest.raises(SearchR1Error, match="not a prepared data file"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
        read_prepared(tmp_path / "other.parquet")


def test_data_config_from_dict():
    from searchr1.config import from_dict
    from searchr1.data.settings import DataConfig

    cfg = from_dict(DataConfig, {"datasets": "nq,hotpotqa", "split": "train", "source": "local", "limit": 10})
    assert cfg.datasets == ["nq", "hotpotqa"] and cfg.source == "local" and cfg.limit == 10
    with pytest.raises(ConfigError, match="source"):
        from_dict(DataConfig, {"source": "web"})
    with pytest.raises(ConfigError, match="limit"):
        from_dict(DataConfig, {"limit": -1})
