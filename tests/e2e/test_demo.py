"""The README's main command, end to end on a small world: `searchr1 demo`."""

import json
import os
import subprocess
import sys


def test_demo_builds_serves_and_measures_recall(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "searchr1", "demo", f"demo.dir={out}", "demo.world.people=40",
           "demo.world.organisations=10", "demo.world.countries=4", "demo.max_questions=60"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
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
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "index" / "index.json").stat().st_mtime_ns == index_meta
