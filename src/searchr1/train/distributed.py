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

Gradients are synchronised only on the last micro-batch of a mini-batch (`no_sync` before it). A
non-finite loss on any rank makes every rank skip that optimizer step (the flag is all-reduced), so
ranks never disagree about the weights.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
from torch import nn

from searchr1.errors import SearchR1Error


def launched_world_size() -> int:
    """The process count set by `torchrun` / `accelerate launch` (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class DataParallel:
    """This process's place in the group, and the collectives the trainer needs.

    `DataParallel()` is the single-process group; `DataParallel.from_env(device)` joins the group
    that the launcher described in the environment (through accelerate, which picks NCCL on GPUs
    and gloo on CPUs).
    """

    def __init__(self, accelerator=None) -> None:
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1

    @classmethod
    def from_env(cls, device: str = "auto", timeout_minutes: int = 120) -> "DataParallel":
        if launched_world_size() <= 1:
            return cls()
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        cpu = device == "cpu" or not torch.cuda.is_available()
        # broadcast_buffers=False: buffers (rotary tables) are identical on every rank, and a
        # broadcast per forward would make ranks that run different numbers of forwards hang.
        # The long timeout covers rank 0's validation while the other ranks wait at a barrier.
        kwargs = [DistributedDataParallelKwargs(broadcast_buffers=False),
                  InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=timeout_minutes))]
        return cls(Accelerator(cpu=cpu, kwargs_handlers=kwargs))

    # ------------------------------------------------------------------ facts
    @property
    def distributed(self) -> bool:
        return self.world > 1

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
    def wrap(self, module: nn.Module | None) -> nn.Module | None:
        """`module` as DDP (or whatever the launch config asks accelerate for); itself when alone."""
        if module is None or not self.distributed:
            return module
        return self.accelerator.prepare_model(module)

    def no_sync(self, module: nn.Module | None, skip: bool):
        """Skip the gradient all-reduce of this backward (True for all but the last micro-batch)."""
        if not skip or not self.distributed or module is None:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(module)

    def optimizer(self, params, cls=torch.optim.AdamW, *, shard: bool = False, **kwargs) -> torch.optim.Optimizer:
        """`cls(params, **kwargs)`; with ``shard`` under data parallelism its state is split over the
        ranks (ZeRO stage 1, torch's ZeroRedundancyOptimizer): each rank keeps and updates 1/W of
        the parameters' optimizer state (AdamW: two fp32 moments) and broadcasts its updated slice."""
        if shard and self.distributed:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            return ZeroRedundancyOptimizer(list(params), optimizer_class=cls, **kwargs)
        return cls(params, **kwargs)

    def consolidate(self, optimizers: dict) -> None:
        """Collect sharded optimizer states on rank 0 before it saves them (every rank must call this)."""
        for opt in optimizers.values():
            if hasattr(opt, "consolidate_state_dict"):
                opt.consolidate_state_dict(to=0)

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

    def mean_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Average each key over the ranks that reported it."""
        if not self.distributed:
            return stats
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for part in self.gather_objects([stats]):
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
        return {k: sums[k] / counts[k] for k in sums}

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
