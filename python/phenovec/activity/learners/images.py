"""Prototypical network and MAML on images (FSL-CP's ``protonet img`` / ``maml img``), with the trainer's image
backbone (:func:`phenovec.train.models.build_model`: ``resnet_tiny`` by default, any of its architectures).

Inputs are the rows :func:`phenovec.activity.crop_units.unit_crops` gives: each compound's ``K`` crops flattened.
:class:`CropSetNet` reshapes a row into its ``K x C x H x W`` crops, embeds each crop with the backbone (globally
pooled features) and averages over the ``K`` crops, so a compound is the mean embedding of its cells. A linear
``head`` maps that to the prototypical network's embedding or to MAML's logit. The learners are
:class:`~phenovec.activity.learners.protonet.ProtoNetLearner` and
:class:`~phenovec.activity.learners.maml.MAMLLearner` with this network in place of the FNN: the same episodic
pre-training, the zeroed head and balanced loss of MAML, and the same ``fit`` / ``predict_proba``. MAML keeps
the backbone's BatchNorm layers in eval mode (their running statistics stay those at initialisation): the
functional inner loop then needs no buffer updates. The thesis used ResNet-50 on one view per well; here the
backbone size is the ``arch`` option.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from phenovec.activity.learners.maml import MAMLLearner
from phenovec.activity.learners.protonet import ProtoNetLearner


class CropSetNet(nn.Module):
    """``x`` (n x K*C*H*W) -> ``head(mean over the K crops of backbone(crop))`` (n x ``n_out``).

    ``backbone`` is the trainer's :class:`~phenovec.train.models.ProfileNet` backbone for ``arch`` with ``C`` input
    channels, ``head`` a ``Linear(feature_dim, n_out)``."""

    def __init__(self, n_features: int, crop_shape: Sequence[int], n_out: int, arch: str = "resnet_tiny"):
        super().__init__()
        from phenovec.train.models import build_model

        shape = tuple(int(s) for s in crop_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"crop_shape must be (channels, height, width), got {crop_shape!r}")
        per_crop = shape[0] * shape[1] * shape[2]
        if n_features % per_crop:
            raise ValueError(f"inputs of {n_features} values are not whole crops of shape {shape} "
                             f"({per_crop} values each): build them with phenovec.activity.crop_units.unit_crops")
        self.crop_shape, self.crops = shape, n_features // per_crop
        net = build_model(arch, shape[0], n_out)
        self.backbone = net.backbone
        self.head = nn.Linear(net.feature_dim, n_out)
        self.feature_dim = net.feature_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Mean crop embedding per row: n x feature_dim."""
        n = x.shape[0]
        z = self.backbone(x.reshape(n * self.crops, *self.crop_shape))
        return z.reshape(n, self.crops, -1).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class ImageProtoNetLearner(ProtoNetLearner):
    """Prototypical network (cosine) whose encoder is a :class:`CropSetNet`. Options: ``crop_shape`` (C, H, W;
    required), ``arch`` (the trainer's architecture), and the prototypical network's ``embedding``, ``scale``,
    ``episodes``, ``support_size``, ``query_size``, ``lr``, ``weight_decay``, ``device``."""

    name = "protonet_img"
    takes_crop_shape = True  # the benchmark passes the crop store's (C, H, W)

    def __init__(self, *, crop_shape: Sequence[int], arch: str = "resnet_tiny", embedding: int = 64,
                 episodes: int = 100, **options):
        super().__init__(embedding=embedding, episodes=episodes, **options)
        self.crop_shape, self.arch = tuple(crop_shape), str(arch)

    def _network(self, n_out: int) -> nn.Module:
        return CropSetNet(self.n_features, self.crop_shape, n_out, self.arch)


class ImageMAMLLearner(MAMLLearner):
    """MAML (first order by default: second order through a CNN costs far more) whose network is a
    :class:`CropSetNet` with one logit. Options: ``crop_shape`` (C, H, W; required), ``arch``, and MAML's."""

    name = "maml_img"
    takes_crop_shape = True
    meta_train_mode = False  # BatchNorm in eval mode (module docstring)

    def __init__(self, *, crop_shape: Sequence[int], arch: str = "resnet_tiny", first_order: bool = True,
                 inner_steps: int = 5, inner_lr: float = 0.1, meta_batches: int = 50, meta_batch_size: int = 4,
                 **options):
        super().__init__(first_order=first_order, inner_steps=inner_steps, inner_lr=inner_lr,
                         meta_batches=meta_batches, meta_batch_size=meta_batch_size, **options)
        self.crop_shape, self.arch = tuple(crop_shape), str(arch)

    def _network(self, n_out: int) -> nn.Module:
        return CropSetNet(self.n_features, self.crop_shape, n_out, self.arch)
