"""
RefineFeatureHead: small learned features + confidence for the LM pose refinement.

The SA4Depth idea (learnable visual features reprojected with the predicted depth, a confidence
map weighting the residuals; the architecture is not published) in the smallest form that
gives a coarse-to-fine pyramid: three (stride-2 3x3, 3x3) convolution pairs with LeakyReLU(0.1)
give levels at 1/2, 1/4 and 1/8 of the input; each level has

- a 1x1 projection to ``out_dim`` channels, L2-normalised per pixel (so the residual norm is
  at most 2 and the Huber threshold of the refinement has a fixed meaning), and
- a 1x1 convolution + sigmoid giving the confidence in (0, 1) (initialised near 0.5).

Images are normalised with ``(x - 0.45) / 0.225`` as the depth and pose nets.

=====  ==========  ===============
level  resolution  channels (enc.)
=====  ==========  ===============
1      H/2         channels[0]
2      H/4         channels[1]
3      H/8         channels[2]
=====  ==========  ===============
"""

from typing import List, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from trianflow_ros.nets.depth_net import IMAGE_MEAN, IMAGE_STD
from trianflow_ros.nets.feature_pyramid import conv_lrelu


class RefineFeatureHead(nn.Module):
    """Features and confidence maps for :func:`trianflow_ros.geometry.refine.lm_refine`."""

    def __init__(self, *, channels: Sequence[int] = (16, 32, 48), out_dim: int = 16,
                 in_channels: int = 3):
        """
        Build the encoder and the per-level heads (PyTorch default initialisation).

        :param channels: encoder channels of the levels, fine to coarse.
        :param out_dim: channels of the returned features.
        :param in_channels: image channels.
        """
        super().__init__()
        if len(channels) < 1 or out_dim < 1:
            raise ValueError(f'need at least one level and out_dim >= 1, got {channels}, '
                             f'{out_dim}')
        blocks, feat_heads, conf_heads = [], [], []
        width = in_channels
        for c in channels:
            blocks.append(nn.Sequential(conv_lrelu(width, c, stride=2), conv_lrelu(c, c)))
            feat_heads.append(nn.Conv2d(c, out_dim, 1))
            conf = nn.Conv2d(c, 1, 1)
            nn.init.zeros_(conf.weight)
            nn.init.zeros_(conf.bias)
            conf_heads.append(conf)
            width = c
        self.blocks = nn.ModuleList(blocks)
        self.feat_heads = nn.ModuleList(feat_heads)
        self.conf_heads = nn.ModuleList(conf_heads)
        self.in_channels = in_channels

    @property
    def num_levels(self) -> int:
        """Return the number of pyramid levels."""
        return len(self.blocks)

    def forward(self, image: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Compute the pyramid.

        :param image: (B, 3, H, W) in [0, 1].
        :return: features and confidences, COARSE FIRST (the order of ``lm_refine``): level l
            (1 = finest) has features (B, out_dim, ceil(H / 2^l), ceil(W / 2^l)) with unit
            norm per pixel and confidence (B, 1, ...) in (0, 1). Differentiable.
        """
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f'image must have shape (B, {self.in_channels}, H, W), got '
                             f'{tuple(image.shape)}')
        x = (image - IMAGE_MEAN) / IMAGE_STD if self.in_channels == 3 else image
        feats, confs = [], []
        for block, fh, ch in zip(self.blocks, self.feat_heads, self.conf_heads):
            x = block(x)
            feats.append(F.normalize(fh(x), dim=1, eps=1e-6))
            confs.append(torch.sigmoid(ch(x)))
        return feats[::-1], confs[::-1]
