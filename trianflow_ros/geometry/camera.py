"""
Pinhole camera: pixels <-> rays, projection, depth back-projection, intrinsics under resize/crop.

Conventions: pixel ``(u, v)`` = (column, row) with integer values at pixel centres; the camera
optical frame is REP-103 (z forward, x right, y down). All functions are batched, device- and
dtype-agnostic and differentiable with respect to their tensor inputs.
"""

from typing import Optional, Tuple

import torch

from trianflow_ros.geometry.checks import check_shape


def pixel_grid(batch: int, height: int, width: int, device: Optional[torch.device] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """
    Return the pixel coordinates of every pixel.

    :param batch: batch size B.
    :param height: image height H.
    :param width: image width W.
    :param device: device of the result.
    :param dtype: dtype of the result.
    :return: (B, 2, H, W), an expanded (non-contiguous) view; channel 0 is u (column),
        channel 1 is v (row).
    """
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing='ij')
    return torch.stack((u, v), dim=0).unsqueeze(0).expand(batch, 2, height, width)


def to_homogeneous(x: torch.Tensor) -> torch.Tensor:
    """Append a one to the last dimension: (..., D) -> (..., D+1)."""
    return torch.cat((x, torch.ones_like(x[..., :1])), dim=-1)


def from_homogeneous(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide by the last coordinate: (..., D+1) -> (..., D); |w| is kept >= eps."""
    w = x[..., -1:]
    w = torch.where(w.abs() < eps, torch.full_like(w, eps) * torch.where(w < 0, -1.0, 1.0), w)
    return x[..., :-1] / w


def unproject(x: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """
    Pixels to rays with z = 1 (normalised image coordinates, homogeneous).

    :param x: pixel coordinates, shape (B, N, 2).
    :param K: intrinsics, shape (B, 3, 3).
    :return: rays K^-1 [u, v, 1]^T, shape (B, N, 3). Differentiable.
    """
    check_shape(x, 'x', ('B', None, 2))
    check_shape(K, 'K', ('B', 3, 3))
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy, s = K[:, 0, 2, None], K[:, 1, 2, None], K[:, 0, 1, None]
    y = (x[..., 1] - cy) / fy
    xn = (x[..., 0] - cx - s * y) / fx
    return torch.stack((xn, y, torch.ones_like(y)), dim=-1)


def project(X: torch.Tensor, K: torch.Tensor, eps: float = 1e-6
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Project camera-frame points to pixels.

    :param X: points in the camera frame, shape (B, N, 3).
    :param K: intrinsics, shape (B, 3, 3).
    :param eps: depths are clamped to at least eps before the division; use the returned depth
        to mask points behind the camera.
    :return: pixels (B, N, 2) and depth z (B, N). Differentiable.
    """
    check_shape(X, 'X', ('B', None, 3))
    check_shape(K, 'K', ('B', 3, 3))
    z = X[..., 2]
    p = X[..., :2] / z.clamp(min=eps).unsqueeze(-1)
    u = K[:, 0, 0, None] * p[..., 0] + K[:, 0, 1, None] * p[..., 1] + K[:, 0, 2, None]
    v = K[:, 1, 1, None] * p[..., 1] + K[:, 1, 2, None]
    return torch.stack((u, v), dim=-1), z


def backproject_depth(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """
    Back-project a depth map to 3D points in the camera frame.

    :param depth: depth along the optical axis (z), shape (B, 1, H, W).
    :param K: intrinsics, shape (B, 3, 3).
    :return: points, shape (B, 3, H, W). Differentiable.
    """
    check_shape(depth, 'depth', ('B', 1, None, None))
    check_shape(K, 'K', ('B', 3, 3))
    b, _, h, w = depth.shape
    grid = pixel_grid(b, h, w, depth.device, depth.dtype).reshape(b, 2, -1).transpose(1, 2)
    rays = unproject(grid, K)                                   # (B, HW, 3)
    return (rays * depth.reshape(b, -1, 1)).transpose(1, 2).reshape(b, 3, h, w)


def resize_intrinsics(K: torch.Tensor, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]
                      ) -> torch.Tensor:
    """
    Return the intrinsics of an image resized from ``src_hw`` to ``dst_hw``.

    Matches cv2.resize and ``interpolate(..., align_corners=False)``: pixel areas are scaled, so
    a pixel centre moves as ``u' = (u + 0.5) * s - 0.5`` with ``s = dst / src`` per axis.

    :param K: intrinsics of the source image, shape (B, 3, 3).
    :param src_hw: source (height, width).
    :param dst_hw: destination (height, width).
    :return: intrinsics of the resized image, shape (B, 3, 3). Differentiable.
    """
    check_shape(K, 'K', ('B', 3, 3))
    sy = dst_hw[0] / src_hw[0]
    sx = dst_hw[1] / src_hw[1]
    S = K.new_tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return S @ K


def crop_intrinsics(K: torch.Tensor, top: float, left: float) -> torch.Tensor:
    """
    Return the intrinsics after cropping ``top`` rows and ``left`` columns off the image.

    :param K: intrinsics, shape (B, 3, 3).
    :param top: number of rows removed above the crop.
    :param left: number of columns removed left of the crop.
    :return: intrinsics of the crop, shape (B, 3, 3). Differentiable.
    """
    check_shape(K, 'K', ('B', 3, 3))
    shift = K.new_tensor([[0.0, 0.0, left], [0.0, 0.0, top], [0.0, 0.0, 0.0]])
    return K - shift


def backproject_pixels(x: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """
    Lift pixels with known depth to 3D points in the camera frame.

    :param x: pixel coordinates, shape (B, N, 2).
    :param depth: depth along the optical axis (z) of each pixel, shape (B, N).
    :param K: intrinsics, shape (B, 3, 3).
    :return: points ``depth * K^-1 [u, v, 1]^T``, shape (B, N, 3). Differentiable.
    """
    check_shape(x, 'x', ('B', 'N', 2))
    check_shape(depth, 'depth', ('B', 'N'))
    return unproject(x, K) * depth.unsqueeze(-1)
