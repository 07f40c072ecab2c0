"""NT-Xent (phenovec.train.nt_xent) against a brute-force loop reference, the symmetric InfoNCE identity,
replicate positives, gradients and refusals."""
import math

import numpy as np
import pytest

import torch

from phenovec.train.nt_xent import nt_xent


def _reference(z1, z2, tau, groups=None, intra=True):
    """Loop over anchors in float64: normalise, cosine / tau, -mean log-softmax of the positives."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    g = np.arange(n) if groups is None else np.asarray(groups)
    total = 0.0
    for a in range(2 * n):
        others = [b for b in range(2 * n) if b != a and (intra or (a < n) != (b < n))]
        denom = sum(math.exp(z[a] @ z[b] / tau) for b in others)
        pos = [b for b in others if g[b % n] == g[a % n]]
        total += -sum(math.log(math.exp(z[a] @ z[b] / tau) / denom) for b in pos) / len(pos)
    return total / (2 * n)


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (5, 4, 0.5), (7, 8, 0.1), (4, 16, 1.0)])
def test_matches_the_brute_force_reference(n, d, tau):
    rng = np.random.default_rng(n * 100 + d)
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    got = float(nt_xent(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), tau))
    assert got == pytest.approx(_reference(z1, z2, tau), rel=1e-5, abs=1e-6)


def test_replicate_groups_are_extra_positives():
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    groups = [0, 0, 1, 2, 2, 2]
    t1, t2 = torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32)
    got = float(nt_xent(t1, t2, 0.5, groups=torch.tensor(groups)))
    assert got == pytest.approx(_reference(z1, z2, 0.5, groups), rel=1e-5)
    # all groups distinct -> the plain loss; shared groups change it
    assert float(nt_xent(t1, t2, 0.5, groups=torch.arange(6))) == pytest.approx(float(nt_xent(t1, t2, 0.5)), rel=1e-6)
    assert abs(got - float(nt_xent(t1, t2, 0.5))) > 1e-3


def test_without_intra_view_negatives_it_is_half_the_symmetric_infonce():
    """Mean over the 2N anchors of the cross-view softmax = (CE(S, diag) + CE(S^T, diag)) / 2, the thesis' CLIP loss
    (sum of the two directions) halved."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(9, 6, generator=g), torch.randn(9, 6, generator=g)
    tau = 0.3
    s = torch.nn.functional.normalize(z1, dim=1) @ torch.nn.functional.normalize(z2, dim=1).T / tau
    target = torch.arange(9)
    clip = torch.nn.functional.cross_entropy(s, target) + torch.nn.functional.cross_entropy(s.T, target)
    got = nt_xent(z1, z2, tau, intra_view_negatives=False)
    assert float(got) == pytest.approx(float(clip) / 2, rel=1e-6)
    assert float(got) == pytest.approx(_reference(z1.numpy(), z2.numpy(), tau, intra=False), rel=1e-5)
    # with intra-view negatives (SimCLR) the denominator is larger, so the loss is too
    assert float(nt_xent(z1, z2, tau)) > float(got)


def test_scale_invariant_gradient_flows_and_perfect_alignment_is_low():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 4, generator=g, requires_grad=True)
    z2 = torch.randn(8, 4, generator=g)
    loss = nt_xent(z1, z2)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
    assert float(nt_xent(3 * z1.detach(), z2)) == pytest.approx(loss.item(), rel=1e-6)  # cosine: scale-free
    # identical, well-separated views (orthogonal directions) give a lower loss than random pairs
    eye = torch.eye(8)
    assert float(nt_xent(eye, eye, 0.1)) < loss.item()
    # half precision input is computed in float32
    assert nt_xent(z1.detach().half(), z2.half()).dtype == torch.float32


def test_refusals():
    with pytest.raises(ValueError, match="at least 2 samples.*batch of 1"):
        nt_xent(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), 0.0)
    with pytest.raises(ValueError, match="groups has 2 entries"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), groups=torch.tensor([0, 1]))
