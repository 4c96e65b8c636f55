"""Data-parallel training: one process per device, launched by `accelerate launch` or `torchrun`.

The trainer calls the same few methods whether it runs alone or as one of W processes; alone
they do nothing. How one step's work is split over W processes (global batch B = prompts_per_step
x group_size trajectories; both prompts_per_step and mini_batch_size must divide by W):

    rollouts   rank r plays the prompts [r P/W, (r+1) P/W): every GRPO group is whole on one rank
    gather     every rank receives all B scored trajectories (token ids, masks, rewards: kilobytes),
               so rewards, advantages (GRPO groups, PPO whitening) and metrics are global and
               computed identically everywhere
    forward    old / reference log-probs and values: rank r computes rows [r B/W, (r+1) B/W) and
               the [B, T] results are all-gathered
    update     every rank draws the same seeded permutation; each global mini-batch of M rows is
               cut into W equal parts and rank r's loss is scaled by W, so the gradient that DDP
               *averages* equals the single-process gradient (a *sum* over the mini-batch's micro-
               batches). Parameters after an update therefore match one process with batch B
               (tests/e2e/test_distributed.py).
    rank 0     writes metrics, runs validation and checkpoints; the others wait at a barrier.

Gradients are synchronised only on the last micro-batch of a mini-batch (`no_sync` before it;
sharded runs reduce-scatter every micro-batch, see `no_sync`). A non-finite loss on any rank makes
every rank skip that optimizer step (the flag is all-reduced), so ranks never disagree about the
weights.

Sharding (`train.compute.sharding`; ZeRO's stage numbers, torch's implementations):

    none    DDP: every rank holds the whole model, gradients and optimizer state
    zero1   + the optimizer state split over the ranks (torch's ZeroRedundancyOptimizer)
    zero2   FSDP2 (`fully_shard` per decoder layer, reshard_after_forward=False): gradients and
            optimizer state sharded, parameters gathered for the forward and kept until the
            backward is done (FSDP's SHARD_GRAD_OP)
    zero3   FSDP2 with reshard_after_forward=True: parameters sharded too, all-gathered per layer
            in the forward and again in the backward (FSDP's FULL_SHARD)
    auto    what the `accelerate launch` config asked for (configs/accelerate/fsdp*.yaml), else none

Under zero2/zero3 the model is called outside its training forward, a different number of times
on each rank: rollouts and validation. Sharded parameters cannot do that (every forward is an
all-gather that all ranks must join), so `gathered` all-gathers the whole policy once, before the
rollouts, and frees it after (what veRL does when it hands the weights to vLLM). Checkpoints hold
whole tensors gathered on rank 0 (`full_state_dict`, `optimizer_states`): the same files as an
unsharded run, loadable by `searchr1 eval`, resumable with any process count. DeepSpeed's engine is
not used: it would own backward and optimizer step, and torch's FSDP2 gives the same stages.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from searchr1.errors import SearchR1Error

SHARDINGS = ("auto", "none", "zero1", "zero2", "zero3")


def launched_world_size() -> int:
    """The process count set by `torchrun` / `accelerate launch` (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def sharding_from_launcher(env: Mapping[str, str]) -> str:
    """The stage an `accelerate launch` config asked for, read from the variables accelerate sets
    for its processes: an FSDP config -> zero3 (FULL_SHARD / reshard_after_forward: true) or zero2
    (SHARD_GRAD_OP / false); anything else -> none. What this trainer cannot do is an error, not a
    silently different run."""
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise SearchR1Error("DeepSpeed launch configs are not supported: searchr1 shards with torch FSDP2. Use "
                            "configs/accelerate/fsdp.yaml (ZeRO-3) or fsdp-shard-grad-op.yaml (ZeRO-2), or "
                            "train.compute.sharding=zero1|zero2|zero3 with any launcher")
    if env.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return "none"
    if env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise SearchR1Error("fsdp_offload_params is not supported (rollouts gather the whole policy on the GPU)")
    if env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise SearchR1Error("fsdp_activation_checkpointing: set train.compute.gradient_checkpointing=true instead "
                            "(and fsdp_activation_checkpointing: false)")
    if env.get("FSDP_VERSION", "1") == "1":  # FSDP1 configs name a strategy
        how = env.get("FSDP_SHARDING_STRATEGY") or env.get("FSDP_RESHARD_AFTER_FORWARD") or "FULL_SHARD"
    else:
        how = env.get("FSDP_RESHARD_AFTER_FORWARD") or env.get("FSDP_SHARDING_STRATEGY") or "true"
    stage = {"true": "zero3", "full_shard": "zero3", "1": "zero3", "false": "zero2", "shard_grad_op": "zero2",
             "2": "zero2", "no_shard": "none", "3": "none"}.get(how.strip().lower())
    if stage is None:
        raise SearchR1Error(f"FSDP sharding {how!r} is not supported: FULL_SHARD (zero3), SHARD_GRAD_OP (zero2) "
                            "or NO_SHARD")
    return stage


def resolve_sharding(setting: str, env: Mapping[str, str]) -> str:
    """`train.compute.sharding` -> none | zero1 | zero2 | zero3 (an explicit setting wins over the launcher)."""
    if setting not in SHARDINGS:
        raise SearchR1Error(f"train.compute.sharding must be one of {', '.join(SHARDINGS)}, got {setting!r}")
    return sharding_from_launcher(env) if setting == "auto" else setting


def trainable_names(module: nn.Module) -> list[str]:
    """Names of `module`'s trainable parameters, in the order an optimizer built from
    ``[p for p in module.parameters() if p.requires_grad]`` numbers them."""
    return [n for n, p in module.named_parameters() if p.requires_grad]


def _rekeyed(state: dict, key) -> dict:
    return {**state, "state": {key(k): v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [key(p) for p in g["params"]]} for g in state["param_groups"]]}


def _by_name(state: dict) -> bool:
    return any(isinstance(p, str) for g in state.get("param_groups", ()) for p in g.get("params", ()))


def keyed_by_name(state: dict, names: list[str]) -> dict:
    """An optimizer `state_dict()` (parameters numbered 0, 1, ...) keyed by parameter name instead;
    a state already keyed by name is returned as it is."""
    if _by_name(state):
        return state
    return _rekeyed(state, lambda i: names[i])


def keyed_by_position(state: dict, names: list[str]) -> dict:
    """The inverse of `keyed_by_name` (what `Optimizer.load_state_dict` takes). A name that the
    module lacks is a KeyError naming it."""
    if not _by_name(state):
        return state
    index = {n: i for i, n in enumerate(names)}

    def position(name: str) -> int:
        if name not in index:
            raise KeyError(f"the checkpoint's optimizer state has parameter {name!r}, which this model does not "
                           "train")
        return index[name]

    return _rekeyed(state, position)


def _block_classes(module: nn.Module) -> set[str]:
    """Class names of the transformer blocks inside `module` (transformers lists them per model as
    `_no_split_modules`): the units FSDP shards and gathers one at a time."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


class DataParallel:
    """This process's place in the group, and the collectives the trainer needs.

    `DataParallel()` is the single-process group; `DataParallel.from_env(device)` joins the group
    that the launcher described in the environment (through accelerate, which picks NCCL on GPUs
    and gloo on CPUs).
    """

    def __init__(self, accelerator=None, sharding: str = "none") -> None:
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.sharding = sharding if self.world > 1 else "none"

    @classmethod
    def from_env(cls, device: str = "auto", sharding: str = "auto", timeout_minutes: float = 120) -> "DataParallel":
        stage = resolve_sharding(sharding, os.environ)
        if launched_world_size() <= 1:
            return cls()
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cpu = device == "cpu" or not torch.cuda.is_available()
        # The timeout must cover rank 0's evaluation while the other ranks wait at a barrier
        # (train.collective_timeout_minutes).
        kwargs = [InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=timeout_minutes))]
        return cls(Accelerator(cpu=cpu, kwargs_handlers=kwargs), stage)

    # ------------------------------------------------------------------ facts
    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def sharded(self) -> bool:
        """Parameters and gradients sharded (zero2 / zero3: FSDP2)."""
        return self.sharding in ("zero2", "zero3")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device accelerate assigned to this process (None alone: the model's own device)."""
        return self.accelerator.device if self.accelerator is not None else None

    def check_divisible(self, what: str, n: int) -> None:
        if n % self.world:
            raise SearchR1Error(f"{what} ({n}) must be a multiple of the number of processes ({self.world})")

    def shard(self, n: int) -> slice:
        """This rank's contiguous block of ``range(n)``."""
        self.check_divisible("the rows to shard", n)
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    # ------------------------------------------------------------------ models
    def wrap(self, module: nn.Module | None, *, compute_dtype: torch.dtype | None = None) -> nn.Module | None:
        """`module` made data-parallel: DDP, or sharded in place by FSDP2 (zero2/zero3); itself when
        alone. A frozen module (a reference policy) is only sharded, never DDP-wrapped.
        `compute_dtype` (bf16-mixed): FSDP gathers parameters in it, reduces gradients in fp32."""
        if module is None or not self.distributed:
            return module
        if self.sharded:
            return self._fully_shard(module, compute_dtype)
        if not any(p.requires_grad for p in module.parameters()):
            return module
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        device = self.device
        # Buffers (rotary tables) are identical on every rank, and a broadcast per forward would
        # make ranks that run different numbers of forwards hang. torch >= 2.13 names the switch
        # forward_sync_buffers (broadcast_buffers is deprecated there).
        no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel.__init__).parameters else "broadcast_buffers")
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       **{no_sync: False})

    def _reshards_after_forward(self, module: nn.Module) -> bool:
        """Whether `module`'s blocks free their gathered parameters after their forward: always
        under zero3; under zero2 only for a frozen module (it has no backward to keep them for)."""
        return self.sharding == "zero3" or not any(p.requires_grad for p in module.parameters())

    def _fully_shard(self, module: nn.Module, compute_dtype: torch.dtype | None) -> nn.Module:
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:
            from searchr1.errors import MissingDependencyError

            raise MissingDependencyError(f"train.compute.sharding={self.sharding} needs FSDP2 (torch >= 2.6; this is "
                                         f"torch {torch.__version__})") from None

        kwargs = {"reshard_after_forward": self._reshards_after_forward(module)}
        if compute_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        blocks = _block_classes(module)
        for sub in list(module.modules()):
            if sub is not module and type(sub).__name__ in blocks:
                fully_shard(sub, **kwargs)
        # the rest (embeddings, norm, LM head, value head); FSDP keeps a root gathered after its
        # forward whatever it is told, as its backward needs it first
        return fully_shard(module, **kwargs)

    def _fsdp_parts(self, module: nn.Module) -> list[nn.Module]:
        from torch.distributed.fsdp import FSDPModule

        return [m for m in module.modules() if isinstance(m, FSDPModule)]

    def reshard(self, module: nn.Module | None) -> None:
        """Free gathered parameters of a sharded `module` (a no-grad forward under zero2 keeps them,
        and until they are resharded `module.parameters()` are the gathered copies, not the shards
        an optimizer must hold)."""
        if self.sharded and module is not None:
            for m in self._fsdp_parts(module):
                m.reshard()

    @contextlib.contextmanager
    def gathered(self, module: nn.Module | None):
        """The whole parameters of a sharded `module` on every rank while inside (nothing to do
        unsharded): rollouts and validation call the model outside its training forward, and not
        the same number of times on every rank, so per-forward all-gathers would deadlock. Every
        rank must enter; inside, forward passes communicate nothing."""
        if not self.sharded or module is None:
            yield
            return
        parts = self._fsdp_parts(module)
        after = self._reshards_after_forward(module)
        for m in parts:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield
        finally:
            for m in parts:
                m.reshard()
                m.set_reshard_after_forward(after and m is not module, recurse=False)  # the root: as FSDP had it

    def no_sync(self, module: nn.Module | None, skip: bool):
        """Skip the gradient all-reduce of this backward (True for all but the last micro-batch).
        Sharded modules reduce-scatter every micro-batch instead: accumulating whole gradients
        would give back the memory that sharding them saves."""
        if not skip or not self.distributed or module is None or self.sharded:
            return contextlib.nullcontext()
        return module.no_sync()

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """`clip_grad_norm_` over (possibly sharded) gradients; the global norm as a plain tensor."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def optimizer(self, params, cls=torch.optim.AdamW, **kwargs) -> torch.optim.Optimizer:
        """`cls(params, **kwargs)`. Under zero1 its state is split over the ranks (torch's
        ZeroRedundancyOptimizer): each rank keeps and updates 1/W of the parameters' optimizer
        state (AdamW: two fp32 moments) and broadcasts its updated slice. Under zero2/zero3 the
        parameters are already shards, so a plain optimizer keeps sharded state. Build it after `wrap`."""
        if self.sharding == "zero1":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(list(params), optimizer_class=cls, **kwargs)
        return cls(params, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def full_state_dict(self, module: nn.Module | None) -> dict | None:
        """The whole state dict of a sharded `module` (CPU tensors) on rank 0, None on the others
        and when nothing is sharded (then `module.state_dict()` is whole). Every rank must call."""
        if module is None or not self.sharded:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.is_main else None

    def optimizer_states(self, optimizers: dict, modules: dict) -> dict | None:
        """{name: whole optimizer state} on rank 0 (None on the others), keyed by parameter name
        relative to ``modules[name]`` (the module whose trainable parameters, in order, the optimizer
        was given), whatever the sharding: FSDP states are gathered, ZeRO-1 states consolidated,
        so any run can take them up (`optimizer_loader`). Every rank must call."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            states = {name: get_optimizer_state_dict(modules[name], opt, options=options)
                      for name, opt in optimizers.items()}
            return states if self.is_main else None
        for opt in optimizers.values():
            if hasattr(opt, "consolidate_state_dict"):
                opt.consolidate_state_dict(to=0)
        if not self.is_main:
            return None
        return {name: keyed_by_name(opt.state_dict(), trainable_names(modules[name]))
                for name, opt in optimizers.items()}

    def optimizer_loader(self, modules: dict):
        """``load(name, optimizer, state)`` for `searchr1.train.checkpoint.load_trainer_state`: a state
        saved under any sharding (keyed by name, or by position as before name keys) into this run."""

        def load(name: str, opt: torch.optim.Optimizer, state: dict) -> None:
            names = trainable_names(modules[name])
            if self.sharded:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                # rank 0's whole state is broadcast tensor by tensor and each rank keeps its shards: the
                # others never materialise it (their `state` is memory-mapped and left untouched)
                set_optimizer_state_dict(modules[name], opt,
                                         optim_state_dict=keyed_by_name(state, names) if self.is_main else {},
                                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
            else:
                opt.load_state_dict(keyed_by_position(state, names))

        return load

    # ------------------------------------------------------------------ collectives
    def gather_objects(self, items: list) -> list:
        """Every rank's list, concatenated in rank order, on every rank."""
        if not self.distributed:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[n, ...]`` on each rank (same shape everywhere) -> ``[world * n, ...]`` in rank order."""
        if not self.distributed:
            return tensor
        return self.accelerator.gather(tensor.contiguous())

    def all_true(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() == self.world)

    def merge_stats(self, sums: dict[str, float], weights: dict[str, float],
                    peaks: dict[str, float]) -> dict[str, float]:
        """Weighted means over all ranks (sum of weighted values / sum of weights, per key) and maxima
        over all ranks: the statistics of the whole batch, as one process would report them."""
        total: dict[str, float] = {}
        weight: dict[str, float] = {}
        highest: dict[str, float] = {}
        for part_sums, part_weights, part_peaks in self.gather_objects([(sums, weights, peaks)]):
            for k, v in part_sums.items():
                total[k] = total.get(k, 0.0) + float(v)
                weight[k] = weight.get(k, 0.0) + float(part_weights[k])
            for k, v in part_peaks.items():
                highest[k] = max(float(v), highest.get(k, float(v)))
        return {**{k: total[k] / weight[k] for k in total if weight[k] > 0}, **highest}

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` (picklable) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Leave the group. Drop DDP-wrapped modules first (`TrainModels.undistribute`): a DDP
        reducer destroyed after its process group aborts the process under gloo."""
        if self.distributed and torch.distributed.is_initialized():
            import gc

            gc.collect()
            self.barrier()
            torch.distributed.destroy_process_group()
