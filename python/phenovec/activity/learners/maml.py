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

Two departures from the thesis' MAML, both on by default (``zero_head=False, balanced=False`` is the thesis'
setting). On the cell-injury one-vs-rest tasks (bench/activity_cell_injury.yaml) the thesis' MAML scored mean AUROC
0.53 / 0.42 / 0.43 at M = 8 / 16 / 32, below chance, and its meta-learned weights *before* any adaptation scored
0.27-0.31. There was no sign error: the inner step lowers the support loss (tested). Two effects combined:

- **the output layer remembers the training tasks.** In one-vs-rest tasks a training task's active compound is an
  inactive of every test task. The meta-learned head scores "like a training active" high, which ranks a test
  task's compounds backwards, and one inner step at alpha = 0.5 cannot undo it. With ``zero_head`` the output layer
  is zeroed before every adaptation: in pre-training, in :meth:`fit` and in :meth:`select`. This is the "zeroing
  trick" of Kao et al. 2022 (*MAML is a noisy contrastive learner*) and UnicornMAML (Ye & Chao 2022). The
  adapted logit then compares a query with the support set's classes, and the training tasks' labels carry no
  prior.
- **the mean BCE gradient is the inactives'.** A stratified support set of 16-32 compounds holds 1-3 actives. With
  a zeroed head, one step scores a query by its similarity to the *inactives* (negated), so compounds with
  strong phenotypes rank low, and test actives are such compounds. With ``balanced``, each class weighs half of
  every inner and outer loss.

With both, MAML scored 0.66 / 0.65 / 0.68 there and first-order MAML 0.66 / 0.65 / 0.72 (10 episodes per task). The
test-time inner learning rate can be chosen on the validation tasks (``select_inner_lr: [0.1, 0.5, 2.0]``,
:meth:`MAMLLearner.select`). The benchmark then meta-trains on the training tasks alone. First-order MAML's 5 steps
at 2.0 fell to 0.47-0.52 on those tasks.
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
    ``zero_head`` / ``balanced`` (see the module docstring), ``select_inner_lr`` (candidate test-time inner rates
    chosen on the validation tasks, ``select_episodes`` episodes per task; none: ``inner_lr``), ``device``.
    """

    name = "maml"

    def __init__(self, *, hidden: Sequence[int] = SMALL_FNN["hidden"],
                 input_dropout: float = SMALL_FNN["input_dropout"], dropout: float = SMALL_FNN["dropout"],
                 inner_lr: float = 0.5, inner_steps: int = 1,
                 outer_lr: float = 1e-3, meta_batches: int = 100, meta_batch_size: int = 8, support_size: int = 16,
                 query_size: int = 32, first_order: bool = False, zero_head: bool = True, balanced: bool = True,
                 select_inner_lr: Sequence[float] | None = None, select_episodes: int = 16,
                 device: str = "cpu"):
        if inner_steps < 1 or meta_batches < 1 or meta_batch_size < 1 or support_size < 2 or query_size < 2:
            raise ValueError(f"{self.name}: inner_steps, meta_batches, meta_batch_size >= 1 and support_size, "
                             f"query_size >= 2 needed, got {inner_steps}, {meta_batches}, {meta_batch_size}, "
                             f"{support_size}, {query_size}")
        if inner_lr <= 0 or outer_lr <= 0:
            raise ValueError(f"{self.name}: inner_lr and outer_lr must be > 0, got {inner_lr}, {outer_lr}")
        candidates = [] if select_inner_lr is None else list(select_inner_lr)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in candidates):
            raise ValueError(f"{self.name}: select_inner_lr must list learning rates > 0, got {select_inner_lr!r}")
        if select_episodes < 1:
            raise ValueError(f"{self.name}: select_episodes must be >= 1, got {select_episodes}")
        self.zero_head, self.balanced = bool(zero_head), bool(balanced)
        self.select_inner_lr = [float(v) for v in candidates]
        self.select_episodes = int(select_episodes)
        #: the test-time inner learning rate (``inner_lr``, or the one chosen on the validation tasks)
        self.fit_lr = float(inner_lr)
        #: mean AUROC on the selection episodes per candidate inner learning rate (the last :meth:`pretrain`)
        self.selection: dict[float, float] = {}
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

    #: the network's mode while meta-training (dropout on); image networks keep BatchNorm in eval mode instead
    meta_train_mode = True

    def _network(self, n_out: int) -> torch.nn.Module:
        """The network: an FNN from the profile width to ``n_out`` logits, its last layer named ``head``."""
        return FNN(self.n_features, n_out, **self.fnn)

    @property
    def uses_validation(self) -> bool:
        """True when the test-time inner learning rate is chosen on validation tasks (``select_inner_lr``)."""
        return bool(self.select_inner_lr)

    def pretrain(self, tasks: list[TaskData], *, seed: int = 0,
                 validation: list[TaskData] | None = None) -> "MAMLLearner":
        """Meta-train on ``meta_batches`` meta-batches of ``meta_batch_size`` episodes from ``tasks``; then, with
        ``select_inner_lr``, choose the test-time inner learning rate on ``validation`` (see :meth:`select`)."""
        self.n_features = check_training_tasks(tasks, f"{self.name} pretrain")
        if validation:
            check_training_tasks(validation, f"{self.name} pretrain (validation tasks)")
        rng = np.random.default_rng(seed)
        self._adapted = None
        with seeded(seed, self.device):
            model = self._network(1).to(self.device)
            self._model = model.train(self.meta_train_mode)
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
        self.fit_lr, self.selection = self.inner_lr, {}
        if self.select_inner_lr:
            self.select(validation or tasks, seed=seed)
        return self

    def select(self, tasks: list[TaskData], *, seed: int = 0) -> float:
        """Set :attr:`fit_lr` to the candidate of ``select_inner_lr`` with the best mean AUROC over
        ``select_episodes`` episodes per task of ``tasks`` (support / query shaped as in pre-training; the validation
        tasks, or the training tasks when there are none). Every candidate sees the same episodes; ties go to the
        first candidate. Returns the chosen rate."""
        from sklearn.metrics import roc_auc_score

        if self._meta is None:
            raise RuntimeError(f"{self.name}: call pretrain(training tasks) before select")
        rng = np.random.default_rng([seed, 0x5E1])
        eps = [sample_training_episode(t, self.support_size, self.query_size, rng)
               for t in tasks for _ in range(self.select_episodes)]
        eps = [e for e in eps if 0 < e.yq.sum() < len(e.yq)]
        if not eps:
            raise ValueError(f"{self.name}: no selection episode has both classes in its query set")
        self._model.eval()
        scores = {}
        for lr in self.select_inner_lr:
            aucs = []
            for e in eps:
                adapted = self._adapt(dict(self._meta), as_tensor(e.xs, self.device),
                                      as_tensor(e.ys, self.device), first_order=True, lr=lr)
                with torch.no_grad():
                    logit = functional_call(self._model, adapted, (as_tensor(e.xq, self.device),))[:, 0]
                aucs.append(roc_auc_score(e.yq, logit.double().cpu().numpy()))
            scores[lr] = float(np.mean(aucs))
        self.selection = scores
        self.fit_lr = max(scores, key=lambda lr: (scores[lr], -self.select_inner_lr.index(lr)))
        return self.fit_lr

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> "MAMLLearner":
        """``inner_steps`` gradient steps from the meta-learned weights on the support set (``seed`` is unused:
        dropout is off, nothing is random)."""
        x, y = check_support(x, y, f"{self.name} fit")
        if self._meta is None:
            raise RuntimeError(f"{self.name}: call pretrain(training tasks) before fit")
        check_query(x, self.n_features, f"{self.name} fit")
        self._model.eval()
        adapted = self._adapt(dict(self._meta), as_tensor(x, self.device),
                              torch.as_tensor(y, dtype=torch.float32, device=self.device), first_order=True,
                              lr=self.fit_lr)
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
        """BCE on the logit; with ``balanced`` each class present weighs half (the mean of the two class means)."""
        logits = functional_call(self._model, params, (x,))[:, 0]
        if not self.balanced:
            return F.binary_cross_entropy_with_logits(logits, y)
        n_pos = y.sum()
        n_neg = len(y) - n_pos
        w = torch.where(y > 0.5, 1.0 / n_pos.clamp(min=1.0), 1.0 / n_neg.clamp(min=1.0))
        w = w / w.sum()
        return (w * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()

    def _adapt(self, params: Params, x: torch.Tensor, y: torch.Tensor, first_order: bool,
               lr: float | None = None) -> Params:
        """theta' after ``inner_steps`` steps of rate ``lr`` (default ``inner_lr``) on (x, y), from ``params`` with
        the output layer zeroed when ``zero_head``; the inner gradients are constants when ``first_order``."""
        lr = self.inner_lr if lr is None else lr
        if self.zero_head:
            params = {k: torch.zeros_like(p) if k.startswith("head.") else p for k, p in params.items()}
        for _ in range(self.inner_steps):
            g = grad(self._loss)(params, x, y)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            params = {k: p - lr * g[k] for k, p in params.items()}
        return params

    def _meta_loss(self, params: Params, batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query loss over the meta-batch after adapting on each support set (and the same, detached)."""
        losses = [self._loss(self._adapt(params, xs, ys, self.first_order), xq, yq) for xs, ys, xq, yq in batch]
        loss = torch.stack(losses).mean()
        return loss, loss.detach()


class FirstOrderMAMLLearner(MAMLLearner):
    """First-order MAML (FOMAML): :class:`MAMLLearner` with ``first_order=True`` and, by default, 5 inner steps.

    FSL-CP ran only second-order MAML. With its single inner step (and the thesis' head and loss, ``zero_head=False,
    balanced=False``), first-order MAML learns an initialisation that one step cannot move far from: on the held-out
    tasks of the synthetic MOA table of
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
