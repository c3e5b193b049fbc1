"""
Exact two-view ground truth: rigid flow from depth and pose, and visibility by ray casting.

For a pixel ``x_i`` with depth ``z_i`` the scene point is ``X_i = z_i K^-1 [x_i, 1]^T``; it maps
to ``X_j = R_ji X_i + t_ji`` and to the pixel ``x_j = pi(K X_j)``, so ``flow_ij = x_j - x_i``
(computed in float64 from the stored float32 depth). The pixel is visible in view j when
``x_j`` lies inside the image (pixel centres: 0 <= u <= W - 1, 0 <= v <= H - 1), ``z_j > 0``
and a ray cast from camera j through ``x_j`` hits the scene at depth ``z_j`` (relative
tolerance ``rtol``): an occluder gives a nearer hit. The ray is tested against the point's own
surface and every surface seen at the 4x4 pixel centres around ``x_j`` in view j, so only an
occluder thinner than a pixel there could be missed.
"""

from typing import Tuple

import torch

from trianflow_ros.data.synthetic.render import neighbour_ids, pixel_rays
from trianflow_ros.data.synthetic.scene import intersect_candidates, Rects


def rigid_flow(depth: torch.Tensor, T_ji: torch.Tensor, K: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Flow of every pixel of view i into view j from its depth and the relative pose.

    :param depth: z-depth of view i, (1, H, W).
    :param T_ji: (4, 4) pose mapping points of frame i into frame j.
    :param K: (3, 3) intrinsics (shared by both views).
    :return: target pixels ``x_j`` (H, W, 2) and their depths ``z_j`` (H, W), float64.
    """
    _, h, w = depth.shape
    K = K.to(torch.float64)
    T = T_ji.to(depth.device, torch.float64)
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=depth.device),
                          torch.arange(w, dtype=torch.float64, device=depth.device),
                          indexing='ij')
    z = depth[0].to(torch.float64)
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    X = torch.stack((x * z, y * z, z), dim=-1)                       # (H, W, 3) in frame i
    Xj = X @ T[:3, :3].T + T[:3, 3]
    zj = Xj[..., 2]
    safe = torch.where(zj.abs() > 1e-9, zj, torch.full_like(zj, 1e-9))
    yn, xn = Xj[..., 1] / safe, Xj[..., 0] / safe
    uj = K[0, 0] * xn + K[0, 1] * yn + K[0, 2]
    vj = K[1, 1] * yn + K[1, 2]
    return torch.stack((uj, vj), dim=-1), zj


def visibility(rects: Rects, T_wj: torch.Tensor, K: torch.Tensor, target: torch.Tensor,
               z_target: torch.Tensor, ids_j: torch.Tensor, ids_i: torch.Tensor,
               rtol: float = 1e-3) -> torch.Tensor:
    """
    Whether scene points projected to ``target`` in view j are the surfaces view j sees.

    :param rects: the scene in float64.
    :param T_wj: (4, 4) camera-to-world pose of view j.
    :param K: (3, 3) intrinsics.
    :param target: (H, W, 2) pixel positions in view j (from ``rigid_flow``).
    :param z_target: (H, W) depths of the points in view j.
    :param ids_j: (1, H, W) surface ids of view j (pixel centres).
    :param ids_i: (1, H, W) surface ids of view i: the surface each point lies on.
    :param rtol: relative depth tolerance of the ray-cast test.
    :return: (H, W) bool.
    """
    h, w = z_target.shape
    u, v = target[..., 0], target[..., 1]
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1) & (z_target > 1e-6) \
        & torch.isfinite(z_target)
    flat = torch.nonzero(inside.reshape(-1)).squeeze(-1)
    valid = torch.zeros(h * w, dtype=torch.bool, device=z_target.device)
    if flat.numel():
        pixels = target.reshape(-1, 2)[flat].to(torch.float64)
        col = pixels[:, 0].floor().long().clamp(0, w - 1)
        row = pixels[:, 1].floor().long().clamp(0, h - 1)
        neigh = neighbour_ids(ids_j[0], 4, row * w + col)                # (M, 16)
        own = ids_i.reshape(-1)[flat].unsqueeze(-1)
        candidates = torch.cat((own, neigh), dim=1).clamp(min=0)
        T = T_wj.to(torch.float64)
        dirs = pixel_rays(pixels, K.to(torch.float64), T[:3, :3])
        t, _ = intersect_candidates(rects, T[:3, 3], dirs.unsqueeze(1), candidates)
        t = t.squeeze(1)
        z = z_target.reshape(-1)[flat]
        valid[flat] = (t - z).abs() <= rtol * z
    return valid.reshape(h, w)
