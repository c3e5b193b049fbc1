"""
FlowNet: PWC-Net optical flow (feature pyramid + coarse-to-fine decoder) of TrianFlow.

``state_dict()`` keys are those of the original ``Model_flow`` (``fpyramid.*``,
``pwc_model.*``; 98 tensors, 5,134,324 parameters). Images are (B, 3, H, W) in [0, 1] with no
normalisation. **Channel order is the caller's job**: the released weights were trained on BGR
images (OpenCV order), which the config flag ``data.bgr`` selects in the data/VO code.
H and W must be multiples of 64 to reproduce the original exactly (the released weights:
256 x 832 on KITTI); other sizes run with each upsampling resized to the next level.

``width_mult`` < 1 builds a small variant (every layer's width scaled, same key names, a
different checkpoint); the default 1 is the original network exactly.
"""

from typing import List, Tuple

import torch
from torch import nn

from trianflow_ros.nets.feature_pyramid import FeaturePyramid, PYRAMID_CHANNELS, scaled_channels
from trianflow_ros.nets.pwc_decoder import CONTEXT_LAYERS, ESTIMATOR_CHANNELS, PWCDecoder


def _check_pair(img1: torch.Tensor, img2: torch.Tensor) -> None:
    if img1.dim() != 4 or img1.shape[1] != 3:
        raise ValueError(f'img1 must have shape (B, 3, H, W), got {tuple(img1.shape)}')
    if img2.shape != img1.shape:
        raise ValueError(f'img2 must have the shape of img1 {tuple(img1.shape)}, '
                         f'got {tuple(img2.shape)}')


class FlowNet(nn.Module):
    """Optical flow network: ``fpyramid`` (FeaturePyramid) + ``pwc_model`` (PWCDecoder)."""

    def __init__(self, *, search_range: int = 4, width_mult: float = 1.0,
                 cost_volume_norm: bool = False):
        """
        Build the network.

        :param search_range: cost-volume search range in pixels per level (the original: 4).
        :param width_mult: channel multiplier of every layer, in (0, 1] (the original: 1;
            ``flow_net.width_mult`` of the config, e.g. 0.5 for the shipped small weights).
        :param cost_volume_norm: normalise the features of each level before the cost volume
            (``flow_net.cost_volume_norm``; not in the original, whose weights need False).
        """
        super().__init__()
        self.width_mult = float(width_mult)
        pyramid = scaled_channels(PYRAMID_CHANNELS, self.width_mult)
        self.fpyramid = FeaturePyramid(channels=pyramid)
        self.pwc_model = PWCDecoder(
            search_range=search_range, pyramid_channels=pyramid,
            estimator_channels=scaled_channels(ESTIMATOR_CHANNELS, self.width_mult),
            context_channels=scaled_channels([c for _, c in CONTEXT_LAYERS], self.width_mult),
            cost_volume_norm=cost_volume_norm)

    @classmethod
    def from_config(cls, cfg) -> 'FlowNet':
        """
        Build the network a configuration describes.

        Reads ``flow_net.search_range``, ``width_mult`` and ``cost_volume_norm``.

        :param cfg: a ``trianflow_ros.config.Config`` (e.g. the one stored in a checkpoint).
        :return: a new, untrained FlowNet.
        """
        section = cfg.flow_net
        return cls(search_range=section.search_range,
                   width_mult=float(getattr(section, 'width_mult', 1.0)),
                   cost_volume_norm=bool(getattr(section, 'cost_volume_norm', False)))

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> List[torch.Tensor]:
        """
        Estimate flow_12 (pixels of image 1 into image 2) at four scales.

        :param img1: image 1 in [0, 1], shape (B, 3, H, W).
        :param img2: image 2 in [0, 1], shape (B, 3, H, W).
        :return: [flow at (H, W), (H/2, W/2), (H/4, W/4), (H/8, W/8)], each (B, 2, h, w) in
            pixels of its own resolution, channel 0 = u. Differentiable.
        """
        _check_pair(img1, img2)
        size = tuple(img1.shape[-2:])
        return self.pwc_model(self.fpyramid(img1), self.fpyramid(img2), size)

    def forward_backward(self, img1: torch.Tensor, img2: torch.Tensor
                         ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Estimate flow_12 and flow_21, computing each image's pyramid once.

        Both directions run as one batch of 2B through the pyramid and the decoder (the
        network has no batch norm, so this equals separate passes up to float rounding).

        :param img1: image 1 in [0, 1], shape (B, 3, H, W).
        :param img2: image 2 in [0, 1], shape (B, 3, H, W).
        :return: (flows_12, flows_21), each the four-scale list of :meth:`forward`.
            Differentiable.
        """
        _check_pair(img1, img2)
        b = img1.shape[0]
        size = tuple(img1.shape[-2:])
        pyramid = self.fpyramid(torch.cat((img1, img2), dim=0))          # [c_l of 1 ; of 2]
        swapped = [torch.cat((f[b:], f[:b]), dim=0) for f in pyramid]    # [c_l of 2 ; of 1]
        flows = self.pwc_model(pyramid, swapped, size)
        return [f[:b] for f in flows], [f[b:] for f in flows]
