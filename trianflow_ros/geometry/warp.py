"""
Image warping: backward warping by a flow, sparse bilinear sampling, rigid flow from depth.

Pixel coordinates are integer at pixel centres, u = column, v = row. ``grid_sample`` takes
coordinates normalised to [-1, 1]; the mapping depends on ``align_corners``:

- ``align_corners=True`` (the original TrianFlow, PyTorch <= 1.2 behaviour; its checkpoints
  depend on it): ``-1`` and ``1`` are the centres of the first and last pixels,
  ``g = 2 u / (W - 1) - 1``. Zero flow is exactly the identity.
- ``align_corners=False`` (PyTorch >= 1.3 default): ``-1`` and ``1`` are the outer edges of the
  first and last pixels, ``g = (2 u + 1) / W - 1``. Zero flow is also the identity with this
  mapping; mixing the two conventions is what shifts images by a fraction of a pixel.

Zero flow is the identity up to the rounding of the normalised coordinate: exact to 1e-12 in
float64; in float32 a sample position is off by up to about W * 3e-8 px (2.5e-5 px at W = 832).
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F

from trianflow_ros.geometry.camera import backproject_depth, pixel_grid, project
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.se3 import transform_points


def normalize_pixels(x: torch.Tensor, height: int, width: int,
                     align_corners: bool = True) -> torch.Tensor:
    """
    Map pixel coordinates (u, v) to grid_sample coordinates in [-1, 1].

    :param x: pixel coordinates, shape (..., 2), channel 0 = u (column).
    :param height: image height H.
    :param width: image width W.
    :param align_corners: the grid_sample convention the result is meant for (see module doc).
        With ``align_corners=True`` an axis of size 1 maps every coordinate to its single pixel.
    :return: normalised coordinates, shape (..., 2). Differentiable.
    """
    size = x.new_tensor([width, height])
    if align_corners:
        return 2.0 * x / (size - 1.0).clamp(min=1.0) - 1.0
    return (2.0 * x + 1.0) / size - 1.0


def backward_warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = 'zeros',
                  align_corners: bool = True) -> torch.Tensor:
    """
    Sample ``image`` at ``x + flow(x)`` for every pixel x (bilinear backward warping).

    With ``flow = flow_12`` and ``image = I_2`` the result is I_2 warped into frame 1.

    :param image: image or features to sample, shape (B, C, H, W).
    :param flow: displacement in pixels, shape (B, 2, H, W), channel 0 = u.
    :param padding_mode: grid_sample padding for samples outside the image ('zeros', 'border',
        'reflection').
    :param align_corners: grid_sample convention; True (default) reproduces the original
        TrianFlow. Both conventions give the identity for zero flow because the pixel ->
        normalised mapping follows the flag.
    :return: warped image, shape (B, C, H, W). Differentiable w.r.t. image and flow.
    """
    check_shape(image, 'image', ('B', None, 'H', 'W'))
    b, _, h, w = image.shape
    check_shape(flow, 'flow', (b, 2, h, w))
    return strided_warp([image], flow, 1, padding_mode, align_corners)


def strided_warp(maps: List[torch.Tensor], flow: torch.Tensor, stride: int = 1,
                 padding_mode: str = 'zeros', align_corners: bool = True) -> torch.Tensor:
    """
    Sample full-size maps at ``x + flow(x)`` for the pixels x = (s i, s j), channels joined.

    :func:`backward_warp` on every ``stride``-th pixel of both axes, of several maps on one
    sampling grid (each map sampled on its own: no joined full-size copy); stride 1 and one
    map is :func:`backward_warp`, bit for bit.

    :param maps: tensors (B, C_k, H, W) of one size (an expanded view is read in place).
    :param flow: (B, 2, H', W') the flow at those pixels, in full-size pixels
        (H' = ceil(H / s), W' = ceil(W / s)).
    :param stride: s >= 1.
    :param padding_mode: as :func:`backward_warp`.
    :param align_corners: as :func:`backward_warp`.
    :return: (B, sum C_k, H', W'). Differentiable w.r.t. the maps and the flow.
    """
    if stride < 1:
        raise ValueError(f'stride must be >= 1, got {stride}')
    b, _, h, w = maps[0].shape
    hs, ws = flow.shape[-2:]
    check_shape(flow, 'flow', (b, 2, -(-h // stride), -(-w // stride)))
    target = pixel_grid(b, hs, ws, flow.device, flow.dtype)
    if stride > 1:
        target = target * float(stride)
    target = target + flow                                                 # (B, 2, H', W')
    grid = normalize_pixels(target.permute(0, 2, 3, 1), h, w, align_corners)  # (B, H', W', 2)
    out = [F.grid_sample(m, grid.to(m.dtype), mode='bilinear', padding_mode=padding_mode,
                         align_corners=align_corners) for m in maps]
    return out[0] if len(out) == 1 else torch.cat(out, 1)


def sample_at(image: torch.Tensor, x: torch.Tensor, padding_mode: str = 'zeros',
              align_corners: bool = True) -> torch.Tensor:
    """
    Read bilinear values of ``image`` at sparse pixel coordinates.

    :param image: image, depth or features, shape (B, C, H, W).
    :param x: pixel coordinates (u, v), shape (B, N, 2).
    :param padding_mode: grid_sample padding for coordinates outside the image.
    :param align_corners: grid_sample convention (see the module docstring).
    :return: sampled values, shape (B, N, C). Differentiable w.r.t. image and x.
    """
    check_shape(image, 'image', ('B', None, None, None))
    b, c, h, w = image.shape
    check_shape(x, 'x', (b, None, 2))
    grid = normalize_pixels(x, h, w, align_corners).unsqueeze(1)           # (B, 1, N, 2)
    out = F.grid_sample(image, grid.to(image.dtype), mode='bilinear',
                        padding_mode=padding_mode, align_corners=align_corners)  # (B, C, 1, N)
    return out[:, :, 0, :].transpose(1, 2)


def rigid_flow(depth1: torch.Tensor, T_21: torch.Tensor, K: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Flow induced by the depth of frame 1 and the camera motion from frame 1 to frame 2.

    Every pixel x1 is lifted with its depth, ``X_1 = d_1(x1) K^-1 x1``, moved into frame 2,
    ``X_2 = T_21 X_1``, and projected: ``flow_12(x1) = pi(K X_2) - x1`` (H&Z Sec. 6.1 with
    P = K [R_21 | t_21]). The same K is used for both frames.

    :param depth1: depth of frame 1 along z, shape (B, 1, H, W).
    :param T_21: pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param K: intrinsics, shape (B, 3, 3).
    :return: ``flow_12`` (B, 2, H, W) and the depth of the moved points in frame 2, ``z2``
        (B, 1, H, W). Points with z2 <= 1e-6 (behind camera 2) get the flow of a point at
        z2 = 1e-6; mask them with ``z2``. Differentiable.
    """
    check_shape(depth1, 'depth1', ('B', 1, 'H', 'W'))
    b, _, h, w = depth1.shape
    check_shape(T_21, 'T_21', (b, 4, 4))
    check_shape(K, 'K', (b, 3, 3))
    X1 = backproject_depth(depth1, K).reshape(b, 3, -1).transpose(1, 2)     # (B, HW, 3)
    x2, z2 = project(transform_points(T_21, X1), K)                          # (B, HW, 2), (B, HW)
    x1 = pixel_grid(b, h, w, depth1.device, depth1.dtype)
    flow = x2.transpose(1, 2).reshape(b, 2, h, w) - x1
    return flow, z2.reshape(b, 1, h, w)
