"""`searchr1 export verl` against a running `searchr1 serve` and, where it is installed, veRL's own code.

The server is the real one (`python -m searchr1 serve`, a subprocess) over a BM25 index of a small
synthetic world. Without veRL the tests check what veRL relies on: its request shape gets our
server's answer, and the agent loop's episodes, searching that server, are scored by the exported
reward exactly as by `searchr1.rewards`. With veRL importable (`pip install verl==0.9.1` plus
cachetools, pyzmq, msgspec; CPU torch is enough) they run veRL's own code: hydra composition and
`validate_config` of the exported overrides, its reward loader, its RLHFDataset on our parquet,
its tool registry on our tool config (the tool then searches our server), and our agent loop
instantiated the way veRL's AgentLoopWorker does, with a stand-in for the vLLM/SGLang server
(the one piece that needs a GPU).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import requests

from fakes import char_tokenizer, continue_script
from searchr1 import rewards
from searchr1.config import load_config
from searchr1.export import verl_reward
from searchr1.export.episode import run_episode_sync
from searchr1.export.verl import ExportOptions, export_verl
from searchr1.protocol import format_documents
from searchr1.retrieval.client import HttpRetriever
from searchr1.rollout.agent import new_trajectory, search_with_retries
from searchr1.rollout.settings import AgentConfig
from searchr1.rollout.step import EpisodeStep
from searchr1.settings import Config

WORLD = ["train.questions.datasets=synthetic", "world.countries=3", "world.cities_per_country=2",
         "world.people=6", "world.organisations=2"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[A]{% endif %}"


@pytest.fixture(scope="module")
def world():
    from searchr1.data.synthetic import build_world

    return build_world(0, 3, 2, 6, 2)


@pytest.fixture(scope="module")
def server(tmp_path_factory, world):
    from searchr1.retrieval.build import build_index
    from searchr1.retrieval.corpus import write_passages
    from searchr1.retrieval.process import ServerProcess
    from searchr1.retrieval.settings import IndexConfig

    root = tmp_path_factory.mktemp("verl-world")
    write_passages(world.passages(), root / "corpus.jsonl")
    build_index(IndexConfig(corpus=str(root / "corpus.jsonl"), dir=str(root / "index"), methods=["bm25"]),
                progress=False)
    proc = ServerProcess([f"retriever.index={root / 'index'}", "server.host=127.0.0.1", "server.port=0"])
    proc.start()
    try:
        yield proc.url
    finally:
        proc.stop()


def _export(tmp_path_factory, server, name, *overrides, preset=None, **opts):
    out = tmp_path_factory.mktemp(name) / "verl"
    cfg = load_config(Config, preset, [*WORLD, *overrides])
    export_verl(cfg, ExportOptions(out_dir=str(out), retriever_url=server, **opts))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, server):
    """Exports of the paper presets (on the synthetic world's questions) and of the tool agent (with LoRA)."""
    return {
        "grpo": _export(tmp_path_factory, server, "grpo", "model.chat=raw", preset="paper-grpo-qwen2.5-3b"),
        "ppo": _export(tmp_path_factory, server, "ppo", preset="paper-ppo-qwen2.5-3b"),
        "tool": _export(tmp_path_factory, server, "tool", "train.format_reward=true", "train.lora.r=8", agent="tool",
                        rollout="sglang"),
    }


def capital_question(world):
    country = world.of_kind("country")[0]
    return country, f"What is the capital of {country.name}?", country.facts["capital"]


# ----------------------------------------------------------------------------- no veRL needed


def test_verls_request_shape_gets_our_answer(server, world):
    """What veRL's search client (search_r1_like_utils.call_search_api) posts, with its headers."""
    country, _, capital = capital_question(world)
    payload = {"queries": [f"capital of {country.name}", "founded organisation"], "topk": 3, "return_scores": True}
    r = requests.post(server + "/retrieve", json=payload, timeout=30,
                      headers={"Content-Type": "application/json", "Accept": "application/json"})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert len(result) == 2 and all(len(row) == 3 for row in result)
    for item in result[0]:
        assert set(item) == {"document", "score"} and isinstance(item["score"], float)
        assert {"id", "contents"} <= set(item["document"])
    # veRL formats `contents` as title line + text (its _passages2string): the top hit is the country
    top = result[0][0]["document"]["contents"]
    title, _, text = top.partition("\n")
    assert title == f'"{country.name}"' and capital in text


def episode_engine(tok, question_country, capital):
    """A stand-in for the inference server: searches, then answers from the passages it was shown;
    it knows no stop strings, so it keeps writing after </search> (the loop must cut there)."""
    first = f"<think>I need to look this up.</think><search> capital of {question_country} </search>"
    after = f"<think>The passage says it.</think><answer> {capital} </answer>"

    def pol(response):
        return continue_script(response, after if "<information>" in response else first)

    prompt_len = []

    async def generate(context, max_tokens):
        prompt_len.append(len(context)) if not prompt_len else None  # the first call's context is the prompt
        text, out = tok.decode(context[prompt_len[0]:]), []
        while len(out) < max_tokens:
            c = pol(text)
            if c is None:
                out += tok.encode("<information>invented</information>")
                break
            out.append(tok.convert_tokens_to_ids(c))
            text += c
        out = out[:max_tokens]
        return out, [-1.0] * len(out)

    return generate


def test_episode_searches_our_server_and_is_scored_like_our_rewards(server, world):
    tok = char_tokenizer()
    country, question, capital = capital_question(world)
    retriever = HttpRetriever(server)

    async def search(query):
        return search_with_retries(retriever, [query], 3, 3, 0.1)[0]

    with retriever:
        ep = run_episode_sync(new_trajectory(tok, question), episode_engine(tok, country.name, capital), search,
                              EpisodeStep(tok, AgentConfig(max_response_tokens=2000)), eos_ids={tok.eos_token_id})
        passages = format_documents(retriever.search([f"capital of {country.name}"], 3)[0]).strip()
    text = tok.decode(ep.response_ids, skip_special_tokens=True)
    assert ep.stop_reason == "answer" and ep.queries() == [f"capital of {country.name}"]
    assert passages in text
    assert "invented" not in text
    for fmt in (False, True):
        expected = rewards.compute_score(text, [capital], format_reward=fmt)
        assert expected == 1.0
        assert verl_reward.compute_score("synthetic", text, {"target": [capital]}, format_reward=fmt) == expected


# ----------------------------------------------------------------------------- veRL's own code


@pytest.fixture(scope="module")
def verl():
    return pytest.importorskip("verl")


def compose(verl, export_dir, *extra):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    overrides = json.loads((export_dir / "export.json").read_text())["overrides"]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = hydra_compose(config_name="ppo_trainer", overrides=[*overrides, *extra])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A model directory veRL's HFModelConfig can read offline (config + tokenizer; no weights needed)."""
    from transformers import LlamaConfig

    out = tmp_path_factory.mktemp("tiny-model")
    tok = verl_tokenizer()
    LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, architectures=["LlamaForCausalLM"]).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("which", ["grpo", "ppo", "tool"])
def test_overrides_compose_and_validate_with_verls_config(verl, exported, which, local_model):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    cfg = compose(verl, exported[which])
    # the model is read from the hub by the exported script; here from a local stand-in (no network)
    assert cfg.actor_rollout_ref.model.path == ("Qwen/Qwen2.5-3B" if which != "tool" else
                                                "HuggingFaceTB/SmolLM2-135M-Instruct")
    paths = [f"actor_rollout_ref.model.path={local_model}"] + ([f"critic.model.path={local_model}"]
                                                              if which == "ppo" else [])
    cfg = compose(verl, exported[which], *paths)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert actor.optim.lr == 1e-6 and cfg.data.train_batch_size == 512
    assert cfg.reward.custom_reward_function.path == "pkg://searchr1.export.verl_reward"
    if which == "grpo":
        assert algo.adv_estimator == "grpo" and rollout.n == 5 and actor.ppo_mini_batch_size == 256
        assert actor.use_kl_loss and actor.kl_loss_coef == 0.001 and actor.kl_loss_type == "low_var_kl"
        assert actor.optim.lr_warmup_steps == 286 and not need_critic(cfg)
        assert rollout.agent.default_agent_loop == "searchr1_agent"
        assert rollout.agent.agent_loop_config_path == str(exported[which].resolve() / "agent_loop.yaml")
    if which == "ppo":
        assert algo.adv_estimator == "gae" and need_critic(cfg) and algo.use_kl_in_reward
        assert algo.kl_ctrl.kl_coef == 0.001 and cfg.critic.optim.lr == 1e-5
    if which == "tool":
        assert rollout.name == "sglang" and rollout.multi_turn.enable
        assert rollout.multi_turn.tool_config_path == str(exported[which].resolve() / "tool_config.yaml")
        assert cfg.reward.custom_reward_function.reward_kwargs.format_reward is True
        assert cfg.actor_rollout_ref.model.lora_rank == 8
        assert list(cfg.actor_rollout_ref.model.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj"]


def test_verls_reward_loader_loads_our_function(verl, exported):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    for which, fmt in (("grpo", False), ("tool", True)):
        fn = get_custom_reward_fn(compose(verl, exported[which]))
        for response in ("<think>a</think><answer> Paris </answer>", "<answer>Paris</answer>", "<answer>x</answer>",
                         "no answer"):
            got = fn(data_source="synthetic", solution_str=response, ground_truth={"target": ["Paris"]},
                     extra_info={"index": 0})
            assert got == rewards.compute_score(response, ["Paris"], format_reward=fmt)
    assert fn(data_source="s", solution_str="<answer>Paris</answer>", ground_truth={"target": ["Paris"]}) == 0.8


def verl_tokenizer():
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_verls_dataset_reads_our_parquet(verl, exported):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg = compose(verl, exported["grpo"], "data.max_prompt_length=2048")
    ds = RLHFDataset(data_files=[str(exported["grpo"] / "train.parquet")], tokenizer=verl_tokenizer(), config=cfg.data)
    assert len(ds) == json.loads((exported["grpo"] / "export.json").read_text())["train_rows"]
    row = ds[0]
    assert row["agent_name"] == "searchr1_agent" and row["data_source"] == "synthetic"
    assert [m["role"] for m in row["raw_prompt"]] == ["user"]
    assert row["raw_prompt"][0]["content"].startswith("Answer the given question.")
    assert list(row["reward_model"]["ground_truth"]["target"]) == list(row["tools_kwargs"]["search"]["create_kwargs"]
                                                                       ["ground_truth"]["target"])
    assert row["index"] == 0


def test_verls_tool_registry_loads_our_tool_and_it_searches_our_server(verl, exported, server, world):
    from verl.tools.tool_registry import initialize_tools_from_config

    (tool,) = initialize_tools_from_config(str(exported["tool"] / "tool_config.yaml"))
    assert tool.name == "search" and tool.retrieval_service_url == server + "/retrieve"
    country, _, capital = capital_question(world)
    queries = [f"capital of {country.name}", "shipbuilding organisation"]

    async def call(parameters):
        instance_id, _ = await tool.create(create_kwargs={"ground_truth": {"target": [capital]}})
        try:
            return await tool.execute(instance_id, parameters)
        finally:
            await tool.release(instance_id)

    response, reward, metrics = asyncio.run(call({"query_list": queries}))
    with HttpRetriever(server) as client:
        hits = client.search(queries, 3)
    expected = "\n---\n".join(format_documents(h).strip() for h in hits)
    assert response.text == expected and capital in response.text
    assert reward == 0.0 and metrics["status"] == "success" and metrics["total_results"] == sum(map(len, hits))
    bad, _, metrics = asyncio.run(call({"query_list": "   "}))
    assert bad.text.startswith("Error") and metrics["status"] == "invalid"


class FakeServerManager:
    """Stands in for veRL's LLMServerClient (a vLLM/SGLang server on a GPU)."""

    def __init__(self, generate):
        self._generate = generate
        self.calls = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append((request_id, len(prompt_ids), dict(sampling_params)))
        ids, logprobs = await self._generate(list(prompt_ids), sampling_params["max_tokens"])
        return TokenOutput(token_ids=ids, log_probs=logprobs, extra_fields={"global_steps": 3})


@pytest.mark.parametrize("chat", ["raw", "template"])
def test_our_agent_loop_runs_in_verls_agent_loop_machinery(verl, exported, server, world, chat):
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, DictConfigWrap, ToolListWrap
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.dataset.rl_dataset import RLHFDataset

    out = exported["grpo"]
    cfg = compose(verl, out, "data.max_prompt_length=2048", "data.max_response_length=1500")
    tok = verl_tokenizer()
    ds = RLHFDataset(data_files=[str(out / "train.parquet")], tokenizer=tok, config=cfg.data)
    prefix = "What is the capital of "
    row = next(ds[i] for i in range(len(ds)) if ds[i]["extra_info"]["question"].startswith(prefix))
    country = row["extra_info"]["question"][len(prefix):-1]
    (capital,) = row["reward_model"]["ground_truth"]["target"]
    kwargs = {k: v for k, v in row.items() if k != "dummy_tensor"}

    # register and build the loop exactly as AgentLoopWorker does (agent_loop_config_path -> instantiate)
    (loop_cfg,) = OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    assert loop_cfg.name == row["agent_name"] == "searchr1_agent"
    loop_cfg.chat = chat
    manager = FakeServerManager(episode_engine(tok, country, capital))

    async def run():
        loop = hydra.utils.instantiate(config=loop_cfg, trainer_config=DictConfigWrap(config=cfg),
                                       server_manager=manager, tokenizer=tok, processor=None, hf_model_type=None,
                                       dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data),
                                       tools=ToolListWrap([]))
        sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
        return await loop.run(sampling, **kwargs)

    output = asyncio.run(run())
    assert isinstance(output, AgentLoopOutput)
    prompt = tok.decode(output.prompt_ids)
    assert prompt == row["raw_prompt"][0]["content"] + ("[A]" if chat == "template" else "")
    assert len(output.response_ids) == len(output.response_mask) == len(output.response_logprobs) <= 1500
    text = tok.decode(output.response_ids, skip_special_tokens=True)
    assert text.startswith("<think>I need to look this up.</think><search> capital of")
    assert "<information>Doc 1(Title: " in text and text.endswith(f"<answer> {capital} </answer>")
    generated = tok.decode([t for t, m in zip(output.response_ids, output.response_mask) if m])
    assert "<information>" not in generated and "Doc 1" not in generated  # retrieved text is masked out
    assert [lp for lp, m in zip(output.response_logprobs, output.response_mask) if not m] == [0.0] * (
        len(output.response_mask) - sum(output.response_mask))
    assert output.extra_fields["searchr1_searches"] == 1 and output.extra_fields["global_steps"] == 3
    assert output.num_turns == 4 and len(manager.calls) == 2
    assert len({c[0] for c in manager.calls}) == 1  # one request id: sticky to one server (prefix cache)
    assert all(c[2]["max_tokens"] <= 500 for c in manager.calls)
    tensors = output.as_dict()
    assert tensors["responses"].tolist() == output.response_ids
    assert tensors["response_mask"].tolist() == output.response_mask

    # veRL scores it with our reward: the decoded response, the row's ground truth
    fn = get_custom_reward_fn(cfg)
    assert fn(data_source=row["data_source"], solution_str=text, ground_truth=row["reward_model"]["ground_truth"],
              extra_info=row["extra_info"]) == 1.0
