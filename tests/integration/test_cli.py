"""`python -m searchr1 ...` as a user runs it: exit codes, messages without tracebacks, output."""

from __future__ import annotations

import json

import pytest
import yaml

from itest_helpers import free_port, head_lines, run_cli

from searchr1.config import load_config
from searchr1.data.synthetic import build_world
from searchr1.retrieval.corpus import write_passages
from searchr1.settings import Config


def assert_user_error(proc, *needles):
    """Exit code 2, one clear message on stderr naming `needles`, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "searchr1: error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.mark.parametrize("args, key", [
    (["config", "show", "server.prot=8001"], "server.prot"),
    (["config", "show", "retreiver.index=x"], "retreiver"),
    (["index", "build", "index.corpus=c.jsonl", "index.dense.encoder.modle=x"], "index.dense.encoder.modle"),
    (["search", "who wrote hamlet", "retriever.indx=runs/x"], "retriever.indx"),
])
def test_unknown_config_key(args, key):
    proc = run_cli(*args)
    assert_user_error(proc, f"unknown config key '{key}'")


def test_unknown_key_suggests_the_right_one():
    proc = run_cli("config", "show", "server.prot=8001")
    assert "did you mean 'server.port'" in proc.stderr


def test_wrong_type_names_the_key():
    proc = run_cli("config", "show", "server.port=eighty")
    assert_user_error(proc, "server.port", "integer")


def test_index_build_missing_corpus(tmp_path):
    missing = tmp_path / "nope.jsonl"
    proc = run_cli("index", "build", "-q", f"index.corpus={missing}", f"index.dir={tmp_path / 'idx'}")
    assert_user_error(proc, "corpus file not found", str(missing))
    assert not (tmp_path / "idx").exists()


def test_index_build_malformed_line_names_it(tmp_path, wiki_path):
    corpus = head_lines(wiki_path, 5, tmp_path / "c.jsonl")
    with open(corpus, "a", encoding="utf-8") as f:
        f.write("{this is not json}\n")
    proc = run_cli("index", "build", "-q", f"index.corpus={corpus}", f"index.dir={tmp_path / 'idx'}")
    assert_user_error(proc, f"{corpus}:6:", "index.on_bad_line=skip")


def test_build_then_search_a_synthetic_world(tmp_path):
    """index build + search from the command line on a corpus whose answers are known."""
    world = build_world(seed=3, countries=3, cities_per_country=2, people=20, organisations=5)
    passages = world.passages()
    corpus = tmp_path / "world.jsonl"
    write_passages(passages, corpus, shape="title_text")
    index = tmp_path / "idx"
    proc = run_cli("index", "build", "-q", f"index.corpus={corpus}", f"index.dir={index}", "index.methods=bm25")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(passages)} passages" in proc.stdout
    assert json.loads((index / "index.json").read_text())["num_docs"] == len(passages)

    person = world.of_kind("person")[0]
    own = next(p for p in passages if p.title == person.name)
    proc = run_cli("search", "--json", f"Who is {person.name}?", f"retriever.index={index}", "retriever.topk=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    # BM25 returns only passages sharing a term with the query ("who", "is" are stop words)
    assert len(rows) == 1 and 1 <= len(rows[0]) <= 2
    assert rows[0][0]["id"] == own.doc_id and rows[0][0]["title"] == person.name
    assert rows[0][0]["text"] == own.text


def test_search_prints_hits(wiki_index):
    proc = run_cli("search", "who wrote hamlet", "capital of france", f"retriever.index={wiki_index}",
                   "retriever.method=bm25", "retriever.topk=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "who wrote hamlet" in out and "capital of france" in out
    assert out.count("Doc 1") == 2 and out.count("Doc 2") == 2 and "Doc 3" not in out
    assert "(Title: " in out and "score" in out and "dspy-colbertv2:" in out


def test_search_json_matches_the_index(wiki_index, wiki_rows):
    proc = run_cli("search", "--json", f"retriever.index={wiki_index}", "history of rome", "retriever.device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert len(rows) == 1 and len(rows[0]) == 3  # hybrid (auto), default topk 3
    for hit in rows[0]:
        assert (hit["title"], hit["text"]) == (wiki_rows[hit["id"]]["title"], wiki_rows[hit["id"]]["text"])
        assert isinstance(hit["score"], float)


def test_search_without_a_retriever_or_query(wiki_index):
    assert_user_error(run_cli("search", "who wrote hamlet"), "retriever.index")
    assert_user_error(run_cli("search", f"retriever.index={wiki_index}"), "give at least one query")


def test_search_a_missing_index(tmp_path):
    proc = run_cli("search", "q", f"retriever.index={tmp_path / 'none'}")
    assert_user_error(proc, "is not a searchr1 index", "does not exist")


def test_search_an_unreachable_server():
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("search", "who wrote hamlet", f"retriever.url={url}", "retriever.retries=1",
                   "retriever.backoff_s=0.01", timeout=60)
    assert_user_error(proc, url, "failed after 2 attempts")


def test_search_through_a_server(server_url, wiki_index):
    via_http = run_cli("search", "--json", "jack kerouac novels", f"retriever.url={server_url}")
    assert via_http.returncode == 0, via_http.stderr[-3000:]
    local = run_cli("search", "--json", "jack kerouac novels", f"retriever.index={wiki_index}", "retriever.device=cpu")
    assert local.returncode == 0, local.stderr[-3000:]
    remote_rows, local_rows = json.loads(via_http.stdout), json.loads(local.stdout)
    assert [h["id"] for h in remote_rows[0]] == [h["id"] for h in local_rows[0]]


def test_config_show_prints_yaml_that_reloads(tmp_path):
    proc = run_cli("config", "show", "-c", "cpu-demo", "server.port=9001", "retriever.topk=5",
                   "index.methods=bm25,dense", "retriever.timeout_s=2.5", 'index.dense.encoder.query_prefix="query: "')
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert data["server"]["port"] == 9001 and data["retriever"]["topk"] == 5
    assert data["index"]["dense"]["encoder"]["query_prefix"] == "query: "
    saved = tmp_path / "resolved.yaml"
    saved.write_text(proc.stdout)
    expected = load_config(Config, "cpu-demo", ["server.port=9001", "retriever.topk=5", "index.methods=bm25,dense",
                                                "retriever.timeout_s=2.5", 'index.dense.encoder.query_prefix="query: "'])
    assert load_config(Config, saved) == expected
    # ... and showing the saved file gives the same YAML again.
    again = run_cli("config", "show", "-c", str(saved))
    assert again.returncode == 0, again.stderr
    assert again.stdout == proc.stdout


def test_config_presets_and_keys():
    presets = run_cli("config", "presets")
    assert presets.returncode == 0 and "cpu-demo" in presets.stdout.split()
    keys = run_cli("config", "keys")
    assert keys.returncode == 0
    assert "server.max_body_bytes" in keys.stdout and "retriever.topk" in keys.stdout


def test_unknown_preset_and_bad_override_syntax():
    assert_user_error(run_cli("config", "show", "-c", "no-such-preset"), "no-such-preset", "cpu-demo")
    bad = run_cli("config", "show", "server.port")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
