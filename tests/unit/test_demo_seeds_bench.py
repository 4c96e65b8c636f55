"""benchmarks/demo_seeds.py's check that two settings' seeds share their warm-up, so that their
after-RL evaluations can be paired: by the same per-question EM after the warm-up, or else by
byte-identical warm-up models (settings that evaluate in different precisions)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_seeds.py"


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("demo_seeds_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # reports carry their per-question EM directly here, instead of evaluation directories
    monkeypatch.setattr(mod, "per_question_em", lambda report, name: report[name])
    return mod


def _run(root: Path, name: str, weights: bytes | None) -> Path:
    d = root / name
    (d / "sft-model").mkdir(parents=True)
    if weights is not None:
        (d / "sft-model" / "model.safetensors").write_bytes(weights)
    return d


def test_same_evaluation_is_enough(bench, tmp_path):
    a, b = _run(tmp_path, "a", b"1"), _run(tmp_path, "b", b"2")
    report = {"after_sft": {"q1": 1.0, "q2": 0.0}}
    assert bench.same_warm_up(a, b, report, dict(report)) == "evaluation"


def test_identical_weights_pair_runs_whose_evaluations_differ(bench, tmp_path):
    a, b = _run(tmp_path, "a", b"same"), _run(tmp_path, "b", b"same")
    ra, rb = {"after_sft": {"q1": 1.0, "q2": 0.0}}, {"after_sft": {"q1": 1.0, "q2": 1.0}}
    assert bench.same_warm_up(a, b, ra, rb) == "weights"


def test_different_warm_ups_are_refused(bench, tmp_path):
    ra, rb = {"after_sft": {"q1": 1.0}}, {"after_sft": {"q1": 0.0}}
    assert bench.same_warm_up(_run(tmp_path, "a", b"x"), _run(tmp_path, "b", b"y"), ra, rb) is None
    # no weight files at all: nothing shows they are the same
    assert bench.same_warm_up(_run(tmp_path, "c", None), _run(tmp_path, "d", None), ra, rb) is None
