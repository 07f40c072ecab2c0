"""The fully connected network (FNN) every PyTorch activity learner builds on, and how those learners run it.

FSL-CP's FNN (the ``FNN_Relu`` of its code, after Hofmarcher et al.'s hti-cnn) is input dropout 0.1, then three
``Linear(2048) -> ReLU -> Dropout(0.5)`` blocks, then a linear output layer, Xavier-normal weights and zero biases.
:data:`THESIS_FNN` holds those sizes; the learners default to a smaller network (:data:`SMALL_FNN`) so that a
benchmark runs on a few CPU cores, and take ``hidden`` / ``input_dropout`` / ``dropout`` to use the thesis' sizes.

Randomness (weight initialisation, dropout) is drawn under :func:`seeded`, which seeds PyTorch's generators for the
block and restores them afterwards, so that a learner is deterministic given its ``seed`` and leaves the caller's
random state alone.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

#: the FSL-CP thesis' FNN (hidden widths and dropout rates of its code)
THESIS_FNN = {"hidden": (2048, 2048, 2048), "input_dropout": 0.1, "dropout": 0.5}
#: the learners' default: small enough for a CPU benchmark in seconds
SMALL_FNN = {"hidden": (128, 128), "input_dropout": 0.1, "dropout": 0.2}


class FNN(nn.Module):
    """``Dropout(input_dropout)``, then per width in ``hidden`` a ``Linear -> ReLU -> Dropout(dropout)`` block, then
    ``Linear(hidden[-1], n_out)``. Weights Xavier-normal, biases zero (as FSL-CP's FNN).

    :attr:`body` is everything before the output layer (its width is :attr:`width`), :attr:`head` the output layer.
    """

    def __init__(self, n_in: int, n_out: int, hidden: Sequence[int] = SMALL_FNN["hidden"],
                 input_dropout: float = SMALL_FNN["input_dropout"], dropout: float = SMALL_FNN["dropout"]):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if n_in < 1 or n_out < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"FNN: n_in, n_out and every hidden width must be >= 1, got {n_in}, {n_out}, {hidden}")
        for key, rate in (("input_dropout", input_dropout), ("dropout", dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"FNN: {key} must be in [0, 1), got {rate}")
        layers: list[nn.Module] = [nn.Dropout(input_dropout)]
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)
        self.width = width
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init_linear(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def init_linear(layer: nn.Linear) -> nn.Linear:
    """Xavier-normal weights and zero bias (FSL-CP's initialisation), from PyTorch's current generator."""
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed PyTorch's CPU generator (and ``device``'s when it is a GPU) for the block; the previous states are
    restored on exit, so the caller's random stream is untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(int(seed))
        yield


def as_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """``x`` as a float32 tensor on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`; ``ValueError`` naming it when PyTorch cannot use it."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: PyTorch sees no CUDA device")
    return resolved


def check_query(x: np.ndarray, n_features: int, where: str) -> np.ndarray:
    """Query profiles as float32 after checking they are finite rows of ``n_features`` columns."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"{where}: expected query profiles of shape (n, {n_features}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: non-finite query profile values")
    return x
