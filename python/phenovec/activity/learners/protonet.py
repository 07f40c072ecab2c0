"""Prototypical network on profiles (FSL-CP's ``protonet cp``; Snell et al. 2017) with cosine distance.

An FNN encoder f maps a profile to an embedding. In an episode each class c gets a prototype, the mean embedding
of its support compounds v_c = mean f(x_i), and a query x gets P(y = c | x) = softmax_c(-s * d(f(x), v_c)) with the
cosine distance d(a, b) = 1 - cos(a, b) and a fixed scale s (cosine distances lie in [0, 2]; without a scale the
softmax could not get far from 1/2). The encoder is trained episodically on the training tasks (:meth:`pretrain`):
per step a random training task, a stratified support set and a query set, loss -log P(true class) over the query.
:meth:`fit` only computes the two prototypes, so an episode cannot change what the next one sees.

FSL-CP trained with Adam (weight decay 1e-4) on 70,000 episodes of its FNN with a 512-wide output; the defaults here
are far smaller (see :mod:`phenovec.activity.learners.backbone`) and every size is an option.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from phenovec.activity.learner import Learner, TaskData, check_support
from phenovec.activity.learners.backbone import SMALL_FNN, FNN, as_tensor, check_query, resolve_device, seeded
from phenovec.activity.learners.training_episodes import check_training_tasks, sample_training_episode


class ProtoNetLearner(Learner):
    """Prototypical network with cosine distance on an FNN encoder.

    Options: ``hidden``, ``input_dropout``, ``dropout`` (the FNN), ``embedding`` (encoder output width), ``scale``
    (s above), ``episodes`` (pre-training steps, one episode each), ``support_size`` / ``query_size`` (pre-training
    episode shape), ``lr`` / ``weight_decay`` (Adam), ``device``.
    """

    name = "protonet"

    def __init__(self, *, hidden: Sequence[int] = SMALL_FNN["hidden"],
                 input_dropout: float = SMALL_FNN["input_dropout"], dropout: float = SMALL_FNN["dropout"],
                 embedding: int = 64, scale: float = 10.0, episodes: int = 300,
                 support_size: int = 16, query_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
                 device: str = "cpu"):
        if episodes < 1 or support_size < 2 or query_size < 2:
            raise ValueError(f"protonet: episodes >= 1, support_size >= 2 and query_size >= 2 needed, got "
                             f"{episodes}, {support_size}, {query_size}")
        if scale <= 0:
            raise ValueError(f"protonet: scale must be > 0, got {scale}")
        self.fnn = {"hidden": tuple(hidden), "input_dropout": input_dropout, "dropout": dropout}
        self.embedding, self.scale, self.episodes = int(embedding), float(scale), int(episodes)
        self.support_size, self.query_size = int(support_size), int(query_size)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.device = resolve_device(device)
        self._encoder: FNN | None = None
        self._prototypes: torch.Tensor | None = None
        self.n_features: int | None = None
        #: pre-training loss per episode (the last :meth:`pretrain`)
        self.losses: list[float] = []

    def pretrain(self, tasks: list[TaskData], *, seed: int = 0) -> "ProtoNetLearner":
        """Train the encoder on ``episodes`` episodes drawn from ``tasks`` (seeded by ``seed``)."""
        self.n_features = check_training_tasks(tasks, "protonet pretrain")
        rng = np.random.default_rng(seed)
        self._prototypes = None
        with seeded(seed, self.device):
            encoder = self._network(self.embedding).to(self.device)
            opt = torch.optim.Adam(encoder.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            encoder.train()
            self.losses = []
            for _ in range(self.episodes):
                ep = sample_training_episode(tasks[rng.integers(len(tasks))], self.support_size, self.query_size, rng)
                logits = self._logits(encoder(as_tensor(ep.xq, self.device)),
                                      self._class_means(encoder(as_tensor(ep.xs, self.device)), ep.ys))
                loss = F.cross_entropy(logits, torch.as_tensor(ep.yq, device=self.device).long())
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.losses.append(float(loss.detach()))
        self._encoder = encoder.eval()
        return self

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> "ProtoNetLearner":
        """The two class prototypes of the support set (``seed`` is unused: nothing here is random)."""
        x, y = check_support(x, y, "protonet fit")
        encoder = self._trained()
        check_query(x, self.n_features, "protonet fit")
        with torch.no_grad():
            self._prototypes = self._class_means(encoder(as_tensor(x, self.device)), y.astype(np.float32))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """softmax over -scale * cosine distance to the two prototypes; the active class' probability."""
        if self._prototypes is None:
            raise RuntimeError("protonet: call fit(support) before predict_proba")
        x = check_query(x, self.n_features, "protonet predict_proba")
        with torch.no_grad():
            logits = self._logits(self._trained()(as_tensor(x, self.device)), self._prototypes)
            return torch.softmax(logits.double(), dim=1)[:, 1].cpu().numpy()

    def _network(self, n_out: int) -> torch.nn.Module:
        """The encoder: an FNN from the profile width to ``n_out`` (image learners build a crop encoder)."""
        return FNN(self.n_features, n_out, **self.fnn)

    def _trained(self) -> torch.nn.Module:
        if self._encoder is None:
            raise RuntimeError("protonet: call pretrain(training tasks) before fit")
        return self._encoder

    def _class_means(self, z: torch.Tensor, y: np.ndarray) -> torch.Tensor:
        """Rows: the mean embedding of class 0 (inactive), then of class 1 (active)."""
        labels = torch.as_tensor(y, device=z.device)
        return torch.stack([z[labels == c].mean(0) for c in (0, 1)])

    def _logits(self, zq: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """-scale * (1 - cos): the same softmax as scale * cos, written as the distance it is."""
        cos = F.cosine_similarity(zq[:, None, :], prototypes[None, :, :], dim=-1)
        return -self.scale * (1.0 - cos)
