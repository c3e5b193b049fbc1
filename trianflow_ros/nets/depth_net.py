"""
DepthNet: single-image disparity with a ResNet-18 encoder and a DispNet-style decoder.

The network of TrianFlow (Zhao et al., CVPR 2020, Sec. 4.1 / supplementary): the image is
normalised with ``(x - 0.45) / 0.225``, encoded by ResNet-18 and decoded to sigmoid
disparities. ``state_dict()`` keys are those of the original ``Depth_Model``
(``encoder.encoder.*``, ``decoder.upconvs.*``, ``decoder.dispconvs.*``), so the released
checkpoints load with strict checks (see trianflow_ros/nets/checkpoint.py).

Disparity -> depth (training and VO in the original): the sigmoid output ``disp`` is mapped
affinely into [1 / max_depth, 1 / min_depth] and inverted, :func:`disp_to_depth`. The
original's evaluation script used ``1 / disp`` instead (notes Sec. 6.2 item 11); this port uses
one mapping everywhere.

``width_mult`` < 1 builds a small variant: encoder and decoder widths scaled, no unused ``fc``
(same key names otherwise); the default 1 is the original network exactly.
"""

from typing import List

import torch
from torch import nn

from trianflow_ros.nets.depth_decoder import DepthDecoder
from trianflow_ros.nets.feature_pyramid import scaled_channels
from trianflow_ros.nets.resnet_encoder import ResnetEncoder

#: Input normalisation of the original depth network: ``(x - mean) / std`` on [0, 1] images.
IMAGE_MEAN = 0.45
IMAGE_STD = 0.225


def disp_to_depth(disp: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """
    Map a sigmoid disparity to depth (the original's training and VO mapping).

    ``depth = 1 / (1 / max_depth + (1 / min_depth - 1 / max_depth) * disp)``.

    :param disp: disparity in [0, 1], any shape (usually (B, 1, H, W)).
    :param min_depth: depth at disp = 1 (the original: 0.1 m).
    :param max_depth: depth at disp = 0 (the original: 100 m).
    :return: depth in [min_depth, max_depth], same shape. Differentiable.
    """
    if not 0.0 < min_depth < max_depth:
        raise ValueError(f'need 0 < min_depth < max_depth, got {min_depth}, {max_depth}')
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    return 1.0 / (min_disp + (max_disp - min_disp) * disp)


class DepthNet(nn.Module):
    """
    Monocular depth network (ResNet-18 encoder + disparity decoder).

    Inputs are images (B, 3, H, W) in [0, 1], channel order as configured (``data.bgr``:
    the released weights were trained on BGR). H and W should be multiples of 32 (the
    released weights: 256 x 832 for KITTI, 448 x 576 or 192 x 256 for NYUv2); other sizes run
    but are not what the network was trained on.
    """

    def __init__(self, *, min_depth: float = 0.1, max_depth: float = 100.0,
                 num_disp_scales: int = 1, width_mult: float = 1.0):
        """
        Build the network.

        :param min_depth: depth of disparity 1 used by :meth:`predict_depth` (m).
        :param max_depth: depth of disparity 0 used by :meth:`predict_depth` (m).
        :param num_disp_scales: number of disparity outputs (the released weights: 1).
        :param width_mult: channel multiplier of encoder and decoder in (0, 1] (the original:
            1; ``depth_net.width_mult`` of the config). Below 1 the unused ``fc`` is omitted.
        """
        super().__init__()
        if not 0.0 < min_depth < max_depth:
            raise ValueError(f'need 0 < min_depth < max_depth, got {min_depth}, {max_depth}')
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.width_mult = float(width_mult)
        self.encoder = ResnetEncoder(in_channels=3, with_fc=self.width_mult == 1.0,
                                     width_mult=self.width_mult)
        self.decoder = DepthDecoder(num_ch_enc=self.encoder.num_ch_enc,
                                    num_ch_dec=scaled_channels((16, 32, 64, 128, 256),
                                                               self.width_mult),
                                    num_disp_scales=num_disp_scales)

    @classmethod
    def from_config(cls, cfg) -> 'DepthNet':
        """
        Build the network a configuration describes (``depth_net.*``, ``width_mult`` included).

        :param cfg: a ``trianflow_ros.config.Config`` (e.g. the one stored in a checkpoint).
        :return: a new, untrained DepthNet.
        """
        section = cfg.depth_net
        return cls(min_depth=section.min_depth, max_depth=section.max_depth,
                   num_disp_scales=section.num_disp_scales,
                   width_mult=float(getattr(section, 'width_mult', 1.0)))

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        """
        Predict sigmoid disparities.

        :param image: images in [0, 1], shape (B, 3, H, W).
        :return: list of ``num_disp_scales`` disparities in (0, 1), finest first; index 0 has
            shape (B, 1, H, W), index s (B, 1, H / 2^s, W / 2^s). Differentiable.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f'image must have shape (B, 3, H, W), got {tuple(image.shape)}')
        x = (image - IMAGE_MEAN) / IMAGE_STD
        features = self.encoder(x)
        return self.decoder(features, image.shape[-2:])

    def predict_depth(self, image: torch.Tensor) -> torch.Tensor:
        """
        Predict full-resolution depth with this network's ``min_depth`` / ``max_depth``.

        :param image: images in [0, 1], shape (B, 3, H, W).
        :return: depth (B, 1, H, W) in [min_depth, max_depth] (up to an unknown scale for a
            self-supervised network). Differentiable.
        """
        return disp_to_depth(self.forward(image)[0], self.min_depth, self.max_depth)
