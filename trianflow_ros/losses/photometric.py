"""
Photometric losses of the flow network: masked L1 + SSIM (TrianFlow Sec. 3.2, stage 1 and 3).

SSIM (Wang et al., "Image Quality Assessment: From Error Visibility to Structural
Similarity", TIP 2004) with local statistics over 3x3 windows, as used by the original:

``SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2
+ C2))`` with C1 = 0.01^2, C2 = 0.03^2 (dynamic range 1).

The loss of one direction is ``(1 - w_ssim) * L1 + w_ssim * clamp((1 - SSIM) / 2, 0, 1)``,
each part a mask-normalised mean (:func:`trianflow_ros.losses.masked_mean`); the SSIM is taken
of the masked images, so masked-out pixels compare 0 with 0 and add no loss.
"""

from typing import Tuple

import torch
import torch.nn.functional as F

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.warp import backward_warp
from trianflow_ros.losses import masked_mean, MaskedLoss

C1 = 0.01 ** 2
C2 = 0.03 ** 2


def _box3(x: torch.Tensor) -> torch.Tensor:
    """3x3 mean, stride 1, zero padding counted in the mean (the original's AvgPool2d)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=True)


def ssim(x: torch.Tensor, y: torch.Tensor, c1: float = C1, c2: float = C2) -> torch.Tensor:
    """
    Structural similarity map of two images with 3x3 box windows.

    Local means, variances and covariance are 3x3 averages with zero padding (a border pixel
    averages its window over 9 entries, the missing ones 0, as the original). Identical inputs
    give exactly 1 everywhere.

    :param x: first image, shape (B, C, H, W), values in [0, 1].
    :param y: second image, shape (B, C, H, W).
    :param c1: stabiliser of the luminance term, (0.01 * dynamic range)^2.
    :param c2: stabiliser of the contrast-structure term, (0.03 * dynamic range)^2.
    :return: SSIM per pixel and channel, shape (B, C, H, W), in [-1, 1]. Differentiable.
    """
    check_shape(x, 'x', ('B', 'C', 'H', 'W'))
    check_shape(y, 'y', x.shape)
    mu_x, mu_y = _box3(x), _box3(y)
    var_x = _box3(x * x) - mu_x * mu_x
    var_y = _box3(y * y) - mu_y * mu_y
    cov_xy = _box3(x * y) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def photometric_loss(img1: torch.Tensor, img2_warped: torch.Tensor, mask: torch.Tensor,
                     w_ssim: float = 0.85) -> Tuple[MaskedLoss, MaskedLoss]:
    """
    Masked L1 + SSIM photometric loss between an image and a warped image.

    With m = mask (B, 1, H, W) broadcast over the channels:

    - pixel part: ``(1 - w_ssim) * mean(|I1 - I2w| * m) / mean(m)``;
    - SSIM part: ``w_ssim * mean(clamp((1 - SSIM(I1 * m, I2w * m)) / 2, 0, 1)) / mean(m)``.

    The parts are returned weighted so that their sum is the loss (the original's
    ``loss_pixel`` and ``loss_ssim``, weighted 1 - w_ssim and w_ssim by its trainer).

    :param img1: target image, shape (B, 3, H, W) (any C works), values in [0, 1].
    :param img2_warped: the other image warped into image 1, shape (B, C, H, W).
    :param mask: valid mask or weights of image 1, shape (B, 1, H, W).
    :param w_ssim: weight of the SSIM part, in [0, 1] (0.85 in every original config).
    :return: (pixel part, SSIM part), each a :class:`MaskedLoss` with value (B,); an element
        with an empty mask gets 0 and ``valid = False``. Differentiable w.r.t. both images
        (and a float mask).
    """
    check_shape(img1, 'img1', ('B', 'C', 'H', 'W'))
    check_shape(img2_warped, 'img2_warped', img1.shape)
    b, _, h, w = img1.shape
    check_shape(mask, 'mask', (b, 1, h, w))
    if not 0.0 <= w_ssim <= 1.0:
        raise ValueError(f'w_ssim must be in [0, 1], got {w_ssim}')
    m = mask.to(img1.dtype)
    pixel = masked_mean((img1 - img2_warped).abs(), m)
    similarity = ssim(img1 * m, img2_warped * m)
    dissimilarity = ((1.0 - similarity) / 2.0).clamp(0.0, 1.0)
    # the SSIM term is averaged over every pixel (masked-out ones compare 0 with 0 and add 0,
    # apart from the 3x3 windows that straddle the mask edge) and divided by the mask mean
    divider = m.reshape(b, -1).mean(dim=1)
    safe = torch.where(pixel.valid, divider, torch.ones_like(divider))
    structure = dissimilarity.reshape(b, -1).mean(dim=1) / safe
    structure = torch.where(pixel.valid, structure, torch.zeros_like(structure))
    return (MaskedLoss((1.0 - w_ssim) * pixel.value, pixel.valid),
            MaskedLoss(w_ssim * structure, pixel.valid))


def flow_photometric_loss(img1: torch.Tensor, img2: torch.Tensor, flow_12: torch.Tensor,
                          mask: torch.Tensor, w_ssim: float = 0.85
                          ) -> Tuple[MaskedLoss, MaskedLoss]:
    """
    Photometric loss of a flow: image 2 warped into image 1 by ``flow_12`` against image 1.

    Image 2 is sampled at ``x + flow_12(x)`` with ``backward_warp`` (bilinear, zero padding,
    align_corners=True as the original); then :func:`photometric_loss`. The original sums
    this over both directions and over 3 pyramid scales.

    :param img1: image 1, shape (B, C, H, W), values in [0, 1].
    :param img2: image 2, shape (B, C, H, W).
    :param flow_12: flow from image 1 to image 2, shape (B, 2, H, W).
    :param mask: valid mask or weights of image 1, shape (B, 1, H, W), e.g.
        :func:`trianflow_ros.geometry.flow_masks.flow_valid_mask`.
    :param w_ssim: weight of the SSIM part.
    :return: (pixel part, SSIM part) as in :func:`photometric_loss`. Differentiable w.r.t. the
        flow and the images.
    """
    check_shape(img1, 'img1', ('B', 'C', 'H', 'W'))
    check_shape(img2, 'img2', img1.shape)
    b, _, h, w = img1.shape
    check_shape(flow_12, 'flow_12', (b, 2, h, w))
    warped = backward_warp(img2, flow_12, padding_mode='zeros', align_corners=True)
    return photometric_loss(img1, warped, mask, w_ssim)
