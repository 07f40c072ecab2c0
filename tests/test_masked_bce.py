import numpy as np
import pytest

import torch

from phenovec.train.masked_bce import masked_bce


def test_missing_label_changes_no_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, requires_grad=True)
    y = torch.tensor(np.random.default_rng(0).integers(0, 2, (6, 4)), dtype=torch.float32)
    y[1, 2] = float("nan")
    y[4, 0] = float("nan")
    masked_bce(logits, y).backward()
    grad = logits.grad.clone()
    assert grad[1, 2] == 0 and grad[4, 0] == 0
    assert (grad.abs() > 0).sum() == 22
    # the measured entries' loss equals the plain BCE over them
    m = ~torch.isnan(y)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits[m], y[m])
    assert torch.allclose(masked_bce(logits, y), ref)
    # changing a missing entry's logit changes nothing
    l2 = logits.detach().clone()
    l2[1, 2] += 5.0
    assert torch.allclose(masked_bce(l2, y), masked_bce(logits.detach(), y))


def test_all_missing_is_zero_and_backward_works():
    logits = torch.zeros(2, 3, requires_grad=True)
    y = torch.full((2, 3), float("nan"))
    loss = masked_bce(logits, y)
    loss.backward()
    assert float(loss) == 0.0 and torch.all(logits.grad == 0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        masked_bce(torch.zeros(2, 3), torch.zeros(3, 2))
