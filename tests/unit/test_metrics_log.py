"""Metrics logging: JSONL contents, resume truncation, TensorBoard events, W&B wiring and errors."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from searchr1.errors import MissingDependencyError
from searchr1.train.metrics_log import MetricsLogger, read_metrics

torch.set_num_threads(1)


def test_jsonl_contents_exactly(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"loss": 0.5, "reward": 1}, step=1)
        logger.log({"loss": torch.tensor(0.25), "kl": np.float32(0.125), "nan": float("nan"),
                    "inf": -math.inf, "flag": True}, step=2)
        # flushed on every call: readable while the logger is open (a killed run keeps its curve)
        assert len(read_metrics(tmp_path)) == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines == [
        '{"step": 1, "loss": 0.5, "reward": 1}',
        '{"step": 2, "loss": 0.25, "kl": 0.125, "nan": null, "inf": null, "flag": 1}',
    ]
    assert read_metrics(tmp_path) == [json.loads(line) for line in lines]
    assert read_metrics(tmp_path / "missing") == []


def test_bad_metric_values(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(TypeError, match="'name'"):
            logger.log({"name": "text"}, step=1)
        with pytest.raises(ValueError, match="reserved"):
            logger.log({"step": 3}, step=1)
    with pytest.raises(RuntimeError):
        logger.log({"x": 1.0}, step=2)
    logger.close()  # idempotent


def test_append_and_truncate_after(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log({"x": float(step)}, step=step)
        logger.truncate_after(4)  # resuming: steps 4 and 5 will be redone
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
        logger.log({"x": 40.0}, step=4)
    # a new logger (a resumed run) appends; resume_step drops the redone steps first
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"x": 50.0}, step=5)
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0),
                                                                     (5, 50.0)]
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=3) as logger:
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
        logger.log({"x": 30.0}, step=3)
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_partial_last_line_from_a_killed_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x"')
    assert read_metrics(tmp_path) == [{"step": 1, "x": 1.0}]
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log({"x": 2.0}, step=2)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "x": 1.0}\n{"step": 2, "x": 2.0}\n'


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as logger:
        logger.log({"loss": 0.5, "bad": float("nan")}, step=1)
        logger.log({"loss": 0.25, "bad": 2.0}, step=2)
    tb_dir = tmp_path / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in tb_dir.iterdir())
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("bad")] == [(2, 2.0)]  # NaN skipped
    assert read_metrics(tmp_path)[0]["bad"] is None


def test_tensorboard_purges_redone_steps(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 5):
            logger.log({"x": float(step)}, step=step)
    with MetricsLogger(tmp_path, resume_step=3) as logger:
        logger.log({"x": 30.0}, step=3)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    with MetricsLogger(tmp_path) as logger:  # truncate_after on an open logger purges too
        logger.log({"x": 4.0}, step=4)
        logger.truncate_after(2)
        logger.log({"x": 20.0}, step=2)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("x")] == [(1, 1.0), (2, 20.0)]
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 20.0)]


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
        MetricsLogger(tmp_path)
    with MetricsLogger(tmp_path, tensorboard=False) as logger:  # not asked for: fine
        logger.log({"x": 1.0}, step=1)


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError, match="pip install wandb"):
        MetricsLogger(tmp_path, tensorboard=False, wandb=True)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wandb_receives_metrics(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path, tensorboard=False, wandb=True, wandb_project="p", config={"lr": 1e-6}) as lg:
        lg.log({"loss": 0.5}, step=3)
    assert calls[0][0] == "init"
    assert calls[0][1]["project"] == "p" and calls[0][1]["config"] == {"lr": 1e-6}
    assert calls[1:] == [("log", {"loss": 0.5}, 3), ("finish",)]
