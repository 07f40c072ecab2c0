"""Multi-process data-parallel training (``torchrun``, ``torch.distributed``, DDP) with one process's results.

Launch the ordinary command under ``torchrun``::

    torchrun --nproc-per-node 4 -m phenovec.cli train config.yaml

Each process reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by ``torchrun``); the process group is created
with NCCL on CUDA and gloo on the CPU (or an existing one is used). Every process computes the same epoch plan
(seeded by (seed, epoch) alone) and takes a contiguous slice of each *global* batch of ``data.batch_size`` (sizes
differ by at most one); the loss of a slice is weighted by its share of the global batch, so the gradients DDP
averages are exactly those of the global batch's mean loss. The augmentation draws its random numbers for the
whole global batch on every process and applies those of its slice (``Augment.batch_slice``), so each sample is
augmented as one process would have augmented it. On CUDA the BatchNorm layers become ``SyncBatchNorm`` (batch
statistics over the global batch); torch has no CPU SyncBatchNorm, so on the CPU a network with BatchNorm
normalises each slice by its own statistics (warned) and only BatchNorm-free networks (``gapnet``, ``sc_cnn``)
give one process's numbers there. Dropout masks are drawn per process (same distribution, other draws).

Only rank 0 validates (the whole validation split, on the bare model), writes ``split.parquet``, checkpoints and
metrics (atomically, ``phenovec.train.checkpoint``); the epoch's metrics row is broadcast so every process returns
the same ``TrainResult``. A slice with no sample (a last batch smaller than the world) runs one sample with weight 0.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """This process's contiguous slice [lo, hi) of a global batch of ``n``."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def shard_plan(self, plan: list[np.ndarray]) -> tuple[list[np.ndarray], list[tuple[int, int, float]]]:
        """(local plan, per batch (global size, slice start, loss weight)); an empty slice gets one sample of
        weight 0 (every process must take part in every step)."""
        local, info = [], []
        for p in plan:
            lo, hi = self.shard(len(p))
            if hi > lo:
                local.append(p[lo:hi])
                info.append((len(p), lo, (hi - lo) * self.size / len(p)))
            else:
                local.append(p[:1])
                info.append((len(p), 0, 0.0))
        return local, info

    def sum(self, values, device) -> list[float]:
        """Element-wise sum of a list of numbers over the processes (float64)."""
        if not self.parallel:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (plain data: numbers, strings, lists, dicts)."""
        if not self.parallel:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer (set by torchrun)") from None


def join_world(device_name: str) -> World:
    """The world of this process: an initialised default process group, or ``WORLD_SIZE`` > 1 in the
    environment (``torchrun``: the group is created here, NCCL on CUDA, else gloo), else one process."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), False)
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch has no torch.distributed")
    cuda = device_name != "cpu" and torch.cuda.is_available()
    local = _env_int("LOCAL_RANK", 0)
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local, True)


def rank_device(world: World, device):
    """A process's device: ``cuda:LOCAL_RANK`` when training on CUDA in a multi-process world."""
    import torch

    if world.parallel and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def wrap_model(world: World, model, device):
    """DDP over ``model`` (SyncBatchNorm on CUDA; a warning for BatchNorm on the CPU), or ``model`` itself."""
    if not world.parallel:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    if has_bn and world.main:
        warnings.warn("data-parallel training on the CPU: torch has no CPU SyncBatchNorm, so each process "
                      "normalises its slice of the batch with its own BatchNorm statistics (the weights differ "
                      "from one process's; a BatchNorm-free network such as gapnet matches)", RuntimeWarning,
                      stacklevel=2)
    return DistributedDataParallel(model)
