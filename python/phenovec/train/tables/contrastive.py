"""Contrastive losses and profile augmentations of the table trainer.

- :func:`augment_profiles`: zero a random ``mask_fraction`` of each row's features (the thesis' 10 % masking) and
  add Gaussian noise (SimCLR on embeddings); random numbers come from PyTorch's current generator, which the loop
  seeds per (seed, epoch).
- :func:`symmetric_info_nce`: the thesis' CLIP loss, L = -(1/N) sum_i log softmax_j(s(x_i, z_j)/tau)[i]
  - (1/N) sum_i log softmax_j(s(x_j, z_i)/tau)[i], with cosine similarity s (the sum of the two directions, as
  written in the thesis).
- :func:`nt_xent`: SimCLR's NT-Xent over 2N views, temperature tau (0.5 default in the recipe), each view's partner
  the positive and the other 2N - 2 views the negatives; mean over the 2N views.

With ``groups`` (an integer per row: the perturbation for CLIP, the compound for SimCLR's replicate positives), rows
of the same group other than the partner are removed from the negatives: two replicate wells of one compound in a
batch are not pushed apart.
"""
from __future__ import annotations

__all__ = ["augment_profiles", "nt_xent", "symmetric_info_nce"]


def augment_profiles(x, mask_fraction: float = 0.0, noise_std: float = 0.0):
    """``x`` with ``mask_fraction`` of each row's entries set to 0 and N(0, noise_std^2) added."""
    import torch

    if mask_fraction > 0:
        x = x * (torch.rand(x.shape, device=x.device) >= mask_fraction).to(x.dtype)
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return x


def _same_group(groups, n: int):
    import torch

    if groups is None:
        return None
    g = groups.view(-1)
    if g.numel() != n:
        raise ValueError(f"groups has {g.numel()} entries for a batch of {n}")
    same = g[:, None] == g[None, :]
    return same & ~torch.eye(n, dtype=torch.bool, device=g.device)


def symmetric_info_nce(a, b, logit_scale, groups=None):
    """CLIP's symmetric InfoNCE between paired rows of ``a`` and ``b`` (N x D each); ``logit_scale`` = 1 / tau."""
    import torch
    import torch.nn.functional as F

    n = a.shape[0]
    if n < 2:
        raise ValueError(f"a contrastive batch needs at least 2 pairs, got {n}")
    logits = logit_scale * (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T)
    same = _same_group(groups, n)
    if same is not None:
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(n, device=a.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)


def nt_xent(z1, z2, temperature: float = 0.5, groups=None):
    """SimCLR's NT-Xent between two views (N x D each) of the same N rows."""
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"NT-Xent needs at least 2 rows per batch, got {n}")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    if groups is not None:
        g = groups.view(-1)
        g2 = torch.cat([g, g])
        same = (g2[:, None] == g2[None, :]) & ~eye
        same[torch.arange(2 * n, device=z.device), partner] = False
        sim = sim.masked_fill(same, float("-inf"))
    return F.cross_entropy(sim, partner)
