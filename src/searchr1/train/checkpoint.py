"""Training checkpoints: Hugging Face model directories plus the trainer's state, written atomically.

Layout of one checkpoint, ``{run_dir}/checkpoints/step-{step:06d}/``::

    policy/            save_pretrained() of the policy (a peft model writes only its adapter) + tokenizer;
                       a plain nn.Module is saved as policy/policy.pt (its state_dict)
    critic/            optional: save_pretrained() of the critic, or critic/critic.pt for a plain nn.Module
    trainer_state.pt   optimizer and scheduler states, RNG states, step, and the trainer's own `state`
                       dict (data position, config, metrics history, ...). The trainer keys optimizer
                       states by parameter name (`searchr1.train.distributed.keyed_by_name`), so a
                       checkpoint resumes under any sharding; positional ones load too
    MANIFEST.json      written last: every file's size and sha256, format version, step, time, version

A checkpoint is written into ``checkpoints/.tmp-step-{step:06d}-{pid}``, every file is fsynced, the
MANIFEST is written, and only then is the directory renamed into place (``atomic.swap_in``: one
atomic exchange when the step already exists) and the parent directory fsynced. A process killed at
any moment therefore leaves the earlier checkpoints intact and at most a stray temp directory, which
the next save removes once its writer is dead (or a step set aside mid-swap, which it renames back).
``checkpoints/latest`` names the newest step directory (for people and outside tools; the loader
itself scans and verifies, it does not trust that file).

Save only from the main process in multi-process runs (sharded runs gather whole tensors first).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from searchr1 import __version__
from searchr1.atomic import fsync_dir, pid_alive, restore_set_aside, swap_in
from searchr1.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
TRAINER_STATE_NAME = "trainer_state.pt"
LATEST_NAME = "latest"
CHECKPOINTS_DIRNAME = "checkpoints"

_STEP_RE = re.compile(r"^step-(\d+)$")
# What an interrupted save leaves: its temp step directory or its temp `latest` file (deleted once the
# writer is gone), or a step set aside by `atomic.swap_in`'s fallback (renamed back, never deleted).
_STRAY_RE = re.compile(r"^\.(?:tmp-step-\d+|latest\.tmp)-(\d+)$")
_SET_ASIDE_RE = re.compile(r"^\.(step-\d+)\.old-\d+$")
# Free space asked for beyond the checkpoint's tensors: tokenizer, config, MANIFEST, file system slack.
_SPACE_MARGIN = 1.05
_SPACE_SLACK = 64 << 20
_HASH_CHUNK = 8 << 20


# ---------------------------------------------------------------------------------------------- paths


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIRNAME


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step:06d}"


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step of a checkpoint directory, from its name (``step-000042`` -> 42)."""
    m = _STEP_RE.match(Path(path).name)
    if not m:
        raise CheckpointError(f"{path} is not a checkpoint directory (expected a name like step-000042)")
    return int(m.group(1))


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """All ``step-*`` directories of a run (verified or not), oldest step first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


# ---------------------------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    policy: torch.nn.Module,
    tokenizer: Any = None,
    critic: torch.nn.Module | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any] = {},  # noqa: B006 - never mutated
    state: Mapping[str, Any],
    keep_last: int = 3,
    policy_state: Mapping[str, torch.Tensor] | None = None,
    critic_state: Mapping[str, torch.Tensor] | None = None,
    optimizer_states: Mapping[str, Any] | None = None,
    drop_newer: bool = False,
    rng_by_rank: list[dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` atomically and return its final path.

    ``state`` is the trainer's own dict (data position, config as a plain dict, metrics history...);
    ``load_checkpoint`` returns it as saved. Plain data and tensors only (numpy, Paths, enums and
    dataclasses are converted); anything else is a TypeError now, not an unreadable checkpoint later.

    After the new checkpoint is in place, older ones beyond ``keep_last`` are deleted (never the
    new one), as are temp directories of writers that are no longer alive. ``drop_newer`` (a resumed
    run only) also deletes checkpoints with a *higher* step: a timeline abandoned when the run was
    resumed from an earlier step, which would otherwise shadow this one on the next resume. Without
    it they are kept, with a warning: only a run that chose to resume may discard them.

    ``policy_state`` / ``critic_state`` / ``optimizer_states`` replace the modules' and optimizers'
    own state dicts: a sharded run passes the whole tensors it gathered (`DataParallel.full_state_dict`),
    so the files are the same as an unsharded run's. ``rng_by_rank``: every process's `rng_state()`,
    in rank order (multi-process runs: each rank samples with its own CUDA and CPU generators).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    _restore_set_aside_steps(root)
    final = checkpoint_dir(run_dir, step)
    states = [policy_state if policy_state is not None else _unwrap(policy).state_dict(),
              optimizer_states if optimizer_states is not None else {n: o.state_dict() for n, o in optimizers.items()}]
    if critic is not None:
        states.append(critic_state if critic_state is not None else _unwrap(critic).state_dict())
    check_free_space(root, tensor_bytes(states), what=f"checkpoint step {step}")
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    trainer_state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "optimizers": (dict(optimizer_states) if optimizer_states is not None
                       else {name: opt.state_dict() for name, opt in optimizers.items()}),
        "schedulers": {name: sch.state_dict() for name, sch in schedulers.items()},
        "rng": rng_state(),
        "state": _to_safe(dict(state), "state"),
    }
    if rng_by_rank is not None:
        trainer_state["rng_by_rank"] = list(rng_by_rank)
    try:
        _save_module(policy, tmp / "policy", "policy", policy_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "policy"))
        if critic is not None:
            _save_module(critic, tmp / "critic", "critic", critic_state)
        torch.save(trainer_state, tmp / TRAINER_STATE_NAME)
        del trainer_state

        files = _hash_and_fsync_tree(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "created_unix": time.time(),
            "searchr1_version": __version__,
            "files": files,
        }
        _write_file_synced(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode())
        for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            fsync_dir(d)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    # A re-save of an existing step (a resumed run saving the step it resumed from) swaps the new copy
    # in whole: a kill leaves the old or the new one as step-N, never only strays (`atomic.swap_in`).
    swap_in(tmp, final)

    _write_latest(root, final.name)
    _prune(root, final, keep_last, drop_newer)
    log.info("saved checkpoint %s", final)
    return final


def _save_module(module: torch.nn.Module, out: Path, name: str, state_dict: Mapping | None = None) -> None:
    module = _unwrap(module)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(module, "save_pretrained"):
        # safetensors, and for peft models only the adapter (+ modules_to_save).
        kwargs = {"state_dict": dict(state_dict)} if state_dict is not None else {}
        module.save_pretrained(str(out), safe_serialization=True, **kwargs)
    else:
        torch.save(dict(state_dict) if state_dict is not None else module.state_dict(), out / f"{name}.pt")


def _unwrap(module: Any) -> Any:
    """Strip DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, torch.nn.Module):
            module = module._orig_mod
        else:
            return module


def _to_safe(obj: Any, where: str) -> Any:
    """Convert `obj` into types that ``torch.load(weights_only=True)`` reads back."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device,
                                       torch.Size)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return _to_safe(obj.value, where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_safe(dataclasses.asdict(obj), where)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"checkpoint {where}: dict key {k!r} of type {type(k).__name__} cannot be saved")
            out[k] = _to_safe(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, tuple):
        return tuple(_to_safe(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (list, set, frozenset)):
        return [_to_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(
        f"checkpoint {where}: value of type {type(obj).__name__} cannot be saved; use plain Python "
        "values, tensors, or dicts/lists of them")


def rng_state() -> dict[str, Any]:
    """This process's Python, numpy, torch and CUDA (every visible device) RNG states."""
    np_state = np.random.get_state(legacy=False)
    rng: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(rng["python"]))
    n = rng["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
        "has_gauss": int(n["has_gauss"]),
        "gauss": float(n["gauss"]),
    })
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda"]):
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        else:
            log.warning("checkpoint holds CUDA RNG states for %d device(s) but %d are visible: CUDA RNG "
                        "not restored (sampling will differ from an uninterrupted run)",
                        len(rng["cuda"]), torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------- files


def _hash_and_fsync_tree(root: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                digest = _sha256_fileobj(f)
                os.fsync(f.fileno())
            files[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": digest}
    return files


def _sha256_fileobj(f: Any) -> str:
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


def _write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".latest.tmp-{os.getpid()}"
    _write_file_synced(tmp, (name + "\n").encode())
    os.replace(tmp, root / LATEST_NAME)
    fsync_dir(root)


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in nested dicts / lists / tuples (a state dict, optimizer states)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """CheckpointError unless `directory`'s file system has room for `needed` bytes (plus a margin):
    older checkpoints are pruned only after a successful write, so a full disk must fail first."""
    free = shutil.disk_usage(directory).free
    want = int(needed * _SPACE_MARGIN) + _SPACE_SLACK
    if free < want:
        raise CheckpointError(f"not enough free disk space for {what} in {directory}: it needs about "
                              f"{want / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free; free some space, "
                              "lower train.keep_last, or point train.run_dir at a larger disk")


def _restore_set_aside_steps(root: Path) -> None:
    """Rename back steps that a re-save killed mid-way had set aside (`atomic.restore_set_aside`)."""
    for p in list(root.iterdir()) if root.is_dir() else []:
        if m := _SET_ASIDE_RE.match(p.name):
            restore_set_aside(root / m.group(1))


def _prune(root: Path, keep: Path, keep_last: int, drop_newer: bool) -> None:
    new_step = checkpoint_step(keep)
    ckpts = list_checkpoints(root.parent)
    newer = [p for p in ckpts if checkpoint_step(p) > new_step]
    for p in newer:
        if drop_newer:
            log.warning("removing checkpoint %s: its step is after the one just saved (%s), so it belongs to "
                        "a run this one was resumed before", p, keep.name)
            shutil.rmtree(p, ignore_errors=True)
        else:
            log.warning("keeping checkpoint %s: its step is after the one just saved (%s), and only a "
                        "resumed run may delete it", p, keep.name)
    older = [p for p in ckpts if checkpoint_step(p) < new_step]
    for p in older[: max(0, len(older) - (keep_last - 1))]:
        log.info("pruning old checkpoint %s (keep_last=%d)", p, keep_last)
        shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        m = _STRAY_RE.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            log.info("removing stray %s (its writer is gone)", p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- verify


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed MANIFEST.json of a checkpoint (CheckpointError if missing or unreadable)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST_NAME}: it was not completely written "
                              "(interrupted save?)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_NAME} is unreadable or truncated ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_NAME} has no file list")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is not supported by this "
                              f"searchr1 (it reads version {FORMAT_VERSION})")
    return manifest


def verify_checkpoint(path: str | os.PathLike, deep: bool = True) -> None:
    """Check a checkpoint against its MANIFEST; raise CheckpointError naming what is wrong.

    Shallow: MANIFEST present and parseable, trainer state and policy listed, every listed file
    present with its recorded size. Deep (default) also re-hashes every file (sha256).
    """
    path = Path(path)
    manifest = read_manifest(path)
    files: dict[str, Any] = manifest["files"]
    if TRAINER_STATE_NAME not in files:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_NAME} does not list {TRAINER_STATE_NAME}")
    if not any(name.startswith("policy/") for name in files):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST_NAME} lists no policy weights")
    for rel, meta in files.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path}: file {rel} is missing")
        size = f.stat().st_size
        if size != meta.get("size"):
            raise CheckpointError(f"checkpoint {path}: file {rel} has size {size}, "
                                  f"MANIFEST says {meta.get('size')} (truncated or modified)")
    if deep:
        for rel, meta in files.items():
            with open(path / rel, "rb") as fh:
                digest = _sha256_fileobj(fh)
            if digest != meta.get("sha256"):
                raise CheckpointError(f"checkpoint {path}: sha256 mismatch for {rel} (file is corrupted: "
                                      f"got {digest[:16]}..., MANIFEST says {str(meta.get('sha256'))[:16]}...)")


def find_latest_checkpoint(run_dir: str | os.PathLike, *, deep: bool = True) -> Path | None:
    """The newest checkpoint of ``run_dir`` that verifies, or None.

    Checkpoints that fail verification (interrupted writes, corruption) are skipped with a warning.
    """
    _restore_set_aside_steps(checkpoints_dir(run_dir))
    for p in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(p, deep=deep)
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
            continue
        return p
    return None


# ---------------------------------------------------------------------------------------------- load


def load_checkpoint(
    path: str | os.PathLike,
    *,
    policy: torch.nn.Module,
    critic: torch.nn.Module | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any] = {},  # noqa: B006 - never mutated
    restore_rng: bool = True,
    map_location: Any = "cpu",
    verify: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into freshly built objects and return the trainer's ``state`` dict:
    `load_weights`, then `load_trainer_state` (see both). ``verify=False`` skips the deep re-hash
    (e.g. right after ``find_latest_checkpoint`` did it)."""
    path = Path(path)
    verify_checkpoint(path, deep=verify)
    load_weights(path, policy=policy, critic=critic, verify=False)
    return load_trainer_state(path, optimizers=optimizers, schedulers=schedulers, restore_rng=restore_rng,
                              map_location=map_location, verify=False)


def load_weights(path: str | os.PathLike, *, policy: torch.nn.Module, critic: torch.nn.Module | None = None,
                 verify: bool = True) -> None:
    """Load the weights *into* ``policy`` (and ``critic``): full models from the safetensors in
    ``policy/``, peft models (``hasattr(policy, "peft_config")``) from their adapter weights, plain
    modules from ``policy.pt``. Sharded training loads them before sharding the modules."""
    path = Path(path)
    verify_checkpoint(path, deep=verify)
    _load_module(policy, path / "policy", "policy", path)
    if critic is not None:
        if not (path / "critic").is_dir():
            raise CheckpointError(f"checkpoint {path} has no critic/ but a critic was given to load into")
        _load_module(critic, path / "critic", "critic", path)


def load_trainer_state(
    path: str | os.PathLike,
    *,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any] = {},  # noqa: B006 - never mutated
    restore_rng: bool = True,
    map_location: Any = "cpu",
    verify: bool = True,
    load_optimizer: Callable[[str, torch.optim.Optimizer, dict], None] | None = None,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore optimizers and schedulers (built the same way as when saving, with the same names),
    then (``restore_rng``) the Python, numpy, torch and CUDA RNG states, so that training continues
    bit-for-bit as if never interrupted; return the trainer's ``state`` dict as saved.
    ``load_optimizer(name, optimizer, saved_state)`` replaces ``optimizer.load_state_dict`` (sharded
    runs: `DataParallel.optimizer_loader`). ``rank``: whose RNG states to restore when every rank's
    were saved (``rng_by_rank``)."""
    path = Path(path)
    verify_checkpoint(path, deep=verify)
    try:
        # memory-mapped: a tensor is read when used (sharded runs: only rank 0 reads the optimizer state)
        ts = torch.load(path / TRAINER_STATE_NAME, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE_NAME} is unreadable ({type(e).__name__}: {e})") \
            from e
    if not isinstance(ts, dict) or ts.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: {TRAINER_STATE_NAME} has an unexpected format")

    _check_names(path, "optimizers", set(optimizers), set(ts["optimizers"]))
    _check_names(path, "schedulers", set(schedulers), set(ts["schedulers"]))
    load = load_optimizer or (lambda _name, opt, state: opt.load_state_dict(state))
    for name, opt in optimizers.items():
        try:
            load(name, opt, ts["optimizers"][name])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer {name!r} does not match the saved one "
                                  f"(different parameters or parameter groups?): {e}") from e
    for name, sch in schedulers.items():
        sch.load_state_dict(ts["schedulers"][name])
    if restore_rng:
        by_rank = ts.get("rng_by_rank") or []
        if rank < len(by_rank):
            _set_rng_state(by_rank[rank])
        else:
            if rank > 0:
                log.warning("checkpoint %s holds no RNG state for rank %d (saved by %d process(es)): it takes "
                            "rank 0's (sampling will differ from an uninterrupted run)", path, rank,
                            max(len(by_rank), 1))
            _set_rng_state(ts["rng"])
    return ts["state"]


def _check_names(path: Path, what: str, given: set[str], saved: set[str]) -> None:
    if given != saved:
        raise CheckpointError(f"checkpoint {path}: {what} given {sorted(given)} but saved {sorted(saved)}")


def _load_module(module: torch.nn.Module, src: Path, name: str, ckpt: Path) -> None:
    module = _unwrap(module)
    if hasattr(module, "peft_config"):
        _load_peft(module, src, name, ckpt)
    elif hasattr(module, "save_pretrained"):
        _load_state_dict(module, _read_safetensors_dir(src, name, ckpt), name, ckpt)
    else:
        f = src / f"{name}.pt"
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ckpt}: {name}/{name}.pt is missing (was {name} saved as a "
                                  "Hugging Face model? then it must be loaded into one)")
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"checkpoint {ckpt}: {name}/{name}.pt is unreadable ({e})") from e
        _load_state_dict(module, sd, name, ckpt, strict=True)


def _read_safetensors_dir(src: Path, name: str, ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = src / "model.safetensors"
    index = src / "model.safetensors.index.json"
    if single.is_file():
        shards = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = [src / s for s in sorted(set(weight_map.values()))]
    else:
        raise CheckpointError(f"checkpoint {ckpt}: {name}/ holds no model.safetensors (is it a peft adapter? "
                              "then load it into a peft model)")
    sd: dict[str, torch.Tensor] = {}
    for shard in shards:
        sd.update(load_file(str(shard), device="cpu"))
    return sd


def _load_state_dict(module: torch.nn.Module, sd: dict[str, torch.Tensor], name: str, ckpt: Path,
                     strict: bool = False) -> None:
    """load_state_dict; unless `strict`, keys tied to saved ones (save_pretrained drops them) may be missing."""
    try:
        result = module.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {ckpt}: {name} weights do not fit the given model: {e}") from e
    if result.unexpected_keys:
        raise CheckpointError(f"checkpoint {ckpt}: {name} weights have keys the model lacks: "
                              f"{_first(result.unexpected_keys)}")
    if result.missing_keys:
        own = module.state_dict(keep_vars=True)
        loaded_ptrs = {own[k].data_ptr() for k in sd if k in own}
        untied = [k for k in result.missing_keys if own[k].data_ptr() not in loaded_ptrs]
        if untied:
            raise CheckpointError(f"checkpoint {ckpt}: {name} weights lack {_first(untied)}")


def _first(keys: list[str]) -> str:  # an error message's view of a long key list
    return f"{keys[:5]}{' ...' if len(keys) > 5 else ''}"


def _load_peft(module: Any, src: Path, name: str, ckpt: Path) -> None:
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    for adapter in module.peft_config:
        adir = src if adapter == "default" else src / adapter
        if not (adir / "adapter_config.json").is_file():
            raise CheckpointError(f"checkpoint {ckpt}: {name}/ holds no adapter {adapter!r} "
                                  "(was it saved from a full model? then load it into one)")
        try:
            weights = load_peft_weights(str(adir), device="cpu")
        except Exception as e:
            raise CheckpointError(f"checkpoint {ckpt}: adapter {adapter!r} of {name} is unreadable ({e})") from e
        result = set_peft_model_state_dict(module, weights, adapter_name=adapter)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise CheckpointError(f"checkpoint {ckpt}: adapter {adapter!r} of {name} has weights the model "
                                  f"lacks: {unexpected[:5]}")
        # Every trainable weight of this adapter must have been loaded.
        missing = set(getattr(result, "missing_keys", None) or [])
        tag = f".{adapter}."
        not_loaded = [k for k, p in module.named_parameters() if p.requires_grad and tag in k and k in missing]
        if not_loaded:
            raise CheckpointError(f"checkpoint {ckpt}: adapter {adapter!r} of {name} lacks weights "
                                  f"{_first(not_loaded)}")
