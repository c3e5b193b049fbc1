"""
Homographies and the pure-rotation model: weighted DLT, errors, batched RANSAC.

Two image relations of dimension 2 in the joint image space R^4 live here:

- the general plane-induced homography ``x2 ~ H x1`` (8 DoF; H&Z Ch. 4 and Sec. 13.1), estimated
  by the normalised direct linear transform (H&Z Alg. 4.2) from 4-point minimal sets;
- the pure-rotation homography ``x2 ~ K2 R_21 K1^-1 x1`` (3 DoF; the infinite homography of H&Z
  Sec. 13.4), estimated as the rotation between unit rays (Wahba's problem, solved with
  the SVD of Kabsch/Umeyama) from 2-point minimal sets.

Both RANSAC estimators draw every hypothesis of every batch element at once, score them with the
MSAC truncated-quadratic cost (Torr & Zisserman 2000) on the one-sided transfer error in pixels
(the same error as ``cv2.findHomography``) and refine the best one by a few rounds of weighted
re-fitting on its inliers (local optimisation, Chum et al. 2003).

Conventions: pixels ``(u, v)`` with u = column, integer at pixel centres; point sets (B, N, 2);
``R_21`` maps rays of camera 1 into camera 2 (``b2 = R_21 b1``), as ``T_21`` maps points of frame 1
into frame 2. Randomness only through a ``torch.Generator``; same seed, same result.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from trianflow_ros.geometry.camera import to_homogeneous, unproject
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.msac import Estimator, ransac, Threshold

_EPS = 1e-12


@dataclass
class RansacFit:
    """
    Result of a batched robust fit (homography or pure rotation).

    :ivar model: the best model per batch element, shape (B, 3, 3): H with ``x2 ~ H x1`` for
        :func:`ransac_homography`, ``R_21`` for :func:`ransac_rotation`.
    :ivar inliers: points whose transfer error is below the threshold and whose weight is
        positive, shape (B, N), bool.
    :ivar num_inliers: ``inliers.sum(-1)``, shape (B,), int64.
    :ivar score: MSAC score ``sum_i w_i (1 - min(e_i^2 / t^2, 1))`` of the model (higher is
        better; a perfect inlier of weight 1 counts 1), shape (B,).
    """

    model: torch.Tensor
    inliers: torch.Tensor
    num_inliers: torch.Tensor
    score: torch.Tensor


# --------------------------------------------------------------------------------------------
# Direct linear transform
# --------------------------------------------------------------------------------------------

def _normalising_transform(x: torch.Tensor, w: torch.Tensor):
    """
    Hartley normalisation (H&Z Sec. 4.4.4): weighted centroid to 0, mean distance to sqrt(2).

    :param x: points (B, N, 2); :param w: weights (B, N).
    :return: the normalised points (B, N, 2), the scale s (B,) and the centroid c (B, 2).
    """
    wsum = w.sum(-1, keepdim=True).clamp(min=_EPS)                            # (B, 1)
    c = (w.unsqueeze(-1) * x).sum(1) / wsum                                   # (B, 2)
    d = (x - c.unsqueeze(1)).norm(dim=-1)                                     # (B, N)
    mean_d = ((w * d).sum(-1) / wsum.squeeze(-1)).clamp(min=_EPS)             # (B,)
    s = (2.0 ** 0.5) / mean_d
    return (x - c.unsqueeze(1)) * s[:, None, None], s, c


def homography_dlt(x1: torch.Tensor, x2: torch.Tensor,
                   weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Fit homographies ``x2 ~ H x1`` with the normalised, weighted DLT (H&Z Alg. 4.2).

    Each correspondence gives the two rows of H&Z eq. (4.3) (with w' = 1) in Hartley-normalised
    coordinates; ``h`` minimises ``sum_i w_i ||A_i h||^2`` subject to ``||h|| = 1``, i.e. it is the
    eigenvector of ``A^T W A`` (9 x 9) of the smallest eigenvalue. The result is de-normalised
    (``H = T2^-1 H~ T1``), scaled to unit Frobenius norm and signed so that ``det(H) > 0``.

    Needs at least 4 points of positive weight in general position (no 3 collinear); with
    fewer, the returned H is arbitrary (no error is raised, so that RANSAC can score it away).

    Differentiable with respect to ``x1``, ``x2`` and ``weights`` (through ``eigh``; gradients
    are finite while the two smallest eigenvalues of ``A^T W A`` are distinct, i.e. the fit is
    unique).

    :param x1: pixel coordinates in image 1, shape (B, N, 2), N >= 4.
    :param x2: matching pixel coordinates in image 2, shape (B, N, 2).
    :param weights: non-negative per-point weights, shape (B, N); None means all ones.
    :return: H, shape (B, 3, 3).
    """
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', ('B', 'N', 2))
    if x1.shape != x2.shape:
        raise ValueError(f'x1 and x2 must have the same shape, got {tuple(x1.shape)} and '
                         f'{tuple(x2.shape)}')
    if weights is None:
        weights = torch.ones_like(x1[..., 0])
    check_shape(weights, 'weights', (x1.shape[0], x1.shape[1]))
    w = weights.to(x1.dtype)
    p1, s1, c1 = _normalising_transform(x1, w)
    p2, s2, c2 = _normalising_transform(x2, w)
    A = _dlt_rows(p1, p2)                                                     # (B, N, 2, 9)
    Aw = A * w[..., None, None]
    M = torch.einsum('bnri,bnrj->bij', Aw, A)                                 # (B, 9, 9)
    _, vecs = torch.linalg.eigh(M)
    return _denormalise(vecs[..., 0].reshape(-1, 3, 3), s1, c1, s2, c2)


def homography_4pt(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """
    Return the homographies ``x2 ~ H x1`` through 4 correspondences each (the minimal case).

    The same normalised DLT as :func:`homography_dlt` (equal to it up to rounding), but the
    8 equations of 4 points are solved directly with ``H~[2, 2] = 1`` (an 8 x 8 linear solve
    instead of the eigen-decomposition of a 9 x 9 matrix: ~6x faster for a RANSAC's batch of
    sets). In Hartley-normalised coordinates ``H~[2, 2] = 0`` would send the points' centroid
    to infinity; for such a set (and for a degenerate one: 3 collinear points) the returned H
    is zero, which RANSAC scores away. Differentiable (through the solve).

    :param x1: pixel coordinates in image 1, shape (B, 4, 2).
    :param x2: matching pixel coordinates in image 2, shape (B, 4, 2).
    :return: H, shape (B, 3, 3), unit Frobenius norm, ``det(H) > 0``.
    """
    check_shape(x1, 'x1', ('B', 4, 2))
    check_shape(x2, 'x2', (x1.shape[0], 4, 2))
    w = torch.ones_like(x1[..., 0])
    p1, s1, c1 = _normalising_transform(x1, w)
    p2, s2, c2 = _normalising_transform(x2, w)
    A = _dlt_rows(p1, p2).reshape(-1, 8, 9)
    h, info = torch.linalg.solve_ex(A[..., :8], -A[..., 8:])                 # (B, 8, 1)
    Hn = torch.cat((h[..., 0], torch.ones_like(h[:, :1, 0])), dim=-1).reshape(-1, 3, 3)
    H = _denormalise(Hn, s1, c1, s2, c2)
    ok = (info == 0) & torch.isfinite(H).flatten(1).all(-1)
    return torch.where(ok[:, None, None], H, torch.zeros_like(H))


def _dlt_rows(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Return the two DLT rows of every correspondence (H&Z eq. 4.3, w' = 1): (B, N, 2, 9)."""
    u, v = p1[..., 0], p1[..., 1]                                             # (B, N)
    u2, v2 = p2[..., 0], p2[..., 1]
    one, zero = torch.ones_like(u), torch.zeros_like(u)
    # [0^T, -x^T, v' x^T] and [x^T, 0^T, -u' x^T] with x = (u, v, 1)
    row1 = torch.stack((zero, zero, zero, -u, -v, -one, v2 * u, v2 * v, v2), dim=-1)
    row2 = torch.stack((u, v, one, zero, zero, zero, -u2 * u, -u2 * v, -u2), dim=-1)
    return torch.stack((row1, row2), dim=2)


def _denormalise(Hn: torch.Tensor, s1: torch.Tensor, c1: torch.Tensor, s2: torch.Tensor,
                 c2: torch.Tensor) -> torch.Tensor:
    """``H = T2^-1 Hn T1`` (T = [[s, 0, -s c], [0, s, -s c], [0, 0, 1]]), unit norm, det > 0."""
    T1 = _similarity(s1, -s1[:, None] * c1)
    T2inv = _similarity(1.0 / s2, c2)
    H = T2inv @ Hn @ T1
    H = H / H.flatten(1).norm(dim=-1).clamp(min=_EPS)[:, None, None]
    sign = torch.where(torch.linalg.det(H) < 0, -1.0, 1.0).to(H.dtype)
    return H * sign[:, None, None]


def _similarity(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Return [[s, 0, t_u], [0, s, t_v], [0, 0, 1]] for scales (B,) and offsets (B, 2)."""
    zero, one = torch.zeros_like(s), torch.ones_like(s)
    return torch.stack((s, zero, t[:, 0], zero, s, t[:, 1], zero, zero, one),
                       dim=-1).reshape(-1, 3, 3)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def _apply_homographies(H: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Map points x (B, N, 2) by hypotheses H (B, M, 3, 3) -> (B, M, N, 2); |w| kept >= eps."""
    y = torch.einsum('bnj,bmij->bmni', to_homogeneous(x), H)                 # (B, M, N, 3)
    z = y[..., 2:]
    z = torch.where(z.abs() < _EPS, torch.where(z < 0, -_EPS, _EPS), z)
    return y[..., :2] / z


def _transfer_errors(H: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """One-sided transfer error of hypotheses H (B, M, 3, 3) -> (B, M, N); non-finite -> inf."""
    # :func:`_apply_homographies` with the coordinates as planes (B, M, 3, N) and ``hypot``:
    # 1.0 instead of 1.8 ms for 256 hypotheses x 300 points (a norm over a last axis of 2
    # and strided (.., 2) slices were most of it)
    y = torch.einsum('bnj,bmij->bmin', to_homogeneous(x1), H)                # (B, M, 3, N)
    z = y[:, :, 2]
    r = 1.0 / torch.where(z.abs() < _EPS, torch.where(z < 0, -_EPS, _EPS), z)
    e = torch.hypot(x2[..., 0].unsqueeze(1) - y[:, :, 0] * r,
                    x2[..., 1].unsqueeze(1) - y[:, :, 1] * r)
    return e.nan_to_num(nan=float('inf'), posinf=float('inf'))


def transfer_error(H: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                   symmetric: bool = False) -> torch.Tensor:
    """
    Transfer error of correspondences under homographies, in pixels (H&Z Sec. 4.2.2).

    One-sided: ``d(x2, H x1)``, the error in image 2 only (H&Z eq. 4.6; what
    ``cv2.findHomography`` thresholds). Symmetric: ``sqrt(d(x2, H x1)^2 + d(x1, H^-1 x2)^2)``,
    the square root of H&Z's symmetric transfer error (eq. 4.7), so still in pixels.

    Differentiable with respect to all inputs (where ``H x1`` is not at infinity).

    :param H: homographies with ``x2 ~ H x1``, shape (B, 3, 3) (any scale).
    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param symmetric: also add the error of ``H^-1 x2`` in image 1.
    :return: errors in pixels, shape (B, N).
    """
    check_shape(H, 'H', ('B', 3, 3))
    check_shape(x1, 'x1', (H.shape[0], 'N', 2))
    check_shape(x2, 'x2', (H.shape[0], x1.shape[1], 2))
    e2 = (x2 - _apply_homographies(H.unsqueeze(1), x1)[:, 0]).norm(dim=-1)
    if not symmetric:
        return e2
    e1 = (x1 - _apply_homographies(torch.linalg.inv(H).unsqueeze(1), x2)[:, 0]).norm(dim=-1)
    return (e1 * e1 + e2 * e2).sqrt()


def sampson_homography(H: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """
    Sampson error of correspondences under homographies, in pixels (H&Z Sec. 4.2.6).

    The first-order distance, in the joint image space R^4 of ``(u1, v1, u2, v2)``, from a
    correspondence to the variety ``x2 ~ H x1`` (noise in both images):
    ``delta^2 = eps^T (J J^T)^-1 eps`` with ``eps`` the two DLT residuals of H&Z eq. (4.3) and
    ``J`` (2 x 4) their derivatives with respect to the four coordinates . It is
    exact for affine H and invariant to the scale of H. This is the same kind of residual as the
    Sampson distance to an epipolar model, so the two can be compared in a model-selection
    criterion such as GRIC.

    Differentiable with respect to all inputs.

    :param H: homographies with ``x2 ~ H x1``, shape (B, 3, 3).
    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :return: Sampson distances in pixels (not squared), shape (B, N).
    """
    check_shape(H, 'H', ('B', 3, 3))
    check_shape(x1, 'x1', (H.shape[0], 'N', 2))
    check_shape(x2, 'x2', (H.shape[0], x1.shape[1], 2))
    return _sampson_homographies(H.unsqueeze(1), x1, x2)[:, 0].sqrt()


def _sampson_homographies(H: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Squared Sampson error of hypotheses H (B, M, 3, 3) -> (B, M, N); non-finite -> inf."""
    y = torch.einsum('bnj,bmij->bmni', to_homogeneous(x1), H)                # (B, M, N, 3)
    p, q, s = y[..., 0], y[..., 1], y[..., 2]
    u2, v2 = x2[..., 0].unsqueeze(1), x2[..., 1].unsqueeze(1)                 # (B, 1, N)
    h = H.unsqueeze(2)                                                        # (B, M, 1, 3, 3)
    eps1 = v2 * s - q
    eps2 = p - u2 * s
    # J = d(eps1, eps2) / d(u1, v1, u2, v2)
    j11 = v2 * h[..., 2, 0] - h[..., 1, 0]
    j12 = v2 * h[..., 2, 1] - h[..., 1, 1]
    j21 = h[..., 0, 0] - u2 * h[..., 2, 0]
    j22 = h[..., 0, 1] - u2 * h[..., 2, 1]
    # J J^T = [[j11^2 + j12^2 + s^2, j11 j21 + j12 j22], [., j21^2 + j22^2 + s^2]]
    a = j11 * j11 + j12 * j12 + s * s
    b = j11 * j21 + j12 * j22
    c = j21 * j21 + j22 * j22 + s * s
    det = a * c - b * b
    d2 = (c * eps1 * eps1 - 2.0 * b * eps1 * eps2 + a * eps2 * eps2) / det.clamp(min=_EPS)
    return torch.where(torch.isfinite(d2), d2, torch.full_like(d2, float('inf')))


# --------------------------------------------------------------------------------------------
# Pure rotation
# --------------------------------------------------------------------------------------------

def rotation_from_bearings(b1: torch.Tensor, b2: torch.Tensor,
                           weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Fit the rotations ``R`` with ``b2 ~ R b1`` to pairs of rays (Wahba's problem).

    Minimises ``sum_i w_i ||b2_i - R b1_i||^2`` over SO(3) for unit rays: with
    ``M = sum_i w_i b2_i b1_i^T = U S V^T`` the solution is ``R = U diag(1, 1, det(U V^T)) V^T``
    (Kabsch 1976; Umeyama 1991, eq. 39-40). The rays are normalised to unit length first, so any
    non-zero multiples (such as ``K^-1 x``) may be given. Two non-parallel rays determine R.

    Differentiable with respect to all inputs (through the SVD; finite while the singular
    values of M are distinct, i.e. for at least 2 non-parallel rays that are not symmetric).

    :param b1: rays in camera 1, shape (B, N, 3), N >= 2.
    :param b2: matching rays in camera 2, shape (B, N, 3).
    :param weights: non-negative per-ray weights, shape (B, N); None means all ones.
    :return: R = R_21, shape (B, 3, 3), a proper rotation.
    """
    check_shape(b1, 'b1', ('B', 'N', 3))
    check_shape(b2, 'b2', (b1.shape[0], b1.shape[1], 3))
    if weights is None:
        weights = torch.ones_like(b1[..., 0])
    check_shape(weights, 'weights', (b1.shape[0], b1.shape[1]))
    b1 = b1 / b1.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    b2 = b2 / b2.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    M = (b2 * weights.to(b1.dtype).unsqueeze(-1)).transpose(1, 2) @ b1        # (B, 3, 3)
    U, _, Vh = torch.linalg.svd(M)
    d = torch.linalg.det(U @ Vh)
    D = torch.ones_like(M[:, 0])
    D = torch.cat((D[:, :2], torch.where(d < 0, -1.0, 1.0).to(M.dtype).unsqueeze(-1)), dim=-1)
    return U @ (D.unsqueeze(-1) * Vh)


def rotation_homography(R: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor) -> torch.Tensor:
    """
    Return the infinite homography ``K2 R K1^-1`` of a pure rotation (H&Z Sec. 13.4).

    Differentiable.

    :param R: rotations R_21, shape (B, 3, 3).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :return: H with ``x2 ~ H x1``, shape (B, 3, 3).
    """
    check_shape(R, 'R', ('B', 3, 3))
    check_shape(K1, 'K1', (R.shape[0], 3, 3))
    check_shape(K2, 'K2', (R.shape[0], 3, 3))
    return K2 @ R @ torch.linalg.inv(K1)


# --------------------------------------------------------------------------------------------
# Batched RANSAC
# --------------------------------------------------------------------------------------------

def _ransac(solve: Callable[[torch.Tensor], torch.Tensor],
            refit: Callable[[torch.Tensor], torch.Tensor],
            errors: Callable[[torch.Tensor], torch.Tensor],
            weights: torch.Tensor, sample_size: int,
            threshold_px: Union[float, torch.Tensor], num_hypotheses: int, lo_iters: int,
            generator: Optional[torch.Generator]) -> RansacFit:
    """
    Batched MSAC with local optimisation (:func:`~trianflow_ros.geometry.msac.ransac`).

    :param solve: indices (B, H, k) -> models (B, H, 3, 3).
    :param refit: weights (B, N) -> models (B, 3, 3), the weighted least-squares fit.
    :param errors: models (B, M, 3, 3) -> errors in pixels (B, M, N).
    :param weights: sampling / scoring weights (B, N).
    :param threshold_px: inlier threshold, a float or one per batch element (B,).
    """
    b = weights.shape[0]
    thr = torch.as_tensor(threshold_px, dtype=weights.dtype, device=weights.device)
    if thr.dim() == 0:
        thr = thr.expand(b)
    check_shape(thr, 'threshold_px', (b,))
    if not bool((thr > 0).all()):
        raise ValueError(f'threshold_px must be positive, got {threshold_px}')

    def refit_k(w: torch.Tensor) -> torch.Tensor:                            # (B, K, N)
        return refit(w.flatten(0, 1)).unflatten(0, w.shape[:2])

    est = Estimator(sample_size, solve, errors, squared=False, refit=refit_k)
    model, inliers, score = ransac(est, weights, Threshold.of(thr[:, None, None]),
                                   num_hypotheses, lo_iters, generator=generator)
    return RansacFit(model=model, inliers=inliers, num_inliers=inliers.sum(-1), score=score)


def _gather_sets(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Points (B, N, D) and indices (B, H, k) -> (B * H, k, D)."""
    b, h, k = idx.shape
    g = x.gather(1, idx.reshape(b, h * k, 1).expand(-1, -1, x.shape[-1]))
    return g.reshape(b * h, k, x.shape[-1])


def _set_solver(fit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], p1: torch.Tensor,
                p2: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the minimal solver: index sets (B, H, k) -> ``fit`` of their points (B, H, 3, 3)."""
    def solve(idx: torch.Tensor) -> torch.Tensor:
        return fit(_gather_sets(p1, idx), _gather_sets(p2, idx)).reshape(idx.shape[:2] + (3, 3))
    return solve


def _per_model(w: torch.Tensor, *points: torch.Tensor):
    """Points (B, N, D) repeated for the (B * K, N) weights of K models per element."""
    k = w.shape[0] // points[0].shape[0]
    return tuple(p if k == 1 else p.repeat_interleave(k, dim=0) for p in points)


def _check_pairs(x1, x2, weights):
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', (x1.shape[0], x1.shape[1], 2))
    if weights is None:
        return torch.ones_like(x1[..., 0])
    check_shape(weights, 'weights', (x1.shape[0], x1.shape[1]))
    return weights.detach().to(x1.dtype)


def ransac_homography(x1: torch.Tensor, x2: torch.Tensor,
                      weights: Optional[torch.Tensor] = None, *,
                      threshold_px: Union[float, torch.Tensor] = 1.0,
                      num_hypotheses: int = 256, lo_iters: int = 3,
                      generator: Optional[torch.Generator] = None) -> RansacFit:
    """
    Robustly fit homographies ``x2 ~ H x1``: batched MSAC on 4-point DLT minimal sets.

    All ``num_hypotheses`` 4-point sets of all batch elements are drawn (in proportion to the
    weights) and solved at once with :func:`homography_4pt`, scored with MSAC on the one-sided
    transfer error, and the best one is refined ``lo_iters`` times by a weighted DLT on its
    inliers (kept only where the score improves). With an inlier ratio p, a set is clean with
    probability p^4 (0.13 at 40 % outliers: about 33 clean sets among 256).

    Not differentiable (the search runs under ``no_grad``); refit the inliers with
    :func:`homography_dlt` for gradients.

    :param x1: pixel coordinates in image 1, shape (B, N, 2), with >= 4 positive weights.
    :param x2: matching pixel coordinates in image 2, shape (B, N, 2).
    :param weights: non-negative weights, shape (B, N), used for sampling and scoring; zero
        excludes a point (it is never an inlier). None means all ones.
    :param threshold_px: inlier threshold on the transfer error in image 2, pixels: a float or
        one per batch element, shape (B,).
    :param num_hypotheses: minimal sets per batch element.
    :param lo_iters: local-optimisation rounds.
    :param generator: torch.Generator on the points' device, for reproducible results.
    :return: :class:`RansacFit` with ``model`` = H (B, 3, 3).
    """
    w = _check_pairs(x1, x2, weights)
    x1, x2 = x1.detach(), x2.detach()

    return _ransac(_set_solver(homography_4pt, x1, x2),
                   lambda ww: homography_dlt(*_per_model(ww, x1, x2), ww),
                   lambda H: _transfer_errors(H, x1, x2), w, 4, threshold_px,
                   num_hypotheses, lo_iters, generator)


def ransac_rotation(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                    weights: Optional[torch.Tensor] = None, *,
                    threshold_px: Union[float, torch.Tensor] = 1.0,
                    num_hypotheses: int = 128, lo_iters: int = 3,
                    generator: Optional[torch.Generator] = None) -> RansacFit:
    """
    Robustly fit the pure-rotation model ``x2 ~ K2 R_21 K1^-1 x1``: batched MSAC, 2-point sets.

    Pixels are lifted to unit rays ``K^-1 x``; each 2-point set gives a rotation with
    :func:`rotation_from_bearings`; hypotheses are scored with MSAC on the one-sided transfer
    error in pixels of the induced homography :func:`rotation_homography`, and the best one is
    refined ``lo_iters`` times on its inliers. A set is clean with probability p^2 (0.36 at
    40 % outliers), so 128 sets are plenty.

    Not differentiable (the search runs under ``no_grad``); refit the inliers with
    :func:`rotation_from_bearings` for gradients.

    :param x1: pixel coordinates in image 1, shape (B, N, 2), with >= 2 positive weights.
    :param x2: matching pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param weights: as :func:`ransac_homography`; so are ``threshold_px`` (on the transfer
        error of the induced homography), ``num_hypotheses``, ``lo_iters`` and ``generator``.
    :return: :class:`RansacFit` with ``model`` = R_21 (B, 3, 3).
    """
    w = _check_pairs(x1, x2, weights)
    check_shape(K1, 'K1', (x1.shape[0], 3, 3))
    check_shape(K2, 'K2', (x1.shape[0], 3, 3))
    x1, x2, K1, K2 = x1.detach(), x2.detach(), K1.detach().to(x1.dtype), K2.detach().to(x1.dtype)
    b1, b2 = unproject(x1, K1), unproject(x2, K2)                             # (B, N, 3)
    K1inv = torch.linalg.inv(K1)

    def errors(R):                                                            # (B, M, 3, 3)
        return _transfer_errors(K2.unsqueeze(1) @ R @ K1inv.unsqueeze(1), x1, x2)

    return _ransac(_set_solver(rotation_from_bearings, b1, b2),
                   lambda ww: rotation_from_bearings(*_per_model(ww, b1, b2), ww),
                   errors, w, 2, threshold_px, num_hypotheses, lo_iters, generator)
