"""
Depth losses of TrianFlow (Sec. 3.4): triangulation, reprojection L_pd, flow-to-rigid L_pf.

The depth network is supervised geometrically only. The prediction is first aligned to the
scale of the triangulated structure by one scale per image, without gradient through the scale
(the original's ``register_depth``); then:

- triangulation loss: ``mean((1 - D_t(x) / D_tri(x))^2)`` over the triangulated pixels, i.e.
  ``((D_tri - D_t) / D_tri)^2``;
- L_pd: image-1 pixels lifted with the aligned depth 1, moved by T_21 and projected into
  image 2 must have the depth that the aligned depth 2 predicts there,
  ``|1 - z_proj / D_2(pi(x))|``, weighted by a mask (the original: M_r * M_s);
- L_pf: the optical flow is pulled toward the rigid flow of depth 1 and T_21 (the rigid flow is
  a fixed target), weighted by M_r.

Poses follow the package convention: ``T_21`` maps frame-1 points into frame 2. The same K is
used for both images.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from trianflow_ros.geometry.camera import pixel_grid
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.scale import align_depth_map
from trianflow_ros.geometry.warp import backward_warp, rigid_flow, sample_at
from trianflow_ros.losses import masked_mean, MaskedLoss

MIN_DEPTH = 1e-6


def _as_selection(mask: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Return float weights from an optional bool/float mask, ones if None."""
    if mask is None:
        return torch.ones_like(like)
    return mask.to(like.dtype) if mask.dtype == torch.bool else mask


def triangulation_depth_loss(depth_pred_at_x: torch.Tensor, depth_tri: torch.Tensor,
                             mask: Optional[torch.Tensor] = None) -> MaskedLoss:
    """
    Triangulation depth loss ``mean((1 - d_pred / d_tri)^2)`` over the selected points.

    The caller aligns the scale of ``depth_pred_at_x`` first (or uses
    :func:`align_and_triangulation_loss`). Points with a non-finite value or ``d_tri <= 0``
    are left out; a float mask acts as a weight.

    :param depth_pred_at_x: predicted depth read at the triangulated pixels, shape (B, N).
    :param depth_tri: triangulated depth, shape (B, N).
    :param mask: selection or weights, shape (B, N), e.g. ``Correspondences.valid``.
    :return: :class:`MaskedLoss`, value (B,); 0 and ``valid = False`` without usable points.
        Differentiable w.r.t. both depths.
    """
    check_shape(depth_pred_at_x, 'depth_pred_at_x', ('B', 'N'))
    check_shape(depth_tri, 'depth_tri', depth_pred_at_x.shape)
    weight = _as_selection(mask, depth_pred_at_x)
    check_shape(weight, 'mask', depth_pred_at_x.shape)
    usable = (torch.isfinite(depth_pred_at_x) & torch.isfinite(depth_tri) & (depth_tri > 0)
              & (weight > 0))
    safe_tri = torch.where(usable, depth_tri, torch.ones_like(depth_tri))
    safe_pred = torch.where(usable, depth_pred_at_x, torch.ones_like(depth_pred_at_x))
    residual = (1.0 - safe_pred / safe_tri) ** 2
    return masked_mean(residual, torch.where(usable, weight, torch.zeros_like(weight)))


@dataclass
class AlignedTriangulationLoss:
    """
    Result of :func:`align_and_triangulation_loss`.

    :param loss: the triangulation loss, :class:`MaskedLoss` with value (B,).
    :param scale: the (gradient-free) scale s applied to the prediction, shape (B,); 1 where
        no point was usable.
    :param depth: the aligned depth map ``s * depth``, shape (B, 1, H, W); differentiable
        w.r.t. the prediction, for :func:`depth_reprojection_loss`.
    """

    loss: MaskedLoss
    scale: torch.Tensor
    depth: torch.Tensor


def align_and_triangulation_loss(depth: torch.Tensor, x: torch.Tensor, depth_tri: torch.Tensor,
                                 mask: Optional[torch.Tensor] = None, method: str = 'lsq'
                                 ) -> AlignedTriangulationLoss:
    """
    Align a predicted depth map to triangulated depths, then the triangulation loss.

    The scale comes from :func:`trianflow_ros.geometry.scale.align_depth_map` on detached
    inputs (no gradient through the scale, as the original's ``register_depth``); the default
    ``'lsq'`` (closed-form relative least squares) gives exactly the original's
    median-then-``scale_adapt`` result, because that least squares is scale-equivariant.
    The aligned map is read at ``x`` bilinearly (``sample_at``, align_corners=True); pixels
    outside ``[0, W-1] x [0, H-1]`` are left out of both the fit and the loss.

    :param depth: predicted depth map of the image, shape (B, 1, H, W).
    :param x: pixels of the triangulated points in this image, shape (B, N, 2).
    :param depth_tri: triangulated depths of those points in this camera, shape (B, N).
    :param mask: selection or weights, shape (B, N) (e.g. ``Correspondences.valid``).
    :param method: scale fit: 'lsq' (the original), 'median' or 'robust'.
    :return: :class:`AlignedTriangulationLoss` (loss, scale, aligned depth). Differentiable
        w.r.t. ``depth`` and ``depth_tri`` with the scale held fixed.
    """
    check_shape(depth, 'depth', ('B', 1, 'H', 'W'))
    b, _, h, w = depth.shape
    check_shape(x, 'x', (b, 'N', 2))
    check_shape(depth_tri, 'depth_tri', (b, x.shape[1]))
    weight = _as_selection(mask, depth_tri)
    check_shape(weight, 'mask', depth_tri.shape)
    with torch.no_grad():
        scale, _ = align_depth_map(depth.detach(), x.detach(), depth_tri.detach(),
                                   weight.detach() > 0, method)
    aligned = depth * scale.to(depth.dtype)[:, None, None, None]
    at_x = sample_at(aligned, x, padding_mode='border', align_corners=True)[..., 0]   # (B, N)
    inside = ((x[..., 0] >= 0) & (x[..., 0] <= w - 1) & (x[..., 1] >= 0)
              & (x[..., 1] <= h - 1))
    weight = torch.where(inside, weight, torch.zeros_like(weight))
    loss = triangulation_depth_loss(at_x, depth_tri.to(at_x.dtype), weight)
    return AlignedTriangulationLoss(loss=loss, scale=scale, depth=aligned)


def depth_reprojection_loss(depth1: torch.Tensor, depth2: torch.Tensor, T_21: torch.Tensor,
                            K: torch.Tensor, mask: torch.Tensor) -> MaskedLoss:
    """
    Dense depth reprojection loss L_pd (the original's ``pj_depth_loss``).

    Every pixel x of image 1 is lifted with ``depth1``, moved by ``T_21`` and projected to
    ``x' = pi(K T_21 X)`` with depth ``z'`` in camera 2; ``depth2`` is read at x' (bilinear,
    reflection padding, align_corners=True, as the original). The loss map
    ``|1 - z' / depth2(x')|`` is weighted by ``mask`` and by the reprojection validity (x'
    inside ``[0, W-1] x [0, H-1]``, ``z' > 0`` and a positive, finite sampled depth) and
    normalised by the mean of that weight. Both depths should be aligned to the scale of the
    translation of ``T_21`` first (:func:`align_and_triangulation_loss`).

    :param depth1: depth of image 1, shape (B, 1, H, W).
    :param depth2: depth of image 2, shape (B, 1, H, W).
    :param T_21: pose mapping frame-1 points into frame 2, shape (B, 4, 4) (cast to the depth
        dtype).
    :param K: intrinsics of both images, shape (B, 3, 3).
    :param mask: weights of image 1, shape (B, 1, H, W) (the original: M_r * M_s); treated as
        constant (detached).
    :return: :class:`MaskedLoss`, value (B,). Differentiable w.r.t. both depths (and T_21, K).
    """
    check_shape(depth1, 'depth1', ('B', 1, 'H', 'W'))
    check_shape(depth2, 'depth2', depth1.shape)
    b, _, h, w = depth1.shape
    check_shape(T_21, 'T_21', (b, 4, 4))
    check_shape(K, 'K', (b, 3, 3))
    check_shape(mask, 'mask', (b, 1, h, w))
    flow, z2 = rigid_flow(depth1, T_21.to(depth1.dtype), K.to(depth1.dtype))   # (B,2|1,H,W)
    sampled = backward_warp(depth2, flow, padding_mode='reflection', align_corners=True)
    x2 = pixel_grid(b, h, w, depth1.device, depth1.dtype) + flow
    ok = ((x2[:, :1] >= 0) & (x2[:, :1] <= w - 1) & (x2[:, 1:] >= 0) & (x2[:, 1:] <= h - 1)
          & (z2 > MIN_DEPTH) & torch.isfinite(z2) & (sampled > 0) & torch.isfinite(sampled))
    safe_sampled = torch.where(ok, sampled, torch.ones_like(sampled))
    safe_z2 = torch.where(ok, z2, torch.ones_like(z2))
    loss_map = (1.0 - safe_z2 / safe_sampled).abs()
    weight = torch.where(ok.detach(), _as_selection(mask, depth1).detach(),
                         torch.zeros_like(depth1))
    return masked_mean(loss_map, weight)


def flow_rigid_loss(flow_12: torch.Tensor, depth1: torch.Tensor, T_21: torch.Tensor,
                    K: torch.Tensor, mask: torch.Tensor) -> MaskedLoss:
    """
    Flow-to-rigid-flow loss L_pf (the original's ``flow_error``).

    ``mean(M_r * |flow_12 - flow_rigid|) / mean(M_r)`` with the rigid flow of ``depth1`` and
    ``T_21`` held fixed (detached): it trains only the optical flow, distilling the rigid flow
    into it in the static (M_r) region. Pixels whose point falls behind camera 2 are left out.

    :param flow_12: optical flow from image 1 to image 2, shape (B, 2, H, W).
    :param depth1: (aligned) depth of image 1, shape (B, 1, H, W).
    :param T_21: pose mapping frame-1 points into frame 2, shape (B, 4, 4).
    :param K: intrinsics, shape (B, 3, 3).
    :param mask: weights of image 1, shape (B, 1, H, W) (the original: the rigid score M_r);
        treated as constant.
    :return: :class:`MaskedLoss`, value (B,) in pixels. Differentiable w.r.t. the flow only.
    """
    check_shape(flow_12, 'flow_12', ('B', 2, 'H', 'W'))
    b, _, h, w = flow_12.shape
    check_shape(depth1, 'depth1', (b, 1, h, w))
    check_shape(T_21, 'T_21', (b, 4, 4))
    check_shape(K, 'K', (b, 3, 3))
    check_shape(mask, 'mask', (b, 1, h, w))
    with torch.no_grad():
        rigid, z2 = rigid_flow(depth1.detach().to(flow_12.dtype),
                               T_21.detach().to(flow_12.dtype), K.detach().to(flow_12.dtype))
        ok = (z2 > MIN_DEPTH) & torch.isfinite(rigid).all(dim=1, keepdim=True)
        weight = torch.where(ok, _as_selection(mask, flow_12[:, :1]).detach(),
                             torch.zeros_like(z2))
        rigid = torch.where(ok, rigid, torch.zeros_like(rigid))
    return masked_mean((flow_12 - rigid).abs(), weight)
