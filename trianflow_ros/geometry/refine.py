"""
Differentiable Levenberg-Marquardt pose refinement on feature-alignment residuals.

The SA4Depth-style refinement (and the BA-Net / PixLoc family of feature-metric alignment):
the pixels x of frame a are lifted with their depth, moved into frame b by the pose and
projected; the features of frame b read there are compared with those of frame a,

    r(x) = F_b(pi(K (R_ba D_a(x) K^-1 x + t_ba))) - F_a(x),              (1)

and the 6-DoF pose T_ba (rotation and translation, the translation's magnitude included: the
depth fixes the scale) minimises the confidence-weighted robust cost

    E(T) = sum_x c(x) rho(|r(x)|^2) / sum_x c(x)                           (2)

over the pixels x that project in front of camera b and inside its image (``rho``: Huber with
``huber`` as the residual-norm threshold; ``c``: the confidence of frame a, 1 when none).

One LM iteration (Madsen, Nielsen & Tingleff, "Methods for non-linear least squares
problems", 2004, Sec. 3.2; Marquardt's diagonal scaling) with iteratively reweighted least
squares weights ``w = c rho'``:

    (J^T W J + lambda diag(J^T W J)) delta = -J^T W r,   T <- exp(delta) T (left update)   (3)

with the Jacobian of (1) w.r.t. the left perturbation ``xi = (rho, phi)`` of :func:`se3_exp`:

    dr/dxi = dF_b/dp * dp/dX_b * [I | -[X_b]_x],                            (4)

``dF_b/dp`` the image gradient of F_b (central differences) read at p. A step is accepted
when it lowers E (and keeps at least ``min_overlap`` of the valid pixels); lambda is divided by
``lambda_down`` after an accepted step and multiplied by ``lambda_up`` after a rejected one.
The decision is a per-element ``torch.where``, never a Python branch, so a batch is refined
in one pass and every element follows exactly the path it would follow alone.

Coarse to fine: the levels are given coarse first; per level the depth is area-averaged over
its valid (positive) pixels to the level's size and K is rescaled (``resize_intrinsics``);
lambda restarts from ``lambda0``. The iteration budget is fixed (``iterations`` per level) and
unrolled, so the result is differentiable w.r.t. the features, the confidence, the depth,
``K`` and the initial pose: gradients flow through the accepted steps (through the normal
equations, the Jacobians and the robust weights). The validity masks and the accept decision
are piecewise constant.

A pose that cannot be improved (no texture, no valid pixel) is returned unchanged: the normal
equations are zero, the damped system is kept SPD by a tiny ridge, and the step is zero.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from trianflow_ros.geometry.camera import backproject_depth, resize_intrinsics
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.se3 import se3_exp
from trianflow_ros.geometry.warp import sample_at

#: Ridge added to the damped normal matrix, relative to its mean diagonal (plus an absolute
#: floor of the same size): keeps the solve SPD with zero texture.
RIDGE = 1e-9


@dataclass
class RefineResult:
    """
    Output of :func:`lm_refine`.

    :ivar T_ba: refined poses (B, 4, 4), dtype of the initial pose. Differentiable.
    :ivar cost_history: per level (coarse first), the cost (2) at the current pose before the
        first and after every iteration, (B, iterations + 1) each; non-increasing within a
        level (costs of different levels are not comparable). Detached.
    :ivar valid_fraction: share of the finest level's pixels that are valid (depth, in front,
        inside) at the refined pose, (B,). Detached.
    :ivar num_accepted: accepted steps over all levels, (B,) int64.
    :ivar initial_cost: cost of the initial pose at the finest level, (B,). Detached.
    :ivar final_cost: cost of the refined pose at the finest level, (B,). Detached.
    """

    T_ba: torch.Tensor
    cost_history: List[torch.Tensor]
    valid_fraction: torch.Tensor
    num_accepted: torch.Tensor
    initial_cost: torch.Tensor
    final_cost: torch.Tensor


def image_gradients(feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Central-difference gradients of features along u (columns) and v (rows).

    Border pixels use the replicated border (a one-sided half difference).

    :param feat: (B, C, H, W).
    :return: dF/du and dF/dv, each (B, C, H, W). Differentiable.
    """
    check_shape(feat, 'feat', ('B', 'C', 'H', 'W'))
    p = F.pad(feat, (1, 1, 1, 1), mode='replicate')
    du = 0.5 * (p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2])
    dv = 0.5 * (p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1])
    return du, dv


def resize_depth(depth: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """
    Area-average a depth map over its valid (finite, positive) pixels.

    :param depth: (B, 1, H, W); 0 or non-finite = unknown.
    :param size: (h, w) of the result.
    :return: (B, 1, h, w), 0 where no valid pixel falls. Differentiable w.r.t. the valid depths.
    """
    check_shape(depth, 'depth', ('B', 1, None, None))
    ok = torch.isfinite(depth) & (depth > 0)
    d = torch.where(ok, depth, torch.zeros_like(depth))
    if tuple(depth.shape[-2:]) == tuple(size):
        return d
    valid = ok.to(depth.dtype)
    num = F.adaptive_avg_pool2d(d, size)
    den = F.adaptive_avg_pool2d(valid, size)
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def image_feature_pyramid(image: torch.Tensor, levels: int = 3, *, normalize: bool = True
                          ) -> List[torch.Tensor]:
    """
    Return fixed (non-learned) features for the refinement: the smoothed image and gradients.

    Level l (0 = full resolution) is the image area-averaged by 2^l, blurred by a 3x3 binomial
    kernel; its channels are the grey value and the two Sobel-like central differences
    (which makes the residual less sensitive to a brightness offset). With ``normalize`` each
    channel is scaled by its standard deviation over the image (an exposure change between
    the frames then changes the features less), and the grey channel is also centred.

    :param image: (B, 3, H, W) RGB in [0, 1] (or (B, 1, H, W) grey).
    :param levels: number of pyramid levels.
    :param normalize: per-image channel normalisation.
    :return: ``levels`` tensors (B, 3, h_l, w_l), COARSE FIRST (the order of
        :func:`lm_refine`). Differentiable.
    """
    check_shape(image, 'image', ('B', None, 'H', 'W'))
    if image.shape[1] == 3:
        grey = (image * image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(
            1, keepdim=True)
    elif image.shape[1] == 1:
        grey = image
    else:
        raise ValueError(f'image must have 1 or 3 channels, got {image.shape[1]}')
    if levels < 1:
        raise ValueError(f'levels must be >= 1, got {levels}')
    k = grey.new_tensor([1.0, 2.0, 1.0])
    kernel = (k[:, None] * k[None, :] / 16.0).view(1, 1, 3, 3)
    out = []
    h, w = grey.shape[-2:]
    for level in range(levels):
        size = (max(1, -(-h // 2 ** level)), max(1, -(-w // 2 ** level)))
        g = grey if level == 0 else F.adaptive_avg_pool2d(grey, size)
        g = F.conv2d(F.pad(g, (1, 1, 1, 1), mode='replicate'), kernel)
        du, dv = image_gradients(g)
        feat = torch.cat((g, du, dv), dim=1)
        if normalize:
            mean = feat.mean(dim=(2, 3), keepdim=True) * feat.new_tensor([1.0, 0.0, 0.0]).view(
                1, 3, 1, 1)
            std = feat.std(dim=(2, 3), keepdim=True) if feat.shape[-2] * feat.shape[-1] > 1 \
                else torch.ones_like(feat[:, :, :1, :1])
            feat = (feat - mean) / (std + 1e-3)
        out.append(feat)
    return out[::-1]


class _Level:
    """Per-level constants: lifted points, reference features, target features + gradients."""

    def __init__(self, feat_a, feat_b, conf, depth, K, size_full, min_depth):
        b, c, h, w = feat_a.shape
        self.h, self.w, self.c = h, w, c
        self.K = resize_intrinsics(K, size_full, (h, w))
        d = resize_depth(depth, (h, w))
        self.X_a = backproject_depth(d, self.K).reshape(b, 3, -1).transpose(1, 2)   # (B,N,3)
        self.valid_a = (d.reshape(b, -1) > min_depth)                             # (B,N)
        self.F_a = feat_a.reshape(b, c, -1).transpose(1, 2)                        # (B,N,C)
        du, dv = image_gradients(feat_b)
        self.target = torch.cat((feat_b, du, dv), dim=1)                           # (B,3C,h,w)
        self.conf = (conf.reshape(b, -1) if conf is not None
                     else torch.ones_like(d.reshape(b, -1)))
        self.num = h * w


def _linearize(T: torch.Tensor, lv: _Level, huber: float, min_depth: float):
    """
    Cost (2), normal matrix, gradient and valid count at pose T.

    :return: cost (B,), H (B, 6, 6), g (B, 6), count (B,) (all normalised by sum c).
    """
    R, t = T[:, :3, :3], T[:, :3, 3]
    X = lv.X_a @ R.transpose(1, 2) + t.unsqueeze(1)                               # (B,N,3)
    z = X[..., 2]
    zs = torch.where(z > min_depth, z, torch.ones_like(z))
    inv_z = 1.0 / zs
    x, y = X[..., 0] * inv_z, X[..., 1] * inv_z
    K = lv.K
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    s, cx, cy = K[:, 0, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]
    u = fx * x + s * y + cx
    v = fy * y + cy
    with torch.no_grad():
        valid = (lv.valid_a & (z > min_depth) & (u >= 0) & (u <= lv.w - 1) & (v >= 0)
                 & (v <= lv.h - 1) & torch.isfinite(u) & torch.isfinite(v))
    validf = valid.to(X.dtype)
    p = torch.stack((torch.where(valid, u, torch.zeros_like(u)),
                     torch.where(valid, v, torch.zeros_like(v))), dim=-1)       # (B,N,2)
    sampled = sample_at(lv.target, p, 'zeros', align_corners=True)            # (B,N,3C)
    c = lv.c
    r = sampled[..., :c] - lv.F_a                                             # (B,N,C)
    G = torch.stack((sampled[..., c:2 * c], sampled[..., 2 * c:]), dim=-1)    # (B,N,C,2)
    # robust weights: Huber on |r|, rho(e) with e = |r|^2, w = rho'(e)
    e = (r * r).sum(-1)
    d2 = huber * huber
    root = torch.sqrt(torch.clamp(e, min=d2))
    rho = torch.where(e <= d2, e, 2.0 * huber * root - d2)
    w_rob = huber / root                                                      # 1 where e <= d2
    cw = lv.conf * validf                                                     # (B,N)
    norm = cw.sum(-1).clamp(min=1e-12)                                        # (B,)
    w = cw * w_rob / norm.unsqueeze(-1)
    cost = (cw * rho).sum(-1) / norm
    # (4): projection Jacobian rows a_u, a_v w.r.t. X_b, then [a | X_b x a] per row
    zero = torch.zeros_like(inv_z)
    a_u = torch.stack((fx * inv_z, s * inv_z, -(fx * x + s * y) * inv_z), dim=-1)    # (B,N,3)
    a_v = torch.stack((zero, fy * inv_z, -fy * y * inv_z), dim=-1)
    Xs = torch.where(valid.unsqueeze(-1), X, torch.zeros_like(X))
    J_u = torch.cat((a_u, torch.cross(Xs, a_u, dim=-1)), dim=-1)              # (B,N,6)
    J_v = torch.cat((a_v, torch.cross(Xs, a_v, dim=-1)), dim=-1)
    Jp = torch.stack((J_u, J_v), dim=-2)                                      # (B,N,2,6)
    A = G.transpose(-1, -2) @ G                                               # (B,N,2,2)
    gr = (G * r.unsqueeze(-1)).sum(-2)                                        # (B,N,2)
    b, n = w.shape
    Jw = (Jp * w[:, :, None, None]).reshape(b, 2 * n, 6)
    Hm = Jw.transpose(1, 2) @ (A @ Jp).reshape(b, 2 * n, 6)                 # (B,6,6)
    g = (Jw.transpose(1, 2) @ gr.reshape(b, 2 * n, 1)).squeeze(-1)           # (B,6)
    return cost, Hm, g, validf.sum(-1)


def _as_levels(iterations: Union[int, Sequence[int]], levels: int) -> List[int]:
    if isinstance(iterations, int):
        return [iterations] * levels
    its = [int(i) for i in iterations]
    if len(its) != levels:
        raise ValueError(f'iterations must be an int or one count per level ({levels}), '
                         f'got {list(iterations)}')
    return its


def lm_refine(T_init: torch.Tensor, feats_a: Sequence[torch.Tensor],
              feats_b: Sequence[torch.Tensor], depth_a: torch.Tensor, K: torch.Tensor,
              conf_a: Optional[Sequence[torch.Tensor]] = None, *,
              iterations: Union[int, Sequence[int]] = 5, lambda0: float = 1e-2,
              lambda_up: float = 10.0, lambda_down: float = 10.0, lambda_min: float = 1e-6,
              lambda_max: float = 1e4, huber: float = 0.25, min_depth: float = 1e-3,
              min_overlap: float = 0.5) -> RefineResult:
    """
    Refine T_ba by damped Gauss-Newton (LM) on feature-alignment residuals (module doc).

    :param T_init: initial poses T_ba (B, 4, 4), mapping points of frame a into frame b.
    :param feats_a: features of frame a per level, COARSE FIRST, each (B, C_l, h_l, w_l).
    :param feats_b: features of frame b, the same shapes.
    :param depth_a: depth of frame a along z at full resolution (B, 1, H, W); 0 or non-finite
        = unknown (those pixels are skipped).
    :param K: intrinsics at full resolution (B, 3, 3); rescaled to every level.
    :param conf_a: confidence of frame a's pixels per level, each (B, 1, h_l, w_l), >= 0;
        None = 1 everywhere.
    :param iterations: LM iterations per level (int for all, or one per level).
    :param lambda0: initial damping at every level.
    :param lambda_up: factor on lambda after a rejected step.
    :param lambda_down: divisor of lambda after an accepted step.
    :param lambda_min: lower bound of lambda.
    :param lambda_max: upper bound of lambda.
    :param huber: Huber threshold on the residual norm |r| (feature units).
    :param min_depth: points closer than this (in frame a or b) are invalid.
    :param min_overlap: a step is rejected when it keeps fewer than this share of the
        currently valid pixels (moving the scene out of view is no improvement).
    :return: :class:`RefineResult`. Differentiable w.r.t. T_init, the features, the
        confidence, the depth and K (through the unrolled accepted steps).
    """
    check_shape(T_init, 'T_init', ('B', 4, 4))
    bsz = T_init.shape[0]
    if len(feats_a) == 0 or len(feats_a) != len(feats_b):
        raise ValueError(f'feats_a and feats_b must be non-empty lists of equal length, got '
                         f'{len(feats_a)} and {len(feats_b)}')
    check_shape(depth_a, 'depth_a', (bsz, 1, None, None))
    check_shape(K, 'K', (bsz, 3, 3))
    if conf_a is not None and len(conf_a) != len(feats_a):
        raise ValueError(f'conf_a must have one map per level ({len(feats_a)}), '
                         f'got {len(conf_a)}')
    for i, (fa, fb) in enumerate(zip(feats_a, feats_b)):
        check_shape(fa, f'feats_a[{i}]', (bsz, None, None, None))
        if fb.shape != fa.shape:
            raise ValueError(f'feats_b[{i}] must have the shape of feats_a[{i}] '
                             f'{tuple(fa.shape)}, got {tuple(fb.shape)}')
        if conf_a is not None:
            check_shape(conf_a[i], f'conf_a[{i}]', (bsz, 1) + tuple(fa.shape[-2:]))
    its = _as_levels(iterations, len(feats_a))
    dtype = feats_a[0].dtype
    size_full = tuple(depth_a.shape[-2:])
    T = T_init.to(dtype)
    Kd, depth = K.to(dtype), depth_a.to(dtype)
    eye = torch.eye(6, dtype=dtype, device=T.device).expand(bsz, 6, 6)
    history: List[torch.Tensor] = []
    accepted_total = torch.zeros(bsz, dtype=torch.int64, device=T.device)
    initial_cost = final_cost = count = None
    for level, n_it in enumerate(its):
        lv = _Level(feats_a[level], feats_b[level],
                    None if conf_a is None else conf_a[level], depth, Kd, size_full, min_depth)
        cost, Hm, g, count = _linearize(T, lv, huber, min_depth)
        if level == len(its) - 1:
            initial_cost = _linearize(T_init.to(dtype), lv, huber, min_depth)[0].detach()
        lam = torch.full((bsz,), float(lambda0), dtype=dtype, device=T.device)
        costs = [cost.detach()]
        for _ in range(n_it):
            diag = torch.diag_embed(Hm.diagonal(dim1=-2, dim2=-1))
            ridge = RIDGE * (Hm.diagonal(dim1=-2, dim2=-1).mean(-1) + 1.0)
            Hd = Hm + lam[:, None, None] * diag + ridge[:, None, None] * eye
            delta = torch.linalg.solve(Hd, -g.unsqueeze(-1)).squeeze(-1)          # (B,6)
            delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
            T_new = se3_exp(delta) @ T
            cost_n, H_n, g_n, count_n = _linearize(T_new, lv, huber, min_depth)
            accept = ((cost_n < cost) & torch.isfinite(cost_n)
                      & (count_n >= min_overlap * count) & (count_n > 0))
            acc3 = accept[:, None, None]
            T = torch.where(acc3, T_new, T)
            Hm = torch.where(acc3, H_n, Hm)
            g = torch.where(accept[:, None], g_n, g)
            cost = torch.where(accept, cost_n, cost)
            count = torch.where(accept, count_n, count)
            lam = torch.where(accept, lam / lambda_down, lam * lambda_up).clamp(
                lambda_min, lambda_max)
            accepted_total = accepted_total + accept.long()
            costs.append(cost.detach())
        history.append(torch.stack(costs, dim=1))
        final_cost = cost.detach()
        valid_fraction = (count / lv.num).detach()
    return RefineResult(T_ba=T.to(T_init.dtype), cost_history=history,
                        valid_fraction=valid_fraction, num_accepted=accepted_total,
                        initial_cost=initial_cost, final_cost=final_cost)
