"""The study's arms, settings, resume guard and summary, on hand-made records."""

import json

import pytest

from searchr1.config import load_config
from searchr1.errors import ConfigError, SearchR1Error
from searchr1.rl.algorithms import ALGORITHMS
from searchr1.settings import Config
from searchr1.study.arms import ARMS, arm
from searchr1.study.runner import StudyConfigChanged, check_config, run_study, study_questions
from searchr1.study.summary import summarise


def _cfg(*overrides):
    return load_config(Config, None, list(overrides))


def test_each_trained_arm_changes_only_what_names_it():
    cfg = _cfg("train.algorithm=rloo", "train.optim.lr=3e-6", "agent.max_turns=3")
    grpo, ppo, unmasked, r1 = (arm(n).configure(cfg) for n in ("grpo", "ppo", "grpo-unmasked", "r1"))
    assert (grpo.train.algorithm, grpo.train.loss.mask_retrieved, grpo.agent.max_turns) == ("grpo", True, 3)
    assert (ppo.train.algorithm, ppo.train.loss.mask_retrieved) == ("ppo", True)
    assert (unmasked.train.algorithm, unmasked.train.loss.mask_retrieved) == ("grpo", False)
    # R1: the same RL without a search engine, trained and evaluated on the r1 prompt (one template)
    assert (r1.agent.template, r1.agent.max_turns) == ("r1", 0)
    for c in (grpo, ppo, unmasked, r1):  # the shared budget is untouched
        assert (c.train.optim.lr, c.train.steps, c.train.group_size) == (3e-6, cfg.train.steps, cfg.train.group_size)
    for name, a in ALGORITHMS.items():  # one Search-R1 arm per algorithm of the table
        assert arm(name).trained and arm(name).configure(cfg).train.algorithm == name
        assert arm(name).label == f"Search-R1 {a.title}"
    # tree rollouts come with Tree-GRPO: one tree per question unless the config sets more
    assert (arm("tree_grpo").configure(cfg).train.rollout_tree, arm("grpo").configure(cfg).train.rollout_tree) == (1, 0)
    assert [a.name for a in ARMS.values() if not a.trained] == ["direct", "rag", "rag-warmup", "warmup"]
    assert arm("direct").configure(cfg) == cfg
    with pytest.raises(ValueError, match="unknown arm"):
        arm("dpo")


def test_the_simulated_search_arm_trains_on_simulated_documents_and_keeps_the_retriever():
    cfg = _cfg("train.algorithm=rloo", "retriever.index=idx", "retriever.method=bm25")
    sim = arm("grpo-simulated").configure(cfg)
    assert (sim.train.algorithm, sim.train.retriever_method) == ("grpo", "simulated")
    assert sim.retriever == cfg.retriever  # evaluation (and the trainer's held-out evals) search the index
    assert arm("grpo").configure(cfg).train.retriever_method == ""
    assert arm("grpo-simulated").trained and arm("grpo-simulated").mode == "agent"
    assert "grpo-simulated" in _cfg("study.arms=[grpo,grpo-simulated]").study.arms


@pytest.mark.parametrize("override, message", [
    ("study.arms=[grpo,grpo]", "twice"),
    ("study.seeds=[]", "at least one seed"),
    ("study.compare=[grpo-rag]", "A:B"),
    ("study.compare=[grpo:grpo]", "two different arms"),
    ("study.confidence=1.5", "confidence"),
    ("study.arms=[dpo]", "dpo"),
])
def test_bad_study_settings_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(override)


def test_a_study_directory_refuses_settings_that_change_results(tmp_path):
    check_config(_cfg("train.steps=4"), tmp_path)
    check_config(_cfg("train.steps=4", "study.seeds=[0,1,2,3]", "model.threads=1", "study.arms=[grpo]"), tmp_path)
    with pytest.raises(StudyConfigChanged, match=r"train.steps: 4 -> 5"):
        check_config(_cfg("train.steps=5"), tmp_path)
    assert json.loads((tmp_path / "study_config.json").read_text())["train"]["steps"] == 4
    # a setting searchr1 gained after the study started counts as its default there
    old = json.loads((tmp_path / "study_config.json").read_text())
    del old["train"]["questions"]["exclude_held_out"]
    (tmp_path / "study_config.json").write_text(json.dumps(old))
    check_config(_cfg("train.steps=4"), tmp_path)
    with pytest.raises(StudyConfigChanged, match="exclude_held_out: False -> True"):
        check_config(_cfg("train.steps=4", "train.questions.exclude_held_out=true"), tmp_path)


def test_synthetic_questions_are_split_by_hop_count():
    cfg = _cfg("world.people=20", "world.organisations=6", "world.countries=3", "eval.limit=0")
    qs = study_questions(cfg)
    assert list(qs) == ["synthetic_1hop", "synthetic_2hop"]
    two_hop_kinds = {"birth_country", "birth_river", "founder_birthplace", "hq_country"}
    assert all(r["id"].split("-")[0] in two_hop_kinds for r in qs["synthetic_2hop"])
    assert not any(r["id"].split("-")[0] in two_hop_kinds for r in qs["synthetic_1hop"])
    limited = study_questions(_cfg("world.people=20", "world.organisations=6", "world.countries=3", "eval.limit=3"))
    assert [len(v) for v in limited.values()] == [3, 3]
    pooled = study_questions(_cfg("world.people=20", "world.organisations=6", "world.countries=3", "eval.limit=0",
                                  "study.split_hops=false"))
    assert len(pooled["synthetic"]) == sum(len(v) for v in qs.values())


def _episode(em, searches=1, stop="answer"):
    return {"em": em, "f1": em, "cover_em": em, "em_lenient": em, "f1_lenient": em, "cover_em_lenient": em,
            "num_searches": searches, "stop_reason": stop, "valid_format": True}


def _record(name, seed, ems, rewards=None):
    rec = {"arm": name, "seed": seed, "model": "m", "mode": "agent" if name != "rag" else "rag",
           "episodes": {"d": {f"q{i}": _episode(e) for i, e in enumerate(ems)}}, "seconds": {"eval": 1.0},
           "curves": []}
    if rewards is not None:
        rec["train"] = {"steps": len(rewards)}
        rec["curves"] = [{"step": i + 1, "reward/mean": r} for i, r in enumerate(rewards)]
        rec["seconds"]["train"] = 2.0
    return rec


def test_summary_averages_seeds_per_question_and_pairs_arms_on_the_same_questions():
    cfg = _cfg("study.compare=[grpo:rag,ppo:rag]", "study.bootstrap=500", "study.permutations=500")
    questions = {"d": [{"id": f"q{i}"} for i in range(4)]}
    records = [_record("rag", None, [0, 0, 1, 0]),
               _record("grpo", 0, [1, 1, 1, 0], rewards=[0.2, 0.4]),
               _record("grpo", 1, [1, 0, 1, 0], rewards=[0.4, 0.8])]
    s = summarise(cfg, records, questions, None)
    em = s["arms"]["grpo"]["scores"]["d"]["em"]
    assert em["per_seed"] == [0.75, 0.5] and em["mean"] == pytest.approx(0.625)
    assert em["seed_interval"]["n"] == 2 and em["low"] <= 0.625 <= em["high"]
    # per question, seeds averaged: [1, .5, 1, 0] against RAG's [0, 0, 1, 0]
    (c,) = s["comparisons"]  # ppo is not in the study: its pair is skipped
    assert (c["a"], c["b"], c["dataset"], c["wins"], c["losses"], c["ties"]) == ("grpo", "rag", "d", 2, 0, 2)
    assert c["mean"] == pytest.approx(0.375)
    assert [(m["seed_a"], m["a_only"], m["b_only"]) for m in c["mcnemar"]] == [(0, 2, 0), (1, 1, 0)]
    reward = s["arms"]["grpo"]["curves"]["reward/mean"]
    assert reward == [{"step": 1, "mean": pytest.approx(0.3), "min": 0.2, "max": 0.4, "n": 2},
                      {"step": 2, "mean": pytest.approx(0.6), "min": 0.4, "max": 0.8, "n": 2}]
    final = s["arms"]["grpo"]["curves"]["heldout/em"]
    assert final == [{"step": 2, "mean": pytest.approx(0.625), "min": 0.5, "max": 0.75, "n": 2}]
    assert s["arms"]["rag"]["behaviour"]["d"] == {"num_searches": 1.0, "valid_format": 1.0, "answered": 1.0}
    assert s["paper"]["rows"] == {}  # "d" is none of the paper's datasets


def test_summary_refuses_records_that_miss_a_question():
    cfg = _cfg()
    questions = {"d": [{"id": "q0"}, {"id": "q9"}]}
    with pytest.raises(ValueError, match="not played"):
        summarise(cfg, [_record("rag", None, [1])], questions, None)


def test_paper_rows_appear_only_for_the_papers_datasets():
    from searchr1.study.paper import table_rows

    rows = table_rows(["nq", "hotpotqa", "2wikimultihopqa", "synthetic"])
    assert rows["columns"] == ["nq", "hotpotqa", "2wikimultihopqa"]  # 2Wiki under our label for it
    assert rows["rows"]["RAG"]["nq"] == 0.348 and rows["rows"]["Search-R1-base (PPO)"]["average"] == 0.303
    assert rows["rows"]["RAG"]["2wikimultihopqa"] == 0.226


@pytest.mark.parametrize("override, message", [
    ("study.warmup_model=/nonexistent/model", "not a model directory"),
    ("sft.steps=0", "needs sft.steps >= 1"),
])
def test_a_study_that_cannot_start_fails_before_writing_anything(tmp_path, override, message):
    out = tmp_path / "study"
    with pytest.raises(SearchR1Error, match=message):
        run_study(_cfg(f"study.dir={out}", override))
    assert not out.exists()
