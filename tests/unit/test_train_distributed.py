"""Which sharding a launch asks for, and optimizer states keyed by parameter name."""

import pytest
import torch

from searchr1.errors import SearchR1Error
from searchr1.train.distributed import (DataParallel, keyed_by_name, keyed_by_position, resolve_sharding,
                                        sharding_from_launcher, trainable_names)

# what `accelerate launch` puts in its processes' environment for configs/accelerate/*.yaml
FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}


@pytest.mark.parametrize("env, stage", [
    ({}, "none"),
    ({"ACCELERATE_USE_FSDP": "false"}, "none"),
    ({**FSDP2, "FSDP_RESHARD_AFTER_FORWARD": "true"}, "zero3"),
    ({**FSDP2, "FSDP_RESHARD_AFTER_FORWARD": "false"}, "zero2"),
    ({**FSDP2, "FSDP_RESHARD_AFTER_FORWARD": "SHARD_GRAD_OP"}, "zero2"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP",
      "FSDP_RESHARD_AFTER_FORWARD": "true"}, "zero2"),  # FSDP1 configs: the strategy decides
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_SHARDING_STRATEGY": "NO_SHARD"}, "none"),
    ({"ACCELERATE_USE_FSDP": "true"}, "zero3"),
])
def test_sharding_from_the_accelerate_launch_environment(env, stage):
    assert sharding_from_launcher(env) == stage


@pytest.mark.parametrize("env, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed launch configs are not supported"),
    ({**FSDP2, "FSDP_RESHARD_AFTER_FORWARD": "HYBRID_SHARD"}, "FSDP sharding 'HYBRID_SHARD' is not supported"),
    ({**FSDP2, "FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params is not supported"),
    ({**FSDP2, "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "train.compute.gradient_checkpointing=true"),
])
def test_what_the_trainer_cannot_do_is_an_error(env, message):
    with pytest.raises(SearchR1Error, match=message):
        sharding_from_launcher(env)


def test_an_explicit_setting_wins_over_the_launcher():
    env = {**FSDP2, "FSDP_RESHARD_AFTER_FORWARD": "true"}
    assert resolve_sharding("auto", env) == "zero3"
    assert resolve_sharding("zero1", env) == "zero1"
    assert resolve_sharding("none", env) == "none"
    with pytest.raises(SearchR1Error, match="train.compute.sharding must be one of"):
        resolve_sharding("zero4", {})


def test_one_process_never_shards():
    assert DataParallel(sharding="zero3").sharding == "none"


def _stepped(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_optimizer_state_keyed_by_parameter_name_loads_into_an_unsharded_run():
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, opt = _stepped(0)
    saved = get_optimizer_state_dict(model, opt)  # what a sharded run writes (gathered)
    assert sorted(saved["state"]) == ["0.weight", "1.bias", "1.weight"]
    fresh_model, fresh_opt = _stepped(1)
    DataParallel().optimizer_loader({"policy": fresh_model})("policy", fresh_opt, saved)
    want, got = opt.state_dict(), fresh_opt.state_dict()
    assert got["state"].keys() == want["state"].keys()
    for i in want["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got["state"][i][key], want["state"][i][key])


def test_positional_optimizer_state_still_loads_alone():
    model, opt = _stepped(0)
    fresh_model, fresh_opt = _stepped(1)
    DataParallel().optimizer_loader({"policy": fresh_model})("policy", fresh_opt, opt.state_dict())
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_optimizer_state_keys_round_trip_between_positions_and_names():
    model, opt = _stepped(0)
    names = trainable_names(model)
    assert names == ["0.weight", "1.weight", "1.bias"]  # 0.bias is frozen: not in the optimizer
    positional = opt.state_dict()
    named = keyed_by_name(positional, names)
    assert sorted(named["state"]) == sorted(names) and named["param_groups"][0]["params"] == names
    assert torch.equal(named["state"]["1.weight"]["exp_avg"], positional["state"][1]["exp_avg"])
    assert keyed_by_name(named, names) is named
    back = keyed_by_position(named, names)
    assert back["param_groups"] == positional["param_groups"] and back["state"].keys() == positional["state"].keys()
    with pytest.raises(KeyError, match="'1.weight', which this model does not train"):
        keyed_by_position(named, ["0.weight", "1.bias"])


def test_the_collective_timeout_reaches_the_process_group(monkeypatch):
    import accelerate

    import searchr1.train.distributed as d

    made = {}

    class FakeAccelerator:
        process_index, num_processes, device = 0, 2, torch.device("cpu")

        def __init__(self, cpu, kwargs_handlers):
            made["timeout"] = kwargs_handlers[0].timeout

    monkeypatch.setattr(d, "launched_world_size", lambda: 2)
    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    DataParallel.from_env("cpu", "none", timeout_minutes=7.5)
    assert made["timeout"].total_seconds() == 450


_RESUME_RANK = """
import json, os, sys
from pathlib import Path
from types import SimpleNamespace
import torch
import torch.distributed
import searchr1.train.checkpoint as ck
import searchr1.train.trainer as trainer
from searchr1.errors import CheckpointError
from searchr1.train.distributed import DataParallel

rank, run_dir, out = int(os.environ["RANK"]), Path(sys.argv[1]), Path(sys.argv[2])
torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
dist = DataParallel(SimpleNamespace(process_index=rank, num_processes=2, device=torch.device("cpu")))
hashed = []
real_verify = ck.verify_checkpoint
def counting(path, deep=True):
    hashed.append(Path(path).name)
    return real_verify(path, deep)
ck.verify_checkpoint = trainer.verify_checkpoint = counting
try:
    found = {"path": str(trainer._checkpoint_to_resume(run_dir, dist, lambda text: None))}
except CheckpointError as e:
    found = {"error": str(e)}
found["hashed"] = hashed
found["sent"] = dist.broadcast_object({"rank": rank})
out.with_suffix(f".{rank}.json").write_text(json.dumps(found))
torch.distributed.destroy_process_group()
"""


def _two_ranks(tmp_path, run_dir):
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _RESUME_RANK, str(run_dir), str(tmp_path / "out")],
                              env={**env, "RANK": str(r)}) for r in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    return [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1)]


def test_resume_verifies_once_on_rank_0_and_broadcasts(tmp_path):
    from searchr1.train.checkpoint import save_checkpoint

    policy = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(policy.parameters())
    good = save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": opt}, state={})
    bad = save_checkpoint(tmp_path, 2, policy=policy, optimizers={"policy": opt}, state={})
    (bad / "trainer_state.pt").write_bytes(b"x" * (bad / "trainer_state.pt").stat().st_size)  # same size, corrupted
    zero, one = _two_ranks(tmp_path, tmp_path)
    assert zero["path"] == one["path"] == str(good)
    assert zero["hashed"] == ["step-000002", "step-000001"] and one["hashed"] == []  # rank 1 hashed nothing
    assert zero["sent"] == one["sent"] == {"rank": 0}
    # none verifies: the same clear error on both ranks (none waits for the other)
    (good / "trainer_state.pt").write_bytes(b"x" * (good / "trainer_state.pt").stat().st_size)
    zero, one = _two_ranks(tmp_path, tmp_path)
    assert zero["error"] == one["error"] and "cannot resume: no checkpoint" in one["error"]
