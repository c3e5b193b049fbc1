"""
ResNet-18 encoder (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Written here from the paper's architecture (Table 1, 18-layer column): a 7x7/2 stem with
batch norm and ReLU, a 3x3/2 max pool, four stages of two basic blocks (two 3x3 convs,
identity shortcut, or a 1x1/2 projection when the resolution or width changes) with
64, 128, 256 and 512 channels. Parameter names follow the widespread layout (``conv1``,
``bn1``, ``layer1`` .. ``layer4``, ``downsample.{0,1}``, ``fc``) so the original TrianFlow
checkpoints load unchanged; ``fc`` exists only for that key parity and is never used.

``width_mult`` < 1 builds a narrower network (every width scaled, same key names); the
default 1 is the paper's network exactly.

Feature maps returned by :class:`ResnetEncoder` for an input of size (H, W) that is a
multiple of 32 (other sizes give the ceil of each division):

========  ==========  ========
index     resolution  channels
========  ==========  ========
0 (stem)  H/2         64
1         H/4         64
2         H/8         128
3         H/16        256
4         H/32        512
========  ==========  ========
"""

from typing import List, Optional

import torch
from torch import nn

from trianflow_ros.nets.feature_pyramid import scaled_channels


class BasicBlock(nn.Module):
    """
    Residual block ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or ``downsample`` = 1x1 conv (stride ``stride``) + batch norm
    when the stride is not 1 or the width changes (the paper's projection shortcut, option B).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1):
        """
        Build the block.

        :param in_channels: channels of the input.
        :param out_channels: channels of the output.
        :param stride: stride of the first 3x3 conv (2 halves the resolution).
        """
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Apply the block.

        :param x: input, shape (B, in_channels, H, W).
        :return: output, shape (B, out_channels, ceil(H / stride), ceil(W / stride)).
        """
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class ResNet18(nn.Module):
    """
    The 18-layer residual network with an optional (unused) classifier for key parity.

    ``forward`` returns the five feature maps of the module docstring, not class scores.
    """

    stage_channels = (64, 128, 256, 512)

    def __init__(self, *, in_channels: int = 3, num_classes: Optional[int] = 1000,
                 width_mult: float = 1.0):
        """
        Build the network with He (fan-out) initialised convs and unit batch norms.

        :param in_channels: input channels (3 for an image, 6 for two stacked images).
        :param num_classes: size of the ``fc`` classifier kept for checkpoint key parity
            (1000 in the original); ``None`` builds no ``fc``.
        :param width_mult: channel multiplier in (0, 1] (the paper: 1).
        """
        super().__init__()
        stem = scaled_channels((64,), width_mult)[0]
        self.stage_channels = scaled_channels(ResNet18.stage_channels, width_mult)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        width = stem
        for i, channels in enumerate(self.stage_channels):
            stride = 1 if i == 0 else 2
            stage = nn.Sequential(BasicBlock(width, channels, stride=stride),
                                  BasicBlock(channels, channels, stride=1))
            setattr(self, f'layer{i + 1}', stage)
            width = channels
        self.fc = None if num_classes is None else nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Compute the multi-scale features.

        :param x: input, shape (B, in_channels, H, W), already normalised by the caller.
        :return: five feature maps, strides 2, 4, 8, 16, 32, channels 64, 64, 128, 256, 512.
        """
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


class ResnetEncoder(nn.Module):
    """
    ResNet-18 feature encoder: ``encoder`` holds the network (keys ``encoder.*``).

    Input normalisation is the caller's job (the depth network applies ``(x - 0.45) / 0.225``).
    """

    num_ch_enc = (64, 64, 128, 256, 512)

    def __init__(self, *, in_channels: int = 3, with_fc: bool = True, width_mult: float = 1.0):
        """
        Build the encoder.

        :param in_channels: input channels.
        :param with_fc: keep the unused 512x1000 ``fc`` (True for the original checkpoints).
        :param width_mult: channel multiplier in (0, 1] (the paper: 1); the feature widths
            are then ``self.num_ch_enc`` (the class attribute holds the paper's).
        """
        super().__init__()
        self.encoder = ResNet18(in_channels=in_channels, num_classes=1000 if with_fc else None,
                                width_mult=width_mult)
        self.num_ch_enc = (self.encoder.bn1.num_features,) + tuple(self.encoder.stage_channels)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Compute the five feature maps of the module docstring.

        :param x: normalised input, shape (B, in_channels, H, W).
        :return: list of five tensors (B, C_i, H / 2^(i+1), W / 2^(i+1)), C = num_ch_enc.
            Differentiable.
        """
        if x.dim() != 4:
            raise ValueError(f'encoder input must have shape (B, C, H, W), got {tuple(x.shape)}')
        return self.encoder(x)
