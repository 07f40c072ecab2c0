"""Optimizers and per-iteration learning-rate schedules of the thesis recipe.

Thesis (Bornholdt 2021, sections 3.2.2 and 4.7.1): SGD (DeepProfiler: momentum 0.9, Nesterov),
weight decay 1e-4, and three schedules - constant, step, and cosine decay "from zero to the initial
learning rate using a linear function during the first five epochs. After that, every epoch reduces
the learning rate according to the cosine decay". We step every iteration (not every epoch) and apply
the same linear warm-up to all three schedules (``warmup_epochs=0`` turns it off).

With ``W = warmup_epochs * steps_per_epoch`` warm-up iterations, ``T = epochs * steps_per_epoch``
total iterations and the iteration index ``i`` (0-based; the lr used by the ``i``-th optimizer step),
the multiplier of the base lr is:

* warm-up, ``i < W``: ``(i + 1) / W`` - linear from ``1 / W`` (near zero; never exactly zero, so no
  step is wasted) reaching 1 at the last warm-up step;
* ``constant``: 1;
* ``step``: ``gamma ** (epoch // step_size)`` with ``epoch = i // steps_per_epoch`` (epochs counted
  from the start of training, warm-up included);
* ``multistep``: ``gamma ** (number of milestones <= epoch)`` (MOAProfiler: x0.1 at epochs 50 and 75);
* ``cosine``: ``0.5 * (1 + cos(pi * (i - W) / (T - W)))`` (1 at the end of warm-up, towards 0 at the
  end of training; DeepProfiler's ``0.5 (1 + cos(pi t / E)) lr``, per iteration);
* for ``i >= T`` the multiplier keeps its last value (``i = T - 1``).

The scheduler is a ``torch.optim.lr_scheduler.LRScheduler``: call ``scheduler.step()`` after every
``optimizer.step()``. Its ``state_dict()`` holds the iteration counter and the schedule parameters;
``load_state_dict`` restores them and sets the optimizer's lr, so a resumed run continues exactly.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["OPTIMIZERS", "SCHEDULES", "WarmupSchedule", "build_optimizer", "build_scheduler", "parameter_groups"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine", "multistep")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights of convolutions / linear layers with ``weight_decay``, and every parameter
    with fewer than 2 dimensions (biases, BatchNorm / LayerNorm scales and shifts) with 0."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.01, weight_decay: float = 1e-4,
                    momentum: float = 0.9, nesterov: bool = True) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov by default as DeepProfiler) or AdamW.

    Weight decay applies to conv / linear weights only, never to biases or normalisation parameters
    (:func:`parameter_groups`). For SGD it is the classic L2 term added to the gradient (the thesis's
    ``lambda * sum(beta^2)``, up to the factor 2); for AdamW it is decoupled decay. ``momentum`` and
    ``nesterov`` are ignored by AdamW (its betas are torch's defaults).
    """
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError("model has no trainable parameters")
    if name.lower() == "sgd":
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        return torch.optim.SGD(groups, lr=float(lr), momentum=float(momentum),
                               nesterov=bool(nesterov) and momentum > 0)
    return torch.optim.AdamW(groups, lr=float(lr))


class WarmupSchedule(LRScheduler):
    """Per-iteration constant / step / cosine schedule with linear warm-up (closed form, see module doc)."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int,
                 warmup_epochs: float = 5, step_size: int = 10, gamma: float = 0.1, last_epoch: int = -1,
                 milestones: tuple = ()) -> None:
        if not isinstance(name, str) or name.lower() not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {name!r}; expected one of {list(SCHEDULES)}")
        for key, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float)) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}")
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1 (epochs), got {step_size!r}")
        if not isinstance(gamma, (int, float)) or gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        self.name = name.lower()
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(float(warmup_epochs) * self.steps_per_epoch))
        if self.warmup_steps >= self.total_steps and self.name == "cosine":
            raise ValueError(f"cosine schedule: warmup_epochs ({warmup_epochs}) must be shorter than "
                             f"epochs ({epochs})")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        ms = list(milestones or ())
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms) or ms != sorted(set(ms)):
            raise ValueError(f"milestones must be increasing epoch numbers >= 1, got {milestones!r}")
        if self.name == "multistep" and not ms:
            raise ValueError("the multistep schedule needs milestones (epochs at which the lr is multiplied by gamma)")
        self.milestones = ms
        super().__init__(optimizer, last_epoch)

    def factor(self, i: int) -> float:
        """Multiplier of the base lr for iteration ``i`` (0-based)."""
        i = min(max(int(i), 0), self.total_steps - 1)
        if i < self.warmup_steps:
            return (i + 1) / self.warmup_steps
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** ((i // self.steps_per_epoch) // self.step_size)
        if self.name == "multistep":
            epoch = i // self.steps_per_epoch
            return self.gamma ** sum(1 for m in self.milestones if m <= epoch)
        t = (i - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    _get_closed_form_lr = get_lr

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counter and parameters, and set the optimizer's lr to the restored value."""
        super().load_state_dict(state_dict)
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str = "cosine", epochs: int = 30,
                    steps_per_epoch: int = 1, warmup_epochs: float = 5, step_size: int = 10,
                    gamma: float = 0.1, milestones: tuple = ()) -> WarmupSchedule:
    """A :class:`WarmupSchedule` stepping per iteration (see the module docstring for the formulas).

    ``step_size`` (epochs) and ``gamma`` are used by ``"step"`` only. Call ``scheduler.step()`` after
    every ``optimizer.step()``; right after construction the optimizer holds the lr of iteration 0.
    """
    return WarmupSchedule(optimizer, name, epochs, steps_per_epoch, warmup_epochs, step_size, gamma,
                          milestones=tuple(milestones))
