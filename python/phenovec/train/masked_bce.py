"""Binary cross-entropy over a sparse label matrix: missing labels (NaN) are masked out (GapNet's multi-task loss).

``targets`` holds 1 (active), 0 (inactive) or NaN (not measured) per sample and task. The loss is the mean of the
per-entry BCE over measured entries only, so a missing label contributes no gradient to any output. A batch with no
measured entry gives a zero loss that is still connected to the graph (so ``backward`` works and changes nothing).
"""
from __future__ import annotations


def masked_bce(logits, targets, pos_weight=None):
    """Mean BCE-with-logits over the measured (non-NaN) entries of ``targets`` (same shape as ``logits``)."""
    import torch

    if logits.shape != targets.shape:
        raise ValueError(f"masked_bce: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    measured = ~torch.isnan(targets)
    safe = torch.where(measured, targets, torch.zeros_like(targets)).to(logits.dtype)
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, safe, reduction="none", pos_weight=pos_weight)
    per = torch.where(measured, per, torch.zeros_like(per))
    n = measured.sum()
    return per.sum() / n.clamp(min=1).to(per.dtype)
