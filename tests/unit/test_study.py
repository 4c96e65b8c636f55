"""The study's arms, settings, resume guard and summary, on hand-made records."""

import dataclasses
import json

import pytest

from searchr1.config import load_config
from searchr1.errors import ConfigError, SearchR1Error
from searchr1.rl.algorithms import ALGORITHMS
from searchr1.settings import Config
from searchr1.study.arms import ARMS, arm
from searchr1.study.report import markdown
from searchr1.study.runner import (StudyConfigChanged, _curves, check_config, check_warmup, run_study,
                                   study_questions)
from searchr1.study.settings import ARM_NAMES
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
    assert [a.name for a in ARMS.values() if not a.trained] == ["direct", "rag", "rag-warmup", "warmup", "start"]
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


def test_a_study_moved_to_another_directory_keeps_its_settings(tmp_path):
    check_config(_cfg("train.steps=4", f"study.dir={tmp_path}"), tmp_path)
    assert "dir" not in json.loads((tmp_path / "study_config.json").read_text())["study"]
    check_config(_cfg("train.steps=4", "study.dir=/elsewhere", "study.records=/a/copy", "study.export=/a/copy"),
                 tmp_path)
    # a study_config.json written before study.dir was left out of the fingerprint still matches
    old = json.loads((tmp_path / "study_config.json").read_text())
    old["study"]["dir"] = "/where/it/ran"
    (tmp_path / "study_config.json").write_text(json.dumps(old))
    check_config(_cfg("train.steps=4"), tmp_path)
    with pytest.raises(StudyConfigChanged, match=r"train.steps: 4 -> 5"):
        check_config(_cfg("train.steps=5"), tmp_path)


def test_a_copy_of_records_is_checked_but_never_written(tmp_path):
    with pytest.raises(SearchR1Error, match="no study_config.json: it is not a copy"):
        check_config(_cfg("train.steps=4"), tmp_path, record=False)
    assert not (tmp_path / "study_config.json").exists()
    check_config(_cfg("train.steps=4"), tmp_path)
    check_config(_cfg("train.steps=4"), tmp_path, record=False)
    with pytest.raises(StudyConfigChanged, match=r"train.steps: 4 -> 6"):
        check_config(_cfg("train.steps=6"), tmp_path, record=False)


def test_copied_records_need_the_same_warm_up(tmp_path):
    check_warmup({"losses": [1.5, 0.5]}, tmp_path)  # a copy without a warm-up: nothing to check
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "warmup.json").write_text(json.dumps({"losses": [1.5577826, 0.6848555]}))
    check_warmup({"losses": [1.5577826, 0.6848555]}, tmp_path)
    check_warmup({"losses": [1.55779, 0.68481]}, tmp_path)  # within 1e-4
    with pytest.raises(SearchR1Error, match=r"losses \[1.557783, 0.685\]\) does not reproduce .* \(\[1.557783, 0.684855\]\)"):
        check_warmup({"losses": [1.5577826, 0.6850]}, tmp_path)
    with pytest.raises(SearchR1Error, match="does not reproduce"):
        check_warmup({"losses": [1.5577826]}, tmp_path)


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


def test_a_copy_that_cannot_be_written_stops_the_study_before_any_unit(tmp_path):
    out, blocker = tmp_path / "study", tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SearchR1Error, match=f"cannot copy the study's records to {blocker / 'copy'}"):
        run_study(_cfg(f"study.dir={out}", "study.warmup=false", f"study.export={blocker / 'copy'}"))
    assert (out / "study_config.json").is_file() and not (out / "runs").exists() and not (out / "world").exists()
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("override, message", [
    ("study.warmup_model=/nonexistent/model", "not a model directory"),
    ("sft.steps=0", "needs sft.steps >= 1"),
])
def test_a_study_that_cannot_start_fails_before_writing_anything(tmp_path, override, message):
    out = tmp_path / "study"
    with pytest.raises(SearchR1Error, match=message):
        run_study(_cfg(f"study.dir={out}", override))
    assert not out.exists()


def test_the_llds_and_gspo_arms_are_grpo_with_their_loss():
    cfg = _cfg("train.algorithm=rloo", "train.loss.llds_gate=response")
    llds, gspo = arm("grpo-llds").configure(cfg), arm("gspo").configure(cfg)
    assert (llds.train.algorithm, llds.train.loss.llds_coef, llds.train.loss.mode) == ("grpo", 0.1, "ppo")
    assert llds.train.loss.llds_gate == "response"  # the gate is the config's
    assert (gspo.train.algorithm, gspo.train.loss.mode, gspo.train.loss.llds_coef) == ("grpo", "gspo", 0.0)
    assert arm("grpo-llds").configure(_cfg("train.loss.llds_coef=0.3")).train.loss.llds_coef == 0.3
    assert arm("grpo").configure(cfg).train.loss == dataclasses.replace(cfg.train.loss, mode="ppo")
    assert ARM_NAMES == tuple(ARMS)


_TREE_BUDGET = "study.arm_settings.tree_grpo=[train.group_size=6,train.rollout_tree=2,train.mini_batch_size=12]"


def test_arm_settings_change_their_arm_only_after_its_change():
    cfg = _cfg("study.arms=[grpo,tree_grpo,gspo]", "train.prompts_per_step=4", "train.mini_batch_size=4",
               _TREE_BUDGET, "study.arm_settings.gspo=[train.loss.llds_coef=0.1]")
    tree, grpo, gspo = (arm(n).configure(cfg) for n in ("tree_grpo", "grpo", "gspo"))
    # the arm's own rollout_tree=1 is overridden by its settings, which come after it
    assert (tree.train.algorithm, tree.train.group_size, tree.train.rollout_tree, tree.train.mini_batch_size) == (
        "tree_grpo", 6, 2, 12)
    assert (grpo.train.group_size, grpo.train.rollout_tree, grpo.train.mini_batch_size) == (5, 0, 4)
    assert (gspo.train.loss.mode, gspo.train.loss.llds_coef, grpo.train.loss.llds_coef) == ("gspo", 0.1, 0.0)
    assert tree.study == cfg.study and tree.train.optim == cfg.train.optim


@pytest.mark.parametrize("settings, message", [
    ("study.arm_settings.ppo=[train.steps=3]", "arm_settings names 'ppo', which is not in arms"),
    ("study.arm_settings.grpo=[train.steps]", "arm_settings.grpo: override 'train.steps' is not of the form"),
    ("study.arm_settings.grpo=[study.dir=x]", r"may not change the study \(study.\*\)"),
    ("study.arm_settings.grpo=[world.seed=3]", "'world' is shared by every arm"),
    ("study.arm_settings.grpo=[train.seed=3]", "train.seed is set for each run by the study"),
])
def test_bad_arm_settings_are_refused_when_the_config_loads(settings, message):
    with pytest.raises(ConfigError, match=message):
        _cfg("study.arms=[grpo,tree_grpo]", settings)


@pytest.mark.parametrize("settings, message", [
    ("study.arm_settings.tree_grpo=[train.group_sise=6]",
     r"arm tree_grpo with .*unknown config key 'train.group_sise' \(did you mean 'train.group_size'\?\)"),
    ("study.arm_settings.tree_grpo=[train.rollout_tree=2]",
     "arm tree_grpo with .*rollout_tree=2 trees per question need a group_size that is a larger multiple"),
    ("study.arm_settings.grpo=[train.steps=x]", r"arm grpo with .*train.steps: expected an integer"),
])
def test_an_arm_whose_settings_make_no_valid_config_stops_the_study_before_it_starts(tmp_path, settings, message):
    out = tmp_path / "study"
    cfg = _cfg(f"study.dir={out}", "study.warmup=false", "study.arms=[grpo,tree_grpo]", settings)  # keys: at start
    with pytest.raises(ConfigError, match=message):
        run_study(cfg)
    assert not out.exists()


def test_arm_settings_are_part_of_the_study_fingerprint(tmp_path):
    arms = "study.arms=[grpo,tree_grpo]"
    check_config(_cfg(arms, _TREE_BUDGET), tmp_path)
    check_config(_cfg(arms, _TREE_BUDGET), tmp_path)
    with pytest.raises(StudyConfigChanged, match=r"study.arm_settings.tree_grpo: \['train.group_size=6'"):
        check_config(_cfg(arms, "study.arm_settings.tree_grpo=[train.group_size=6,train.rollout_tree=3]"), tmp_path)
    with pytest.raises(StudyConfigChanged, match="study.arm_settings.tree_grpo"):
        check_config(_cfg(arms), tmp_path)
    # a run of a subset of the arms leaves the others' settings as they were run
    check_config(_cfg("study.arms=[grpo]"), tmp_path)
    with pytest.raises(StudyConfigChanged, match=r"study.arm_settings.grpo: None -> \['train.steps=3'\]"):
        check_config(_cfg(arms, _TREE_BUDGET, "study.arm_settings.grpo=[train.steps=3]"), tmp_path)


def _metrics(run_dir, rows):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _curves(run_dir)


def test_each_arm_reports_its_rl_budget_per_seed_and_its_own_settings(tmp_path):
    cfg = _cfg("study.arms=[rag,grpo,tree_grpo]", _TREE_BUDGET, "study.bootstrap=200", "study.permutations=200")
    questions = {"d": [{"id": f"q{i}"} for i in range(2)]}
    records = [_record("rag", None, [0, 1])]
    budgets = {0: [(100, 3), (150, 4)], 1: [(120, 2), (80, 3)]}  # per step: generated tokens, searches
    for seed, steps in budgets.items():
        rows = [{"step": i + 1, "reward/mean": 0.5, "budget/generated_tokens": t, "budget/searches": n}
                for i, (t, n) in enumerate(steps)]
        rows.append({"step": 2, "eval/d/em": 0.5})  # the periodic eval's row of step 2 adds no budget
        rec = _record("tree_grpo", seed, [1, 0], rewards=[0.5, 0.5])
        rec["curves"], rec["overrides"] = _metrics(tmp_path / str(seed), rows), cfg.study.arm_settings["tree_grpo"]
        records.append(rec)
    records.append(_record("grpo", 0, [1, 1], rewards=[0.5, 0.5]))  # a record from before budgets were logged
    s = summarise(cfg, records, questions, None)
    assert s["arms"]["tree_grpo"]["budget"] == {"generated_tokens": {"mean": 225.0, "per_seed": [250.0, 200.0]},
                                                "searches": {"mean": 6.0, "per_seed": [7.0, 5.0]}}
    assert s["arms"]["grpo"]["budget"] is None and s["arms"]["grpo"]["overrides"] == []
    assert s["arms"]["tree_grpo"]["overrides"] == ["train.group_size=6", "train.rollout_tree=2",
                                                   "train.mini_batch_size=12"]
    md = markdown(s, [])
    assert md.count("Not like-for-like") == 1
    assert ("- Not like-for-like: Search-R1 Tree-GRPO ran with its own settings train.group_size=6, "
            "train.rollout_tree=2, train.mini_batch_size=12 (study.arm_settings).") in md
    tree_row = next(line for line in md.splitlines() if line.startswith("| Search-R1 Tree-GRPO | 2 |"))
    assert tree_row.endswith("| 225 | 6 |")


def test_the_start_arm_is_where_the_held_out_curve_begins():
    cfg = _cfg("study.arms=[start,grpo]", "study.warmup=false", "study.compare=[grpo:start]", "study.bootstrap=200",
               "study.permutations=200")
    questions = {"d": [{"id": f"q{i}"} for i in range(4)]}
    records = [_record("start", None, [0, 0, 0, 1]), _record("grpo", 0, [1, 1, 0, 1], rewards=[0.1, 0.3])]
    s = summarise(cfg, records, questions, None)
    assert s["arms"]["start"]["label"] == "Starting point, as an agent" and not s["arms"]["start"]["trained"]
    assert s["arms"]["grpo"]["curves"]["heldout/em"][0] == {"step": 0, "mean": 0.25, "min": 0.25, "max": 0.25, "n": 1}
    (c,) = s["comparisons"]
    assert (c["a"], c["b"], c["wins"], c["losses"]) == ("grpo", "start", 2, 0)


def test_the_held_out_curve_reads_the_arms_own_mode_only():
    cfg = _cfg("study.arms=[warmup,grpo]", "study.bootstrap=200", "study.permutations=200")
    questions = {"d": [{"id": f"q{i}"} for i in range(4)]}
    grpo = _record("grpo", 0, [1, 1, 0, 1], rewards=[0.1, 0.3, 0.2])
    grpo["curves"].append({"step": 2, "eval/d/direct/em": 0.0, "eval/d/rag/em": 0.25, "eval/d/agent/em": 0.5})
    s = summarise(cfg, [_record("warmup", None, [0, 0, 0, 1]), grpo], questions, None)
    curve = {p["step"]: p["mean"] for p in s["arms"]["grpo"]["curves"]["heldout/em"]}
    assert curve == {0: 0.25, 2: 0.5, 3: 0.75}  # the start, the agent's periodic EM, the final one
