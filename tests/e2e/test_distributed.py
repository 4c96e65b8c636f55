"""Data parallelism on CPU (gloo): 2 processes must train exactly like 1 on the same global batch,
and `searchr1 train` must run, checkpoint and resume under `torchrun` with 2 processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from searchr1.train.checkpoint import find_latest_checkpoint, verify_checkpoint
from searchr1.train.metrics_log import read_metrics

import dp_worker

HERE = Path(__file__).resolve().parent

LAUNCHER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]


@pytest.fixture(scope="module")
def updates(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    _run([sys.executable, str(HERE / "dp_worker.py"), str(root / "one.pt")], root)
    _run(torchrun(2) + [str(HERE / "dp_worker.py"), str(root / "two.pt")], root)
    return torch.load(root / "one.pt"), torch.load(root / "two.pt")


@pytest.mark.parametrize("case", list(dp_worker.CASES))
def test_two_processes_update_like_one(updates, case):
    one, two = updates[0][case], updates[1][case]
    assert one["metrics"]["train/optimizer_steps"] == two["metrics"]["train/optimizer_steps"] > 0
    assert one["params"].keys() == two["params"].keys()
    # the norm is taken over the gradients the optimizer applies (sharded ones under FSDP)
    assert two["metrics"]["actor/grad_norm"] == pytest.approx(one["metrics"]["actor/grad_norm"], rel=1e-5)
    # metrics describe the whole batch: means of means, and maxima (rollout/logprob_diff) of maxima
    for key in ("actor/kl", "actor/entropy", "actor/pg_loss", "rollout/logprob_diff"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7), key
    initial = dict(dp_worker.build_models(dp_worker.tiny_llama(), dp_worker.config(case)).policy.named_parameters())
    moved = max((one["params"][k] - initial[k.removeprefix("policy.")]).abs().max().item()
                for k in one["params"] if k.startswith("policy."))
    diff = max((one["params"][k] - two["params"][k]).abs().max().item() for k in one["params"])
    # the update is large (lr 0.5, SGD) and the two runs agree to float rounding: a gradient off by
    # the world size (a sum where DDP averages, or a lost rank) would differ by about `moved`
    assert moved > 1e-3
    assert diff < 1e-6 * max(1.0, moved), (case, diff, moved)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from fakes import char_tokenizer

    root = tmp_path_factory.mktemp("dp-train")
    tok = char_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                 pad_token_id=0, eos_token_id=1, bos_token_id=None)).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "qa.jsonl").write_text("".join(json.dumps({"id": str(i), "question": f"q{i}", "golden_answers": ["x"]})
                                           + "\n" for i in range(8)))
    return root


def _train_args(world: Path, run: Path, steps: int, resume: bool = False) -> list[str]:
    return ["-m", "searchr1", "train", f"model.name={world / 'tiny'}", "model.device=cpu", "model.chat=raw",
            "agent.max_turns=0", "agent.max_turn_tokens=8", f"train.questions.datasets={world / 'qa.jsonl'}",
            'agent.template="Q: {question}"', "train.prompts_per_step=4", "train.group_size=2",
            "train.mini_batch_size=4", "train.micro_batch_size=2", "train.optim.lr=1e-3", f"train.steps={steps}",
            "train.save_every=1", "train.keep_last=5", "train.tensorboard=false", "train.progress=false",
            f"train.run_dir={run}", f"train.resume={str(resume).lower()}"]


@pytest.mark.parametrize("sharding", ["none", "zero1", "zero3"])
def test_searchr1_train_under_torchrun_checkpoints_and_resumes(tiny_world, tmp_path, sharding):
    run = tmp_path / "run"
    extra = [f"train.compute.sharding={sharding}"]
    first = _run(torchrun(2) + _train_args(tiny_world, run, steps=2) + extra, tmp_path)
    assert f"data parallel over 2 processes (2 prompts each; sharding {sharding})" in first.stdout
    assert first.stdout.count("searchr1: trained grpo to step 2") == 1  # rank 0 reports, once
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # one writer
    verify_checkpoint(find_latest_checkpoint(run))
    _run(torchrun(2) + _train_args(tiny_world, run, steps=3, resume=True) + extra, tmp_path)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    latest = find_latest_checkpoint(run)
    assert latest.name == "step-000003"
    verify_checkpoint(latest)


@pytest.mark.parametrize("config, sharding", [("ddp.yaml", "none"), ("fsdp.yaml", "zero3"),
                                              ("fsdp-shard-grad-op.yaml", "zero2")])
def test_searchr1_train_under_accelerate_launch(tiny_world, tmp_path, config, sharding):
    config = HERE.parents[1] / "configs" / "accelerate" / config
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                "--num_processes", "2", "--main_process_port", "0"]
    # validation on rank 0 while the others wait: under FSDP the policy is gathered for it
    validation = ["train.eval_every=1", "eval.modes=direct", f"eval.datasets={tiny_world / 'qa.jsonl'}",
                  "eval.limit=4", "eval.html=false"]
    proc = _run(launcher + _train_args(tiny_world, tmp_path / "run", steps=1) + validation, tmp_path)
    assert f"data parallel over 2 processes (2 prompts each; sharding {sharding})" in proc.stdout
    rows = read_metrics(tmp_path / "run")
    assert {r["step"] for r in rows} == {1}
    assert any(k.startswith("eval/") and k.endswith("/direct/em") for r in rows for k in r)
    verify_checkpoint(find_latest_checkpoint(tmp_path / "run"))


def test_a_sharded_checkpoint_is_a_whole_model_that_resumes_in_one_process(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    _run(torchrun(2) + _train_args(tiny_world, run, steps=1) + ["train.compute.sharding=zero3"], tmp_path)
    ckpt = find_latest_checkpoint(run)
    trained = AutoModelForCausalLM.from_pretrained(ckpt / "policy")  # plain files, whole tensors
    initial = AutoModelForCausalLM.from_pretrained(tiny_world / "tiny")
    assert trained.state_dict().keys() == initial.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), initial.state_dict().values()))
    # the optimizer state was saved keyed by parameter name; one process (no sharding) takes it up
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert isinstance(state["optimizers"]["policy"]["param_groups"][0]["params"][0], str)
    _run([sys.executable] + _train_args(tiny_world, run, steps=2, resume=True), tmp_path)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    verify_checkpoint(find_latest_checkpoint(run))


def test_batch_that_does_not_split_over_the_processes_is_a_clear_error(tiny_world, tmp_path):
    args = _train_args(tiny_world, tmp_path / "run", steps=1)
    args[args.index("train.prompts_per_step=4")] = "train.prompts_per_step=3"
    args[args.index("train.mini_batch_size=4")] = "train.mini_batch_size=6"
    proc = subprocess.run(torchrun(2) + args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "train.prompts_per_step (3) must be a multiple of the number of processes (2)" in proc.stdout + proc.stderr


@pytest.mark.parametrize("first, then", [("zero3", "zero3"), ("none", "zero3"), ("zero3", "zero1")])
def test_a_resumed_run_continues_exactly_under_any_sharding(tiny_world, tmp_path, first, then):
    """2 processes: 3 steps straight == 2 steps, stop, resume for the 3rd, also when the resumed run
    shards differently (weights, AdamW moments, data position and RNG all come back; the optimizer
    state is saved keyed by parameter name whatever the sharding)."""
    from transformers import AutoModelForCausalLM

    # fp32: under bf16-mixed, FSDP's bf16 parameter gathers round unlike DDP's autocast
    lr = ["train.optim.lr=1e-2", "train.compute.precision=fp32"]
    _run(torchrun(2) + _train_args(tiny_world, tmp_path / "straight", steps=3) + lr + [f"train.compute.sharding={first}"],
         tmp_path)
    _run(torchrun(2) + _train_args(tiny_world, tmp_path / "resumed", steps=2) + lr + [f"train.compute.sharding={first}"],
         tmp_path)
    _run(torchrun(2) + _train_args(tiny_world, tmp_path / "resumed", steps=3, resume=True) + lr
         + [f"train.compute.sharding={then}"], tmp_path)
    a, b = (AutoModelForCausalLM.from_pretrained(find_latest_checkpoint(tmp_path / r) / "policy").state_dict()
            for r in ("straight", "resumed"))
    initial = AutoModelForCausalLM.from_pretrained(tiny_world / "tiny").state_dict()
    moved = max((a[k] - initial[k]).abs().max().item() for k in a)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-3
    assert diff < 1e-6, diff
    assert [r["reward/mean"] for r in read_metrics(tmp_path / "straight")] == \
        [r["reward/mean"] for r in read_metrics(tmp_path / "resumed")]


def test_two_nodes_rendezvous_and_train(tiny_world, tmp_path):
    """Two torchrun agents, one per "node" (here both on 127.0.0.1), meeting through a c10d
    rendezvous as they would across machines: each node's process has LOCAL_RANK 0, global ranks
    0 and 1; rank 0 alone writes the metrics and the checkpoint to the shared run directory."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    args = _train_args(tiny_world, run, steps=1) + ["train.compute.sharding=zero3"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=searchr1-test"] + args,
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), "\n".join(o[-3000:] for o in outs)
    joined = "".join(outs)
    assert joined.count("data parallel over 2 processes") == 1
    assert [r["step"] for r in read_metrics(run)] == [1]
    verify_checkpoint(find_latest_checkpoint(run))
