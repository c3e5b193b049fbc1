"""
Sliding-window bundle adjustment of keyframe poses and point inverse depths.

The VO's keyframes see the same tracked points over several keyframes. This module refines
the poses of the last keyframes and the depths of the points they share by minimising the
reprojection error of every observation (Triggs et al., "Bundle adjustment - a modern
synthesis", 2000), as ORB-SLAM's local BA and DSO's windowed optimisation do:

- each point is parameterised by its inverse depth ``rho`` along its ray in its *anchor*
  keyframe (the first window keyframe that saw it): one unknown per point, so the normal
  equations have a diagonal point block and the Schur complement is a cheap per-point rank-1
  update (Engel et al., DSO, PAMI 2018);
- a pose is ``T_world_cam`` with a left perturbation ``T <- exp(xi) T``, ``xi = [rho, phi]``
  (the convention of :mod:`trianflow_ros.vo.covariance`);
- the oldest ``fixed`` keyframes are held (``fixed = 2`` fixes the gauge *and* the scale of a
  monocular window);
- Levenberg-Marquardt with a Huber loss on the pixel residual norm.

Pixels are pinhole (undistorted). Everything runs in float64 on the inputs' device; not
differentiable (a solver).
"""

from dataclasses import dataclass

import torch

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.lie import hat
from trianflow_ros.geometry.se3 import se3_exp


@dataclass
class WindowResult:
    """
    Result of :func:`window_adjust`.

    :param T_world: (F, 4, 4) refined poses (the fixed ones unchanged).
    :param rho: (P,) refined inverse depths in the anchor frames (> 0).
    :param residual_px: (O,) final reprojection error of every observation (px).
    :param cost_before: robust cost before the first iteration.
    :param cost_after: robust cost after the last accepted iteration.
    :param iterations: accepted iterations.
    """

    T_world: torch.Tensor
    rho: torch.Tensor
    residual_px: torch.Tensor
    cost_before: float
    cost_after: float
    iterations: int


def _residuals(T_world, K, rays, rho, anchor, obs_point, obs_frame, obs_u):
    """Projected pixels, residuals and the camera-frame points of every observation."""
    a = anchor[obs_point]
    Pa = rays[obs_point] / rho[obs_point, None]                           # (O, 3) anchor cam
    Ta, Ti = T_world[a], T_world[obs_frame]
    Pw = (Ta[:, :3, :3] @ Pa.unsqueeze(-1)).squeeze(-1) + Ta[:, :3, 3]
    Riw = Ti[:, :3, :3].transpose(1, 2)
    Pi = (Riw @ (Pw - Ti[:, :3, 3]).unsqueeze(-1)).squeeze(-1)
    Ki = K[obs_frame]
    z = Pi[:, 2].clamp(min=1e-9)
    u = torch.stack((Ki[:, 0, 0] * Pi[:, 0] / z + Ki[:, 0, 1] * Pi[:, 1] / z + Ki[:, 0, 2],
                     Ki[:, 1, 1] * Pi[:, 1] / z + Ki[:, 1, 2]), -1)
    return u - obs_u, Pw, Pi, Riw


def _robust(r: torch.Tensor, huber_px: float):
    """Huber cost and IRLS weights of residual vectors (O, 2)."""
    n = r.norm(dim=-1)
    w = torch.where(n <= huber_px, torch.ones_like(n), huber_px / n.clamp(min=1e-12))
    cost = torch.where(n <= huber_px, 0.5 * n ** 2, huber_px * (n - 0.5 * huber_px))
    return cost, w


def window_adjust(T_world: torch.Tensor, K: torch.Tensor, anchor: torch.Tensor,
                  u_anchor: torch.Tensor, rho: torch.Tensor, obs_point: torch.Tensor,
                  obs_frame: torch.Tensor, obs_u: torch.Tensor, *, fixed: int = 2,
                  iterations: int = 5, huber_px: float = 1.0, lambda0: float = 1e-3,
                  min_rho: float = 1e-6) -> WindowResult:
    """
    Refine window poses and point inverse depths by Levenberg-Marquardt (module docstring).

    :param T_world: (F, 4, 4) keyframe poses ``T_world_cam``, oldest first.
    :param K: (F, 3, 3) pinhole intrinsics of the keyframes.
    :param anchor: (P,) int64 anchor keyframe of each point.
    :param u_anchor: (P, 2) the point's pixel in its anchor keyframe.
    :param rho: (P,) initial inverse depths in the anchor frames (> 0).
    :param obs_point: (O,) int64 point of each observation (anchor observations excluded).
    :param obs_frame: (O,) int64 keyframe of each observation (never the point's anchor).
    :param obs_u: (O, 2) observed pixels.
    :param fixed: the first ``fixed`` keyframes are held (>= 1; 2 also fixes the scale).
    :param iterations: LM iterations at most.
    :param huber_px: Huber threshold on the residual norm (px).
    :param lambda0: initial LM damping (relative to the diagonal).
    :param min_rho: inverse depths are kept above this.
    :return: :class:`WindowResult`.
    """
    check_shape(T_world, 'T_world', ('F', 4, 4))
    f = T_world.shape[0]
    check_shape(K, 'K', (f, 3, 3))
    check_shape(u_anchor, 'u_anchor', ('P', 2))
    p = u_anchor.shape[0]
    check_shape(anchor, 'anchor', (p,))
    check_shape(rho, 'rho', (p,))
    check_shape(obs_u, 'obs_u', ('O', 2))
    o = obs_u.shape[0]
    check_shape(obs_point, 'obs_point', (o,))
    check_shape(obs_frame, 'obs_frame', (o,))
    if fixed < 1:
        raise ValueError(f'fixed must be >= 1 (the gauge), got {fixed}')
    if bool((obs_frame == anchor[obs_point]).any()):
        raise ValueError("an observation is in its point's anchor keyframe; pass only the "
                         'other observations')
    dt = torch.float64
    T = T_world.to(dt).clone()
    Kd = K.to(dt)
    Kinv = torch.linalg.inv(Kd)
    a_idx = anchor.long()
    ua = torch.cat((u_anchor.to(dt), torch.ones(p, 1, dtype=dt, device=T.device)), -1)
    rays = (Kinv[a_idx] @ ua.unsqueeze(-1)).squeeze(-1)                   # (P, 3)
    rho = rho.to(dt).clamp(min=min_rho).clone()
    op, of, ou = obs_point.long(), obs_frame.long(), obs_u.to(dt)
    free = f - min(fixed, f)
    r, Pw, Pi, Riw = _residuals(T, Kd, rays, rho, a_idx, op, of, ou)
    cost_vec, w = _robust(r, huber_px)
    cost = float(cost_vec.sum())
    cost0 = cost
    if free == 0 or o == 0:
        return WindowResult(T, rho, r.norm(dim=-1), cost0, cost, 0)
    lam = lambda0
    accepted = 0
    for _ in range(iterations):
        # Jacobians of the observation pixel wrt the observing frame, the anchor and rho
        Ki = Kd[of]
        z = Pi[:, 2].clamp(min=1e-9)
        Jpi = torch.zeros(o, 2, 3, dtype=dt, device=T.device)
        Jpi[:, 0, 0] = Ki[:, 0, 0] / z
        Jpi[:, 0, 1] = Ki[:, 0, 1] / z
        Jpi[:, 0, 2] = -(Ki[:, 0, 0] * Pi[:, 0] + Ki[:, 0, 1] * Pi[:, 1]) / z ** 2
        Jpi[:, 1, 1] = Ki[:, 1, 1] / z
        Jpi[:, 1, 2] = -Ki[:, 1, 1] * Pi[:, 1] / z ** 2
        A = torch.cat((torch.eye(3, dtype=dt, device=T.device).expand(o, 3, 3),
                       -hat(Pw)), -1)                                     # dPw / dxi (O, 3, 6)
        JR = Jpi @ Riw                                                    # (O, 2, 3)
        J_i = -(JR @ A)                                                   # (O, 2, 6)
        J_a = JR @ A
        Ta = T[a_idx[op]]
        J_rho = (JR @ (Ta[:, :3, :3] @ (-rays[op] / rho[op, None] ** 2).unsqueeze(-1))
                 ).squeeze(-1)                                            # (O, 2)
        # pose columns: frame k maps to column block k - fixed (fixed frames dropped)
        n = 6 * free
        blocks = [(of - fixed, J_i), (a_idx[op] - fixed, J_a)]
        WJ = [(b, J * w[:, None, None]) for b, J in blocks]
        Hb = torch.zeros(free * free, 6, 6, dtype=dt, device=T.device)
        bp = torch.zeros(free, 6, dtype=dt, device=T.device)
        C = torch.zeros(p, free, 6, dtype=dt, device=T.device)
        for bi, WJi in WJ:
            oki = bi >= 0
            bp.index_add_(0, bi[oki], torch.einsum('oki,ok->oi', WJi[oki], r[oki]))
            C.index_put_((op[oki], bi[oki]), torch.einsum('oki,ok->oi', WJi[oki],
                                                          J_rho[oki]), accumulate=True)
            for bj, Jj in blocks:
                ok = oki & (bj >= 0)
                if bool(ok.any()):
                    Hb.index_add_(0, bi[ok] * free + bj[ok],
                                  torch.einsum('oki,okj->oij', WJi[ok], Jj[ok]))
        Hpp = Hb.reshape(free, free, 6, 6).permute(0, 2, 1, 3).reshape(n, n)
        bp = bp.reshape(n)
        C = C.reshape(p, n)
        h_rho = torch.zeros(p, dtype=dt, device=T.device).index_add_(
            0, op, (w * (J_rho ** 2).sum(-1)))
        b_rho = torch.zeros(p, dtype=dt, device=T.device).index_add_(
            0, op, (w * (J_rho * r).sum(-1)))
        while True:
            h_d = h_rho * (1.0 + lam) + 1e-12
            H = Hpp + lam * torch.diag(torch.diagonal(Hpp)) + 1e-12 * torch.eye(
                n, dtype=dt, device=T.device)
            S = H - (C / h_d[:, None]).T @ C
            g = bp - (C / h_d[:, None]).T @ b_rho
            try:
                dx = -torch.linalg.solve(S, g)
            except RuntimeError:
                lam *= 10.0
                if lam > 1e8:
                    break
                continue
            drho = -(b_rho + C @ dx) / h_d
            xi = dx.reshape(free, 6)
            T_new = T.clone()
            T_new[fixed:] = se3_exp(xi) @ T[fixed:]
            rho_new = (rho + drho).clamp(min=min_rho)
            r_new, Pw_n, Pi_n, Riw_n = _residuals(T_new, Kd, rays, rho_new, a_idx, op, of, ou)
            cost_vec_n, w_n = _robust(r_new, huber_px)
            cost_n = float(cost_vec_n.sum())
            if cost_n < cost:
                T, rho, r, Pw, Pi, Riw, w, cost = T_new, rho_new, r_new, Pw_n, Pi_n, Riw_n, \
                    w_n, cost_n
                lam = max(lam / 10.0, 1e-9)
                accepted += 1
                break
            lam *= 10.0
            if lam > 1e8:
                break
        if lam > 1e8:
            break
    return WindowResult(T, rho, r.norm(dim=-1), cost0, cost, accepted)
