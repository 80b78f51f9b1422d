"""Training on several GPUs (or CPU processes) with ``torchrun`` and DistributedDataParallel.

MONAI's ``multi_gpu_train`` pattern: the same config runs once per process, ``torchrun`` sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``, every process trains the same network on its own share of
each epoch's slices, and DDP averages the gradients. Process 0 alone writes checkpoints, weights,
summaries, logs and progress bars. Every network here uses InstanceNorm (no batch statistics), so
splitting a batch across processes changes nothing but the speed.

    torchrun --standalone --nproc_per_node=4 -m monai.bundle run \\
        --config_file "['configs/train_stage1.yaml','configs/multi_gpu_train.yaml']" --bundle_root .

``batch_size`` is per process: the effective batch is ``nproc_per_node x batch_size``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .device import resolve_device
from .options import switch

__all__ = ["Processes", "launched_by_torchrun", "torchrun_world_size"]


def torchrun_world_size() -> int | None:
    """The number of processes ``torchrun`` started (its ``WORLD_SIZE``), or None outside ``torchrun``."""
    try:
        return int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return None


def launched_by_torchrun() -> bool:
    """True inside a group of more than one process started by ``torchrun``."""
    return (torchrun_world_size() or 1) > 1


class _Method(nn.Module):
    """``module.<method>`` as a ``forward``, so DDP (which hooks ``forward`` only) can wrap it."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module = module
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.module, self.method)(*args, **kwargs)


class Processes:
    """This process's place among the training processes, and the few collective steps training needs.

    Args:
        distributed: ``auto`` (use the process group when ``torchrun`` started more than one process),
            ``true`` (require ``torchrun``, with one process or more) or ``false`` (train alone even under it).
        device: the device asked for; under ``torchrun`` a CUDA device becomes ``cuda:LOCAL_RANK``.
    """

    def __init__(self, distributed: bool | str = "auto", device: str | torch.device = "auto") -> None:
        world = torchrun_world_size()
        wanted = launched_by_torchrun() if str(distributed).strip().lower() == "auto" else switch(distributed, "distributed")
        if wanted and world is None:
            msg = ("distributed training must be started by torchrun (WORLD_SIZE is not set), "
                   "e.g. torchrun --standalone --nproc_per_node=2 -m monai.bundle run ...")
            raise ValueError(msg)
        self.device = resolve_device(device)
        self.enabled = bool(wanted)
        self.rank, self.world_size = 0, 1
        if not self.enabled:
            return
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                msg = f"torchrun started local rank {local_rank} but this machine has {torch.cuda.device_count()} GPU(s): use --nproc_per_node <= {torch.cuda.device_count()}"
                raise ValueError(msg)
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.rank != 0:  # one log and one set of progress bars, from process 0
            logging.getLogger("amecam").setLevel(logging.WARNING)

    @property
    def main(self) -> bool:
        """True in the process that writes files, logs and progress (the only one without ``torchrun``)."""
        return self.rank == 0

    def wrap(self, module: nn.Module, method: str = "forward", *, find_unused_parameters: bool = False) -> nn.Module:
        """What the training loop calls: ``module.<method>``, under DDP when distributed.

        DDP broadcasts process 0's weights when it wraps, and averages gradients in ``backward``.
        """
        target = module if method == "forward" else _Method(module, method)
        if not self.enabled:
            return target
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(target, device_ids=device_ids, find_unused_parameters=find_unused_parameters)

    def shard(self, order: Sequence[int] | np.ndarray) -> np.ndarray:
        """This process's share of an epoch's ``order``: every ``world_size``-th position, the same
        count in every process (DDP needs as many backward passes in each), so that process r's k-th
        batch holds every ``world_size``-th slice of the one-process k-th batch of ``world_size x batch``.
        The last ``len(order) % world_size`` positions are skipped this epoch (the next one draws anew)."""
        order = np.asarray(order)
        if not self.enabled:
            return order
        usable = len(order) - len(order) % self.world_size
        return order[self.rank : usable : self.world_size]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes (for the epoch's loss totals)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        """Wait for every process (e.g. until process 0 has written the weights the others read)."""
        if self.enabled:
            dist.barrier()

    def check_in_step(self, module: nn.Module) -> None:
        """Raise when the processes' copies of ``module`` differ (gradients were not averaged)."""
        if not self.enabled:
            return
        with torch.no_grad():
            checksum = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
            checksum = checksum.to(self.device)
            low, high = checksum.clone(), checksum.clone()
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if float(high - low) > 1e-6 * max(1.0, float(checksum.abs())):
            msg = f"the {self.world_size} training processes hold different weights (checksums {float(low):.6g} to {float(high):.6g}): gradients were not averaged"
            raise RuntimeError(msg)
