"""`searchr1 study` end to end on a tiny random Llama: two arms, two seeds, two steps; killed in
the middle of a training run and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _args(model, out, *extra):
    return [sys.executable, "-m", "searchr1", "study", f"study.dir={out}", f"model.name={model}", "model.device=cpu",
            "model.threads=1", "world.people=30", "world.organisations=8", "world.countries=3", "eval.limit=3",
            "eval.batch_size=4", "agent.max_turn_tokens=32", "train.steps=3", "train.prompts_per_step=2",
            "train.group_size=2", "train.mini_batch_size=4", "sft.steps=2", "sft.examples=6", "sft.batch_size=2",
            "train.progress=false", "study.arms=[rag,grpo]", "study.seeds=[0,1]", "study.save_every=1",
            "study.bootstrap=200", "study.permutations=200", *extra]


def test_a_killed_study_resumes_and_writes_every_field(tmp_path, tiny_model_dir):
    out = tmp_path / "study"
    live = tmp_path / "live"  # refreshed by the study itself after each unit it finishes (study.export)
    first = subprocess.Popen(_args(tiny_model_dir, out, f"study.export={live}"), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    # kill it hard once the first training run has written a checkpoint but not finished
    ckpt = out / "runs" / "grpo" / "seed0" / "train" / "checkpoints" / "step-000001"
    deadline = time.monotonic() + 600
    while not ckpt.is_dir() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    log = first.communicate()[0]
    assert ckpt.is_dir(), log[-3000:]
    assert not (out / "runs" / "grpo" / "seed0" / "record.json").exists(), "killed too late"
    rag_record = out / "runs" / "rag" / "greedy" / "record.json"
    assert rag_record.is_file()  # the baseline ran before training started
    partial = json.loads((out / "study.json").read_text())
    assert partial["complete"] is False and list(partial["arms"]) == ["rag"]
    # the unit finished before the kill is already in the exported copy, with the partial report
    assert (live / "runs" / "rag" / "greedy" / "record.json").read_text() == rag_record.read_text()
    assert json.loads((live / "study.json").read_text()) == partial
    rag_mtime = rag_record.stat().st_mtime_ns

    proc = subprocess.run(_args(tiny_model_dir, out, f"study.export={live}"), env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "rag ..." not in proc.stdout
    assert rag_record.stat().st_mtime_ns == rag_mtime  # a finished unit is not rerun
    metrics = (out / "runs" / "grpo" / "seed0" / "train" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics]
    assert sorted(set(steps)) == [1, 2, 3] and steps == sorted(steps)  # no step trained twice in the log
    assert not (out / "runs" / "grpo" / "seed0" / "train" / "checkpoints").exists()  # removed when done

    s = json.loads((out / "study.json").read_text())
    assert s["complete"] is True
    assert set(s) >= {"settings", "datasets", "warmup", "arms", "comparisons", "paper", "seconds"}
    assert s["datasets"] == {"synthetic_1hop": 3, "synthetic_2hop": 3}
    grpo = s["arms"]["grpo"]
    assert grpo["seeds"] == [0, 1] and grpo["trained"] and not s["arms"]["rag"]["trained"]
    for label in ("synthetic_1hop", "synthetic_2hop", "average"):
        for key in ("em", "f1", "cover_em", "em_lenient", "f1_lenient", "cover_em_lenient"):
            entry = grpo["scores"][label][key]
            assert entry["low"] <= entry["mean"] <= entry["high"] and len(entry["per_seed"]) == 2
            assert entry["seed_interval"]["n"] == 2
    for key in ("reward/mean", "actor/kl", "actor/entropy", "rollout/response_length",
                "rollout/searches_per_traj", "rollout/invalid_rate"):
        assert [p["step"] for p in grpo["curves"][key]] == [1, 2, 3] and grpo["curves"][key][0]["n"] == 2
    assert [p["step"] for p in grpo["curves"]["heldout/em"]] == [3]
    (c1, _, call) = s["comparisons"]  # grpo:rag on each hop count and on all questions pooled
    assert (c1["a"], c1["b"], call["dataset"], call["n"]) == ("grpo", "rag", "all", 6)
    assert len(call["mcnemar"]) == 2 and 0 <= call["p_value"] <= 1
    md = (out / "study.md").read_text()
    assert "searchr1 study: complete" in md and "Search-R1 GRPO" in md and "Paired tests" in md
    html = (out / "study.html").read_text()
    assert html.count('<img src="plots/') == 7
    assert (out / "plots" / "reward_mean.svg").read_text().startswith("<svg")

    # settings that would change results are refused, not mixed into the finished runs
    changed = subprocess.run(_args(tiny_model_dir, out, "train.optim.lr=1e-3"), env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert changed.returncode == 2 and "train.optim.lr" in changed.stderr and "another study.dir" in changed.stderr

    # the study's small files, exported, continue it in another directory (another machine): every
    # finished unit is taken from the copy, none is rerun, and the summary is the same
    copy = tmp_path / "copy"
    export = subprocess.run([*_args(tiny_model_dir, out), "--export", str(copy)], env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*.json")) == [
        "runs/grpo/seed0/record.json", "runs/grpo/seed1/record.json", "runs/rag/greedy/record.json",
        "study.json", "study_config.json", "warmup/warmup.json"]
    assert not list(copy.rglob("*.safetensors")) and not (copy / "runs" / "grpo" / "seed0" / "eval").exists()
    assert sorted(p.relative_to(live) for p in live.rglob("*") if p.is_file()) == sorted(
        p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    assert json.loads((live / "study.json").read_text()) == s  # the complete study, not a partial one
    other = tmp_path / "other"
    cont = subprocess.run([*_args(tiny_model_dir, other, f"study.records={copy}")], env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert cont.returncode == 0, cont.stdout[-3000:] + cont.stderr[-3000:]
    assert cont.stdout.count("taken from") == 3 and "grpo seed 0 ..." not in cont.stdout  # the warm-up reran
    again = json.loads((other / "study.json").read_text())
    assert again["arms"] == s["arms"] and again["comparisons"] == s["comparisons"]

    # a copy whose warm-up this machine does not reproduce is refused before any unit is taken
    (copy / "warmup" / "warmup.json").write_text(json.dumps({"losses": [9.0, 9.0]}))
    refused = subprocess.run([*_args(tiny_model_dir, tmp_path / "third", f"study.records={copy}")], env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "does not reproduce" in refused.stderr
    assert not (tmp_path / "third" / "runs" / "rag").exists()
