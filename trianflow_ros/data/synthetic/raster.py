"""
Ray casting of the full pixel grid, organised like a rasteriser: one rectangle at a time.

For the pixel-centre rays ``d(u, v) = R_wc K^-1 [u, v, 1]^T`` every dot product ``w.d`` is an
affine function ``a u + b v + c`` of the pixel, so the ray-rectangle test of a whole image
block needs only broadcast additions. Each rectangle is tested on the pixels of its
conservative screen bounding box (corners clipped at the near plane; for unbounded planes, the
image clipped to the half-plane of rays that meet the plane), and a z-buffer keeps the
nearest hit. The result equals ``scene.intersect`` on every pixel centre.
"""

from typing import List, Tuple

import torch

from trianflow_ros.data.synthetic.scene import cull, Rects

_NEAR = 1e-3
_MARGIN = 1.0


def _finite_boxes(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Screen bounds (P, 4) = (umin, umax, vmin, vmax) of quads X (P, 4, 3) clipped at z=near."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    order = [0, 1, 3, 2]                                 # corners in polygon order
    pts, masks = [X], [X[..., 2] >= _NEAR]
    for a, b in zip(order, order[1:] + order[:1]):
        za, zb = X[:, a, 2], X[:, b, 2]
        cross = (za - _NEAR) * (zb - _NEAR) < 0
        lam = ((_NEAR - za) / torch.where(cross, zb - za, torch.ones_like(za))).unsqueeze(-1)
        pts.append((X[:, a] + lam * (X[:, b] - X[:, a])).unsqueeze(1))
        masks.append(cross.unsqueeze(1))
    P = torch.cat(pts, dim=1)                             # (P, 8, 3)
    M = torch.cat(masks, dim=1)                           # (P, 8)
    z = P[..., 2].clamp(min=_NEAR)
    u = fx * P[..., 0] / z + cx
    v = fy * P[..., 1] / z + cy
    inf = torch.full_like(u, float('inf'))
    return torch.stack((torch.where(M, u, inf).amin(1), torch.where(M, u, -inf).amax(1),
                        torch.where(M, v, inf).amin(1), torch.where(M, v, -inf).amax(1)), -1)


def _plane_boxes(coef: torch.Tensor, sign: torch.Tensor, height: int, width: int
                 ) -> torch.Tensor:
    """Screen bounds (P, 4) of the image clipped to ``sign * (a u + b v + c) > 0``."""
    lo_u, hi_u, lo_v, hi_v = -0.5 - _MARGIN, width - 0.5 + _MARGIN, -0.5 - _MARGIN, \
        height - 0.5 + _MARGIN
    corners = coef.new_tensor([[lo_u, lo_v], [hi_u, lo_v], [hi_u, hi_v], [lo_u, hi_v]])
    f = sign.unsqueeze(1) * (coef[:, None, 0] * corners[:, 0] + coef[:, None, 1]
                             * corners[:, 1] + coef[:, None, 2])            # (P, 4)
    pts, masks = [corners.expand(coef.shape[0], 4, 2)], [f > 0]
    for a in range(4):
        b = (a + 1) % 4
        cross = f[:, a] * f[:, b] < 0
        lam = (f[:, a] / torch.where(cross, f[:, a] - f[:, b], torch.ones_like(f[:, a])))
        p = corners[a] + lam.unsqueeze(-1) * (corners[b] - corners[a])
        pts.append(p.unsqueeze(1))
        masks.append(cross.unsqueeze(1))
    P = torch.cat(pts, dim=1)
    M = torch.cat(masks, dim=1)
    inf = torch.full_like(P[..., 0], float('inf'))
    u, v = P[..., 0], P[..., 1]
    return torch.stack((torch.where(M, u, inf).amin(1), torch.where(M, u, -inf).amax(1),
                        torch.where(M, v, inf).amin(1), torch.where(M, v, -inf).amax(1)), -1)


def _pixel_ranges(boxes: torch.Tensor, height: int, width: int) -> List[Tuple[int, ...]]:
    """Integer inclusive pixel ranges (r0, r1, c0, c1) of screen bounds, one pixel of margin."""
    big = 1e7
    b = boxes.clamp(-big, big)
    c0 = torch.floor(b[:, 0] - _MARGIN).clamp(min=0)
    c1 = torch.ceil(b[:, 1] + _MARGIN).clamp(max=width - 1)
    r0 = torch.floor(b[:, 2] - _MARGIN).clamp(min=0)
    r1 = torch.ceil(b[:, 3] + _MARGIN).clamp(max=height - 1)
    return [tuple(int(x) for x in row)
            for row in torch.stack((r0, r1, c0, c1), -1).tolist()]


def rasterize(rects: Rects, T_wc: torch.Tensor, K: torch.Tensor, height: int, width: int
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Nearest hit of every pixel-centre ray.

    :param rects: the scene (its dtype is the working dtype).
    :param T_wc: (4, 4) camera-to-world pose.
    :param K: (3, 3) intrinsics without skew.
    :return: z-depth (H, W) (inf where nothing is hit) and the global rectangle index (H, W)
        (-1 where nothing is hit).
    """
    dtype, device = rects.centre.dtype, rects.centre.device
    T = T_wc.to(device=device, dtype=torch.float64)
    K64 = K.to(device=device, dtype=torch.float64)
    keep = cull(rects, T.to(dtype), K64, height, width)
    sub = rects.select(keep).to(dtype=torch.float64)
    R, o = T[:3, :3], T[:3, 3]
    fx, fy, cx, cy = K64[0, 0], K64[1, 1], K64[0, 2], K64[1, 2]
    # affine coefficients (u, v, 1) of n.d, a1.d, a2.d per rectangle: (P, 3, 3)
    vecs = torch.stack((sub.normal, sub.axis1, sub.axis2), dim=1) @ R      # camera frame
    coef = torch.stack((vecs[..., 0] / fx, vecs[..., 1] / fy,
                        vecs[..., 2] - vecs[..., 0] * cx / fx - vecs[..., 1] * cy / fy), -1)
    rel = sub.centre - o
    num = (rel * sub.normal).sum(-1)
    cuv = -torch.stack(((rel * sub.axis1).sum(-1), (rel * sub.axis2).sum(-1)), -1)
    finite = torch.isfinite(sub.half1) & torch.isfinite(sub.half2)
    h1 = torch.where(finite, sub.half1, torch.zeros_like(sub.half1)).unsqueeze(-1)
    h2 = torch.where(finite, sub.half2, torch.zeros_like(sub.half2)).unsqueeze(-1)
    corners = torch.stack([sub.centre + s1 * h1 * sub.axis1 + s2 * h2 * sub.axis2
                           for s1 in (-1.0, 1.0) for s2 in (-1.0, 1.0)], dim=1)
    boxes = torch.where(finite.unsqueeze(-1), _finite_boxes((corners - o) @ R, K64),
                        _plane_boxes(coef[:, 0], torch.sign(num), height, width))
    ranges = _pixel_ranges(boxes, height, width)

    coef, num, cuv = coef.to(dtype), num.to(dtype), cuv.to(dtype)
    half = torch.stack((sub.half1, sub.half2), -1).to(dtype)
    us = torch.arange(width, device=device, dtype=dtype).unsqueeze(-1)
    vs = torch.arange(height, device=device, dtype=dtype).unsqueeze(-1)
    zbuf = torch.full((height, width), float('inf'), device=device, dtype=dtype)
    ibuf = torch.full((height, width), -1, device=device, dtype=torch.long)
    for k, (r0, r1, c0, c1) in enumerate(ranges):
        if r0 > r1 or c0 > c1:
            continue
        col = us[c0:c1 + 1] * coef[k, :, 0]                                # (w, 3)
        row = vs[r0:r1 + 1] * coef[k, :, 1] + coef[k, :, 2]                # (h, 3)
        D = row.unsqueeze(1) + col.unsqueeze(0)                            # (h, w, 3)
        t = num[k] / D[..., 0]
        uv = torch.addcmul(cuv[k], t.unsqueeze(-1), D[..., 1:])
        zb = zbuf[r0:r1 + 1, c0:c1 + 1]
        ok = (t > 1e-6) & (uv.abs() <= half[k]).all(-1) & (t < zb)
        zb.copy_(torch.where(ok, t, zb))
        ib = ibuf[r0:r1 + 1, c0:c1 + 1]
        ib.copy_(torch.where(ok, keep[k], ib))
    return zbuf, ibuf
