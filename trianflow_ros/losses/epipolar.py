"""
Geometric (epipolar) loss on the optical flow (TrianFlow Sec. 3.3, the original's ``geo_loss``).

With D_e the distance of every match ``x1 -> x1 + flow_12(x1)`` to its epipolar line
(:func:`trianflow_ros.geometry.epipolar.epipolar_distance_map`), the loss is the mean of D_e
over the band ``inlier_thres <= D_e < rigid_thres``: matches that are almost, but not quite,
consistent with the rigid motion are pulled onto their epipolar lines, while clear inliers
(nothing to gain) and moving objects or outliers (D_e >= rigid_thres) are left alone.
"""

from typing import Optional

import torch

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.losses import masked_mean, MaskedLoss


def epipolar_geo_loss(epipolar_dist: torch.Tensor, inlier_thres: float = 0.1,
                      rigid_thres: float = 0.5, mask: Optional[torch.Tensor] = None
                      ) -> MaskedLoss:
    """
    Mean epipolar distance over the band ``inlier_thres <= D_e < rigid_thres``.

    ``sum(D_e * band) / sum(band)`` per sample (the original's ``mean(D_e * band) /
    mean(band)``); an element whose band is empty gets 0 and ``valid = False`` (the original
    produced NaN there). Defaults are the original's KITTI thresholds (NYUv2: rigid 1.0 px).

    :param epipolar_dist: D_e in pixels, shape (B, 1, H, W).
    :param inlier_thres: lower edge of the band in pixels.
    :param rigid_thres: upper edge of the band in pixels (> inlier_thres).
    :param mask: optional extra selection or weights, shape (B, 1, H, W) (e.g. the valid
        mask); not in the original.
    :return: :class:`MaskedLoss`, value (B,) in pixels. Differentiable w.r.t. D_e (the band
        selection is not).
    """
    check_shape(epipolar_dist, 'epipolar_dist', ('B', 1, 'H', 'W'))
    if not rigid_thres > inlier_thres:
        raise ValueError(f'rigid_thres ({rigid_thres}) must exceed inlier_thres '
                         f'({inlier_thres})')
    band = ((epipolar_dist >= inlier_thres) & (epipolar_dist < rigid_thres)).detach()
    weight = band.to(epipolar_dist.dtype)
    if mask is not None:
        check_shape(mask, 'mask', epipolar_dist.shape)
        weight = weight * (mask.to(weight.dtype) if mask.dtype == torch.bool else mask).detach()
    return masked_mean(epipolar_dist, weight)
