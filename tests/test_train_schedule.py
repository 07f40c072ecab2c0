"""phenovec.train.schedule: optimizers without decay on norm/bias, per-iteration lr schedules, exact resume.

References: closed-form formulas written here, torch's own LinearLR / CosineAnnealingLR for the warm-up and
cosine parts, torch.save / torch.load(weights_only=True) for the resume round trip.
"""
import io
import math

import pytest
import torch

from phenovec.train.models import build_model
from phenovec.train.schedule import build_optimizer, build_scheduler

torch.set_num_threads(1)


def _lrs(name, epochs, spe, warmup, n=None, **kw):
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(model, "sgd", lr=0.2)
    sched = build_scheduler(opt, name, epochs=epochs, steps_per_epoch=spe, warmup_epochs=warmup, **kw)
    out = []
    for _ in range(n or epochs * spe):
        out.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == out[-1] for g in opt.param_groups)
        opt.step()
        sched.step()
    return out


def test_constant_with_warmup_closed_form():
    epochs, spe, we = 6, 4, 2
    W = we * spe
    got = _lrs("constant", epochs, spe, we)
    expected = [0.2 * (i + 1) / W if i < W else 0.2 for i in range(epochs * spe)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[0] == pytest.approx(0.2 / W) and got[W - 1] == pytest.approx(0.2)


def test_step_closed_form():
    epochs, spe, we = 9, 3, 1
    got = _lrs("step", epochs, spe, we, step_size=3, gamma=0.5)
    expected = [0.2 * (i + 1) / spe if i < spe else 0.2 * 0.5 ** ((i // spe) // 3) for i in range(epochs * spe)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[-1] == pytest.approx(0.2 * 0.25)


def test_cosine_closed_form_and_torch_reference():
    epochs, spe, we = 10, 5, 5
    W, T = we * spe, epochs * spe
    got = _lrs("cosine", epochs, spe, we, n=T + 3)
    expected = [0.2 * (i + 1) / W if i < W else 0.1 * (1 + math.cos(math.pi * (i - W) / (T - W))) for i in range(T)]
    assert got[:T] == pytest.approx(expected, rel=1e-12)
    assert got[T:] == pytest.approx([got[T - 1]] * 3)  # holds its last value past the end
    # torch's schedulers as an independent reference for both parts
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / W, end_factor=1.0, total_iters=W - 1)
    ref = []
    for _ in range(W):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        warm.step()
    opt2 = torch.optim.SGD([p], lr=0.2)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=T - W, eta_min=0.0)
    for _ in range(T - W):
        ref.append(opt2.param_groups[0]["lr"])
        opt2.step()
        cos.step()
    assert got[:T] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_no_warmup_starts_at_lr():
    assert _lrs("constant", 2, 3, 0) == pytest.approx([0.2] * 6)
    got = _lrs("cosine", 2, 3, 0)
    assert got[0] == pytest.approx(0.2)
    assert got[3] == pytest.approx(0.1)


def _train_steps(model, opt, sched, batches):
    lrs = []
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    return lrs


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_resume_mid_warmup_continues_identically(opt_name):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(14)]

    def make():
        torch.manual_seed(1)
        m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
        o = build_optimizer(m, opt_name, lr=0.05)
        s = build_scheduler(o, "cosine", epochs=7, steps_per_epoch=2, warmup_epochs=4)
        return m, o, s

    m, o, s = make()
    full = _train_steps(m, o, s, batches)
    full_params = [p.detach().clone() for p in m.parameters()]

    m, o, s = make()
    first = _train_steps(m, o, s, batches[:5])  # 5 of the 8 warm-up iterations
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": o.state_dict(), "sched": s.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, map_location="cpu", weights_only=True)

    m2, o2, s2 = make()
    m2.load_state_dict(ck["model"])
    s2.load_state_dict(ck["sched"])  # before the optimizer: sets lr itself
    assert o2.param_groups[0]["lr"] == pytest.approx(full[5], rel=0, abs=0)
    o2.load_state_dict(ck["opt"])
    rest = _train_steps(m2, o2, s2, batches[5:])
    assert first + rest == full
    for a, b in zip(m2.parameters(), full_params):
        assert torch.equal(a, b)


def test_no_weight_decay_on_norm_and_bias():
    net = build_model("resnet_tiny", 3, 4, seed=0)
    opt = build_optimizer(net, "sgd", lr=0.1, weight_decay=1e-4)
    decay_ids = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in net.named_parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    for pid in decay_ids:
        assert names[pid].endswith("weight") and "bn" not in names[pid], names[pid]
    assert id(net.backbone.bn1.weight) not in decay_ids and id(net.head.bias) not in decay_ids
    assert id(net.head.weight) in decay_ids and id(net.backbone.conv1.weight) in decay_ids
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups if g["weight_decay"] > 0)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True
    # behaviour: a zero gradient step shrinks decayed weights and leaves biases / BN untouched
    w0, b0, bn0 = net.head.weight.detach().clone(), net.head.bias.detach().clone(), net.backbone.bn1.weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(net.head.weight.detach(), w0 * (1 - 0.1 * 1e-4))
    assert torch.equal(net.head.bias.detach(), b0) and torch.equal(net.backbone.bn1.weight.detach(), bn0)
    adamw = build_optimizer(net, "adamw", lr=1e-3)
    assert isinstance(adamw, torch.optim.AdamW)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 1e-4]


def test_bad_names_and_arguments():
    m = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'.*'sgd', 'adamw'"):
        build_optimizer(m, "adam", lr=0.1)
    with pytest.raises(ValueError, match="learning rate"):
        build_optimizer(m, "sgd", lr=0)
    opt = build_optimizer(m, "sgd", lr=0.1)
    with pytest.raises(ValueError, match=r"unknown lr schedule 'linear'.*'constant', 'step', 'cosine'"):
        build_scheduler(opt, "linear", epochs=3, steps_per_epoch=2)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(opt, "cosine", epochs=3, steps_per_epoch=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_scheduler(opt, "cosine", epochs=3, steps_per_epoch=2, warmup_epochs=3)
