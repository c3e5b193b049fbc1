"""
DispNet-style disparity decoder with skip connections (U-Net over the ResNet-18 features).

From coarse to fine, stage ``i`` (decoder scale ``4 - i``) is::

    x = ConvBlock(x)                          # 3x3, reflection padding, ELU
    x = upsample_x2(x)                        # bilinear, align_corners=False
    x = cat(x, skip)                          # encoder feature one level finer, if any
    x = ConvBlock(x)

with decoder widths 256, 128, 64, 32, 16 for scales 4..0. A disparity head (3x3 conv +
sigmoid) reads the output of each scale ``s < num_disp_scales``; scale 0 has the full input
resolution because the last stage upsamples from the stride-2 stem feature to stride 1.
Parameter names (``upconvs.{0..4}.{0,1}.conv.conv``, ``dispconvs.{s}.conv``) match the
original TrianFlow checkpoints; ``upconvs.0`` is the coarsest stage.
"""

from typing import List, Sequence

import torch
from torch import nn
import torch.nn.functional as F


class Conv3x3(nn.Module):
    """3x3 convolution after one pixel of reflection padding (size preserving)."""

    def __init__(self, in_channels: int, out_channels: int):
        """
        Build the convolution.

        :param in_channels: input channels.
        :param out_channels: output channels.
        """
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Apply padding and convolution.

        :param x: (B, in_channels, H, W).
        :return: (B, out_channels, H, W).
        """
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    """:class:`Conv3x3` followed by ELU."""

    def __init__(self, in_channels: int, out_channels: int):
        """
        Build the block.

        :param in_channels: input channels.
        :param out_channels: output channels.
        """
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.nonlin = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Apply conv and ELU.

        :param x: (B, in_channels, H, W).
        :return: (B, out_channels, H, W).
        """
        return self.nonlin(self.conv(x))


class DepthDecoder(nn.Module):
    """Decoder from the five encoder features to sigmoid disparities."""

    def __init__(self, *, num_ch_enc: Sequence[int] = (64, 64, 128, 256, 512),
                 num_ch_dec: Sequence[int] = (16, 32, 64, 128, 256),
                 num_disp_scales: int = 1):
        """
        Build the decoder.

        :param num_ch_enc: channels of the encoder features, finest (stride 2) first.
        :param num_ch_dec: decoder widths of scales 0 (finest) .. 4.
        :param num_disp_scales: number of disparity heads, 1..4 (the original: 1).
        """
        super().__init__()
        if len(num_ch_enc) != 5 or len(num_ch_dec) != 5:
            raise ValueError('num_ch_enc and num_ch_dec must have 5 entries each')
        if not 1 <= num_disp_scales <= 4:
            raise ValueError(f'num_disp_scales must be in 1..4, got {num_disp_scales}')
        self.num_disp_scales = num_disp_scales
        self.upconvs = nn.ModuleList()
        in_channels = num_ch_enc[4]
        for scale in range(4, -1, -1):
            out_channels = num_ch_dec[scale]
            skip = num_ch_enc[scale - 1] if scale > 0 else 0
            self.upconvs.append(nn.ModuleList([
                ConvBlock(in_channels, out_channels),
                ConvBlock(out_channels + skip, out_channels)]))
            in_channels = out_channels
        self.dispconvs = nn.ModuleList(
            [Conv3x3(num_ch_dec[s], 1) for s in range(num_disp_scales)])

    def forward(self, features: Sequence[torch.Tensor],
                image_size: Sequence[int]) -> List[torch.Tensor]:
        """
        Decode disparities.

        Each upsampling goes to the size of the skip feature it is concatenated with, and the
        last one to ``image_size``; for sizes that are multiples of 32 this is exactly the
        original's x2 upsampling.

        :param features: the five encoder features, finest first (see ResnetEncoder).
        :param image_size: (H, W) of the network input.
        :return: ``num_disp_scales`` disparities in (0, 1), finest first; entry s has shape
            (B, 1, H_s, W_s) with (H_0, W_0) = image_size and H_s = H / 2^s for s > 0.
            Differentiable.
        """
        if len(features) != 5:
            raise ValueError(f'expected 5 encoder features, got {len(features)}')
        x = features[4]
        disps = {}
        for i, (block_up, block_fuse) in enumerate(self.upconvs):
            scale = 4 - i
            x = block_up(x)
            size = features[scale - 1].shape[-2:] if scale > 0 else tuple(image_size)
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
            if scale > 0:
                x = torch.cat((x, features[scale - 1]), dim=1)
            x = block_fuse(x)
            if scale < self.num_disp_scales:
                disps[scale] = torch.sigmoid(self.dispconvs[scale](x))
        return [disps[s] for s in range(self.num_disp_scales)]
