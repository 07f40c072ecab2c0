"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020), as one function.

``nt_xent(z1, z2, temperature)``: ``z1[i]`` and ``z2[i]`` are the projections of two augmented views of sample
``i``. The 2N projections are L2-normalised, ``s_ab = z_a . z_b / temperature`` (cosine similarity over the
temperature), and every view ``a`` is an anchor whose positive is its partner view ``p(a)``; the loss of an anchor
is a softmax cross-entropy over every *other* view of the batch::

    l(a) = -log( exp(s_a,p(a)) / sum_{b != a} exp(s_ab) ),        loss = mean over the 2N anchors

which is the RxRx2 deck's "sparse categorical cross-entropy with each view's positive partner as the target
class, mean over the batch" (temperature 0.5 there and here by default).

``groups`` (N ints): samples sharing a group (e.g. replicate wells of one compound) are extra positives, as the
thesis proposes for SimCLR on Cell Painting. An anchor then averages the log-probability over all its positives
P(a) (its partner and both views of every other sample of its group), the denominator still being every other
view (Khosla et al. 2020's L_out)::

    l(a) = -1/|P(a)| sum_{p in P(a)} log( exp(s_ap) / sum_{b != a} exp(s_ab) )

With every group distinct this is exactly the plain NT-Xent above.

``intra_view_negatives=False`` drops the same-view comparisons from the denominator (each anchor of view 1 is
compared with view 2 only, and vice versa). The loss then equals half the symmetric InfoNCE (CLIP) loss of the
thesis' chapter 4, ``L = CE(S, diag) + CE(S^T, diag)`` with ``S = z1 z2^T / temperature``, because the mean over
the 2N anchors is the mean of the row and the column cross-entropies (tested).

Computed in float32 whatever the input dtype (autocast-safe). A batch of one has no negative at all; it is
refused (``ValueError``) rather than giving a loss of exactly zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, groups: torch.Tensor | None = None,
            intra_view_negatives: bool = True) -> torch.Tensor:
    """Mean NT-Xent loss over the 2N views (module docstring). ``z1``, ``z2``: N x D; ``groups``: N ints or None."""
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"nt_xent needs two N x D tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"nt_xent needs at least 2 samples (each view's negatives are the other samples' views), "
                         f"got a batch of {n}")
    if not temperature > 0:
        raise ValueError(f"nt_xent temperature must be > 0, got {temperature!r}")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / float(temperature)
    idx = torch.arange(2 * n, device=z.device)
    view = idx // n
    sample = idx % n
    allowed = idx[:, None] != idx[None, :]
    if not intra_view_negatives:
        allowed &= view[:, None] != view[None, :]
    if groups is None:
        pos = sample[:, None] == sample[None, :]
    else:
        g = torch.as_tensor(groups, device=z.device).reshape(-1)
        if g.shape[0] != n:
            raise ValueError(f"nt_xent groups has {g.shape[0]} entries for a batch of {n}")
        g2 = torch.cat([g, g])
        pos = (g2[:, None] == g2[None, :]) | (sample[:, None] == sample[None, :])
    pos &= allowed
    logits = sim.masked_fill(~allowed, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(dim=1)) / pos.sum(dim=1)
    return per_anchor.mean()
