"""
Dense depth maps from flow and a pose: triangulation, transfer into another view, fusion.

The VO keeps the depth of its keyframe as a map in the odometry's unit together with a
per-pixel uncertainty, the standard deviation of log depth (``sigma``; a relative depth error).
A new keyframe's map is the fusion of two measurements of its pixels:

- :func:`triangulate_flow_depth`: mid-point triangulation along the backward flow with the
  scaled pose; ``sigma = sigma_px / parallax_px`` (the relative depth error of a triangulated
  point is the angular noise over the parallax angle);
- :func:`transfer_flow_depth`: the previous keyframe's map moved along the flow with the pose;
  its sigma moves with it;

and :func:`fuse_log_depth` averages them in log depth with inverse-variance weights. Because the
older measurement keeps its weight, the scale of the structure is carried by many frames, not
re-estimated from one pair (the frame-to-frame scale transfer of the first VO drifted).

Pixels: the maps live on the raw image grid (what the networks and the flow see). With lens
distortion the geometry uses the ideal pinhole pixels of those raw pixels: pass ``undistort``
(a function (B, N, 2) raw pixels -> (B, N, 2) pinhole pixels with the same K, see
:mod:`~trianflow_ros.geometry.distortion`) and, to save the work per frame, ``grid_2`` = the
pinhole pixels of the raw grid of image 2. The depth along the optical axis is the same for a
raw pixel and its pinhole twin.

Maps are (1, 1, H, W) float32 with 0 = unknown (sigma 0 there); computations run in float64.
Not differentiable (VO use).
"""

from typing import Callable, Optional, Tuple

import torch

from trianflow_ros.geometry.camera import backproject_pixels, pixel_grid
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.epipolar import fundamental_from_essential, sampson_distance
from trianflow_ros.geometry.lie import skew
from trianflow_ros.geometry.se3 import transform_points
from trianflow_ros.geometry.triangulation import midpoint_triangulate, ray_angle
from trianflow_ros.geometry.warp import sample_at

Undistort = Optional[Callable[[torch.Tensor], torch.Tensor]]


def grid_points(height: int, width: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Return the raw pixel grid as points, shape (1, H*W, 2) (row-major, u first)."""
    return pixel_grid(1, height, width, device, dtype).reshape(1, 2, -1).transpose(1, 2)


def _valid_flow_points(flow_21: torch.Tensor, valid_2: torch.Tensor, undistort: Undistort,
                       grid_2: Optional[torch.Tensor], need_x2: bool = True):
    """
    Return the flat indices of the trusted pixels of image 2 and their raw x1, pinhole x1, x2.

    Only these pixels are computed (30-70 % of an image in practice): the dense maps were
    built for every pixel and masked afterwards.
    """
    check_shape(valid_2, 'valid_2', (1, 1) + tuple(flow_21.shape[-2:]))
    _, _, h, w = flow_21.shape
    flow = flow_21.reshape(1, 2, -1)
    keep = valid_2.reshape(-1) & torch.isfinite(flow[0]).all(0)
    idx = torch.nonzero(keep).flatten()
    raw2 = grid_points(h, w, flow_21.device)[:, idx]
    raw1 = raw2 + flow[:, :, idx].double().transpose(1, 2)
    if undistort is None:
        return idx, raw1, raw1, raw2
    if not need_x2:
        x2 = raw2
    elif grid_2 is not None:
        x2 = grid_2.to(torch.float64)[:, idx]
    else:
        x2 = undistort(raw2)
    return idx, raw1, undistort(raw1), x2


def _scatter(idx: torch.Tensor, values: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Write (1, M) values at flat pixel indices into a (1, 1, H, W) float32 map, 0 elsewhere."""
    out = torch.zeros(h * w, dtype=torch.float32, device=values.device)
    out[idx] = values[0].float()
    return out.reshape(1, 1, h, w)


def triangulate_flow_depth(flow_21: torch.Tensor, valid_2: torch.Tensor, K1: torch.Tensor,
                           K2: torch.Tensor, T_21: torch.Tensor, *, min_angle_deg: float,
                           min_depth: float, max_sampson_px: float, sigma_px: float = 0.5,
                           undistort: Undistort = None, grid_2: Optional[torch.Tensor] = None,
                           dtype: torch.dtype = torch.float64
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Depth of every pixel of image 2 by mid-point triangulation along the backward flow.

    :param flow_21: (1, 2, H, W) flow of image 2 into image 1 (raw pixels).
    :param valid_2: (1, 1, H, W) bool, pixels of image 2 with a trusted match.
    :param K1: (1, 3, 3) intrinsics of image 1.
    :param K2: (1, 3, 3) intrinsics of image 2.
    :param T_21: (1, 4, 4) pose (scaled: the depth has its unit).
    :param min_angle_deg: rays meeting at a smaller angle get no depth.
    :param min_depth: cheirality margin (both cameras).
    :param max_sampson_px: matches farther from the epipolar geometry of T_21 (moving
        objects, flow errors) get no depth.
    :param sigma_px: matching noise (pixels) behind the uncertainty ``sigma_px / parallax``.
    :param undistort: raw -> pinhole pixels (None: pinhole images).
    :param grid_2: (1, H*W, 2) pinhole pixels of image 2's raw grid (optional cache).
    :param dtype: the triangulation's float type (the pixels are built in float64 first):
        float32 is ~2x faster and agrees with float64 to ~1e-5 relative typically; at small
        ray angles the mid-point's determinant cancels (up to ~2 % measured), still below 5 %
        of the pixel's own log-depth sigma (``sigma_px`` / parallax): enough for a depth
        output, not for the scale.
    :return: depth of image 2 and its log-depth sigma, both (1, 1, H, W) float32, 0 = unknown.
    """
    check_shape(flow_21, 'flow_21', (1, 2, None, None))
    _, _, h, w = flow_21.shape
    check_shape(valid_2, 'valid_2', (1, 1, h, w))
    dt = dtype
    idx, _, x1, x2 = _valid_flow_points(flow_21, valid_2, undistort, grid_2)
    x1, x2 = x1.to(dt), x2.to(dt)
    K1d, K2d, T = K1.to(dt), K2.to(dt), T_21.to(dt)
    X1 = midpoint_triangulate(x1, x2, K1d, K2d, T)
    z1 = X1[..., 2]
    z2 = transform_points(T, X1)[..., 2]
    angle = ray_angle(x1, x2, K1d, K2d, T)
    ok = torch.isfinite(x1).all(-1) & torch.isfinite(x2).all(-1)
    ok = ok & (angle >= torch.deg2rad(torch.tensor(min_angle_deg, dtype=dt)))
    ok = ok & (z1 > min_depth) & (z2 > min_depth) & torch.isfinite(z2)
    Fm = fundamental_from_essential(skew(T[:, :3, 3]) @ T[:, :3, :3], K1d, K2d)
    ok = ok & (sampson_distance(Fm, torch.nan_to_num(x1), torch.nan_to_num(x2)) < max_sampson_px)
    focal = 0.5 * (K2d[:, 0, 0] + K2d[:, 1, 1])
    sigma = sigma_px / (angle * focal[:, None]).clamp(min=1e-9)
    return (_scatter(idx, torch.where(ok, z2, torch.zeros_like(z2)), h, w),
            _scatter(idx, torch.where(ok, sigma, torch.zeros_like(sigma)), h, w))


def transfer_flow_depth(depth_1: torch.Tensor, sigma_1: Optional[torch.Tensor],
                        flow_21: torch.Tensor, valid_2: torch.Tensor, K1: torch.Tensor,
                        T_21: torch.Tensor, *, undistort: Undistort = None,
                        grid_2: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Move a depth map of image 1 into image 2 with a known pose and the backward flow.

    A pixel of image 2 gets a depth only where all four neighbours of its match in image 1
    are known (bilinear reads next to unknown pixels would blend in the zeros); the inverse
    depth is interpolated (exact on planar patches).

    :param depth_1: (1, 1, H, W) depth of image 1, 0 = unknown.
    :param sigma_1: (1, 1, H, W) its log-depth sigma (None: 0).
    :param flow_21: (1, 2, H, W) flow of image 2 into image 1.
    :param valid_2: (1, 1, H, W) bool, pixels of image 2 with a trusted match.
    :param K1: (1, 3, 3) intrinsics of image 1 (the pinhole K of both cameras' geometry).
    :param T_21: (1, 4, 4) pose mapping frame-1 points into frame 2.
    :param undistort: raw -> pinhole pixels (None: pinhole images).
    :param grid_2: unused (signature symmetry with :func:`triangulate_flow_depth`).
    :return: depth of image 2 and its sigma, both (1, 1, H, W) float32, 0 = unknown.
    """
    check_shape(depth_1, 'depth_1', (1, 1, None, None))
    _, _, h, w = flow_21.shape
    dt = torch.float64
    idx, raw1, x1, _ = _valid_flow_points(flow_21, valid_2, undistort, None, need_x2=False)
    d1 = depth_1.to(dt)
    known = sample_at((d1 > 0).to(dt), raw1, 'zeros')[..., 0] > 0.999
    z1 = 1.0 / sample_at(_inverse(d1), raw1, 'zeros')[..., 0].clamp(min=1e-12)
    X2 = transform_points(T_21.to(dt), backproject_pixels(torch.nan_to_num(x1), z1, K1.to(dt)))
    z2 = X2[..., 2]
    ok = known & (z1 > 0) & (z2 > 0) & torch.isfinite(z2) & torch.isfinite(x1).all(-1)
    depth = _scatter(idx, torch.where(ok, z2, torch.zeros_like(z2)), h, w)
    if sigma_1 is None:
        return depth, torch.zeros_like(depth)
    s1 = sample_at(sigma_1.to(dt), raw1, 'zeros')[..., 0]
    return depth, _scatter(idx, torch.where(ok, s1, torch.zeros_like(s1)), h, w)


def fuse_log_depth(depth_a: torch.Tensor, sigma_a: torch.Tensor, depth_b: torch.Tensor,
                   sigma_b: torch.Tensor, *, gate: float = 3.0, min_sigma: float = 1e-3
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Fuse two depth maps of one image in log depth, weighted by their inverse variances.

    Where only one map knows a pixel, it is kept; where both do and agree within ``gate``
    combined sigmas, ``log d = (log d_a / s_a^2 + log d_b / s_b^2) / (1 / s_a^2 + 1 / s_b^2)``
    and ``s^2 = 1 / (1 / s_a^2 + 1 / s_b^2)``; where they disagree (an occlusion, a moving
    object, a wrong match) the more certain one is kept.

    :param depth_a: (1, 1, H, W) depth, 0 = unknown.
    :param sigma_a: (1, 1, H, W) its log-depth sigma.
    :param depth_b: (1, 1, H, W) depth, 0 = unknown.
    :param sigma_b: (1, 1, H, W) its log-depth sigma.
    :param gate: agreement bound in combined sigmas.
    :param min_sigma: floor of the sigmas (a zero sigma would take all the weight).
    :return: fused depth and sigma, (1, 1, H, W) float32, 0 = unknown.
    """
    ka, kb = depth_a > 0, depth_b > 0
    sa, sb = sigma_a.clamp(min=min_sigma), sigma_b.clamp(min=min_sigma)
    la = torch.where(ka, depth_a, torch.ones_like(depth_a)).log()
    lb = torch.where(kb, depth_b, torch.ones_like(depth_b)).log()
    wa, wb = 1.0 / sa.square(), 1.0 / sb.square()
    fused = ((la * wa + lb * wb) / (wa + wb)).exp()
    fused_s = (1.0 / (wa + wb)).sqrt()
    agree = (la - lb).abs() <= gate * (sa.square() + sb.square()).sqrt()
    better_a = sa <= sb
    both = ka & kb
    depth = torch.where(both & agree, fused, torch.where(
        both, torch.where(better_a, depth_a, depth_b), torch.where(ka, depth_a, depth_b)))
    sigma = torch.where(both & agree, fused_s, torch.where(
        both, torch.where(better_a, sa, sb), torch.where(ka, sa, sb)))
    known = ka | kb
    return (torch.where(known, depth, torch.zeros_like(depth)).float(),
            torch.where(known, sigma, torch.zeros_like(sigma)).float())


def _inverse(depth: torch.Tensor) -> torch.Tensor:
    """1 / depth where known, 0 elsewhere."""
    return torch.where(depth > 0, 1.0 / depth.clamp(min=1e-12), torch.zeros_like(depth))


def sample_known(depth: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """
    Read a depth map at pixels, 0 where any of the four neighbours is unknown.

    The inverse depth is interpolated bilinearly: it is affine in the pixel coordinates on a
    plane, so the read is exact on planar patches (the depth itself is not).

    :param depth: (B, 1, H, W) depth, 0 = unknown.
    :param x: (B, N, 2) raw pixels.
    :return: (B, N) depths (0 = unknown), dtype of ``x``.
    """
    d = depth.to(x.dtype)
    known = sample_at((d > 0).to(x.dtype), x, 'zeros')[..., 0] > 0.999
    z = 1.0 / sample_at(_inverse(d), x, 'zeros')[..., 0].clamp(min=1e-12)
    return torch.where(known & torch.isfinite(z), z, torch.zeros_like(z))
