"""MAML (Finn et al. 2017) on profiles, FSL-CP's ``maml cp``: second-order and first-order, written with
``torch.func`` (``functional_call`` runs the FNN on a dict of weights, ``grad`` differentiates the losses).

Inner loop, per task: theta' = theta - alpha * grad_theta L_support(theta), ``inner_steps`` times. Outer loop:
theta <- Adam step on the mean over a meta-batch of tasks of L_query(theta'). Second order differentiates through
the inner gradient; first order (``first_order=True``, the registry's ``maml_fo``) treats the inner gradients as
constants, so the meta-gradient is the query-loss gradient at theta'. Losses are BCE on the FNN's single logit.

FSL-CP's settings (its code, learn2learn's MAML): alpha = 0.5, one inner step (in training and in the test
episodes), Adam with learning rate 1e-3 outside, meta-batches of 32 tasks, 60,000 meta-batches. The defaults keep
alpha, the step count and the outer learning rate and shrink the rest (see :mod:`~.backbone`).

:meth:`fit` adapts a copy of the meta-learned weights on the support set (dropout off, so it is deterministic) and
keeps that copy for :meth:`predict_proba`; the meta-learned weights are never written after :meth:`pretrain`, so
nothing carries from one episode to the next.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from phenovec.activity.learner import Learner, TaskData, check_support
from phenovec.activity.learners.backbone import SMALL_FNN, FNN, as_tensor, check_query, resolve_device, seeded
from phenovec.activity.learners.training_episodes import check_training_tasks, sample_training_episode

Params = dict[str, torch.Tensor]


class MAMLLearner(Learner):
    """MAML on a one-logit FNN (second order unless ``first_order``).

    Options: ``hidden``, ``input_dropout``, ``dropout`` (the FNN), ``inner_lr`` (alpha), ``inner_steps`` (in
    pre-training and in :meth:`fit`), ``outer_lr`` (Adam), ``meta_batches`` (outer steps), ``meta_batch_size``
    (tasks per outer step), ``support_size`` / ``query_size`` (pre-training episode shape), ``first_order``,
    ``device``.
    """

    name = "maml"

    def __init__(self, *, hidden: Sequence[int] = SMALL_FNN["hidden"],
                 input_dropout: float = SMALL_FNN["input_dropout"], dropout: float = SMALL_FNN["dropout"],
                 inner_lr: float = 0.5, inner_steps: int = 1,
                 outer_lr: float = 1e-3, meta_batches: int = 100, meta_batch_size: int = 8, support_size: int = 16,
                 query_size: int = 32, first_order: bool = False, device: str = "cpu"):
        if inner_steps < 1 or meta_batches < 1 or meta_batch_size < 1 or support_size < 2 or query_size < 2:
            raise ValueError(f"{self.name}: inner_steps, meta_batches, meta_batch_size >= 1 and support_size, "
                             f"query_size >= 2 needed, got {inner_steps}, {meta_batches}, {meta_batch_size}, "
                             f"{support_size}, {query_size}")
        if inner_lr <= 0 or outer_lr <= 0:
            raise ValueError(f"{self.name}: inner_lr and outer_lr must be > 0, got {inner_lr}, {outer_lr}")
        self.fnn = {"hidden": tuple(hidden), "input_dropout": input_dropout, "dropout": dropout}
        self.inner_lr, self.inner_steps, self.outer_lr = float(inner_lr), int(inner_steps), float(outer_lr)
        self.meta_batches, self.meta_batch_size = int(meta_batches), int(meta_batch_size)
        self.support_size, self.query_size = int(support_size), int(query_size)
        self.first_order = bool(first_order)
        self.device = resolve_device(device)
        self._model: FNN | None = None
        self._meta: Params | None = None
        self._adapted: Params | None = None
        self.n_features: int | None = None
        #: mean query loss per meta-batch (the last :meth:`pretrain`)
        self.losses: list[float] = []

    def pretrain(self, tasks: list[TaskData], *, seed: int = 0) -> "MAMLLearner":
        """Meta-train on ``meta_batches`` meta-batches of ``meta_batch_size`` episodes from ``tasks``."""
        self.n_features = check_training_tasks(tasks, f"{self.name} pretrain")
        rng = np.random.default_rng(seed)
        self._adapted = None
        with seeded(seed, self.device):
            model = FNN(self.n_features, 1, **self.fnn).to(self.device)
            self._model = model.train()
            params = dict(model.named_parameters())
            opt = torch.optim.Adam(params.values(), lr=self.outer_lr)
            meta_grad = grad(self._meta_loss, has_aux=True)
            self.losses = []
            for _ in range(self.meta_batches):
                batch = []
                for _ in range(self.meta_batch_size):
                    ep = sample_training_episode(tasks[rng.integers(len(tasks))], self.support_size,
                                                 self.query_size, rng)
                    batch.append(tuple(as_tensor(a, self.device) for a in (ep.xs, ep.ys, ep.xq, ep.yq)))
                grads, loss = meta_grad({k: p.detach() for k, p in params.items()}, batch)
                for k, p in params.items():
                    p.grad = grads[k]
                opt.step()
                self.losses.append(float(loss))
        model.eval()
        self._meta = {k: p.detach().clone() for k, p in model.named_parameters()}
        return self

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> "MAMLLearner":
        """``inner_steps`` gradient steps from the meta-learned weights on the support set (``seed`` is unused:
        dropout is off, nothing is random)."""
        x, y = check_support(x, y, f"{self.name} fit")
        if self._meta is None:
            raise RuntimeError(f"{self.name}: call pretrain(training tasks) before fit")
        check_query(x, self.n_features, f"{self.name} fit")
        self._model.eval()
        adapted = self._adapt(dict(self._meta), as_tensor(x, self.device),
                              torch.as_tensor(y, dtype=torch.float32, device=self.device), first_order=True)
        self._adapted = {k: v.detach() for k, v in adapted.items()}
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """sigmoid of the adapted network's logit."""
        if self._adapted is None:
            raise RuntimeError(f"{self.name}: call fit(support) before predict_proba")
        x = check_query(x, self.n_features, f"{self.name} predict_proba")
        with torch.no_grad():
            logits = functional_call(self._model, self._adapted, (as_tensor(x, self.device),))[:, 0]
            return torch.sigmoid(logits.double()).cpu().numpy()

    def _loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(functional_call(self._model, params, (x,))[:, 0], y)

    def _adapt(self, params: Params, x: torch.Tensor, y: torch.Tensor, first_order: bool) -> Params:
        """theta' after ``inner_steps`` steps on (x, y); the inner gradients are constants when ``first_order``."""
        for _ in range(self.inner_steps):
            g = grad(self._loss)(params, x, y)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            params = {k: p - self.inner_lr * g[k] for k, p in params.items()}
        return params

    def _meta_loss(self, params: Params, batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query loss over the meta-batch after adapting on each support set (and the same, detached)."""
        losses = [self._loss(self._adapt(params, xs, ys, self.first_order), xq, yq) for xs, ys, xq, yq in batch]
        loss = torch.stack(losses).mean()
        return loss, loss.detach()


class FirstOrderMAMLLearner(MAMLLearner):
    """First-order MAML (FOMAML): :class:`MAMLLearner` with ``first_order=True`` and, by default, 5 inner steps.

    FSL-CP ran only second-order MAML. With its single inner step, first-order MAML learns an initialisation that
    one step cannot move far from: on the held-out tasks of the synthetic MOA table of
    ``tests/test_activity_learners.py`` it stayed near chance (mean AUROC 0.35-0.69 over seeds and outer learning
    rates) where second order reached 0.95-0.98; with 5 inner steps both reached 0.98-1.00. Pass ``inner_steps=1``
    for the thesis' setting.
    """

    name = "maml_fo"

    def __init__(self, **options):
        if not options.pop("first_order", True):
            raise ValueError("maml_fo is first-order MAML; use the learner 'maml' for second order")
        options.setdefault("inner_steps", 5)
        super().__init__(first_order=True, **options)
