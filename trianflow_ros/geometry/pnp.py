"""
Batched PnP with RANSAC: camera motion from 3D points of frame 1 and their pixels in frame 2.

TrianFlow's VO falls back to PnP when the flow is too small for the essential matrix (standstill,
pure rotation) or when the scale cannot be recovered: the points come from back-projecting the
predicted depth of frame 1, their pixels in frame 2 from the flow.

Pipeline, all hypotheses of all batch elements as one tensor computation:

1. Minimal sets of 6 points, DLT for P = [R | t] in normalised image coordinates with data
   normalisation (H&Z Sec. 7.1 and 4.4.4); the left 3x3 block is projected to SO(3) by
   SVD and its mean singular value fixes the scale of t. The DLT is degenerate for coplanar
   points (H&Z Sec. 7.1), so when the points are (nearly) planar every second hypothesis comes
   from a 4-point homography to the best-fit plane instead (H&Z Alg. 4.2; R, t from H as in
   Zhang, "A flexible new technique for camera calibration", PAMI 2000). The identity pose is
   always added as one more hypothesis (exact for standstill, a start for small motions).
2. MSAC scoring (truncated squared reprojection error in pixels; points behind the camera cost
   the full threshold); the best hypothesis wins.
3. Levenberg-Marquardt on se(3) (left perturbation) of the same truncated cost, started from
   the best hypothesis and from the identity (the lower final cost wins): every step solves the
   normal equations of the current inliers and is kept only if the cost drops; the truncation
   starts at 8x the threshold and halves each step down to the threshold.

The minimal solvers and the refinement work in float64, the scoring of all hypotheses in the
input dtype (at least float32); the result has the input dtype. Not differentiable.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from trianflow_ros.geometry.camera import unproject
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.msac import Estimator, hypothesise, Threshold
from trianflow_ros.geometry.sampling import msac_score
from trianflow_ros.geometry.se3 import make_pose, se3_exp

MIN_POINTS = 6
PLANAR_FLATNESS = 0.1   # spread off the best-fit plane / in-plane spread below which H is tried
#: The hypotheses are ranked on at most this many points (drawn by weight, without
#: replacement); the refinement and the final inliers use all. Scoring 257 hypotheses on 4000
#: map points took 127 of PnP's 198 ms per VAMR frame.
SCORE_POINTS = 1024
_EPS_Z = 1e-6


@dataclass
class PnPResult:
    """
    Result of :func:`pnp_ransac`.

    :param T_21: pose mapping frame-1 points into frame 2, shape (B, 4, 4); identity where
        ``success`` is False.
    :param inliers: points with reprojection error below the threshold, shape (B, N) bool.
    :param num_inliers: number of inliers, shape (B,) int64.
    :param success: enough valid points and inliers and a finite pose, shape (B,) bool.
    """

    T_21: torch.Tensor
    inliers: torch.Tensor
    num_inliers: torch.Tensor
    success: torch.Tensor


def _similarity_normalisation(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """
    Return T (B, D+1, D+1) moving the valid points' centroid to 0, mean distance sqrt(D).

    H&Z Sec. 4.4.4; points (B, N, D), valid (B, N).
    """
    d = points.shape[-1]
    w = valid.to(points.dtype).unsqueeze(-1)
    count = w.sum(dim=1).clamp(min=1.0)                                      # (B, 1)
    centroid = (points * w).sum(dim=1) / count                               # (B, D)
    dist = ((points - centroid.unsqueeze(1)).norm(dim=-1, keepdim=True) * w).sum(dim=1) / count
    s = (d ** 0.5) / dist.clamp(min=1e-12)                                   # (B, 1)
    T = torch.zeros(points.shape[0], d + 1, d + 1, dtype=points.dtype, device=points.device)
    T[:, :d, :d] = s.unsqueeze(-1) * torch.eye(d, dtype=points.dtype, device=points.device)
    T[:, :d, d] = -s * centroid
    T[:, d, d] = 1.0
    return T


def _dlt_poses(X: torch.Tensor, y: torch.Tensor, T3: torch.Tensor, T2: torch.Tensor
               ) -> torch.Tensor:
    """
    Solve x ~ [R | t] X from 6 correspondences per hypothesis (DLT, H&Z Sec. 7.1, eq. 7.2).

    :param X: normalised 3D points, shape (B, H, 6, 3).
    :param y: normalised image points, shape (B, H, 6, 2).
    :param T3: 3D normalisation (B, 4, 4); T2: 2D normalisation (B, 3, 3).
    :return: poses (B, H, 4, 4) in the original coordinates.
    """
    b, h, k, _ = X.shape
    Xh = torch.cat((X, torch.ones_like(X[..., :1])), dim=-1)                 # (B, H, k, 4)
    zero = torch.zeros_like(Xh)
    row_u = torch.cat((Xh, zero, -y[..., :1] * Xh), dim=-1)                  # (B, H, k, 12)
    row_v = torch.cat((zero, Xh, -y[..., 1:] * Xh), dim=-1)
    A = torch.cat((row_u, row_v), dim=-2)                                    # (B, H, 2k, 12)
    _, vecs = torch.linalg.eigh(A.transpose(-1, -2) @ A)                     # ascending
    P = vecs[..., 0].reshape(b, h, 3, 4)
    P = torch.linalg.inv(T2).unsqueeze(1) @ P @ T3.unsqueeze(1)             # (B, H, 3, 4)
    M = P[..., :3]
    sign = torch.where(torch.linalg.det(M) < 0, -1.0, 1.0).to(P.dtype)
    P = P * sign[..., None, None]
    U, S, Vh = torch.linalg.svd(P[..., :3])
    fix = torch.ones_like(S)
    fix[..., 2] = torch.linalg.det(U @ Vh)
    R = U @ (fix.unsqueeze(-1) * Vh)
    t = P[..., 3] / S.mean(dim=-1, keepdim=True).clamp(min=1e-12)
    T = make_pose(R.reshape(-1, 3, 3), t.reshape(-1, 3)).reshape(b, h, 4, 4)
    finite = torch.isfinite(T).all(dim=-1).all(dim=-1)
    eye = torch.eye(4, dtype=T.dtype, device=T.device)
    return torch.where(finite[..., None, None], T, eye)


def _plane_frame(X: torch.Tensor, valid: torch.Tensor):
    """
    Best-fit plane of the valid points (B, N, 3): centroid (B, 3), axes Q (B, 3, 3), flatness.

    Q's columns are the principal directions, largest first, with q3 = q1 x q2; flatness is
    the spread along the normal over the spread along the second axis (0 for a plane).
    """
    w = valid.to(X.dtype).unsqueeze(-1)
    c = (X * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
    D = (X - c.unsqueeze(1)) * w
    evals, evecs = torch.linalg.eigh(D.transpose(1, 2) @ D)                  # ascending
    q1, q2 = evecs[..., 2], evecs[..., 1]
    Q = torch.stack((q1, q2, torch.cross(q1, q2, dim=-1)), dim=-1)
    flatness = (evals[..., 0].clamp(min=0.0) / evals[..., 1].clamp(min=1e-30)).sqrt()
    return c, Q, flatness


def _homography_poses(a: torch.Tensor, y: torch.Tensor, c: torch.Tensor, Q: torch.Tensor,
                      Ta: torch.Tensor, T2: torch.Tensor) -> torch.Tensor:
    """
    Poses from 4 points on a plane per hypothesis (planar PnP through a homography).

    y ~ H (a, b, 1)^T with H ~ [R q1, R q2, R c + t] (as in Zhang's plane-based calibration,
    PAMI 2000): the 4-point DLT (H&Z Alg. 4.2) gives H; its first two columns, scaled to unit
    length on average, give R Q after projection onto SO(3).

    :param a: normalised plane coordinates, shape (B, H, 4, 2).
    :param y: normalised image points, shape (B, H, 4, 2).
    :param c: plane centroid (B, 3); Q: plane axes (B, 3, 3).
    :param Ta: plane-coordinate normalisation (B, 3, 3); T2: image normalisation (B, 3, 3).
    :return: poses (B, H, 4, 4).
    """
    b, h = a.shape[:2]
    p = torch.cat((a, torch.ones_like(a[..., :1])), dim=-1)                  # (B, H, 4, 3)
    zero = torch.zeros_like(p)
    row_1 = torch.cat((zero, -p, y[..., 1:] * p), dim=-1)                    # (B, H, 4, 9)
    row_2 = torch.cat((p, zero, -y[..., :1] * p), dim=-1)
    A = torch.cat((row_1, row_2), dim=-2)                                    # (B, H, 8, 9)
    _, vecs = torch.linalg.eigh(A.transpose(-1, -2) @ A)
    Hm = vecs[..., 0].reshape(b, h, 3, 3)
    Hm = torch.linalg.inv(T2).unsqueeze(1) @ Hm @ Ta.unsqueeze(1)           # (B, H, 3, 3)
    # the plane centroid (a = 0) must lie in front of camera 2: (H e3)_z > 0
    sign = torch.where(Hm[..., 2, 2] < 0, -1.0, 1.0).to(Hm.dtype)
    Hm = Hm * sign[..., None, None]
    lam = 0.5 * (Hm[..., 0].norm(dim=-1) + Hm[..., 1].norm(dim=-1)).clamp(min=1e-12)
    r1, r2 = Hm[..., 0] / lam[..., None], Hm[..., 1] / lam[..., None]
    M = torch.stack((r1, r2, torch.cross(r1, r2, dim=-1)), dim=-1)           # ~ R Q
    U, _, Vh = torch.linalg.svd(M)
    fix = torch.ones_like(M[..., 0])
    fix[..., 2] = torch.linalg.det(U @ Vh)
    R = U @ (fix.unsqueeze(-1) * Vh) @ Q.transpose(1, 2).unsqueeze(1)         # (B, H, 3, 3)
    t = Hm[..., 2] / lam[..., None] - (R @ c[:, None, :, None]).squeeze(-1)
    T = make_pose(R.reshape(-1, 3, 3), t.reshape(-1, 3)).reshape(b, h, 4, 4)
    finite = torch.isfinite(T).all(dim=-1).all(dim=-1)
    return torch.where(finite[..., None, None], T, torch.eye(4, dtype=T.dtype, device=T.device))


def _transform(T: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """
    Camera-2 points of X (B, N, 3) under poses T (B, H, 4, 4): shape (B, N, H, 3).

    One batched matrix product against all hypotheses' rotations stacked side by side.
    """
    b, h = T.shape[:2]
    Rt = T[:, :, :3, :3].transpose(-1, -2).permute(0, 2, 1, 3).reshape(b, 3, h * 3)
    return (X @ Rt).reshape(b, X.shape[1], h, 3) + T[:, None, :, :3, 3]


def _pixels(Xc: torch.Tensor, K: torch.Tensor):
    """Pixels (..., 2) and normalised coordinates of camera points Xc (B, ..., 3)."""
    shape = (K.shape[0],) + (1,) * (Xc.dim() - 2)
    iz = 1.0 / Xc[..., 2].clamp(min=_EPS_Z)
    xn, yn = Xc[..., 0] * iz, Xc[..., 1] * iz
    fx, s, cx = K[:, 0, 0].reshape(shape), K[:, 0, 1].reshape(shape), K[:, 0, 2].reshape(shape)
    fy, cy = K[:, 1, 1].reshape(shape), K[:, 1, 2].reshape(shape)
    return fx * xn + s * yn + cx, fy * yn + cy, xn, yn, iz


def _outlier_inf(err2: torch.Tensor, front: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """
    Squared errors (B, N, H), ``inf`` for points behind camera 2 or invalid.

    ``inf`` makes a point an outlier of every threshold by construction (the MSAC quality
    clamps it to the threshold).
    """
    return torch.where(front & valid.unsqueeze(-1), err2, float('inf'))


def _quality(err2: torch.Tensor, front: torch.Tensor, valid: torch.Tensor,
             thr2: float) -> torch.Tensor:
    """
    MSAC quality (B, H) of squared errors and in-front flags (B, N, H), valid points (B, N).

    Points behind camera 2 are outliers; invalid points do not count.
    """
    return msac_score(_outlier_inf(err2, front, valid), thr2,
                      valid.unsqueeze(-1).to(err2.dtype), dim=1)


def _pose_errors(T: torch.Tensor, X: torch.Tensor, x: torch.Tensor, K: torch.Tensor):
    """Squared reprojection errors and in-front flags (B, N, H) of poses T (B, H, 4, 4)."""
    Xc = _transform(T, X)                                                    # (B, N, H, 3)
    u, v, _, _, _ = _pixels(Xc, K)
    err2 = (u - x[..., :1]) ** 2 + (v - x[..., 1:]) ** 2                      # (B, N, H)
    return err2, Xc[..., 2] > _EPS_Z


def _pose_quality(T: torch.Tensor, X: torch.Tensor, x: torch.Tensor, K: torch.Tensor,
                  valid: torch.Tensor, thr2: float):
    """
    MSAC quality of poses T (B, H, 4, 4): shape (B, H); also squared errors and in-front (B, N, H).

    Higher is better (see :func:`_quality`).
    """
    err2, front = _pose_errors(T, X, x, K)
    return _quality(err2, front, valid, thr2), err2, front


def _lm_refine(T: torch.Tensor, X: torch.Tensor, x: torch.Tensor, K: torch.Tensor,
               valid: torch.Tensor, thr2: float, iters: int) -> torch.Tensor:
    """
    Levenberg-Marquardt on the MSAC cost over left se(3) perturbations, batched.

    T has shape (B, H, 4, 4): H independent candidates per element are refined at once. The
    truncation starts at 8x the threshold and halves every iteration down to the threshold
    (a graduated schedule: a noisy minimal-set hypothesis has few inliers at the final
    threshold, but most of them within a few pixels).
    """
    b, h = T.shape[:2]
    lam = torch.full((b, h), 1e-4, dtype=T.dtype, device=T.device)
    eye6 = torch.eye(6, dtype=T.dtype, device=T.device)
    for k in range(iters):
        thr2_k = thr2 * max(1.0, 8.0 / 2 ** k) ** 2
        Xc = _transform(T, X)                                                # (B, N, H, 3)
        u, v, xn, yn, iz = _pixels(Xc, K)
        ru, rv = u - x[..., :1], v - x[..., 1:]
        err2 = ru ** 2 + rv ** 2
        front = Xc[..., 2] > _EPS_Z
        quality = _quality(err2, front, valid, thr2_k)
        inl = (valid.unsqueeze(-1) & front & (err2 < thr2_k)).to(T.dtype)   # (B, N, H)
        # d(normalised point)/d(rho, phi) for X' <- X' + rho + phi x X' (closed form)
        zero = torch.zeros_like(iz)
        jx = torch.stack((iz, zero, -xn * iz, -xn * yn, 1.0 + xn * xn, -yn), dim=-1)
        jy = torch.stack((zero, iz, -yn * iz, -(1.0 + yn * yn), xn * yn, xn), dim=-1)
        shape = (b, 1, 1, 1)
        ju = K[:, 0, 0].reshape(shape) * jx + K[:, 0, 1].reshape(shape) * jy
        jv = K[:, 1, 1].reshape(shape) * jy                                  # (B, N, H, 6)
        J = torch.cat((ju, jv), dim=1) * torch.cat((inl, inl), dim=1).unsqueeze(-1)
        r = torch.cat((ru, rv), dim=1)                                       # (B, 2N, H)
        J = J.permute(0, 2, 1, 3)                                            # (B, H, 2N, 6)
        Hm = J.transpose(-1, -2) @ J                                         # (B, H, 6, 6)
        g = J.transpose(-1, -2) @ r.permute(0, 2, 1).unsqueeze(-1)           # (B, H, 6, 1)
        damp = lam[..., None, None] * torch.diag_embed(Hm.diagonal(dim1=-2, dim2=-1))
        delta = -torch.linalg.solve(Hm + damp + 1e-12 * eye6, g).squeeze(-1)
        delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)
        T_new = (se3_exp(delta.reshape(-1, 6)) @ T.reshape(-1, 4, 4)).reshape(b, h, 4, 4)
        quality_new, _, _ = _pose_quality(T_new, X, x, K, valid, thr2_k)
        accept = quality_new >= quality
        T = torch.where(accept[..., None, None], T_new, T)
        lam = torch.where(accept, lam * 0.1, lam * 10.0).clamp(1e-10, 1e6)
    return T


def _score_subset(w: torch.Tensor, valid: torch.Tensor, m: int,
                  generator: Optional[torch.Generator]) -> torch.Tensor:
    """
    Return the indices (B, M) of the points that rank the hypotheses.

    All points when N <= 2 m, else m drawn by weight without replacement (Gumbel top-k keys
    log w + G; invalid points only where fewer than m are valid).
    """
    b, n = w.shape
    if n <= 2 * m:
        return torch.arange(n, device=w.device).expand(b, n)
    u = torch.rand(b, n, generator=generator, device=w.device, dtype=torch.float64)
    gumbel = -(-u.clamp(min=1e-300).log()).log()
    keys = torch.where(valid & (w > 0), w.clamp(min=1e-300).log() + gumbel, -torch.inf)
    return keys.topk(m, dim=1).indices


def pnp_ransac(X1: torch.Tensor, x2: torch.Tensor, K: torch.Tensor,
               weights: Optional[torch.Tensor] = None, *, threshold_px: float = 1.0,
               num_hypotheses: int = 256, refine_iters: int = 10,
               generator: Optional[torch.Generator] = None,
               min_inliers: int = MIN_POINTS) -> PnPResult:
    """
    Estimate T_21 from 3D points of frame 1 and their pixels in frame 2 (PnP + MSAC + LM).

    :param X1: points in camera 1 (e.g. back-projected predicted depth), shape (B, N, 3).
    :param x2: their pixels in image 2, shape (B, N, 2).
    :param K: intrinsics of camera 2, shape (B, 3, 3).
    :param weights: optional non-negative weights (B, N): 0 excludes a point, positive values
        are sampling probabilities for the minimal sets.
    :param threshold_px: inlier threshold on the reprojection error, pixels.
    :param num_hypotheses: minimal-set hypotheses per batch element (6-point DLT; half of them
        4-point homographies when the points are nearly planar); the identity is added.
    :param refine_iters: Levenberg-Marquardt iterations on the inliers.
    :param generator: torch.Generator on the inputs' device, for reproducible sampling.
    :param min_inliers: fewer final inliers than this -> ``success`` False.
    :return: :class:`PnPResult`. Points with non-finite values or depth <= 0 in frame 1 never
        count. Elements with fewer than 6 such points, too few inliers or a non-finite pose get
        ``success`` False and the identity. Not differentiable.
    """
    check_shape(X1, 'X1', ('B', 'N', 3))
    b, n, _ = X1.shape
    check_shape(x2, 'x2', (b, n, 2))
    check_shape(K, 'K', (b, 3, 3))
    if weights is not None:
        check_shape(weights, 'weights', (b, n))
    out_dtype, device = X1.dtype, X1.device
    X = X1.detach().double()
    x = x2.detach().double()
    Kd = K.detach().double()
    valid = torch.isfinite(X).all(-1) & torch.isfinite(x).all(-1) & (X[..., 2] > 0)
    if weights is not None:
        valid = valid & torch.isfinite(weights) & (weights > 0)
    enough = valid.sum(dim=1) >= MIN_POINTS
    eye = torch.eye(4, dtype=torch.float64, device=device).expand(b, 4, 4)
    thr2 = float(threshold_px) ** 2
    if n < MIN_POINTS or not bool(enough.any()):
        none = torch.zeros(b, n, dtype=torch.bool, device=device)
        return PnPResult(T_21=eye.to(out_dtype).clone(), inliers=none,
                         num_inliers=none.sum(dim=1), success=none.any(dim=1))
    X = torch.where(valid.unsqueeze(-1), X, X.new_tensor([0.0, 0.0, 1.0]))
    x = torch.where(valid.unsqueeze(-1), x, torch.zeros_like(x))
    y = unproject(x, Kd)[..., :2]                                            # (B, N, 2)

    # 1. hypotheses: 6-point DLT on normalised data (+ homographies if planar, + the identity)
    T3 = _similarity_normalisation(X, valid)
    T2 = _similarity_normalisation(y, valid)
    Xn = X @ T3[:, :3, :3].transpose(1, 2) + T3[:, None, :3, 3]
    yn = y @ T2[:, :2, :2].transpose(1, 2) + T2[:, None, :2, 2]
    w = valid.double() if weights is None else torch.where(valid, weights.double(), 0.0)
    w = torch.where(enough.unsqueeze(1), w, torch.ones_like(w))              # dummy rows
    bi = torch.arange(b, device=device)[:, None, None]
    # (near-)planar scenes: every second hypothesis from a 4-point homography instead
    c, Q, flatness = _plane_frame(X, valid)
    planar = flatness < PLANAR_FLATNESS
    if bool(planar.any()):
        a = ((X - c.unsqueeze(1)) @ Q)[..., :2]                              # (B, N, 2)
        Ta = _similarity_normalisation(a, valid)
        an = a @ Ta[:, :2, :2].transpose(1, 2) + Ta[:, None, :2, 2]

    def solve(idx: torch.Tensor) -> torch.Tensor:                            # (B, H, 6)
        hyps = _dlt_poses(Xn[bi, idx], yn[bi, idx], T3, T2)                  # (B, H, 4, 4)
        if bool(planar.any()):
            sets = idx[..., :4]
            hom = _homography_poses(an[bi, sets], yn[bi, sets], c, Q, Ta, T2)
            use = planar[:, None] & (torch.arange(idx.shape[1], device=device) % 2 == 0)
            hyps = torch.where(use[..., None, None], hom, hyps)
        return torch.cat((hyps, eye.unsqueeze(1)), dim=1)

    # 2. MSAC scoring of every hypothesis at once, in the input precision (at least float32):
    #    the (B, N, H) tensors dominate the cost, and float32 pixels are exact to ~1e-4 px
    sd = torch.promote_types(out_dtype, torch.float32)
    sub = _score_subset(w, valid, SCORE_POINTS, generator)                  # (B, M)
    Xs, xs, Ks = X[bi[..., 0], sub].to(sd), x[bi[..., 0], sub].to(sd), Kd.to(sd)
    vs = valid[bi[..., 0], sub]

    def residuals(T: torch.Tensor) -> torch.Tensor:                          # (B, H, M)
        err2, front = _pose_errors(T.to(sd), Xs, xs, Ks)
        return _outlier_inf(err2, front, vs).transpose(1, 2)

    est = Estimator(MIN_POINTS, solve, residuals)
    hyps = hypothesise(est, w, vs.to(sd), Threshold(thr2), num_hypotheses,
                       generator=generator)
    best = hyps.models[torch.arange(b, device=device), hyps.quality.argmax(dim=1)]  # (B, 4, 4)

    # 3. LM refinement of the truncated cost, from the best hypothesis and from the identity
    starts = torch.stack((best, eye), dim=1)                                 # (B, 2, 4, 4)
    refined = _lm_refine(starts, X, x, Kd, valid, thr2, refine_iters)
    quality, err2, front = _pose_quality(refined, X, x, Kd, valid, thr2)
    pick = quality.argmax(dim=1)                                             # (B,)
    ar = torch.arange(b, device=device)
    T = refined[ar, pick]
    inliers = valid & front[ar, :, pick] & (err2[ar, :, pick] < thr2)
    num = inliers.sum(dim=1)
    success = enough & (num >= max(min_inliers, 1)) & torch.isfinite(T).all(-1).all(-1)
    T = torch.where(success[:, None, None], T, eye)
    inliers = inliers & success.unsqueeze(1)
    return PnPResult(T_21=T.to(out_dtype), inliers=inliers, num_inliers=inliers.sum(dim=1),
                     success=success)
