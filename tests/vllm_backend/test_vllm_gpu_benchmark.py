"""benchmarks/gpu.py's vllm row on CPU (a head_dim-64 tiny shape: vLLM's CPU attention has no kernel for 16)."""

import pytest

pytest.importorskip("vllm")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def test_vllm_row_runs_and_compares_with_our_engine(tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--shape", "tiny-hd64", "--only", "rollout,vllm",
           "--batch", "4", "--prompt-len", "8", "--gen-tokens", "8", "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows["vllm"]["generated_tokens"] == rows["rollout"]["generated_tokens"] == 4 * 8
    assert rows["vllm"]["startup_s"] > 0 and rows["vllm"]["tokens_per_s"] > 0
    assert rows["vllm"]["speedup_vs_rollout"] == pytest.approx(rows["vllm"]["tokens_per_s"] / rows["rollout"]["tokens_per_s"])
