"""The study arm grpo-simulated at tiny size: GRPO whose rollouts search simulated documents (the
tiny model writes them, with ZeroSearch's noise curriculum over the steps) and whose evaluation
searches the synthetic world's real BM25 index, like every other arm."""

import json

from searchr1.config import load_config
from searchr1.settings import Config
from searchr1.study.runner import run_study


def test_the_simulated_search_arm_trains_on_simulated_search_and_is_evaluated_on_the_index(tmp_path, tiny_model_dir):
    out = tmp_path / "study"
    cfg = load_config(Config, None, [
        f"study.dir={out}", f"model.name={tiny_model_dir}", "model.device=cpu", "model.threads=1",
        "world.people=30", "world.organisations=8", "world.countries=3", "eval.limit=2", "eval.batch_size=4",
        "agent.max_turn_tokens=16", "train.steps=2", "train.prompts_per_step=2", "train.group_size=2",
        "train.mini_batch_size=4", "train.progress=false", "train.tensorboard=false", "study.arms=[rag,grpo-simulated]",
        "study.seeds=[0]", "study.warmup=false", "study.bootstrap=200", "study.permutations=200",
        f"retriever.simulated.model.name={tiny_model_dir}", "retriever.simulated.model.device=cpu",
        "retriever.simulated.max_new_tokens=16", f"retriever.cache.path={tmp_path / 'search.sqlite'}"])
    summary = run_study(cfg)
    unit = out / "runs" / "grpo-simulated" / "seed0"
    record = json.loads((unit / "record.json").read_text())
    assert record["train"]["steps"] == 2 and record["mode"] == "agent"
    # training searched simulated search: its counters and its noise curriculum are in every step's row
    rows = [json.loads(line) for line in (unit / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "search/noise_p" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert [round(r["search/noise_p"], 6) for r in steps] == [round(0.5 / 3, 6), 0.5]
    # the evaluation searched the world's BM25 index, as the rag baseline did
    for arm in ("grpo-simulated", "rag"):
        results = json.loads(next((out / "runs" / arm).glob("*/eval/results.json")).read_text())
        assert results["environment"]["retriever"]["method"] == "bm25"
        assert results["environment"]["retriever"]["index"] == str(out / "index")
    assert summary["complete"] and summary["arms"]["grpo-simulated"]["label"] == "Search-R1 GRPO, simulated search"
    assert "Search-R1 GRPO, simulated search" in (out / "study.md").read_text()
