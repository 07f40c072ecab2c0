"""GapNet and SC-CNN (Hofmarcher et al. 2019, digest part A2 and appendix X.1): SELU networks that read whole views.

**GapNet** (``gapnet``): four convolutional blocks, every convolution 3 x 3 and followed by SELU::

    block1: conv(C -> 32, stride 2, pad 1), maxpool 2/2
    block2: conv(32 -> 64, stride 2, pad 1), conv(64 -> 64), conv(64 -> 64), maxpool(2, stride 2, pad 1)
    block3: conv(64 -> 128), conv(128 -> 128), conv(128 -> 128), maxpool 2/2
    block4: conv(128 -> 256, dilation 2, pad 2), conv(256 -> 256, dilation 2, pad 2), conv(256 -> 256, dilation 4, pad 4)

The output of each block is globally average-pooled (the mean over H and W, so any input size works: the paper's
"can handle arbitrarily large input images"), the four pooled vectors are concatenated (32 + 64 + 128 + 256 = 480)
and go through two fully connected SELU layers (``fc_width``, 1024 by default; AlphaDropout after each, the SELU
dropout, p = ``dropout``, 0 by default as in the authors' configuration) and the output layer (one logit per task;
the sigmoid is applied at inference and export, training uses the logits with the masked BCE).

**SC-CNN** (``sc_cnn``): the same network for 96 x 96 single-cell crops, with block4's dilated convolutions
replaced by plain ones (pad 1) and block2's max pooling without padding ("a large receptive field is detrimental for
such small images").

**The parameter count** of Doc A's Table 2, 3,694,545 for 5 channels and 209 tasks, is reproduced exactly when
every convolution and every linear layer has a bias::

    convolutions  5*32*9+32 + (32*64*9+64) + 2*(64*64*9+64) + (64*128*9+128) + 2*(128*128*9+128)
                  + (128*256*9+256) + 2*(256*256*9+256)                          = 1,938,176
    fc1 480*1024+1024 = 492,544;  fc2 1024*1024+1024 = 1,049,600;  output 1024*209+209 = 214,225
    total                                                                        = 3,694,545

Max pooling and GAP have no parameters and AlphaDropout none either; no batch normalisation (SELU self-normalises).
The same arithmetic without conv biases gives 3,693,169 and without any bias 3,690,912, so the biases are part of the
published network (``tests/test_gapnet.py`` counts them). SC-CNN has the same count (dilation and padding change no
weight shape).

**Initialisation**: LeCun normal (N(0, 1 / fan_in), the SELU initialisation) for every weight, zero bias. (The
authors' code draws linear weights with the *output* width as fan_in, which for the square fc2 is the same and for
fc1 / the output layer is a slip; we use the input width, as SELU's derivation needs.)

**In phenovec**: :class:`GapNet` is the backbone of ``ProfileNet(arch="gapnet" | "sc_cnn")``
(``phenovec.train.models``): its ``forward`` returns the second fully connected layer's activations (``fc_width``),
which is the *profile* ``ProfileNet.embed`` returns (the input of the linear task head, as the pooled penultimate
layer is for the other architectures); :meth:`GapNet.pooled` gives the 480-d concatenated block GAPs as well. The
task head (``Linear(fc_width, tasks)``) and the AlphaDropout before it belong to ``ProfileNet``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GapNet", "POOLED_DIM", "lecun_normal_"]

#: Width of the concatenated block GAPs (32 + 64 + 128 + 256).
POOLED_DIM = 32 + 64 + 128 + 256


def lecun_normal_(module: nn.Module) -> None:
    """LeCun normal weights (std = sqrt(1 / fan_in)) and zero biases for every conv / linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            nn.init.normal_(m.weight, 0.0, math.sqrt(1.0 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=dilation, dilation=dilation), nn.SELU()]


class GapNet(nn.Module):
    """GapNet's encoder + the two fully connected SELU layers (module docstring); ``dilated=False`` is SC-CNN.

    ``forward(x)`` -> N x ``fc_width`` (the profile); ``pooled(x)`` -> N x 480 (the concatenated block GAPs).
    """

    def __init__(self, in_channels: int, fc_width: int = 1024, dilated: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.fc_width, self.dilated = int(in_channels), int(fc_width), bool(dilated)
        d2, d4 = (2, 4) if dilated else (1, 1)
        self.block1 = nn.Sequential(*_conv(in_channels, 32, stride=2), nn.MaxPool2d(2, 2))
        self.block2 = nn.Sequential(*_conv(32, 64, stride=2), *_conv(64, 64), *_conv(64, 64),
                                    nn.MaxPool2d(2, 2, padding=1 if dilated else 0))
        self.block3 = nn.Sequential(*_conv(64, 128), *_conv(128, 128), *_conv(128, 128), nn.MaxPool2d(2, 2))
        self.block4 = nn.Sequential(*_conv(128, 256, dilation=d2), *_conv(256, 256, dilation=d2),
                                    *_conv(256, 256, dilation=d4))
        self.fc = nn.Sequential(nn.Linear(POOLED_DIM, fc_width), nn.SELU(), nn.AlphaDropout(dropout),
                                nn.Linear(fc_width, fc_width), nn.SELU())
        lecun_normal_(self)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The four blocks' global average pools, concatenated: N x 480."""
        gaps = []
        for block in (self.block1, self.block2, self.block3, self.block4):
            x = block(x)
            gaps.append(x.mean(dim=(2, 3)))
        return torch.cat(gaps, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x))
