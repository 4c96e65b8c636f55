"""`searchr1 export verl`: the parquet schema, reward, configs, launch script and the agent loop's
episode rules. Nothing here needs veRL (tests/integration/test_export_verl_live.py checks against it)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from fakes import ScriptedLM, char_tokenizer, continue_script
from searchr1 import rewards
from searchr1.cli import main
from searchr1.config import load_config
from searchr1.errors import ConfigError, RetrieverError, RetrieverUnavailableError, SearchR1Error
from searchr1.export import verl_reward
from searchr1.export.episode import cut_at_stop, run_episode_sync
from searchr1.export.verl import TOOL_TEMPLATE, ExportError, ExportOptions, export_verl, verl_schema
from searchr1.export.verl_plan import AGENT_NAMES, REWARD_NAME, REWARD_PATH, verl_plan
from searchr1.protocol import INVALID_ACTION_NOTE, STOP_STRINGS, build_prompt, format_observation
from searchr1.retrieval.base import Hit
from searchr1.rollout.agent import Agent, new_trajectory, search_with_retries
from searchr1.rollout.generator import SamplingParams
from searchr1.rollout.engine import EngineGenerator
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.step import EpisodeStep
from searchr1.settings import Config

# A small synthetic world: 2 countries, 4 cities, 6 people, 2 organisations -> 40 questions.
TINY = ["train.questions.datasets=synthetic", "world.countries=2", "world.cities_per_country=2",
        "world.people=6", "world.organisations=2"]


def config(*overrides: str, preset: str | None = None) -> Config:
    return load_config(Config, preset, [*TINY, *overrides])


def export(tmp_path: Path, *overrides: str, preset: str | None = None, **opts) -> tuple[Path, dict]:
    out = tmp_path / "verl"
    summary = export_verl(config(*overrides, preset=preset), ExportOptions(out_dir=str(out), **opts))
    return out, summary


def read_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# ----------------------------------------------------------------------------- data


def test_rows_have_verls_schema_exactly(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, summary = export(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train.parquet", "val.parquet", "agent_loop.yaml", "tool_config.yaml", "train.sh", "serve_retriever.sh",
         "README.md", "export.json"])
    for name in ("train.parquet", "val.parquet"):
        assert pq.read_schema(out / name).remove_metadata() == verl_schema(pa)
    train, val = read_rows(out / "train.parquet"), read_rows(out / "val.parquet")
    assert (len(train), len(val)) == (summary["train_rows"], summary["val_rows"]) == (35, 9)

    from searchr1.data.synthetic import build_world, make_questions, split_questions

    train_q, test_q = split_questions(make_questions(build_world(0, 2, 2, 6, 2)), 0.2, 0)
    q = train_q[0]
    gt = {"target": list(q.golden_answers)}
    assert train[0] == {
        "data_source": "synthetic",
        "prompt": [{"role": "user", "content": build_prompt(q.question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": {
            "split": "train", "index": 0, "id": q.id, "question": q.question, "need_tools_kwargs": False,
            "tools_kwargs": {"search": {"create_kwargs": {
                "ground_truth": gt, "question": q.question, "data_source": "synthetic"}}},
        },
        "agent_name": "searchr1_agent",
    }
    # the prompt is Search-R1's instruction byte for byte
    assert train[0]["prompt"][0]["content"].startswith("Answer the given question. You must conduct reasoning")
    assert [r["extra_info"]["index"] for r in train] == list(range(len(train)))
    assert [r["extra_info"]["id"] for r in val] == [t.id for t in test_q]
    assert {r["extra_info"]["split"] for r in val} == {"val"}


def test_tool_agent_rows(tmp_path):
    out, summary = export(tmp_path, agent="tool")
    row = read_rows(out / "train.parquet")[0]
    assert row["agent_name"] == "tool_agent" and summary["agent_name"] == "tool_agent"
    assert row["extra_info"]["need_tools_kwargs"] is True
    assert row["prompt"][0]["content"] == TOOL_TEMPLATE.replace("{question}", row["extra_info"]["question"])
    assert "<search>" not in row["prompt"][0]["content"]


def test_benchmark_rows_from_a_qa_file(tmp_path):
    qa = tmp_path / "myqa.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": f"who is number {i}",
                                      "golden_answers": [f"person {i}", f"p{i}"]}) + "\n" for i in range(5)))
    out, summary = export(tmp_path, f"train.questions.datasets={qa}", f"eval.datasets=[{qa}]", "eval.limit=3")
    train, val = read_rows(out / "train.parquet"), read_rows(out / "val.parquet")
    assert len(train) == 5 and len(val) == 3
    assert train[1]["data_source"] == "myqa"
    assert train[1]["reward_model"]["ground_truth"] == {"target": ["person 1", "p1"]}
    assert train[1]["prompt"][0]["content"] == build_prompt("who is number 1")  # normalised: ends with '?'


# ----------------------------------------------------------------------------- reward


HANDMADE = [
    ("<think>easy</think><answer> Paris </answer>", ["Paris"]),
    ("<think>a</think><search> q </search><information>Doc 1(Title: x) y</information><think>b</think>"
     "<answer>the Paris</answer>", ["paris", "City of Light"]),
    ("<answer> Lyon </answer>", ["Paris"]),
    ("<think>no</think><answer>Paris</answer> trailing", ["Paris"]),
    ("<think>ok</think><answer> Lyon </answer>", ["Paris"]),
    ("I do not know", ["Paris"]),
    ("<think>x</think><answer></answer>", ["Paris"]),
]


@pytest.mark.parametrize("response,golds", HANDMADE)
@pytest.mark.parametrize("format_reward", [False, True])
def test_reward_is_our_rewards_module(response, golds, format_reward):
    expected = rewards.compute_score(response, golds, format_reward=format_reward)
    # veRL passes the ground truth as stored: {"target": array} after a parquet round trip
    for gt in ({"target": golds}, {"target": np.array(golds, dtype=object)}):
        kwargs = {"format_reward": format_reward} if format_reward else {}
        got = verl_reward.compute_score(data_source="nq", solution_str=response, ground_truth=gt,
                                        extra_info={"split": "train", "index": 0}, **kwargs)
        assert isinstance(got, float) and got == expected
    metrics = verl_reward.compute_score_with_metrics("nq", response, {"target": golds}, None,
                                                     format_reward=format_reward)
    parts = rewards.score_breakdown(response, golds)
    assert metrics == {"score": expected, "em": parts["em"], "f1": parts["f1"], "cover_em": parts["cover_em"],
                       "valid_format": float(parts["valid_format"])}


def test_reward_values_by_hand():
    score = verl_reward.compute_score
    gt = {"target": ["Paris"]}
    assert score("nq", "<think>a</think><answer> paris </answer>", gt) == 1.0
    assert score("nq", "<answer> Lyon </answer>", gt) == 0.0
    # Search-R1 v0.3's format reward (kwargs as veRL's reward_kwargs may give them: strings)
    assert score("nq", "<answer>Paris</answer>", gt, format_reward="true") == pytest.approx(0.8)
    assert score("nq", "<think>a</think><answer>Lyon</answer>", gt, format_reward=True) == pytest.approx(0.2)
    assert score("nq", "<answer>Lyon</answer>", gt, format_reward=True) == pytest.approx(0.1)
    # keyword arguments veRL adds for reward models are ignored
    assert score("nq", "<answer>Paris</answer>", gt, None, reward_router_address=None,
                 reward_model_tokenizer=None) == 1.0


# ----------------------------------------------------------------------------- configs


def test_tool_and_agent_loop_configs_name_our_server(tmp_path):
    out, summary = export(tmp_path, "agent.topk=5", "agent.max_turns=2", retriever_url="10.1.2.3:9000/retrieve/")
    assert summary["retriever_url"] == "http://10.1.2.3:9000"
    tools = yaml.safe_load((out / "tool_config.yaml").read_text())["tools"]
    assert len(tools) == 1
    tool = tools[0]
    assert tool["class_name"] == "searchr1.export.verl_tool.SearchTool"
    assert tool["config"]["type"] == "native"
    assert tool["config"]["retrieval_service_url"] == "http://10.1.2.3:9000/retrieve"
    assert tool["config"]["topk"] == 5
    assert tool["tool_schema"]["function"]["name"] == "search"
    assert tool["tool_schema"]["function"]["parameters"]["required"] == ["query_list"]
    (loop,) = yaml.safe_load((out / "agent_loop.yaml").read_text())
    assert loop["name"] == AGENT_NAMES["searchr1"]
    assert loop["_target_"] == "searchr1.export.verl_agent.SearchR1AgentLoop"
    assert (loop["retrieval_url"], loop["topk"], loop["max_turns"]) == ("http://10.1.2.3:9000", 5, 2)
    assert (loop["max_turn_tokens"], loop["max_obs_tokens"]) == (500, 500)


def test_retriever_url_defaults_to_the_configs(tmp_path):
    _, summary = export(tmp_path, "retriever.url=http://search.local:8123")
    assert summary["retriever_url"] == "http://search.local:8123"


def test_paper_grpo_preset_hyperparameters_reach_veRL():
    cfg = load_config(Config, "paper-grpo-qwen2.5-3b")
    o = verl_plan(cfg).as_dict()
    A, R = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    expected = {
        "algorithm.adv_estimator": "grpo",
        "actor_rollout_ref.model.path": "Qwen/Qwen2.5-3B",
        "data.train_batch_size": 512,
        f"{A}.optim.lr": 1e-6,
        f"{A}.optim.lr_warmup_steps": 286,  # Search-R1: lr_warmup_steps_ratio 0.285 x 1005 steps
        f"{A}.ppo_mini_batch_size": 256,  # prompts (x 5 rollouts = the preset's 1280 trajectories)
        f"{A}.ppo_micro_batch_size_per_gpu": 8,
        f"{A}.ppo_epochs": 1,
        f"{A}.clip_ratio_low": 0.2,
        f"{A}.clip_ratio_high": 0.2,
        f"{A}.use_kl_loss": True,
        f"{A}.kl_loss_coef": 0.001,
        f"{A}.kl_loss_type": "low_var_kl",
        f"{A}.entropy_coeff": 0.0,
        f"{A}.optim.clip_grad": 1.0,
        "algorithm.use_kl_in_reward": False,
        "algorithm.norm_adv_by_std_in_grpo": True,
        f"{R}.n": 5,
        f"{R}.temperature": 1.0,
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "trainer.total_training_steps": 1005,
        "trainer.save_freq": 100,
        "reward.custom_reward_function.path": REWARD_PATH,
        "reward.custom_reward_function.name": REWARD_NAME,
        f"{R}.agent.default_agent_loop": "searchr1_agent",
    }
    assert {k: o.get(k) for k in expected} == expected
    assert not any(k.startswith("critic.") for k in o)


def test_paper_ppo_preset_hyperparameters_reach_veRL():
    o = verl_plan(load_config(Config, "paper-ppo-qwen2.5-3b")).as_dict()
    expected = {
        "algorithm.adv_estimator": "gae",
        "actor_rollout_ref.actor.optim.lr": 1e-6,
        "critic.optim.lr": 1e-5,
        "critic.model.path": "Qwen/Qwen2.5-3B",
        "critic.cliprange_value": 0.5,
        "algorithm.gamma": 1.0,
        "algorithm.lam": 1.0,
        "algorithm.use_kl_in_reward": True,
        "algorithm.kl_penalty": "k1",
        "algorithm.kl_ctrl.kl_coef": 0.001,
        "actor_rollout_ref.actor.use_kl_loss": False,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 256,
        "actor_rollout_ref.rollout.n": 1,
        "data.train_batch_size": 512,
    }
    assert {k: o.get(k) for k in expected} == expected


def test_tool_agent_and_format_reward_overrides():
    o = verl_plan(config("train.format_reward=true", "agent.max_turns=3"), agent="tool", rollout="sglang").as_dict()
    R = "actor_rollout_ref.rollout"
    assert o[f"{R}.name"] == "sglang"
    assert o[f"{R}.multi_turn.enable"] is True
    assert o[f"{R}.multi_turn.max_assistant_turns"] == 4
    assert o[f"{R}.agent.default_agent_loop"] == "tool_agent"
    assert o["+reward.custom_reward_function.reward_kwargs.format_reward"] is True
    assert "+reward.custom_reward_function.reward_kwargs.retrieval_score" not in o  # Search-R1's 0 stays implicit
    assert "+reward.custom_reward_function.reward_kwargs.format_needs_search" not in o
    o = verl_plan(config("train.format_reward=true", "train.retrieval_score=0.1",
                         "train.format_needs_search=true")).as_dict()
    assert o["+reward.custom_reward_function.reward_kwargs.retrieval_score"] == 0.1
    assert o["+reward.custom_reward_function.reward_kwargs.format_needs_search"] is True


def test_the_retrieval_score_reaches_the_verl_reward_as_a_number():
    response = ("<think>a</think><search> q </search><information>Doc 1(Title: x) Paris</information>"
                "<think>b</think><answer> Lyon </answer>")
    got = verl_reward.compute_score("nq", response, {"target": ["Paris"]}, None, format_reward="true",
                                    retrieval_score="0.1")
    assert got == pytest.approx(0.3)
    guess = "<think>a</think><answer> Lyon </answer>"
    assert verl_reward.compute_score("nq", guess, {"target": ["Paris"]}, None, format_reward="true") == 0.2
    assert verl_reward.compute_score("nq", guess, {"target": ["Paris"]}, None, format_reward="true",
                                     format_needs_search="true") == 0.0
    assert verl_reward.compute_score("nq", guess, {"target": ["Paris"]}, None, format_reward="true",
                                     format_needs_search="false") == 0.2


def test_an_algorithm_without_a_verl_estimator_is_refused_naming_those_with_one():
    with pytest.raises(ConfigError, match="train.algorithm=reinforce has no veRL advantage estimator; veRL "
                                          "trains grpo, ppo, rloo, reinforce_pp"):
        verl_plan(config("train.algorithm=reinforce"))


def test_critic_free_algorithms_and_corrections_map_to_verl():
    A = "actor_rollout_ref.actor"
    rloo = verl_plan(config("train.algorithm=rloo")).as_dict()
    assert rloo["algorithm.adv_estimator"] == "rloo" and rloo[f"{A}.use_kl_loss"] is True
    assert not any(k.startswith("critic.") for k in rloo) and "algorithm.lam" not in rloo
    rpp = verl_plan(config("train.algorithm=reinforce_pp")).as_dict()
    assert rpp["algorithm.adv_estimator"] == "reinforce_plus_plus" and rpp["algorithm.use_kl_in_reward"] is True
    assert rpp["algorithm.kl_penalty"] == "k1" and rpp[f"{A}.use_kl_loss"] is False
    assert not any(k.startswith("critic.") for k in rpp)
    plan = verl_plan(config("train.loss.tis_cap=2.5", "train.dapo.dynamic_sampling=true", "train.dapo.overlong=mask"))
    o = plan.as_dict()
    assert o["algorithm.rollout_correction.rollout_is"] == "token"
    assert o["algorithm.rollout_correction.rollout_is_threshold"] == 2.5
    assert o["actor_rollout_ref.rollout.calculate_log_probs"] is True
    assert sum("is not exported" in n for n in plan.notes) == 2


def test_gspo_maps_to_verls_loss_mode_and_llds_and_trees_are_noted():
    key = "actor_rollout_ref.actor.policy_loss.loss_mode"
    assert key not in verl_plan(config()).as_dict()  # veRL's default is the per-token ratio
    plan = verl_plan(config("train.loss.mode=gspo", "train.loss.agg=seq-mean-token-mean"))
    o = plan.as_dict()
    assert o[key] == "gspo" and o["actor_rollout_ref.actor.loss_agg_mode"] == "seq-mean-token-mean"
    assert not any("gspo" in n for n in plan.notes)
    plan = verl_plan(config("train.loss.llds_coef=0.1", "train.rollout_tree=1"))
    assert key not in plan.as_dict()
    assert any(n.startswith("train.loss.llds_coef (LLDS) is not exported") for n in plan.notes)
    assert any(n.startswith("train.rollout_tree=1 (tree rollouts) is not exported") for n in plan.notes)
    with pytest.raises(ConfigError, match="train.algorithm=tree_grpo has no veRL advantage estimator"):
        verl_plan(config("train.algorithm=tree_grpo", "train.rollout_tree=1"))


def test_uneven_mini_batch_is_rounded_and_noted():
    mini = lambda *o: verl_plan(config(*o)).as_dict()["actor_rollout_ref.actor.ppo_mini_batch_size"]  # noqa: E731
    assert mini("train.prompts_per_step=12", "train.group_size=5", "train.mini_batch_size=30") == 6
    assert mini("train.prompts_per_step=10", "train.group_size=4", "train.mini_batch_size=20") == 5
    # 8 trajectories of groups of 3: 2 prompts (the largest whole number of prompts dividing 8 below 8/3)
    plan = verl_plan(config("train.prompts_per_step=8", "train.group_size=3", "train.mini_batch_size=8"))
    assert plan.as_dict()["actor_rollout_ref.actor.ppo_mini_batch_size"] == 2
    assert any("mini-batches in prompts" in n for n in plan.notes)
    # the defaults (512 prompts x 5, mini-batch 256 trajectories = 51.2 prompts) -> 32
    assert mini() == 32


# ----------------------------------------------------------------------------- scripts


def _fake_python(tmp_path: Path) -> Path:
    """A `python3` stand-in that records its arguments (one per line) and answers the health check."""
    log = tmp_path / "argv.txt"
    fake = tmp_path / "fakepython"
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-c" ]; then exit 0; fi\n'
                    f'printf "%s\\n" "$@" > {log}\n')
    fake.chmod(0o755)
    return fake


def test_launch_script_passes_the_paper_hyperparameters(tmp_path):
    out, summary = export(tmp_path, preset="paper-grpo-qwen2.5-3b", config_name="paper-grpo-qwen2.5-3b")
    script = (out / "train.sh").read_text()
    for text in ("python3", "verl.trainer.main_ppo", "actor_rollout_ref.actor.optim.lr=1e-06",
                 "actor_rollout_ref.actor.kl_loss_coef=0.001", "data.train_batch_size=512",
                 "actor_rollout_ref.actor.ppo_mini_batch_size=256", "actor_rollout_ref.rollout.n=5",
                 "trainer.total_training_steps=1005", "paper-grpo-qwen2.5-3b"):
        assert text in script
    assert subprocess.run(["bash", "-n", str(out / "train.sh")]).returncode == 0
    assert subprocess.run(["bash", "-n", str(out / "serve_retriever.sh")]).returncode == 0
    assert "searchr1 serve" in (out / "serve_retriever.sh").read_text()
    assert os.access(out / "train.sh", os.X_OK)

    # run it with a stand-in python: veRL gets exactly the overrides export.json lists, plus extra args
    fake = _fake_python(tmp_path)
    env = {**os.environ, "PYTHON": str(fake), "NNODES": "4", "GPUS_PER_NODE": "8"}
    subprocess.run(["bash", str(out / "train.sh"), "trainer.total_training_steps=10"], env=env, check=True)
    argv = (tmp_path / "argv.txt").read_text().splitlines()
    assert argv[:2] == ["-m", "verl.trainer.main_ppo"]
    listed = json.loads((out / "export.json").read_text())["overrides"]
    resolved = [a.replace("trainer.nnodes=1", "trainer.nnodes=4") for a in listed]
    assert argv[2:] == resolved + ["trainer.total_training_steps=10"]
    assert f"data.train_files={out.resolve() / 'train.parquet'}" in argv


def test_launch_script_checks_the_retriever(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, _ = export(tmp_path, retriever_url=f"http://127.0.0.1:{port}")
    r = subprocess.run(["bash", str(out / "train.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"no retrieval server answers at http://127.0.0.1:{port}/health" in r.stderr


# ----------------------------------------------------------------------------- errors


def test_non_empty_out_dir_needs_force(tmp_path):
    out = tmp_path / "verl"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="not empty.*--force"):
        export_verl(config(), ExportOptions(out_dir=str(out)))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    export_verl(config(), ExportOptions(out_dir=str(out), force=True))
    assert (out / "train.parquet").is_file() and (out / "keep.txt").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_bad_inputs_are_clear_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a directory"):
        export_verl(config(), ExportOptions(out_dir=str(tmp_path / "file")))
    with pytest.raises(ExportError, match="--agent"):
        ExportOptions(agent="bogus")
    with pytest.raises(ExportError, match="--rollout"):
        ExportOptions(rollout="trt")
    with pytest.raises(ExportError, match="--nnodes"):
        ExportOptions(nnodes=0)
    with pytest.raises(ExportError, match="not an http"):
        export_verl(config(), ExportOptions(out_dir=str(tmp_path / "a"), retriever_url="ftp://host:21"))
    with pytest.raises(SearchR1Error, match="unknown benchmark|not found"):
        export_verl(config("train.questions.datasets=nosuchset"), ExportOptions(out_dir=str(tmp_path / "b")))
    with pytest.raises(SearchR1Error, match="QA file not found"):
        export_verl(config("train.questions.datasets=/nonexistent/qa.jsonl"), ExportOptions(out_dir=str(tmp_path / "c")))
    # nothing was written for the failed exports
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", "verl", "--out", str(out), "--agent", "tool", "--retriever-url", "http://h:1", *TINY]) == 0
    printed = capsys.readouterr().out
    assert f"veRL export in {out}" in printed and "tool_agent" in printed and "http://h:1" in printed
    assert main(["export", "verl", "--out", str(out), *TINY]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "verl", "--out", str(out), "train.questions.datasets=nosuchset"]) == 2
    assert main(["export", "verl", "--out", str(out), "--force", "train.bogus=1"]) == 2
    assert "unknown config key 'train.bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "verl", "--agent", "bogus"])


# ----------------------------------------------------------------------------- the agent loop's episodes


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


class FakeRetriever:
    def __init__(self, failures: int = 0, text: str = "") -> None:
        self.calls: list[list[str]] = []
        self.failures, self.text = failures, text

    def search(self, queries, k):
        self.calls.append(list(queries))
        if len(self.calls) <= self.failures:
            raise RetrieverUnavailableError("down")
        return [[Hit(f"id-{q}", f"About {q}", self.text or f"{q} are nice.", 1.0)] for q in queries]


def engine(tok, pol, junk: str = "", stops=STOP_STRINGS):
    """An inference server that knows no stop strings: it samples the policy until EOS or the budget
    (and, with `junk`, keeps writing that text after one of `stops`, as an engine that cannot stop)."""
    calls = []

    async def generate(context, max_tokens):
        calls.append(max_tokens)
        text, out = tok.decode(context), []
        for _ in range(max_tokens):
            c = pol(text)
            if c is None:
                overshoot = junk and any(s in tok.decode(out) for s in stops)
                out += tok.encode(junk)[: max_tokens - len(out)] if overshoot else [tok.eos_token_id]
                break
            out.append(tok.convert_tokens_to_ids(c))
            text += c
        out = out[:max_tokens]
        return out, [-0.5] * len(out)

    generate.calls = calls
    return generate


JUNK = "<information>made up</information><answer> wrong </answer>"


def episode(tok, pol, retriever, junk: str = "", prompt: str = "Q?", **cfg):
    a = AgentConfig(**{"retrieval_backoff_s": 0.0, **cfg})
    step = EpisodeStep(tok, a)

    async def search(query):
        return search_with_retries(retriever, [query], a.topk, a.retrieval_attempts, 0.0)[0]

    return run_episode_sync(new_trajectory(tok, prompt), engine(tok, pol, junk, step.stop_strings), search, step,
                            eos_ids={tok.eos_token_id})


def policy(first: str, after_info: str):
    return lambda ctx: continue_script(ctx, after_info if "<information>" in ctx else first)


def after_note(first: str, then: str):
    return lambda ctx: continue_script(ctx, then if "My previous action is invalid" in ctx else first)


SEARCH_ANSWER = policy("<search> cats </search>", "<answer> dogs </answer>")
# (policy, agent settings, the stop reason and the turns' actions they must produce)
SCENARIOS = {
    "search-answer": (SEARCH_ANSWER, {}, "answer", ["search", "answer"]),
    "invalid-to-max-turns": (policy("I am thinking very hard", ""), {"max_turns": 2, "max_turn_tokens": 5},
                             "max_turns", ["invalid"] * 3),
    "search-to-max-turns": (lambda ctx: continue_script(ctx, "<search> more </search>"), {"max_turns": 2},
                            "max_turns", ["search"] * 3),
    "eos-no-answer": (policy("no idea", ""), {}, "eos", ["invalid"]),
    "observation-fills-response": (SEARCH_ANSWER, {"max_response_tokens": 40}, "length", ["search"]),
    "observation-cut": (SEARCH_ANSWER, {"max_obs_tokens": 60}, "answer", ["search", "answer"]),
    "no-search-mode": (policy("<search> cats </search>", "<think>hm</think><search> dogs </search>"),
                       {"max_turns": 0}, "max_turns", ["search"]),
    "invalid-then-answer": (after_note("<think>hm</think><search>  </search>", "<answer> dogs </answer>"), {},
                            "answer", ["invalid", "answer"]),
    "note-fills-response": (after_note("<search>  </search>", "<answer> dogs </answer>"),
                            {"max_response_tokens": 30}, "length", ["invalid"]),
    "generation-fills-response": (policy("<think>" + "x" * 60 + "</think>", ""), {"max_response_tokens": 25},
                                  "length", ["invalid"]),
}


def without_logprobs(traj) -> dict:
    d = traj.to_dict()
    d.pop("logprobs")
    return d


@pytest.mark.parametrize("pol,cfg,stop,actions", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_episode_matches_our_agent(tok, pol, cfg, stop, actions):
    """veRL's loop, on a server that writes past the stop strings, plays each episode token for token as
    `searchr1.rollout.agent.Agent` does on our engine: the same trajectory (ids, masks, turns, queries,
    documents, answer, stop reason, text), differing only in the server's log-probs."""
    traj = new_trajectory(tok, "Q?")
    cfg = {"retrieval_backoff_s": 0.0, **cfg}
    Agent(EngineGenerator(ScriptedLM(tok, pol), tok), FakeRetriever(), AgentConfig(**cfg)).run(
        [traj], SamplingParams(temperature=0))
    ep = episode(tok, pol, FakeRetriever(), junk=JUNK, **cfg)
    assert (traj.stop_reason, [t.action for t in traj.turns]) == (stop, actions)
    assert without_logprobs(ep) == without_logprobs(traj)
    assert ep.response_ids == traj.response_ids
    assert ep.policy_mask == traj.policy_mask
    assert ep.stop_reason == traj.stop_reason and ep.answer == traj.answer
    assert len(ep.turns) == len(traj.turns)
    assert ep.logprobs == [-0.5 if m else 0.0 for m in ep.policy_mask]


def varied(ctx: str) -> str | None:
    """Question k searches k % 4 times, then answers (k = the digit in it)."""
    k = int(next(c for c in ctx if c.isdigit()))
    if ctx.count("<information>") < k % 4:
        return continue_script(ctx, "<search> q" + "x" * (3 * k) + " </search>")
    return continue_script(ctx, "<answer> dogs </answer>")


def test_a_pooled_batch_matches_the_verl_loop_episode_by_episode(tok):
    """Continuous batching (a pool of 2 over 6 episodes of different lengths, searches batched across
    rows) changes nothing: each episode is the one veRL's loop plays alone."""
    trajs = [new_trajectory(tok, f"Q{i}?") for i in range(6)]
    Agent(EngineGenerator(ScriptedLM(tok, varied), tok), FakeRetriever(), AgentConfig(retrieval_backoff_s=0.0)).run(
        trajs, SamplingParams(temperature=0), pool=2)
    assert [t.num_searches for t in trajs] == [0, 1, 2, 3, 0, 1]
    for i, traj in enumerate(trajs):
        assert without_logprobs(episode(tok, varied, FakeRetriever(), junk=JUNK, prompt=f"Q{i}?")) == \
            without_logprobs(traj)


def test_episode_cuts_what_an_engine_writes_past_the_stop_string(tok):
    retriever = FakeRetriever()
    ep = episode(tok, policy("<think>go</think><search> cats </search>", "<think>ok</think><answer> dogs </answer>"),
                 retriever,
                 junk=JUNK)
    text = tok.decode(ep.response_ids)
    obs = format_observation([Hit("id-cats", "About cats", "cats are nice.", 1.0)])
    assert text == "<think>go</think><search> cats </search>" + obs + "<think>ok</think><answer> dogs </answer>"
    assert (ep.stop_reason, ep.answer, ep.queries()) == ("answer", "dogs", ["cats"])
    assert retriever.calls == [["cats"]]
    n = len(tok.encode("<think>go</think><search> cats </search>"))
    assert ep.policy_mask[:n] == [1] * n and ep.policy_mask[n:n + len(tok.encode(obs))] == [0] * len(tok.encode(obs))
    assert verl_reward.compute_score("x", text, {"target": ["dogs"]}, format_reward=True) == 1.0


def test_episode_invalid_action_gets_the_note(tok):
    ep = episode(tok, policy("<think>hmm</think> maybe", ""), FakeRetriever(), max_turns=1, max_turn_tokens=20)
    assert tok.decode(ep.response_ids).count(INVALID_ACTION_NOTE) == 1
    assert ep.stop_reason == "max_turns"


def test_episode_retrieval_retries_then_raises(tok):
    pol = policy("<search> cats </search>", "<answer> dogs </answer>")
    retriever = FakeRetriever(failures=2)
    assert episode(tok, pol, retriever).stop_reason == "answer" and len(retriever.calls) == 3
    with pytest.raises(RetrieverError, match="after 3 attempts"):
        episode(tok, pol, FakeRetriever(failures=99))


def test_cut_at_stop_finds_the_shortest_prefix(tok):
    for text in ["abc </search> def", "</answer>", "x" * 50 + "</search>" + "</answer>", "no stop here", "",
                 "<answer> a </answer> <search> b </search>"]:
        ids = tok.encode(text)
        n, found = cut_at_stop(ids, tok.decode)
        linear = next((k for k in range(1, len(ids) + 1)
                       if "</search>" in tok.decode(ids[:k]) or "</answer>" in tok.decode(ids[:k])), None)
        assert (n, found) == ((linear, True) if linear else (len(ids), False))


def test_episode_settings_validate(tok):
    with pytest.raises(ValueError):
        AgentConfig(max_turns=-1)
    with pytest.raises(ValueError):
        AgentConfig(max_obs_tokens=0)
    with pytest.raises(ValueError, match="does not force a response prefix"):
        run_episode_sync(new_trajectory(tok, "Q?"), None, None,
                         EpisodeStep(tok, AgentConfig(response_prefix="<think>")))
    assert asyncio.iscoroutinefunction(__import__("searchr1.export.episode", fromlist=["run_episode"]).run_episode)


# ----------------------------------------------------------------------------- retriever script and token (issue 24)


def test_serve_script_binds_127_0_0_1_unless_told_and_passes_the_token_variable(tmp_path):
    out, _ = export(tmp_path, "retriever.token=SEARCH_TOKEN", "retriever.index=/idx")
    assert "0.0.0.0 " not in (out / "serve_retriever.sh").read_text().split("set -euo pipefail")[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "serve-argv.txt"
    (bin_dir / "searchr1").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {log}\n')
    (bin_dir / "searchr1").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(out / "serve_retriever.sh")], env=env, check=True)
    argv = log.read_text().splitlines()
    assert "server.host=127.0.0.1" in argv and "server.token=SEARCH_TOKEN" in argv
    subprocess.run(["bash", str(out / "serve_retriever.sh")], env={**env, "HOST": "0.0.0.0"}, check=True)
    assert "server.host=0.0.0.0" in log.read_text().splitlines()


def test_clients_of_the_export_send_the_token_from_the_environment(tmp_path):
    out, _ = export(tmp_path, "retriever.token=SEARCH_TOKEN")
    tool = yaml.safe_load((out / "tool_config.yaml").read_text())["tools"][0]["config"]
    loop = yaml.safe_load((out / "agent_loop.yaml").read_text())[0]
    assert tool["token_env"] == "SEARCH_TOKEN" and loop["retrieval_token_env"] == "SEARCH_TOKEN"


def test_launch_scripts_health_check_sends_the_token(tmp_path, monkeypatch):
    import sys

    from searchr1.retrieval.server import BackgroundServer
    from searchr1.retrieval.settings import ServerConfig

    monkeypatch.setenv("SEARCH_TOKEN", "tok-456")
    fake = tmp_path / "fakepython"  # runs the check with the real interpreter, records veRL's launch
    fake.write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\n'
                    f'echo launched > {tmp_path / "launched"}\n')
    fake.chmod(0o755)
    with BackgroundServer(FakeRetriever(), ServerConfig(port=0, token="SEARCH_TOKEN")) as url:
        out, _ = export(tmp_path, "retriever.token=SEARCH_TOKEN", retriever_url=url)
        assert "tok-456" not in "".join(p.read_text() for p in out.iterdir() if p.suffix in (".sh", ".yaml", ".json", ".md"))
        env = {**os.environ, "PYTHON": str(fake)}
        subprocess.run(["bash", str(out / "train.sh")], env=env, check=True, timeout=60)
        assert (tmp_path / "launched").exists()
        r = subprocess.run(["bash", str(out / "train.sh")], env={**env, "SEARCH_TOKEN": "wrong"},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "no retrieval server answers" in r.stderr


# ----------------------------------------------------------------------------- the tool-call protocol

TOOL_CALL = '<think>go</think>\n<tool_call>\n{"name": "search", "arguments": {"query": "cats"}}\n</tool_call>'
BAD_CALL = '<tool_call>{"name": "search", "arguments": {"query": </tool_call>'
TOOL_JUNK = "\n<tool_response>made up</tool_response><answer> wrong </answer>"


def tool_policy(first: str, then: str):
    return lambda ctx: continue_script(ctx, then if "<tool_response>" in ctx else first)


TOOL_SCENARIOS = {
    "search-answer": (tool_policy(TOOL_CALL, "<think>ok</think>The answer is <answer> dogs </answer>"), {},
                      "answer", ["search", "answer"]),
    "malformed-then-answer": (tool_policy(BAD_CALL, "dogs"), {}, "answer", ["invalid", "answer"]),
    "calls-to-max-turns": (tool_policy(TOOL_CALL, TOOL_CALL), {"max_turns": 1}, "max_turns", ["search", "search"]),
}


@pytest.mark.parametrize("pol,cfg,stop,actions", TOOL_SCENARIOS.values(), ids=TOOL_SCENARIOS.keys())
def test_tool_call_episode_matches_our_agent(pol, cfg, stop, actions):
    """Under agent.protocol=tool_call (a Qwen3-style template, tests/fakes.py) veRL's loop cuts the
    server's turn at </tool_call> and plays the episode as our agent does, token for token."""
    from fakes import chat_tokenizer
    from searchr1.toolcall import SEARCH_TOOL

    tok = chat_tokenizer()
    prompt = build_prompt("Q", tok, template="{question}", tools=[SEARCH_TOOL])
    cfg = {"retrieval_backoff_s": 0.0, "protocol": "tool_call", **cfg}
    traj = new_trajectory(tok, prompt)
    Agent(EngineGenerator(ScriptedLM(tok, pol), tok), FakeRetriever(), AgentConfig(**cfg)).run(
        [traj], SamplingParams(temperature=0))
    ep = episode(tok, pol, FakeRetriever(), junk=TOOL_JUNK, prompt=prompt, **cfg)
    assert (traj.stop_reason, [t.action for t in traj.turns]) == (stop, actions)
    assert without_logprobs(ep) == without_logprobs(traj)
    assert "made up" not in ep.response_text  # what the server wrote past </tool_call> was discarded
    if stop == "answer":
        gt = {"target": ["dogs"]}
        assert verl_reward.compute_score("x", ep.response_text, gt, protocol="tool_call") == 1.0
        assert verl_reward.compute_score("x", ep.response_text, gt) == float(actions[0] == "search")  # tags' rule
        metrics = verl_reward.compute_score_with_metrics("x", ep.response_text, gt, None, protocol="tool_call",
                                                         format_reward=True)
        valid = actions[0] == "search"
        assert metrics == {"score": 1.0 if valid else 0.8, "em": 1.0, "f1": 1.0, "cover_em": 1.0,
                           "valid_format": float(valid)}


def test_tool_call_protocol_reaches_the_agent_loop_and_the_reward(tmp_path):
    out, _ = export(tmp_path, "agent.protocol=tool_call")
    (loop,) = yaml.safe_load((out / "agent_loop.yaml").read_text())
    assert (loop["protocol"], loop["chat"]) == ("tool_call", "template")
    rows = read_rows(out / "train.parquet")
    assert rows[0]["prompt"][0]["content"].startswith(TOOL_TEMPLATE.split("{question}")[0])
    plan = verl_plan(config("agent.protocol=tool_call")).as_dict()
    assert plan["+reward.custom_reward_function.reward_kwargs.protocol"] == "tool_call"
    tags = verl_plan(config()).as_dict()
    assert "+reward.custom_reward_function.reward_kwargs.protocol" not in tags
    out_tags, _ = export(tmp_path / "tags")
    assert yaml.safe_load((out_tags / "agent_loop.yaml").read_text())[0]["protocol"] == "tags"
