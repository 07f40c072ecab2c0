"""Multi-process data-parallel training (``torchrun``, ``torch.distributed``, DDP) with one process's results.

Launch the ordinary command under ``torchrun``::

    torchrun --nproc-per-node 4 -m phenovec.cli train config.yaml

Each process reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by ``torchrun``); the process group is created
with NCCL on CUDA and gloo on the CPU (or an existing one is used). Every process computes the same epoch plan
(seeded by (seed, epoch) alone) and takes a contiguous slice of each *global* batch of ``data.batch_size`` (sizes
differ by at most one); the loss of a slice is weighted by its share of the global batch, so the gradients DDP
averages are exactly those of the global batch's mean loss. The augmentation draws its random numbers for the
whole global batch on every process and applies those of its slice (``Augment.batch_slice``), so each sample is
augmented as one process would have augmented it. The BatchNorm layers normalise with the statistics of the global
batch: torch's ``SyncBatchNorm`` on CUDA, and on the CPU (where torch has none) :class:`GlobalBatchNorm2d`, which
sums each channel's count, sum and sum of squares (float64) over the processes with an all-reduce that is also
summed in the backward pass (as ``SyncBatchNorm``), and updates the running statistics as ``BatchNorm2d`` does
(unbiased variance); its state is ``BatchNorm2d``'s, so checkpoints do not change. Dropout masks are drawn per
process (same distribution, other draws), and a stand-in sample of an empty slice enters its step's batch
statistics: with dropout or such a step the weights are statistically, not numerically, one process's.

Only rank 0 validates (the whole validation split, on the bare model), writes ``split.parquet``, checkpoints and
metrics (atomically, ``phenovec.train.checkpoint``); the epoch's metrics row is broadcast so every process returns
the same ``TrainResult``. A slice with no sample (a last batch smaller than the world) runs one sample with weight 0.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (plain data: numbers, strings, lists, dicts)."""
        if not self.parallel:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
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
    if world.parallel and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def wrap_model(world: World, model, device):
    """DDP over ``model`` with its BatchNorm layers synchronised (``SyncBatchNorm`` on CUDA,
    :class:`GlobalBatchNorm2d` elsewhere; converted in place), or ``model`` itself in a one-process world."""
    if not world.parallel:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    other = sorted({type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                    and not isinstance(m, torch.nn.BatchNorm2d)})
    if other and world.main:
        warnings.warn(f"data-parallel training on the CPU: {', '.join(other)} layers normalise each process's slice "
                      "with its own statistics (only BatchNorm2d is synchronised here)", RuntimeWarning, stacklevel=2)
    _global_batchnorm(model)
    return DistributedDataParallel(model)


def _global_batchnorm(module) -> None:
    """Make every ``BatchNorm2d`` under ``module`` a :class:`GlobalBatchNorm2d` in place: the class changes, the
    parameter and buffer objects stay (an optimiser built before keeps updating them)."""
    for m in module.modules():
        if type(m) is torch.nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d


class _SumOverProcesses(torch.autograd.Function):
    """``all_reduce`` (sum) forward and backward: the gradient of every process's loss reaches each input."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone()
        dist.all_reduce(g)
        return g


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are those of the global batch over every process of the
    default process group (module docstring); outside training, or without a process group, it is
    ``BatchNorm2d``."""

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        xd = x.double()
        local = torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)),
                           xd.new_tensor([x.numel() // max(c, 1)])])
        tot = _SumOverProcesses.apply(local)
        n = tot[-1]
        mean = tot[:c] / n
        var = (tot[c:2 * c] / n - mean * mean).clamp_min(0)
        shape = (1, c, 1, 1)
        out = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1)) if float(n) > 1 else var
                self.running_mean.mul_(1 - f).add_(f * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - f).add_(f * unbiased.to(self.running_var.dtype))
        return out
