"""
Robust Levenberg-Marquardt refinement of an essential matrix over (R, t) on the Sampson distance.

The final polish of :func:`~trianflow_ros.geometry.ransac.ransac_essential` (H&Z Sec. 11.4.3,
A6.2): E = [t]_x R with R updated by right increments and the unit t by two tangent-plane
increments (Cayley retraction), a Cauchy loss whose scale follows the noise of the pair, Newton
weights of the loss and early termination; for large point sets, iterations on a subset and one
step on all points. Its tuning constants are fields of the config section ``geometry.ransac``
(:class:`~trianflow_ros.config.RansacConfig`: ``refine_step``, ``refine_tol``, ``scale_min``,
``refine_points``, ``subset_tol``).
"""

from typing import Optional, Tuple

import torch

from trianflow_ros.config import RansacConfig
from trianflow_ros.geometry.lie import skew
from trianflow_ros.geometry.sampson import _residuals, _sampson_features, _sampson_rows


# I and the generators [e_k]_x of so(3), (4, 3, 3)
_E_GENERATORS = torch.cat((torch.eye(3, dtype=torch.float64)[None],
                           skew(torch.eye(3, dtype=torch.float64))))
_W90 = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

# the LM step (omega, delta) (B, 5) -> the rotation increments of R and of the frame
# F = [b1, b2, t] of t, (B, 2, 3): F exp([(-delta_2, delta_1, 0)]_x) moves t by b1 delta_1 +
# b2 delta_2 to first order
_STEP_MAP = torch.zeros(5, 6, dtype=torch.float64)
_STEP_MAP[0, 0], _STEP_MAP[1, 1], _STEP_MAP[2, 2] = 1.0, 1.0, 1.0
_STEP_MAP[3, 4], _STEP_MAP[4, 3] = 1.0, -1.0


def _cayley(phi: torch.Tensor) -> torch.Tensor:
    """
    Rotations (I - [phi/2]_x)^-1 (I + [phi/2]_x) of increments phi (..., 3), (..., 3, 3).

    The Cayley map agrees with the exponential map to second order in phi, so it serves as the
    retraction of the Gauss-Newton steps (their Jacobians are those of the exponential) at a
    handful of tensor operations, and its result is exactly orthonormal. Closed form with
    a = phi / 2: I + 2 ([a]_x + [a]_x^2) / (1 + |a|^2).
    """
    a = phi * 0.5
    W = skew(a)
    k = 2.0 / (1.0 + a.square().sum(-1))
    return torch.eye(3, dtype=phi.dtype, device=phi.device) + k[..., None, None] * (W + W @ W)


def _tangent_frame(t: torch.Tensor) -> torch.Tensor:
    """Rotations [b1, b2, t] (B, 3, 3) whose last column is the unit vector t (B, 3)."""
    eye = torch.eye(3, dtype=t.dtype, device=t.device)
    a = torch.where(t[:, :1].abs() > 0.9, eye[1], eye[0])
    b1 = a - (a * t).sum(-1, keepdim=True) * t
    b1 = b1 / b1.norm(dim=-1, keepdim=True)
    return torch.stack((b1, torch.linalg.cross(t, b1), t), dim=-1)


def _sampson_rt(RF: torch.Tensor, W: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor, c2,
                w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Robust cost and Gauss-Newton system of the Sampson residuals of E = [t]_x R.

    With r = e / s, e = y2^T E y1 and s^2 = |L2 (E y1)_{1,2}|^2 + |L1 (E^T y2)_{1,2}|^2, every
    derivative of E is a matrix Q_k: E [e_k]_x for R exp([omega]_x) and [b_k]_x R for
    t + b1 delta_1 + b2 delta_2, so de_k = y2^T Q_k y1. e, the five de_k, s^2 and the five
    s ds_k come from ONE matrix product with the point features (:func:`_sampson_rows`). The
    exact Jacobian is dr = (de - r ds) / s (the denominator term matters near the epipole).

    :param RF: R and the frame [b1, b2, t] of t, shape (B, 2, 3, 3).
    :param W: :func:`_sampson_features` of the points, shape (B, 17, N).
    :param L1: K1^-1[:2, :2]^T, shape (B, 2, 2).
    :param L2: K2^-1[:2, :2]^T, shape (B, 2, 2).
    :param c2: squared Cauchy scale, a float or (B, 1).
    :param w: point weights (B, N).
    :return: Cauchy cost sum_i w_i log(1 + r_i^2 / c2) (B,), the Gauss-Newton matrix
        J W_N J^T (B, 5, 5) with the Newton weights of the loss W_N, the gradient
        J W_I r (B, 5) with its IRLS weights W_I, and the residuals r (B, N).
    """
    SR = skew(RF[:, 1].transpose(1, 2)) @ RF[:, :1]                      # [b1]x R, [b2]x R, E
    # E, E [e_k]_x (k = 1, 2, 3), [b1]x R, [b2]x R
    Q = torch.cat((SR[:, 2:] @ _E_GENERATORS.to(SR), SR[:, :2]), dim=1)   # (B, 6, 3, 3)
    P = _sampson_rows(Q, L1, L2) @ W                                      # (B, 12, N)
    num, sds = P[:, :6], P[:, 6:]                                         # e, de_k; s^2, s ds_k
    inv_s = sds[:, 0].clamp_(min=1e-30).rsqrt_()                          # (B, N)
    r = num[:, 0] * inv_s
    # J = (de - r ds) / s, in place in the s ds rows
    J = sds[:, 1:].mul_((r * inv_s).neg_().unsqueeze(1)).add_(num[:, 1:]).mul_(inv_s.unsqueeze(1))
    q = r.square() / c2
    cost = (w * torch.log1p(q)).sum(-1)                                   # Cauchy loss
    # Newton weights of the Cauchy loss, w (1 - q) / (1 + q)^2 (the IRLS weight w / (1 + q)
    # plus the loss curvature, floored at 0), converge much faster than plain IRLS
    iq = (1.0 + q).reciprocal_()
    wiq = w * iq
    hw = wiq * iq * (1.0 - q).clamp_(min=0.0)
    g = (J @ (wiq * r).unsqueeze(-1)).squeeze(-1)
    J.mul_(hw.sqrt_().unsqueeze(1))
    H = J @ J.transpose(1, 2)
    return cost, H, g, r


def _sampson_rt_residuals(E: torch.Tensor, W: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor
                          ) -> torch.Tensor:
    """Signed pixel Sampson distances (B, N) of E (B, 3, 3) on the point features W."""
    P = _sampson_rows(E.unsqueeze(1), L1, L2) @ W                         # (B, 2, N)
    return P[:, 0] * P[:, 1].clamp(min=1e-30).rsqrt_()


def _levenberg_marquardt(RF, W, L1, L2, c2, w, iters, step_tol, refine_tol):
    """LM iterations of :func:`refine_essential` on the point features W; returns RF."""
    cost, H, g, _ = _sampson_rt(RF, W, L1, L2, c2, w)
    lam = torch.full_like(cost, 1e-3)
    eye = torch.eye(5, dtype=RF.dtype, device=RF.device)
    step_map = _STEP_MAP.to(RF)
    for _ in range(iters):
        damp = lam[:, None, None] * (H * eye + 1e-9 * eye)
        step = torch.linalg.solve_ex(H + damp, -g)[0]       # singular: non-finite, rejected
        RF_new = RF @ _cayley((step @ step_map).reshape(-1, 2, 3))
        if bool((step.norm(dim=1) < step_tol).all()):
            # converged: a step this small is taken without evaluating it
            return RF_new
        cost_new, H_new, g_new, _ = _sampson_rt(RF_new, W, L1, L2, c2, w)
        better = cost_new < cost        # False for a non-finite cost
        done = ((cost_new - cost).abs() <= refine_tol * cost) | ~torch.isfinite(cost_new)
        RF = torch.where(better[:, None, None, None], RF_new, RF)
        H = torch.where(better[:, None, None], H_new, H)
        g = torch.where(better[:, None], g_new, g)
        cost = torch.where(better, cost_new, cost)
        lam = torch.where(better, lam * 0.1, lam * 10.0).clamp_(1e-9, 1e6)
        if bool(done.all()):
            break
    return RF


def _final_step(RF, W, L1, L2, c2, w):
    """
    One Gauss-Newton step of :func:`refine_essential`, kept per pair if it lowers the cost.

    :return: the model RF and its signed Sampson distances (B, N) on the points.
    """
    cost, H, g, r = _sampson_rt(RF, W, L1, L2, c2, w)
    eye = torch.eye(5, dtype=RF.dtype, device=RF.device)
    step = torch.linalg.solve_ex(H + 1e-9 * (H * eye + eye), -g)[0]
    RF_new = RF @ _cayley((step @ _STEP_MAP.to(RF)).reshape(-1, 2, 3))
    r_new = _sampson_rt_residuals(skew(RF_new[:, 1, :, 2]) @ RF_new[:, 0], W, L1, L2)
    better = (w * torch.log1p(r_new.square() / c2)).sum(-1) <= cost
    return (torch.where(better[:, None, None, None], RF_new, RF),
            torch.where(better[:, None], r_new, r))


def refine_essential(E: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor,
                     L2: torch.Tensor, w: torch.Tensor, scale_px: float, iters: int = 8,
                     noise_scale: float = 0.0, params: Optional[RansacConfig] = None
                     ) -> torch.Tensor:
    """
    Robust Levenberg-Marquardt refinement of E = [t]_x R on the pixel Sampson distance.

    Minimises sum_i w_i log(1 + r_i^2 / c^2) (Cauchy loss, scale c) over R (right increments
    R exp([omega]_x)) and the unit translation t (two tangent-plane increments), where r_i is
    the signed pixel Sampson distance (H&Z eq. 11.9), with its exact Jacobian (denominator
    included) and Cauchy IRLS weights (iteratively reweighted Gauss-Newton with Levenberg
    damping, H&Z A6.2; the Gauss-Newton matrix carries the curvature of the loss, weights
    w (1 - q) / (1 + q)^2 floored at 0, q = r^2 / c^2, which converges in a few iterations).
    Steps are applied with the Cayley map (a second-order retraction). All pairs are refined
    at once; a step is kept per pair only if it lowers that pair's cost (then the damping
    shrinks, else it grows). With at least 2 ``refine_points`` points, the iterations run on
    every k-th point (k = N // ``refine_points``) and stop at ``subset_tol`` times the step
    tolerance; one Gauss-Newton step on all points (kept if it lowers their cost) follows:
    from that close to the optimum it lands on it far below the noise, at the cost of one
    evaluation on all points instead of several.

    :param E: initial essential matrices in ray coordinates, shape (B, 3, 3).
    :param y1: rays K1^-1 [x1, 1], channels-first, shape (B, 3, N).
    :param y2: rays K2^-1 [x2, 1], channels-first, shape (B, 3, N).
    :param L1: K1^-1[:2, :2]^T, shape (B, 2, 2).
    :param L2: K2^-1[:2, :2]^T, shape (B, 2, 2).
    :param w: point weights, shape (B, N).
    :param scale_px: Cauchy scale c in pixels; with ``noise_scale`` > 0, its upper bound.
    :param iters: at most this many LM iterations; they stop once every pair's step is below
        ``refine_step`` times its median Sampson distance over the focal length (the noise
        level; a noise-free pair runs all of them) or its cost no longer changes.
    :param noise_scale: if > 0, the Cauchy scale of each pair is ``noise_scale`` times the
        median Sampson distance of E over the weighted points (a robust estimate of the noise),
        clamped to [``scale_px`` * ``scale_min``, ``scale_px``].
    :param params: the tuning constants (:class:`~trianflow_ros.config.RansacConfig`; None:
        the defaults).
    :return: refined E = [t]_x R / sqrt(2) (unit Frobenius norm), shape (B, 3, 3).
        Not differentiable.
    """
    return _refine(E, y1, y2, L1, L2, w, scale_px, iters, noise_scale,
                   RansacConfig() if params is None else params)[0]


def _refine(E, y1, y2, L1, L2, w, scale_px, iters, noise_scale, params: RansacConfig,
            r2=None, W=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """
    Run :func:`refine_essential`; also return the signed Sampson distances of the result.

    :param r2: squared pixel Sampson distances (B, N) of E on the points, if known.
    :param W: :func:`_sampson_features` of y1, y2, if known.
    :return: E (B, 3, 3) and its signed pixel Sampson distances (B, N) on all the points when
        they were computed on the way (the final step on all points), else None.
    """
    # one (R, t) of E (H&Z Result 9.19): R = U W V^T made proper, t = u3; any of the four
    # candidates gives the same E up to sign, which the Sampson distance does not see
    U, _, Vh = torch.linalg.svd(E)
    R = U @ _W90.to(E) @ Vh
    R = R * torch.linalg.det(R).sign()[:, None, None]
    RF = torch.stack((R, _tangent_frame(U[:, :, 2])), dim=1)              # (B, 2, 3, 3)
    # stop once a step is far below the noise: refine_step times the median Sampson distance
    # (pixels) over the focal length (pixels), i.e. a fraction of the angular noise of a ray
    if r2 is None:
        e, den = _residuals(E, y1[:, :, ::8], y2[:, :, ::8], L1, L2)
        r2 = e.square() / den
    else:
        r2 = r2[:, ::8]
    sigma = torch.where(w[:, ::8] > 0, r2, float('nan')).nanmedian(dim=1).values.sqrt_()
    sigma = sigma.nan_to_num(nan=float(scale_px))
    # only the points of positive weight (padded with zero weights to the batch's largest
    # count) when that saves enough to pay for the gather
    used = w > 0
    m = int(used.sum(1).max())
    gathered = m < 0.75 * w.shape[1]
    if gathered:
        keep = torch.argsort((~used).to(torch.int8), dim=1, stable=True)[:, :max(m, 1)]
        y1 = torch.gather(y1, 2, keep.unsqueeze(1).expand(-1, 3, -1))
        y2 = torch.gather(y2, 2, keep.unsqueeze(1).expand(-1, 3, -1))
        w = torch.gather(w, 1, keep)
    if gathered or W is None:
        W = _sampson_features(y1, y2)
    inv_f = (L1.det().abs() * L2.det().abs()) ** 0.25                    # 1 / focal, (B,)
    step_tol = params.refine_step * sigma * inv_f
    c2 = float(scale_px) ** 2
    if noise_scale > 0:
        c = (noise_scale * sigma).clamp(min=scale_px * params.scale_min, max=scale_px)
        c2 = c.square().unsqueeze(1)
    k = W.shape[-1] // params.refine_points
    r = None
    if k < 2:
        RF = _levenberg_marquardt(RF, W, L1, L2, c2, w, iters, step_tol, params.refine_tol)
    else:
        # the iterations on every k-th point, then one step on all of them (from so close to
        # their optimum, one Gauss-Newton step reaches it to well below the noise)
        RF = _levenberg_marquardt(RF, W[:, :, ::k].contiguous(), L1, L2, c2,
                                  w[:, ::k].contiguous(), iters, step_tol * params.subset_tol,
                                  params.refine_tol)
        RF, r = _final_step(RF, W, L1, L2, c2, w)
    return skew(RF[:, 1, :, 2]) @ RF[:, 0] / (2.0 ** 0.5), None if gathered else r
