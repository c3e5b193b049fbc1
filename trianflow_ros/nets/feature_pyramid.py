"""
FeaturePyramid: the shared-weight feature extractor of PWC-Net (Sun et al., CVPR 2018, Sec. 3).

Twelve 3x3 convolutions with bias, each followed by LeakyReLU(0.1), in (stride 2, stride 1)
pairs; the output of each pair is one pyramid level. Parameter names ``conv{1..12}.0`` match
the original TrianFlow checkpoints (``fpyramid.*``). Images are fed in [0, 1] without
normalisation, in the channel order the weights were trained with (``data.bgr``).

=====  ==========  ========
level  resolution  channels
=====  ==========  ========
1      H/2         16
2      H/4         32
3      H/8         64
4      H/16        96
5      H/32        128
6      H/64        196
=====  ==========  ========

Sizes that are not multiples of 64 give ``ceil`` of each halving. A smaller variant passes
other ``channels`` (see :func:`scaled_channels`); the key names stay the same.
"""

from typing import List, Sequence, Tuple

import torch
from torch import nn

#: Output channels of levels 1..6.
PYRAMID_CHANNELS = (16, 32, 64, 96, 128, 196)


def scaled_channels(channels: Sequence[int], width_mult: float) -> Tuple[int, ...]:
    """
    Multiply layer widths by ``width_mult`` (rounded, at least 4 channels each).

    :param channels: the paper's widths.
    :param width_mult: the factor, in (0, 1]; 1 returns ``channels`` unchanged.
    :return: the scaled widths.
    """
    if not 0.0 < width_mult <= 1.0:
        raise ValueError(f'width_mult must be in (0, 1], got {width_mult}')
    if width_mult == 1.0:
        return tuple(int(c) for c in channels)
    return tuple(max(4, int(round(c * width_mult))) for c in channels)


def conv_lrelu(in_channels: int, out_channels: int, *, stride: int = 1,
               dilation: int = 1) -> nn.Sequential:
    """
    3x3 convolution with bias and 'same' padding for stride 1, then LeakyReLU(0.1).

    :param in_channels: input channels.
    :param out_channels: output channels.
    :param stride: convolution stride.
    :param dilation: convolution dilation (padding = dilation).
    :return: ``nn.Sequential(conv, leaky_relu)`` (keys ``0.weight``, ``0.bias``).
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation,
                  dilation=dilation, bias=True),
        nn.LeakyReLU(0.1))


class FeaturePyramid(nn.Module):
    """Six-level feature pyramid ``c1 .. c6`` of one image (see module docstring)."""

    def __init__(self, *, in_channels: int = 3,
                 channels: Sequence[int] = PYRAMID_CHANNELS):
        """
        Build the twelve convolutions (PyTorch default initialisation, as the original).

        :param in_channels: image channels.
        :param channels: output channels of levels 1..6 (the original: ``PYRAMID_CHANNELS``).
        """
        super().__init__()
        if len(channels) != len(PYRAMID_CHANNELS):
            raise ValueError(f'channels must have {len(PYRAMID_CHANNELS)} entries, got '
                             f'{len(channels)}')
        self.channels = tuple(int(c) for c in channels)
        width = in_channels
        for level, channels in enumerate(self.channels):
            setattr(self, f'conv{2 * level + 1}', conv_lrelu(width, channels, stride=2))
            setattr(self, f'conv{2 * level + 2}', conv_lrelu(channels, channels, stride=1))
            width = channels

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        """
        Compute the pyramid.

        :param image: image in [0, 1], shape (B, 3, H, W).
        :return: six features [c1, ..., c6], level l of shape
            (B, channels[l - 1], H / 2^l, W / 2^l). Differentiable.
        """
        if image.dim() != 4:
            raise ValueError(f'image must have shape (B, C, H, W), got {tuple(image.shape)}')
        features = []
        x = image
        for level in range(len(self.channels)):
            x = getattr(self, f'conv{2 * level + 1}')(x)
            x = getattr(self, f'conv{2 * level + 2}')(x)
            features.append(x)
        return features
