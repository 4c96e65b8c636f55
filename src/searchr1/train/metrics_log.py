"""Training metrics: ``metrics.jsonl`` (always), TensorBoard (default) and Weights & Biases (opt-in).

``{run_dir}/metrics.jsonl`` holds one JSON object per ``log`` call, ``{"step": N, "name": value, ...}``,
appended and flushed on every call so that a killed run keeps its curve. Non-finite values are
written as ``null`` (NaN is not valid JSON) and are not sent to TensorBoard. TensorBoard event
files go to ``{run_dir}/tensorboard/``. W&B is imported only when asked for.

On resume, the trainer calls ``truncate_after(first_step_to_redo)`` (or passes ``resume_step``):
lines with ``step >= `` that step are dropped from the JSONL and TensorBoard is told to discard
its events from that step on, so the curves show each step once.

Log only from the main process in multi-process runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from searchr1.errors import MissingDependencyError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Write scalar metrics to ``metrics.jsonl``, TensorBoard and (optionally) W&B.

    Args:
        run_dir: the run directory (created if missing).
        tensorboard: also write TensorBoard event files (needs ``pip install tensorboard``).
        wandb: also log to Weights & Biases (needs ``pip install wandb``).
        wandb_project: the W&B project.
        config: the run's config as a plain dict, recorded by W&B.
        resume_step: when resuming, the first step that will be logged again: lines and events
            from it on are dropped first (see ``truncate_after``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "searchr1",
        config: dict | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._tb = None
        self._wandb_run = None
        self._closed = False

        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise MissingDependencyError(
                    "TensorBoard logging needs the tensorboard package: pip install tensorboard "
                    "(or turn TensorBoard logging off with tensorboard=false)") from e
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError as e:
                raise MissingDependencyError(
                    "Weights & Biases logging needs the wandb package: pip install wandb "
                    "(or turn it off with wandb=false)") from e

        if resume_step is not None:
            self._truncate_file(resume_step)
        else:
            _drop_partial_last_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

        if tensorboard:
            self._tb = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=resume_step)
        if wandb:
            self._wandb_run = wandb_mod.init(project=wandb_project, config=dict(config or {}),
                                             dir=str(self.run_dir), name=self.run_dir.name,
                                             group=self.run_dir.name)

    # ------------------------------------------------------------------------------------------ API

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalar ``metrics`` at ``step`` (one JSONL line; TensorBoard/W&B scalars)."""
        if self._closed:
            raise RuntimeError("MetricsLogger.log() after close()")
        step = int(step)
        values = {str(k): _scalar(k, v) for k, v in metrics.items()}
        row: dict[str, Any] = {"step": step}
        for k, v in values.items():
            if k == "step":
                raise ValueError("'step' is reserved in metrics: pass it as the step argument")
            row[k] = v if _finite(v) else None
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if _finite(v):
                    self._tb.add_scalar(k, v, global_step=step)
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(dict(values), step=step)

    def truncate_after(self, step: int) -> None:
        """Drop everything logged at ``step`` or later (call with the first step to be redone).

        The JSONL keeps only lines with ``step < step`` (rewritten atomically); TensorBoard is told
        to purge its events from ``step`` on. W&B runs cannot be rewritten: each logger starts a new
        W&B run (same group: the run directory's name).
        """
        step = int(step)
        self._file.close()
        self._truncate_file(step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        if self._tb is not None:
            _tb_purge(self._tb, step)

    def close(self) -> None:
        """Flush and close every sink (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ helpers

    def _truncate_file(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [row for row in _read_rows(self.path) if row.get("step", -1) < step]
        tmp = self.path.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in kept:
                f.write(json.dumps(row, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``{run_dir}/metrics.jsonl`` in order (non-finite values are None); [] if none.

    A truncated last line (a run killed mid-write) is skipped.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return _read_rows(path)


def _read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping a malformed metrics line (interrupted write?)", path, lineno)
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _drop_partial_last_line(path: Path) -> None:
    """Cut a trailing line without newline (a write killed halfway) so appends start on a fresh line."""
    if not path.exists():
        return
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            i = data.rfind(b"\n")
            if i >= 0:
                f.truncate(start + i + 1)
                return
            pos = start
        f.truncate(0)


def _tb_purge(writer: Any, step: int) -> None:
    """What SummaryWriter(purge_step=step) does at start: TensorBoard discards events >= step."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    fw = writer._get_file_writer()
    fw.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    fw.flush()


def _scalar(key: Any, v: Any) -> float | int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if hasattr(v, "item") and callable(v.item):  # torch / numpy scalars and 1-element tensors
        try:
            v = v.item()
        except (ValueError, RuntimeError) as e:
            raise TypeError(f"metric {key!r} is not a scalar ({e})") from e
        return v if isinstance(v, int) and not isinstance(v, bool) else float(v)
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise TypeError(f"metric {key!r} must be a number, got {type(v).__name__}") from e


def _finite(v: float | int) -> bool:
    return isinstance(v, int) or math.isfinite(v)
