"""Embedding networks for weakly supervised single-cell training (the DeepProfiler / thesis recipe).

A :class:`ProfileNet` is a torchvision backbone (EfficientNet or ResNet, the torchvision definitions)
whose first convolution takes ``C`` input channels (the Cell Painting channels, not RGB) and whose
classification head is our own ``Linear(feature_dim, num_classes)`` preceded by optional dropout.
The *profile* of a cell is :meth:`ProfileNet.embed`: the globally average-pooled penultimate
features, as in the thesis (Bornholdt 2021, section 3.2: "the size of the output vector is only 1280
(2048 for ResNet50) - the default size of the pooling layer") and DeepProfiler's ``pool5`` layer.

ImageNet initialisation (thesis: "the ImageNet pre-trained EfficientNet architecture as weight
initialization") comes from a user's torchvision-style ``state_dict`` file, read with
``torch.load(path, map_location="cpu", weights_only=True)`` only: a user's file is never unpickled.
The 3-channel first convolution is adapted to ``C`` channels with timm's rule
(``timm.models._manipulate.adapt_input_conv``): ``C == 1`` sums the RGB filters; ``C > 3`` (or 2)
tiles the RGB filters ``ceil(C / 3)`` times, keeps the first ``C`` and scales by ``3 / C`` so that
the expected activation is unchanged. (DeepProfiler tiles without rescaling: kernel ``i`` = RGB kernel
``i mod 3``; we follow timm, as the issue asks.) The classifier head of the file is dropped and ours is
freshly initialised for ``num_classes``.

Architectures (:data:`ARCHS` maps name -> feature dimension):

* ``efficientnet_b0`` - torchvision EfficientNet-B0, 1,280-d.
* ``resnet50`` - torchvision ResNet-50, 2,048-d.
* ``resnet18`` - torchvision ResNet-18, 512-d.
* ``efficientnet_tiny`` - torchvision ``EfficientNet`` class with B0's stage table at width 0.25 and
  depth 0.25 (torchvision's channel/depth rounding; one MBConv block per stage), 320-d.
* ``resnet_tiny`` - torchvision ``ResNet`` class with ``BasicBlock``, one block per stage and stage
  widths 16/32/64/128, 128-d.
* ``resnet101`` - torchvision ResNet-101, 2,048-d; ``densenet121`` - torchvision DenseNet-121, 1,024-d: GapNet's
  comparison networks (Hofmarcher et al. 2019, Table 2: with 5 channels and 209 outputs they have 42,934,673 and
  7,174,353 parameters, as the paper lists).
* ``gapnet`` - GapNet (``phenovec.train.gapnet``): SELU convolutions with a dilated last block, the GAPs of the four
  blocks concatenated, two fully connected SELU layers of 1,024; the profile is the second one's output, 1,024-d.
  ``sc_cnn`` - the same without dilation, for 96 x 96 single-cell crops. Their dropout (``dropout``) is SELU's
  AlphaDropout, after each fully connected layer; their weights start LeCun normal.

The tiny configurations exist for CPU tests and smoke runs (64-96 px crops on 2 cores); every network
reduces the input by 32, and adaptive average pooling makes any ``H, W >= 32`` valid.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import densenet as tv_densenet
from torchvision.models import efficientnet as tv_efficientnet
from torchvision.models import resnet as tv_resnet

__all__ = ["ARCHS", "ProfileNet", "WeightsError", "adapt_input_conv", "build_model", "load_state_dict_file"]

#: Architecture name -> profile (penultimate, pooled) feature dimension.
ARCHS: dict[str, int] = {
    "efficientnet_b0": 1280,
    "resnet50": 2048,
    "resnet18": 512,
    "efficientnet_tiny": 320,
    "resnet_tiny": 128,
    "resnet101": 2048,
    "densenet121": 1024,
    "gapnet": 1024,
    "sc_cnn": 1024,
}

#: Smallest spatial side every architecture accepts (total stride of the networks).
MIN_SIDE = 32

_CONFIG_VERSION = 1
_CONFIG_KEYS = {"format_version", "arch", "in_channels", "num_classes", "feature_dim", "dropout"}

# torchvision key names of the first convolution and of the classifier head, per family.
_FIRST_CONV = {"efficientnet": "features.0.0.weight", "resnet": "conv1.weight", "densenet": "features.conv0.weight",
               "gapnet": "block1.0.weight"}
_HEAD_PREFIX = {"efficientnet": "classifier.", "resnet": "fc.", "densenet": "classifier.", "gapnet": "head."}


class WeightsError(ValueError):
    """A weights file cannot be used: not a tensor state_dict, or keys / shapes do not match."""


def _family(arch: str) -> str:
    if arch.startswith("efficientnet"):
        return "efficientnet"
    if arch.startswith("densenet"):
        return "densenet"
    if arch in ("gapnet", "sc_cnn"):
        return "gapnet"
    return "resnet"


class _NarrowResNet(tv_resnet.ResNet):
    """torchvision ``ResNet`` with configurable stage widths (torchvision fixes 64/128/256/512).

    Same modules, names, forward and initialisation as ``torchvision.models.resnet.ResNet``; only the
    number of planes per stage differs. Used for ``resnet_tiny``.
    """

    def __init__(self, block, layers: list[int], widths: list[int], num_classes: int) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def _torchvision_model(arch: str, num_classes: int) -> nn.Module:
    """The torchvision network for ``arch`` (3 input channels, torchvision's own head)."""
    if arch == "efficientnet_b0":
        return tv_efficientnet.efficientnet_b0(weights=None, num_classes=num_classes)
    if arch == "resnet50":
        return tv_resnet.resnet50(weights=None, num_classes=num_classes)
    if arch == "resnet18":
        return tv_resnet.resnet18(weights=None, num_classes=num_classes)
    if arch == "resnet101":
        return tv_resnet.resnet101(weights=None, num_classes=num_classes)
    if arch == "densenet121":
        return tv_densenet.densenet121(weights=None, num_classes=num_classes)
    if arch == "efficientnet_tiny":
        conf, _ = tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
        return tv_efficientnet.EfficientNet(conf, dropout=0.0, num_classes=num_classes)
    if arch == "resnet_tiny":
        return _NarrowResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], [16, 32, 64, 128], num_classes)
    raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class ProfileNet(nn.Module):
    """A torchvision backbone with ``in_channels`` inputs, pooled features and a linear head.

    ``forward(x)`` -> logits (N x num_classes); ``embed(x)`` -> profiles (N x feature_dim, the globally
    average-pooled penultimate features); ``forward_features(x)`` -> ``(features, logits)``.
    ``x`` is float32 N x C x H x W with ``C == in_channels`` and ``H, W >= 32``.

    Modules: ``backbone`` (the torchvision network, its head replaced by ``nn.Identity`` so that it
    returns the pooled features; parameter names are torchvision's with a ``backbone.`` prefix),
    ``dropout`` (``nn.Dropout(dropout)``, active in training mode only) and ``head``
    (``nn.Linear(feature_dim, num_classes)``, initialised as torchvision initialises its head).

    ``config`` is a plain dict (str/int/float) that rebuilds the architecture with
    :meth:`from_config`; the weights travel separately as ``state_dict()``.
    """

    def __init__(self, arch: str, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        _check_int("in_channels", in_channels, 1)
        _check_int("num_classes", num_classes, 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.arch = arch
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.feature_dim = ARCHS[arch]
        self.dropout_p = float(dropout)
        family = _family(arch)

        if family == "gapnet":
            self._init_gapnet(arch)
            return
        net = _torchvision_model(arch, self.num_classes)
        if family == "efficientnet":
            head = net.classifier[1]
            net.classifier = nn.Identity()
            old = net.features[0][0]
        elif family == "densenet":
            head = net.classifier
            net.classifier = nn.Identity()
            old = net.features.conv0
        else:
            head = net.fc
            net.fc = nn.Identity()
            old = net.conv1
        if head.in_features != self.feature_dim:  # guards ARCHS against a torchvision change
            raise RuntimeError(f"{arch}: torchvision gives {head.in_features}-d features, ARCHS says {self.feature_dim}")
        if self.in_channels != old.in_channels:
            conv = nn.Conv2d(self.in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                             padding=old.padding, bias=old.bias is not None)
            # torchvision's rule for both families (EfficientNet's default nonlinearity gives the same gain).
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            if family == "efficientnet":
                net.features[0][0] = conv
            elif family == "densenet":
                net.features.conv0 = conv
            else:
                net.conv1 = conv
        self.backbone = net
        self.dropout = nn.Dropout(self.dropout_p)
        self.head = head

    def _init_gapnet(self, arch: str) -> None:
        """GapNet / SC-CNN: the backbone returns the second fc layer (the profile); SELU's AlphaDropout before
        the LeCun-initialised task head."""
        from phenovec.train.gapnet import GapNet, lecun_normal_

        self.backbone = GapNet(self.in_channels, self.feature_dim, dilated=arch == "gapnet", dropout=self.dropout_p)
        self.dropout = nn.AlphaDropout(self.dropout_p)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        lecun_normal_(self.head)

    # -- configuration -------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Plain dict that rebuilds this architecture with :meth:`from_config`."""
        return {
            "format_version": _CONFIG_VERSION,
            "arch": self.arch,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
            "dropout": self.dropout_p,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ProfileNet":
        """Rebuild the (randomly initialised) architecture described by ``config``; load weights after."""
        if not isinstance(config, Mapping):
            raise ValueError(f"model config must be a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(f"model config: unknown key(s) {unknown}; allowed {sorted(_CONFIG_KEYS)}")
        for key in ("arch", "in_channels", "num_classes"):
            if key not in config:
                raise ValueError(f"model config: missing key {key!r}")
        version = config.get("format_version", _CONFIG_VERSION)
        if version != _CONFIG_VERSION:
            raise ValueError(f"model config: format_version {version!r} not supported (expected {_CONFIG_VERSION})")
        net = cls(config["arch"], config["in_channels"], config["num_classes"], config.get("dropout", 0.0))
        if "feature_dim" in config and config["feature_dim"] != net.feature_dim:
            raise ValueError(f"model config: feature_dim {config['feature_dim']!r} does not match "
                             f"arch {net.arch!r} ({net.feature_dim})")
        return net

    # -- forward -------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return  # shape checks would become guards / constants in an exported graph
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"ProfileNet expects an N x C x H x W tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"ProfileNet({self.arch}) expects {self.in_channels} channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        if x.shape[2] < MIN_SIDE or x.shape[3] < MIN_SIDE:
            raise ValueError(f"ProfileNet expects H, W >= {MIN_SIDE}, got {tuple(x.shape[2:])}")
        if not x.is_floating_point():
            raise ValueError(f"ProfileNet expects a floating-point tensor, got {x.dtype}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Profiles: globally average-pooled penultimate features, N x feature_dim."""
        self._check_input(x)
        return self.backbone(x)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` from one pass: N x feature_dim and N x num_classes."""
        features = self.embed(x)
        return features, self.head(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, N x num_classes."""
        return self.forward_features(x)[1]

    def extra_repr(self) -> str:
        return (f"arch={self.arch!r}, in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"feature_dim={self.feature_dim}, dropout={self.dropout_p}")


# -- weights ----------------------------------------------------------------------------------------

def adapt_input_conv(in_channels: int, weight: torch.Tensor) -> torch.Tensor:
    """Adapt a first-conv weight (O x 3 x kh x kw) to ``in_channels`` inputs (timm's rule).

    ``in_channels == 1``: sum over the RGB filters. ``in_channels == 3``: unchanged. Otherwise tile
    the RGB filters ``ceil(in_channels / 3)`` times, keep the first ``in_channels`` and multiply by
    ``3 / in_channels``. Computed in float32 and returned in the input dtype.
    """
    _check_int("in_channels", in_channels, 1)
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise WeightsError(f"first-conv weight must be O x 3 x kh x kw to adapt, got {tuple(weight.shape)}")
    dtype = weight.dtype
    w = weight.float()
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    elif in_channels != 3:
        reps = int(math.ceil(in_channels / 3))
        w = w.repeat(1, reps, 1, 1)[:, :in_channels, :, :] * (3.0 / float(in_channels))
    return w.to(dtype)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``name -> tensor`` state_dict with ``torch.load(weights_only=True)`` (never unpickles).

    Raises :class:`WeightsError` naming the file when it is missing, not loadable in weights-only
    mode (a pickled object), or not a mapping of str -> tensor.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a torch file), EOFError, ...
        raise WeightsError(f"{p}: cannot be read as a weights-only torch state_dict "
                           f"(torch.load(weights_only=True) refused it: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{p}: expected a state_dict (mapping name -> tensor), got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise WeightsError(f"{p}: state_dict key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{p}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    return out


def _load_backbone_weights(net: ProfileNet, path: str | os.PathLike) -> None:
    family = _family(net.arch)
    first_conv = _FIRST_CONV[family]
    head_prefix = _HEAD_PREFIX[family]
    state = load_state_dict_file(path)
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}  # head is re-initialised
    if first_conv in state:
        w = state[first_conv]
        if w.ndim == 4 and w.shape[1] == 3 and net.in_channels != 3:
            state[first_conv] = adapt_input_conv(net.in_channels, w)
    expected = net.backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise WeightsError(f"{path}: missing key {missing[0]!r} for arch {net.arch!r}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise WeightsError(f"{path}: unexpected key {unexpected[0]!r} for arch {net.arch!r}"
                           + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for k, ref in expected.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise WeightsError(f"{path}: key {k!r} has shape {tuple(state[k].shape)}, arch {net.arch!r} "
                               f"with {net.in_channels} input channels expects {tuple(ref.shape)}")
        if state[k].is_floating_point() != ref.is_floating_point():
            raise WeightsError(f"{path}: key {k!r} has dtype {state[k].dtype}, expected {ref.dtype}")
    net.backbone.load_state_dict(state, strict=True)


def build_model(arch: str, in_channels: int, num_classes: int, *, weights: str | os.PathLike | None = None,
                dropout: float = 0.0, seed: int | None = None) -> ProfileNet:
    """Build a :class:`ProfileNet`; optionally initialise its backbone from a torchvision state_dict file.

    ``weights``: path to ``torch.save(torchvision_model.state_dict())`` for the same torchvision
    architecture (e.g. ImageNet ResNet-50 or EfficientNet-B0). It is read with
    ``torch.load(weights_only=True)``; its 3-channel first conv is adapted to ``in_channels`` with
    :func:`adapt_input_conv` (a file whose first conv already has ``in_channels`` inputs loads as is);
    its classifier head (``fc.*`` / ``classifier.*``) is ignored and ours keeps its fresh
    initialisation. Any other missing or unexpected key or wrong shape raises :class:`WeightsError`
    naming the key and the file.

    ``seed``: when given, the random initialisation is drawn from ``torch.manual_seed(seed)`` inside a
    forked RNG (the caller's global RNG state is left untouched), so equal seeds give equal weights.
    """
    if seed is None:
        net = ProfileNet(arch, in_channels, num_classes, dropout)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = ProfileNet(arch, in_channels, num_classes, dropout)
    if weights is not None:
        _load_backbone_weights(net, weights)
    return net
