"""benchmarks/gpu.py on CPU with the tiny shape: both rows run and report sane numbers, and its
FLOPs count agrees with a hand computation (the GPU shapes themselves need a GPU to be worth timing)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_tiny_run_reports_both_rows(tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(SCRIPT), "--shape", "tiny", "--device", "cpu", "--batch", "4", "--prompt-len", "8",
           "--gen-tokens", "8", "--train-batch", "4", "--response-len", "16", "--micro", "2", "--repeats", "1",
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| rollout" in proc.stdout and "| train" in proc.stdout
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert set(rows) == {"rollout", "train"}
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["seconds"] > 0 and len(r["times_s"]) == 2  # warm-up + 1
        assert r["mfu"] is None  # no peak FLOP/s on CPU
        assert r["peak_mem_mib"] > 0
    assert rows["rollout"]["generated_tokens"] == 4 * 8
    assert rows["train"]["tokens"] == 4 * (8 + 16)
    assert data["peak_flops"] is None and data["args"]["precision"] == "fp32"


def test_flops_match_hand_count_for_tiny_shape():
    gpu = load_script()
    s = gpu.SHAPES["tiny"]  # d 64, MLP 128, 2 layers, 4 heads of 16, 2 KV heads (K/V width 32), vocab 1000
    # per layer: q 64*64+64, k and v 64*32+32 each, o 64*64, MLP 3*64*128, two norms 64 each
    layer = 4160 + 2 * 2080 + 4096 + 24576 + 128
    n, head = gpu.param_counts(s)
    assert (n, head) == (2 * layer + 64, 64_000) == (74_304, 64_000)
    # B=4, P=8, R=16 (S=24, 96 tokens): one forward = 2N*96 + 2*V*d*(4*16) + 4*L*d*S*96
    forward = 2 * 74_304 * 96 + 2 * 64_000 * 64 + 4 * 2 * 64 * 24 * 96
    assert forward == 23_638_016
    # training: forward + backward (3 forwards) + the reference forward; no old-log-prob forward
    assert gpu.train_flops(s, 4, 8, 16) == 4 * forward == 94_552_064
    assert gpu.train_flops(s, 4, 8, 16, extra_forwards=0) == 3 * forward
    # rollout: 2N per token fed (prompt + all generated but the last) + the LM head per generated token
    assert gpu.rollout_flops(s, 4, 8, 8) == 2 * 74_304 * 4 * 15 + 2 * 64_000 * 32


def test_param_count_matches_built_model_and_published_sizes():
    import torch

    gpu = load_script()
    model = gpu.build_model("tiny", "cpu", torch.float32)  # raises if param_counts disagrees with the model
    assert sum(p.numel() for p in model.parameters()) == 74_304 + 64_000
    # Qwen2.5 report: 0.49B total / 0.36B non-embedding, 1.54B / 1.31B
    n, head = gpu.param_counts(gpu.SHAPES["qwen2.5-0.5b"])
    assert round(n / 1e9, 2) == 0.36 and round((n + head) / 1e9, 2) == 0.49
    n, head = gpu.param_counts(gpu.SHAPES["qwen2.5-1.5b"])
    assert round(n / 1e9, 2) == 1.31 and round((n + head) / 1e9, 2) == 1.54
