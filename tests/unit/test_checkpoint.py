"""Checkpoints: exact resume (plain module, tiny Llama, LoRA), pruning, corruption, interrupted writes."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from searchr1.errors import CheckpointError, SearchR1Error
from searchr1.train.checkpoint import (
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
    verify_checkpoint,
)

torch.set_num_threads(1)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _params(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.state_dict().values()]


def _assert_bitwise_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


# ------------------------------------------------------------------------------------ plain modules


class _Critic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.head(self.drop(torch.tanh(self.body(x))))


def _build_plain(init_seed: int):
    torch.manual_seed(init_seed)
    policy = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    critic = _Critic()
    opts = {"policy": torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.01),
            "critic": torch.optim.AdamW(critic.parameters(), lr=3e-2)}
    schs = {"policy": torch.optim.lr_scheduler.LambdaLR(opts["policy"], lambda s: 1.0 / (1 + s)),
            "critic": torch.optim.lr_scheduler.StepLR(opts["critic"], step_size=1, gamma=0.7)}
    return policy, critic, opts, schs


def _plain_step(policy, critic, opts, schs) -> None:
    x = torch.randn(16, 4)
    noise = torch.from_numpy(np.random.randn(16, 1)).float() * random.random()  # numpy + python RNG
    y = x.sum(1, keepdim=True) + noise
    loss = ((policy(x) - y) ** 2).mean() + ((critic(x) - y) ** 2).mean()
    for o in opts.values():
        o.zero_grad()
    loss.backward()
    for o in opts.values():
        o.step()
    for s in schs.values():
        s.step()


def test_exact_resume_plain_modules_with_critic(tmp_path):
    _seed_all(0)
    objs = _build_plain(1)
    for _ in range(4):
        _plain_step(*objs)
    reference = _params(objs[0], objs[1])

    _seed_all(0)
    policy, critic, opts, schs = _build_plain(1)
    for _ in range(2):
        _plain_step(policy, critic, opts, schs)
    state = {"data": {"epoch": 0, "index": np.int64(7)}, "config": {"lr": 1e-2, "run_dir": tmp_path},
             "history": [{"step": 1, "loss": 0.5}], "pair": (1, 2)}
    path = save_checkpoint(tmp_path, 2, policy=policy, critic=critic, optimizers=opts, schedulers=schs,
                           state=state)
    assert path == tmp_path / "checkpoints" / "step-000002"
    assert (path / "policy" / "policy.pt").is_file() and (path / "critic" / "critic.pt").is_file()

    _seed_all(123)  # the RNGs must come from the checkpoint, the weights too
    policy2, critic2, opts2, schs2 = _build_plain(99)
    for _ in range(3):
        torch.randn(5)
    loaded = load_checkpoint(path, policy=policy2, critic=critic2, optimizers=opts2, schedulers=schs2)
    assert loaded == {"data": {"epoch": 0, "index": 7}, "config": {"lr": 1e-2, "run_dir": str(tmp_path)},
                      "history": [{"step": 1, "loss": 0.5}], "pair": (1, 2)}
    for _ in range(2):
        _plain_step(policy2, critic2, opts2, schs2)
    _assert_bitwise_equal(_params(policy2, critic2), reference)


# ------------------------------------------------------------------------------------ tiny Llama


def _tiny_llama(init_seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(init_seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64,
                      attention_dropout=0.1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.train()
    return model


def _tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(63)} | {"<unk>": 63}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def _llama_opt(model):
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    return {"policy": opt}, {"policy": get_linear_schedule_with_warmup(opt, 2, 10)}


def _llama_step(model, opts, schs) -> None:
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():  # "rollout": sample continuations from the policy
        probs = torch.softmax(model(input_ids=ids).logits[:, -1], dim=-1)
        nxt = torch.multinomial(probs, 1)
    ids = torch.cat([ids, nxt], dim=1)
    loss = model(input_ids=ids, labels=ids).loss
    opts["policy"].zero_grad()
    loss.backward()
    opts["policy"].step()
    schs["policy"].step()


def _reference_and_checkpoint(make_model, tmp_path, **save_kwargs):
    """(parameters after 4 uninterrupted steps, checkpoint of a second run stopped after step 2)."""
    _seed_all(0)
    model = make_model()
    opts, schs = _llama_opt(model)
    for _ in range(4):
        _llama_step(model, opts, schs)
    reference = _params(model)

    _seed_all(0)
    model = make_model()
    opts, schs = _llama_opt(model)
    for _ in range(2):
        _llama_step(model, opts, schs)
    return reference, save_checkpoint(tmp_path, 2, policy=model, optimizers=opts, schedulers=schs, **save_kwargs)


def test_exact_resume_tiny_llama(tmp_path):
    reference, path = _reference_and_checkpoint(lambda: _tiny_llama(1), tmp_path, tokenizer=_tiny_tokenizer(),
                                                state={"step": 2})
    names = {p.name for p in (path / "policy").iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names

    _seed_all(5)
    model2 = _tiny_llama(2)
    opts2, schs2 = _llama_opt(model2)
    assert load_checkpoint(path, policy=model2, optimizers=opts2, schedulers=schs2) == {"step": 2}
    assert model2.lm_head.weight.data_ptr() == model2.model.embed_tokens.weight.data_ptr()  # still tied
    for _ in range(2):
        _llama_step(model2, opts2, schs2)
    _assert_bitwise_equal(_params(model2), reference)


def _lora_llama(lora_seed: int):
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama(1)  # the base is rebuilt identically (from the model path, in real runs)
    torch.manual_seed(lora_seed)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                     init_lora_weights="gaussian")  # non-zero B, so a wrong load shows
    model = get_peft_model(base, cfg)
    model.train()
    return model


def test_exact_resume_lora(tmp_path):
    reference, path = _reference_and_checkpoint(lambda: _lora_llama(3), tmp_path, state={})
    names = {p.name for p in (path / "policy").iterdir()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names  # adapter only

    _seed_all(9)
    model2 = _lora_llama(4)
    opts2, schs2 = _llama_opt(model2)
    load_checkpoint(path, policy=model2, optimizers=opts2, schedulers=schs2)
    for _ in range(2):
        _llama_step(model2, opts2, schs2)
    _assert_bitwise_equal(_params(model2), reference)


def test_wrong_model_kind_is_a_clear_error(tmp_path):
    policy, critic, opts, schs = _build_plain(0)
    path = save_checkpoint(tmp_path, 1, policy=policy, optimizers=opts, schedulers=schs, state={})
    other = nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, policy=other, optimizers={}, schedulers={})
    with pytest.raises(CheckpointError, match="optimizers given"):
        load_checkpoint(path, policy=_build_plain(0)[0], optimizers={"x": opts["policy"]})


# ------------------------------------------------------------------------------------ files on disk


def _save_plain(run_dir, step, keep_last=3, drop_newer=False):
    policy, critic, opts, schs = _build_plain(step)
    return save_checkpoint(run_dir, step, policy=policy, critic=critic, optimizers=opts, schedulers=schs,
                           state={"step": step}, keep_last=keep_last, drop_newer=drop_newer)


def test_manifest_and_latest(tmp_path):
    path = _save_plain(tmp_path, 7)
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert manifest["format_version"] == 1 and manifest["step"] == 7
    assert manifest["searchr1_version"] and manifest["created"]
    assert set(manifest["files"]) == {"policy/policy.pt", "critic/critic.pt", "trainer_state.pt"}
    for rel, meta in manifest["files"].items():
        assert (path / rel).stat().st_size == meta["size"] and len(meta["sha256"]) == 64
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000007"
    verify_checkpoint(path)
    assert issubclass(CheckpointError, SearchR1Error)


def test_keep_last_prunes_older(tmp_path):
    for step in range(1, 6):
        _save_plain(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    assert find_latest_checkpoint(tmp_path).name == "step-000005"
    _save_plain(tmp_path, 6, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000006"]
    # A run that did not resume keeps later checkpoints it finds (only a resumed run may drop them) ...
    _save_plain(tmp_path, 3, keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000006"]
    # ... a resumed run saving an earlier step removes the abandoned later ones (they would shadow it).
    _save_plain(tmp_path, 3, keep_last=3, drop_newer=True)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003"]
    # Re-saving an existing step replaces it.
    _save_plain(tmp_path, 3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003"]
    verify_checkpoint(tmp_path / "checkpoints" / "step-000003")


def test_corrupted_file_fails_sha256(tmp_path, caplog):
    first = _save_plain(tmp_path, 1)
    second = _save_plain(tmp_path, 2)
    weights = second / "policy" / "policy.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    verify_checkpoint(second, deep=False)  # same size: only the hash catches it
    with pytest.raises(CheckpointError, match=r"step-000002.*sha256 mismatch for policy/policy.pt"):
        verify_checkpoint(second)
    with pytest.raises(CheckpointError, match="sha256"):
        policy, critic, opts, schs = _build_plain(0)
        load_checkpoint(second, policy=policy, critic=critic, optimizers=opts, schedulers=schs)
    with caplog.at_level(logging.WARNING):
        assert find_latest_checkpoint(tmp_path) == first
    assert "sha256" in caplog.text


def test_missing_or_truncated_manifest_is_skipped(tmp_path, caplog):
    first = _save_plain(tmp_path, 1)
    second = _save_plain(tmp_path, 2)
    manifest = second / "MANIFEST.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])  # killed mid-write
    with pytest.raises(CheckpointError, match="MANIFEST.json is unreadable"):
        verify_checkpoint(second)
    with caplog.at_level(logging.WARNING):
        assert find_latest_checkpoint(tmp_path) == first
    manifest.unlink()
    with pytest.raises(CheckpointError, match="no MANIFEST.json"):
        verify_checkpoint(second)
    assert find_latest_checkpoint(tmp_path) == first


def test_missing_and_truncated_files(tmp_path):
    path = _save_plain(tmp_path, 1)
    (path / "critic" / "critic.pt").unlink()
    with pytest.raises(CheckpointError, match="critic/critic.pt is missing"):
        verify_checkpoint(path, deep=False)
    path = _save_plain(tmp_path, 2)
    state = path / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="trainer_state.pt has size"):
        verify_checkpoint(path, deep=False)
    assert find_latest_checkpoint(tmp_path) is None
    assert find_latest_checkpoint(tmp_path / "nothing-here") is None


def test_unreadable_trainer_state(tmp_path):
    path = _save_plain(tmp_path, 1)
    (path / "trainer_state.pt").write_bytes(b"not a torch file")
    manifest = json.loads((path / "MANIFEST.json").read_text())
    manifest["files"]["trainer_state.pt"]["size"] = 16
    (path / "MANIFEST.json").write_text(json.dumps(manifest))
    policy, critic, opts, schs = _build_plain(0)
    with pytest.raises(CheckpointError, match="trainer_state.pt is unreadable"):
        load_checkpoint(path, policy=policy, critic=critic, optimizers=opts, schedulers=schs, verify=False)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stray_tmp_dirs_of_dead_writers_are_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    dead = root / f".tmp-step-000005-{_dead_pid()}"
    alive = root / f".tmp-step-000005-{os.getppid()}"  # a live writer's: left alone
    for d in (dead, alive):
        (d / "policy").mkdir(parents=True)
        (d / "policy" / "half.bin").write_bytes(b"x" * 100)
    assert find_latest_checkpoint(tmp_path) is None  # temp dirs are never checkpoints
    _save_plain(tmp_path, 1)
    assert not dead.exists() and alive.exists()


_KILLED_WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from torch import nn
    from searchr1.train import checkpoint as ck

    run_dir, where, marker = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)

    def hang():
        open(marker, "w").close()
        time.sleep(120)

    if where == "torch.save":
        real_save = torch.save
        def slow_save(obj, f, *a, **k):
            if str(f).endswith("trainer_state.pt"):
                with open(f, "wb") as fh:  # half of a big file, then the kill
                    fh.write(os.urandom(1 << 20))
                    fh.flush()
                    hang()
            return real_save(obj, f, *a, **k)
        ck.torch.save = slow_save
    else:  # complete temp dir with MANIFEST, killed just before the rename
        real_swap_in = ck.swap_in
        def slow_swap_in(src, dst):
            if ".tmp-step-" in str(src):
                hang()
            return real_swap_in(src, dst)
        ck.swap_in = slow_swap_in

    policy = nn.Linear(4, 1)
    opt = torch.optim.AdamW(policy.parameters())
    ck.save_checkpoint(run_dir, 2, policy=policy, optimizers={"policy": opt},
                       state={"big": torch.zeros(1 << 18)})
""")


@pytest.mark.parametrize("where", ["torch.save", "swap_in"])
def test_killed_writer_leaves_previous_checkpoint(tmp_path, where):
    policy = nn.Linear(4, 1)
    opt = torch.optim.AdamW(policy.parameters())
    first = save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": opt}, state={"n": 1})
    pid = _run_until_marker_then_kill(_KILLED_WRITER, tmp_path, where)
    stray = tmp_path / "checkpoints" / f".tmp-step-000002-{pid}"
    assert stray.is_dir()
    assert not (tmp_path / "checkpoints" / "step-000002").exists()
    assert find_latest_checkpoint(tmp_path) == first
    verify_checkpoint(first)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000001"
    fresh = nn.Linear(4, 1)
    assert load_checkpoint(first, policy=fresh, optimizers={"policy": torch.optim.AdamW(fresh.parameters())}) \
        == {"n": 1}
    assert torch.equal(fresh.weight, policy.weight)
    # The next save cleans the dead writer's temp dir.
    save_checkpoint(tmp_path, 2, policy=policy, optimizers={"policy": opt}, state={"n": 2})
    assert not stray.exists()
    assert find_latest_checkpoint(tmp_path).name == "step-000002"


_KILLED_RESAVE = textwrap.dedent("""
    import os, sys, time, torch
    from torch import nn
    import searchr1.atomic as atomic
    from searchr1.train import checkpoint as ck

    run_dir, marker = sys.argv[1], sys.argv[2]
    atomic.exchange = lambda a, b: False  # the two-rename fallback (no renameat2)
    real_rename = os.rename
    def killed_rename(src, dst):
        if ".tmp-step-" in str(src):  # the old step is already set aside
            open(marker, "w").close()
            time.sleep(120)
        return real_rename(src, dst)
    atomic.os.rename = killed_rename
    policy = nn.Linear(4, 1)
    ck.save_checkpoint(run_dir, 1, policy=policy, optimizers={"policy": torch.optim.AdamW(policy.parameters())},
                       state={"n": "resaved"})
""")


def _run_until_marker_then_kill(script: str, *args) -> int:
    """Run `script` with `args` and a marker path (its last argument); SIGKILL it once it has
    created the marker (it has reached its kill point). The marker lives beside the run directory
    `args[0]`, one per test (a marker shared between tests would kill the next writer at once)."""
    marker = Path(args[0]).with_name(Path(args[0]).name + ".kill-marker")
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited before reaching the kill point"
            assert time.monotonic() < deadline, "writer never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return proc.pid


def test_killed_resave_keeps_the_step(tmp_path):
    policy = nn.Linear(4, 1)
    opt = torch.optim.AdamW(policy.parameters())
    first = save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": opt}, state={"n": 1})
    pid = _run_until_marker_then_kill(_KILLED_RESAVE, tmp_path)
    root = tmp_path / "checkpoints"
    assert not first.exists() and (root / f".step-000001.old-{pid}").is_dir()  # the kill window
    # The next save (its prune removes dead writers' strays) must not lose step 1 ...
    save_checkpoint(tmp_path, 2, policy=policy, optimizers={"policy": opt}, state={"n": 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]
    verify_checkpoint(first)
    assert not any(p.name.startswith(".") for p in root.iterdir())
    fresh = nn.Linear(4, 1)
    assert load_checkpoint(first, policy=fresh, optimizers={"policy": torch.optim.AdamW(fresh.parameters())}) \
        == {"n": 1}


def test_killed_resave_is_restored_before_resume(tmp_path):
    policy = nn.Linear(4, 1)
    first = save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": torch.optim.AdamW(policy.parameters())},
                            state={"n": 1})
    _run_until_marker_then_kill(_KILLED_RESAVE, tmp_path)
    assert find_latest_checkpoint(tmp_path) == first


def test_resave_replaces_the_step_atomically(tmp_path):
    policy = nn.Linear(4, 1)
    opt = torch.optim.AdamW(policy.parameters())
    save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": opt}, state={"n": 1})
    path = save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": opt}, state={"n": 2})
    assert load_checkpoint(path, policy=policy, optimizers={"policy": opt}) == {"n": 2}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000001"]


def test_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import searchr1.train.checkpoint as ck

    policy = nn.Linear(256, 256)
    opt = torch.optim.AdamW(policy.parameters())
    first = save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": opt}, state={})
    real = shutil.disk_usage
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: real(p)._replace(free=10 << 20))
    with pytest.raises(CheckpointError, match=r"not enough free disk space for checkpoint step 2.*GiB are free"):
        save_checkpoint(tmp_path, 2, policy=policy, optimizers={"policy": opt}, state={})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000001"]
    verify_checkpoint(first)


def test_tensor_bytes_counts_nested_states():
    from searchr1.train.checkpoint import tensor_bytes

    opt_state = {"state": {0: {"exp_avg": torch.zeros(10), "step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1}]}
    assert tensor_bytes([{"w": torch.zeros(2, 3, dtype=torch.bfloat16)}, opt_state]) == 12 + 40 + 4


def test_each_rank_restores_its_own_rng_state(tmp_path, caplog):
    from searchr1.train.checkpoint import rng_state

    policy = nn.Linear(4, 1)
    opt = torch.optim.AdamW(policy.parameters())
    states = []
    for seed in (1, 2):  # what two ranks' generators hold at the save
        torch.manual_seed(seed)
        states.append(rng_state())
    torch.manual_seed(1)
    path = save_checkpoint(tmp_path, 1, policy=policy, optimizers={"policy": opt}, state={}, rng_by_rank=states)
    draws = {}
    for rank in (0, 1):
        torch.manual_seed(99)
        load_trainer_state(path, optimizers={"policy": opt}, rank=rank)
        draws[rank] = torch.rand(3)
    assert torch.equal(draws[0], (torch.manual_seed(1), torch.rand(3))[1])
    assert torch.equal(draws[1], (torch.manual_seed(2), torch.rand(3))[1])
    # a checkpoint saved by one process: a second rank takes rank 0's, and says so
    single = save_checkpoint(tmp_path, 2, policy=policy, optimizers={"policy": opt}, state={})
    with caplog.at_level(logging.WARNING):
        load_trainer_state(single, optimizers={"policy": opt}, rank=1)
    assert "no RNG state for rank 1" in caplog.text
