"""The steps the demo and the study share: every evaluation asks `rollout.backend` for its engine."""

from __future__ import annotations

import importlib.util

import pytest

from fakes import Passages, ScriptedLM, char_tokenizer, continue_script
from searchr1.config import load_config
from searchr1.demo import evaluate_held_out
from searchr1.errors import MissingDependencyError
from searchr1.pipeline import evaluate_policy, retriever_config
from searchr1.settings import Config
from searchr1.study.arms import arm
from searchr1.study.runner import run_unit

QUESTIONS = {"d": [{"id": "q0", "question": "Where?", "golden_answers": ["x"], "data_source": "d"},
                   {"id": "q1", "question": "When?", "golden_answers": ["y"], "data_source": "d"}]}
WORLD = ["world.people=20", "world.organisations=6", "world.countries=3"]
no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")


def _cfg(tmp_path, *overrides):
    return load_config(Config, None, ["model.chat=raw", "model.name=/nonexistent/model", "eval.batch_size=2",
                                      f"eval.out_dir={tmp_path / 'eval'}", "eval.html=false", *overrides])


def _answering_policy(answer: str = "x"):
    tok = char_tokenizer()
    return ScriptedLM(tok, lambda ctx: continue_script(ctx, f"<answer> {answer} </answer>")), tok


def test_a_policy_in_memory_is_evaluated_on_our_engine(tmp_path):
    cfg = _cfg(tmp_path, "eval.modes=[agent]", "rollout.backend=engine")
    results = evaluate_policy(cfg, None, Passages(), QUESTIONS, _answering_policy("x"))
    m = results["metrics"]["d"]["agent"]
    assert (m["n"], m["em"], m["answered"]) == (2, 0.5, 1.0)  # "x" is right for q0 only
    assert results["config"]["rollout"]["backend"] == "engine"
    assert (tmp_path / "eval" / results["files"]["d/agent"]).is_file()


@no_vllm
@pytest.mark.parametrize("trained", [False, True], ids=["cfg.model", "policy in memory"])
def test_evaluation_with_the_vllm_backend_asks_for_vllm(tmp_path, trained):
    cfg = _cfg(tmp_path, "rollout.backend=vllm")
    with pytest.raises(MissingDependencyError, match="vllm"):
        evaluate_policy(cfg, None, Passages(), QUESTIONS, _answering_policy() if trained else None)
    assert not (tmp_path / "eval").exists()


@no_vllm
def test_the_demo_evaluates_with_the_configured_backend(tmp_path):
    cfg = _cfg(tmp_path, "rollout.backend=vllm", "demo.eval_questions=2", *WORLD)
    rcfg = retriever_config(cfg, tmp_path / "index")
    assert (rcfg.index, rcfg.url, rcfg.method) == (str(tmp_path / "index"), "", cfg.retriever.method)
    for policy in (None, _answering_policy()):
        with pytest.raises(MissingDependencyError, match="vllm"):
            evaluate_held_out(cfg, rcfg, tmp_path / "eval-before", None, Passages(), policy)


@no_vllm
@pytest.mark.parametrize("name", ["rag", "direct", "warmup"])
def test_the_studys_untrained_arms_evaluate_with_the_configured_backend(tmp_path, name):
    cfg = _cfg(tmp_path, "rollout.backend=vllm", f"study.dir={tmp_path / 'study'}", *WORLD)
    with pytest.raises(MissingDependencyError, match="vllm"):
        run_unit(cfg, arm(name), None, "/nonexistent/model", tmp_path / "study", Passages(), QUESTIONS)
    assert not (tmp_path / "study" / "runs" / name / "greedy" / "record.json").exists()
