"""The demo's paired comparisons (searchr1.demo): what the warm-up and what RL changed on the same
held-out questions, and the curve of held-out EM over RL steps."""

import json

import pytest

from searchr1.demo import by_question_kind, gain_lines, held_out_curve, load_eval, paired_gain, per_question_em


def _eval(tmp_path, name: str, ems: dict[str, float], searches: dict[str, int] | None = None) -> dict:
    """An evaluation's results.json and trajectories, as `searchr1.eval.harness.evaluate` writes them."""
    out = tmp_path / name
    out.mkdir()
    traj = "trajectories.synthetic_test.agent.jsonl"
    (out / traj).write_text("".join(json.dumps({"id": q, "scores": {"em": em}, "num_searches": (searches or {}).get(q, 1)})
                                    + "\n" for q, em in ems.items()))
    em = sum(ems.values()) / len(ems)
    metrics = {"em": em, "f1": em, "searches": 1.0, "invalid_rate": 0.0, "answered": 1.0, "n": len(ems)}
    results = {"metrics": {"synthetic_test": {"agent": metrics}},
               "config": {"eval": {"out_dir": str(out)}}, "files": {"synthetic_test/agent": traj}}
    (out / "results.json").write_text(json.dumps(results))
    return results


def test_paired_gain_counts_questions_gained_and_lost(tmp_path):
    start = _eval(tmp_path, "start", {"a": 0, "b": 0, "c": 1, "d": 1, "e": 0})
    after = _eval(tmp_path, "after", {"a": 1, "b": 1, "c": 1, "d": 0, "e": 0})
    g = paired_gain(after, start)
    # differences +1 +1 0 -1 0: mean 1/5; two questions gained, one lost; exact McNemar: P(X>=2 or X<=1) = 1
    assert g["mean"] == pytest.approx(0.2)
    assert (g["gained"], g["lost"], g["ties"]) == (2, 1, 2)
    assert g["mcnemar_p"] == pytest.approx(1.0)
    assert g["low"] <= 0.2 <= g["high"] and g["n"] == 5
    (tmp_path / "after").rename(tmp_path / "moved")  # a run directory moved after it was written
    assert per_question_em(load_eval(tmp_path / "moved")) == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0, "e": 0.0}


def test_paired_gain_needs_the_same_questions(tmp_path):
    start = _eval(tmp_path, "start", {"a": 0, "b": 1})
    other = _eval(tmp_path, "other", {"a": 0, "c": 1})
    with pytest.raises(ValueError, match="different questions"):
        paired_gain(other, start)


def test_held_out_curve_is_paired_against_step_zero(tmp_path):
    ids = [f"q{i}" for i in range(20)]
    start = _eval(tmp_path, "s0", dict.fromkeys(ids, 0.0))
    mid = _eval(tmp_path, "s2", {q: float(i < 5) for i, q in enumerate(ids)})
    end = _eval(tmp_path, "s4", {q: float(i < 12) for i, q in enumerate(ids)})
    curve = held_out_curve((0, start), {2: mid}, (4, end))
    assert [r["step"] for r in curve] == [0, 2, 4]
    assert [r["em"] for r in curve] == [0.0, 0.25, 0.6]
    assert [r["gain"] for r in curve] == [0.0, 0.25, 0.6]
    # every question moved the same way: the interval cannot reach 0 once anything was gained
    assert curve[0]["low"] == curve[0]["high"] == 0.0
    assert 0 < curve[2]["low"] <= 0.6 <= curve[2]["high"]


def test_gain_lines_say_whether_the_interval_shows_a_gain():
    shown = {"mean": 0.1, "low": 0.02, "high": 0.18, "gained": 20, "lost": 6, "mcnemar_p": 0.009, "from": "after_sft"}
    unclear = shown | {"low": -0.01}
    loss = shown | {"mean": -0.1, "low": -0.2, "high": -0.03}
    lines = gain_lines({"gains": {"rl": shown, "warm_up": unclear | {"from": "before"}}})
    assert lines[0].startswith("RL gain (EM, paired against after warm-up): +0.100 [+0.020, +0.180]")
    assert lines[0].endswith(": shown") and "20 questions gained / 6 lost" in lines[0]
    assert lines[1].startswith("warm-up gain (EM, paired against before)") and "not shown" in lines[1]
    assert gain_lines({"gains": {"rl": loss}})[0].endswith("a loss")


def test_build_report_names_what_a_comparison_holds(tmp_path):
    """Without the evaluation between warm-up and RL, the change from `before` is both together."""
    from searchr1.demo import build_report
    from searchr1.settings import Config

    before = _eval(tmp_path, "before", {"a": 0, "b": 0})
    after = _eval(tmp_path, "after", {"a": 1, "b": 0})
    sft = {"steps": 4, "kept": 8, "losses": [1.0, 0.5]}
    report = build_report(Config(), "m", {"before": before, "after": after}, sft, [], {}, {"total": 1.0}, {})
    assert set(report["gains"]) == {"warm_up_and_rl"} and report["gains"]["warm_up_and_rl"]["mean"] == 0.5
    assert gain_lines(report)[0].startswith("warm-up + RL gain (EM, paired against before): +0.500")
    report = build_report(Config(), "m", {"before": before, "after": after}, None, [], {}, {"total": 1.0}, {})
    assert set(report["gains"]) == {"rl"}  # no warm-up: the change is RL's alone
    assert [r["step"] for r in report["held_out_curve"]] == [0, Config().train.steps]


def test_by_question_kind_groups_by_the_id_without_its_number(tmp_path):
    ems = {"birth_river-3": 1, "birth_river-17": 0, "founder-2": 1, "founder-5": 1, "founder-9": 0}
    searches = {"birth_river-3": 2, "birth_river-17": 1, "founder-2": 1, "founder-5": 1, "founder-9": 0}
    kinds = by_question_kind(_eval(tmp_path, "after", ems, searches))
    assert kinds == {"birth_river": {"n": 2, "em": 0.5, "searches": 1.5},
                     "founder": {"n": 3, "em": pytest.approx(2 / 3), "searches": pytest.approx(2 / 3)}}


def test_demo_evaluations_decode_in_the_training_precision():
    import dataclasses

    import torch

    from searchr1.demo import training_precision
    from searchr1.settings import Config

    cfg = Config()
    policy = (torch.nn.Linear(2, 2), None)

    def autocast_in(precision, backend="engine", policy=policy):
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compute=dataclasses.replace(
            cfg.train.compute, precision=precision)), rollout=dataclasses.replace(cfg.rollout, backend=backend))
        with training_precision(c, policy):
            return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")

    assert autocast_in("bf16-mixed") == torch.bfloat16  # as the trainer's evaluations during RL
    assert autocast_in("fp32") is False
    assert autocast_in("bf16") is False  # bf16 weights need no autocast
    assert autocast_in("bf16-mixed", backend="vllm") is False  # vLLM keeps its own precision
    assert autocast_in("bf16-mixed", policy=None) is False
