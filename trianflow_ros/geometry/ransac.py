"""
Batched LO-MSAC estimation of fundamental and essential matrices from correspondences.

Every hypothesis of every batch element is generated and scored with tensor work (no Python
loop per hypothesis or per pair); only the adaptive sampling, the local optimisation and the final
refinement iterate. Hypotheses come from the normalised 8-point algorithm (H&Z Alg. 11.1) or, for
E, the five-point solver on random minimal sets, drawn in small chunks until the standard RANSAC
bound for the best inlier ratio so far is met (H&Z Sec. 4.7.1); they are ranked with a truncated
quadratic (MSAC, Torr & Zisserman 2000) of the Sampson distance in pixels (H&Z eq. 11.9) on a
random subset of the points, and the best ones are refined by Sampson-reweighted 8-point fits on
their inliers with a shrinking threshold (LO-RANSAC, Chum et al. 2003; for E on a random subset
of large point sets). The essential matrix is finally refined on all points near the model by
robust Gauss-Newton over (R, t) on the Sampson distance (H&Z Sec. 11.4.3, A6.2), with the
curvature of the robust loss and early termination.

Internally point sets are channels-first, (B, 3, N) homogeneous, which keeps the per-point
arithmetic in contiguous rows. References are to Hartley & Zisserman, 2nd ed. (H&Z).
"""

from dataclasses import dataclass
import math
from typing import Optional, Tuple

import torch

from trianflow_ros.geometry.camera import to_homogeneous
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.epipolar import (_design_matrix, _fix_sign, enforce_rank2,
                                             five_point, normalize_points,
                                             project_to_essential)
from trianflow_ros.geometry.pose import decompose_essential
from trianflow_ros.geometry.sampling import sample_minimal_sets
from trianflow_ros.geometry.se3 import skew
from trianflow_ros.geometry.threads import one_cpu_thread

MIN_POINTS = 8
SOLUTIONS_PER_SET = 4  # five-point sets = num_hypotheses // SOLUTIONS_PER_SET
LO_SPAN = 16.0      # first local-optimisation threshold, in multiples of the final one
HYP_SPAN = 8.0      # threshold that ranks the minimal-set hypotheses, in multiples of the final
LO_TOPK = 4         # best hypotheses that each get the local optimisation
SCORE_POINTS = 512  # points (drawn by weight) on which all hypotheses are ranked
LO_POINTS = 512    # points (drawn by weight) of the local optimisation (if N > 4x)
CHUNK_SETS = 8      # five-point sets solved per adaptive round
CONFIDENCE = 0.999  # probability of an all-inlier set behind the adaptive stop
COUNT_SPAN = 1.0    # inlier ratio of the adaptive stop: at this many thresholds
REFINE_ROUNDS = 2   # at most this many refinements, each on the points near the previous model
REFINE_CHANGE = 0.01  # another refinement round only if the near set changed by more
REFINE_TOL = 1e-6   # relative cost change that ends the refinement early
REFINE_STEP = 0.5   # refinement stop: step norm (rad) below this * median Sampson / focal
REFINE_SPAN = 2.0   # points within REFINE_SPAN * threshold of the LO model enter the refinement
_GENERATORS = skew(torch.eye(3, dtype=torch.float64))  # [e_k]_x, (3, 3, 3)


@dataclass
class RansacResult:
    """
    Result of a batched robust estimation.

    :param model: F (pixels) or E (calibrated rays), unit Frobenius norm, shape (B, 3, 3);
        zeros where the pair had fewer than 8 usable points.
    :param inliers: points with weight > 0 and Sampson distance below the threshold, (B, N) bool.
    :param num_inliers: number of inliers, shape (B,) int64.
    :param score: MSAC quality sum_i w_i (1 - min(d_i^2, thr^2) / thr^2), a soft inlier count
        in [0, sum w]; exactly 0 flags a failed pair (too few points or no inlier), shape (B,).
    """

    model: torch.Tensor
    inliers: torch.Tensor
    num_inliers: torch.Tensor
    score: torch.Tensor


# --------------------------------------------------------------------------------------------
# helpers on channels-first homogeneous points y (B, 3, N) = A [x, 1], A affine (K^-1 or a
# Hartley similarity). A model M in y coordinates is the pixel-space model F = A2^T M A1, so
# x2^T F x1 = y2^T M y1 and the first two entries of F x1 are L2 (M y1)_{1,2} with
# L = A[:2, :2]^T: the pixel Sampson distance (H&Z eq. 11.9) is evaluated without forming F in
# badly scaled pixel coordinates (and is exact for any K, also fx != fy or skew).
# --------------------------------------------------------------------------------------------

def _dot_rays(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """
    Per-point dot products of a (B, K, 3, N) with homogeneous y (B, 3, N), y[:, 2] = 1.

    Two fused multiply-adds instead of a product and a reduction over a size-3 axis.
    """
    return torch.addcmul(torch.addcmul(a[:, :, 2], a[:, :, 0], y[:, None, 0]),
                         a[:, :, 1], y[:, None, 1])


def _residuals(M: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor,
               L2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Algebraic residuals and squared Sampson denominators of H models per pair, all at once.

    :param M: models in y coordinates, shape (B, H, 3, 3) (or (B, 3, 3) for H = 1, squeezed).
    :param y1: shape (B, 3, N).
    :param y2: shape (B, 3, N).
    :param L1: shape (B, 2, 2).
    :param L2: shape (B, 2, 2).
    :return: e = y2^T M y1 (B, H, N) and |grad e|^2 in pixels (B, H, N): the squared pixel
        Sampson distance is e^2 / den (H&Z eq. 11.9).
    """
    single = M.dim() == 3
    if single:
        M = M.unsqueeze(1)
    b, h = M.shape[:2]
    e = _dot_rays((M.reshape(b, h * 3, 3) @ y1).reshape(b, h, 3, -1), y2)
    G1 = (L2.unsqueeze(1) @ M[:, :, :2]).reshape(b, h * 2, 3)            # rows of (F x1)_{1,2}
    G2 = (L1.unsqueeze(1) @ M.transpose(-1, -2)[:, :, :2]).reshape(b, h * 2, 3)
    den = (G1 @ y1).square_().reshape(b, h, 2, -1).sum(2)
    den += (G2 @ y2).square_().reshape(b, h, 2, -1).sum(2)
    den.clamp_(min=1e-30)
    return (e[:, 0], den[:, 0]) if single else (e, den)


def _kron_rows(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """Per-point Kronecker products Z = y2 (x) y1 (row 3 i + j = y2_i y1_j), (B, 9, N)."""
    return (y2.unsqueeze(2) * y1.unsqueeze(1)).flatten(1, 2)


def _residuals_kron(M: torch.Tensor, Z: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    :func:`_residuals` of models M (B, K, 3, 3) on points given as Z = y2 (x) y1 (B, 9, N).

    With y1[2] = y2[2] = 1, Z holds y1 (rows 6-8) and y2 (rows 2, 5, 8) too, so e and the four
    gradient entries of every model come from one matrix product.
    """
    b, k = M.shape[:2]
    rows = Z.new_zeros(b, 5, k, 9)
    rows[:, 0] = M.reshape(b, k, 9)
    rows[:, 1:3, :, 6:] = (L2.unsqueeze(1) @ M[:, :, :2]).transpose(1, 2)
    rows[:, 3:, :, 2::3] = (L1.unsqueeze(1) @ M.transpose(-1, -2)[:, :, :2]).transpose(1, 2)
    P = (rows.reshape(b, 5 * k, 9) @ Z).view(b, 5, k, -1)
    den = P[:, 1].square()
    for c in range(2, 5):
        den.addcmul_(P[:, c], P[:, c])
    return P[:, 0], den.clamp_(min=1e-30)


def _hypothesis_r2(M: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor,
                   L2: torch.Tensor) -> torch.Tensor:
    """Squared pixel Sampson distances (B, H, S) of models (B, H, 3, 3) on (B, 3, S) points."""
    e, den = _residuals(M, y1, y2, L1, L2)
    return e.square_().div_(den)


def _msac(r2: torch.Tensor, w: torch.Tensor, thr2: float) -> torch.Tensor:
    """MSAC quality sum_i w_i (1 - min(r2_i, thr2) / thr2) of (..., N) residuals -> (...)."""
    return (w * (1.0 - r2.clamp(max=thr2) / thr2)).sum(-1)


def _design_rows(y1n: torch.Tensor, y2n: torch.Tensor) -> torch.Tensor:
    """Rows A_i of the 8-point system (H&Z eq. 11.3), channels-first, shape (B, 9, N)."""
    u1, v1 = y1n[:, 0], y1n[:, 1]
    u2, v2 = y2n[:, 0], y2n[:, 1]
    return torch.stack((u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1,
                        torch.ones_like(u1)), dim=1)


def _normal_matrices(A: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A^T W A (B, K, 9, 9) for K weight vectors w (B, K, N) and rows A (B, 9, N)."""
    return (A.unsqueeze(1) * w.unsqueeze(2)) @ A.transpose(1, 2).unsqueeze(1)


def _axis_normalization(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """
    Affine normalisation with a unit weighted RMS per axis (H&Z Sec. 4.4.4, non-isotropic).

    Wide, flat images (KITTI: 3.3 : 1) leave the v axis badly scaled under isotropic Hartley
    normalisation; scaling the axes separately conditions the 8-point system better.

    :param y: points, channels-first (B, 3, N).
    :param w: weights (B, N).
    :return: T (B, 3, 3) with T y centred and of unit RMS along u and v.
    """
    wn = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    mean = (y[:, :2] * wn.unsqueeze(1)).sum(-1)                           # (B, 2)
    var = ((y[:, :2] - mean.unsqueeze(-1)).square() * wn.unsqueeze(1)).sum(-1)
    scale = var.clamp(min=1e-30).rsqrt()                                  # (B, 2)
    T = torch.zeros(y.shape[0], 3, 3, dtype=y.dtype, device=y.device)
    T[:, 0, 0], T[:, 1, 1], T[:, 2, 2] = scale[:, 0], scale[:, 1], 1.0
    T[:, :2, 2] = -scale * mean
    return T


def _five_point_hypotheses(y1, y2, sy1, sy2, L1f, L2f, sw, sample_w, thr_h2, num_hypotheses,
                           generator):
    """
    Adaptive five-point hypotheses: minimal sets in chunks until the RANSAC bound is met.

    Chunks of ``CHUNK_SETS`` sets (all batch elements at once) are solved and scored on the
    subset (sy1, sy2, sw) until, for every batch element, the number of sets drawn reaches
    log(1 - p) / log(1 - w^5) (H&Z Sec. 4.7.1, p = ``CONFIDENCE``) for the best inlier ratio w
    seen so far (at the ranking threshold), or the cap num_hypotheses // 4 is reached.

    :return: models (B, H, 3, 3), unit Frobenius norm, and their MSAC quality (B, H) on the
        subset (-1 for complex or degenerate roots).
    """
    b = y1.shape[0]
    cap = max(1, num_hypotheses // SOLUTIONS_PER_SET)
    wsum = sw.sum(1).clamp(min=1e-30)
    best_frac = sw.new_zeros(b)
    log_fail = math.log(1.0 - CONFIDENCE)
    all_models, all_quality = [], []
    drawn = 0
    while drawn < cap:
        sets = min(CHUNK_SETS, cap - drawn)
        # five-point sets on the rays (no normalisation: it would break the E structure)
        idx = sample_minimal_sets(sample_w, 5, sets, generator).reshape(b, -1)
        sets1 = torch.gather(y1[:, :2], 2, idx.unsqueeze(1).expand(-1, 2, -1))
        sets2 = torch.gather(y2[:, :2], 2, idx.unsqueeze(1).expand(-1, 2, -1))
        sets1 = sets1.reshape(b, 2, sets, 5).permute(0, 2, 3, 1)            # (B, S, 5, 2)
        sets2 = sets2.reshape(b, 2, sets, 5).permute(0, 2, 3, 1)
        models, valid = five_point(sets1, sets2)                            # (B, S, 10, ...)
        models = models.reshape(b, sets * 10, 3, 3)
        valid = valid.reshape(b, sets * 10)
        models = models / models.flatten(-2).norm(dim=-1).clamp(min=1e-30)[..., None, None]
        r2 = _hypothesis_r2(models.float(), sy1, sy2, L1f, L2f)             # (B, 10 S, P)
        quality = torch.where(valid, _msac(r2, sw.unsqueeze(1), thr_h2), -1.0)
        frac = ((r2 < thr_h2 * (COUNT_SPAN / HYP_SPAN) ** 2).float() @ sw.unsqueeze(-1)
                ).squeeze(-1) / wsum.unsqueeze(1)
        best_frac = torch.maximum(best_frac, torch.where(valid, frac, 0.0).amax(1))
        all_models.append(models)
        all_quality.append(quality)
        drawn += sets
        miss = (1.0 - best_frac.double() ** 5).clamp(1e-12, 1.0 - 1e-12)
        if bool((log_fail / torch.log(miss) <= drawn).all()):
            break
    if len(all_models) == 1:
        return all_models[0], all_quality[0]
    return torch.cat(all_models, 1), torch.cat(all_quality, 1)


def _lo_msac(y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor,
             w: torch.Tensor, threshold_px: float, num_hypotheses: int, lo_iters: int,
             generator: Optional[torch.Generator], essential: bool, five: bool = False
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Shared LO-MSAC core in affine-normalised coordinates y (float64, channels-first).

    :return: the best model (B, 3, 3) in y coordinates and its squared pixel Sampson
        distances (B, N).
    """
    b, _, n = y1.shape
    thr2 = float(threshold_px) ** 2

    def normalize(y1, y2, w):
        # normalisation of the y coordinates (H&Z Alg. 11.1 (i), per axis); models are mapped
        # back with T1, T2 by to_model
        T1, T2 = _axis_normalization(y1, w), _axis_normalization(y2, w)
        return (T1, T2, T1[:, :2, :2] @ y1[:, :2] + T1[:, :2, 2:],       # (B, 2, N)
                T2[:, :2, :2] @ y2[:, :2] + T2[:, :2, 2:])

    T1 = T2 = None
    if not five:
        T1, T2, y1n, y2n = normalize(y1, y2, w)

    def to_model(Fn: torch.Tensor) -> torch.Tensor:
        # back from the normalised coordinates: M = T2^T Fn T1 (H&Z Alg. 11.1 (iv))
        shape = (b,) + (1,) * (Fn.dim() - 3) + (3, 3)
        M = T2.transpose(1, 2).reshape(shape) @ Fn @ T1.reshape(shape)
        M = project_to_essential(M) if essential else enforce_rank2(M)
        return M / M.flatten(-2).norm(dim=-1).clamp(min=1e-30)[..., None, None]

    # 1. hypotheses from random minimal sets, drawn in proportion to the weights
    sample_w = torch.where((w > 0).sum(1, keepdim=True) >= MIN_POINTS, w, torch.ones_like(w))
    sample_w = sample_w.float()
    # a weighted random subset of the points ranks the hypotheses (preemptive scoring), with a
    # wider threshold: rough minimal-set models are tightened by the LO below
    score_points = SCORE_POINTS if five else 2 * SCORE_POINTS
    if n > score_points:
        sub = torch.multinomial(sample_w, score_points, replacement=True, generator=generator)
        sy1 = torch.gather(y1, 2, sub.unsqueeze(1).expand(-1, 3, -1))
        sy2 = torch.gather(y2, 2, sub.unsqueeze(1).expand(-1, 3, -1))
        sw = (torch.gather(w, 1, sub) > 0).float()
    else:
        sy1, sy2, sw = y1, y2, w.float()
    sy1, sy2, L1f, L2f = sy1.float(), sy2.float(), L1.float(), L2.float()
    thr_h2 = thr2 * HYP_SPAN ** 2
    if five:
        models, quality = _five_point_hypotheses(y1, y2, sy1, sy2, L1f, L2f, sw, sample_w,
                                                 thr_h2, num_hypotheses, generator)
    else:
        k = MIN_POINTS
        idx = sample_minimal_sets(sample_w, k, num_hypotheses, generator).reshape(b, -1)
        sets1 = torch.gather(y1n, 2, idx.unsqueeze(1).expand(-1, 2, -1))
        sets2 = torch.gather(y2n, 2, idx.unsqueeze(1).expand(-1, 2, -1))
        sets1 = sets1.reshape(b, 2, num_hypotheses, k).permute(0, 2, 3, 1)   # (B, H, k, 2)
        sets2 = sets2.reshape(b, 2, num_hypotheses, k).permute(0, 2, 3, 1)
        # null vector of each 8 x 9 system (H&Z Alg. 11.1 (ii)): the last column of the
        # complete QR factorisation of A^T, cheaper and better conditioned than A^T A
        Q, _ = torch.linalg.qr(_design_matrix(sets1, sets2).transpose(-1, -2),
                               mode='complete')
        models = to_model(Q[..., 8].reshape(b, num_hypotheses, 3, 3))
        quality = _msac(_hypothesis_r2(models.float(), sy1, sy2, L1f, L2f), sw.unsqueeze(1),
                        thr_h2)
    topk = min(LO_TOPK if five else 2 * LO_TOPK, models.shape[1])
    pick = quality.topk(topk, dim=1).indices
    best = models[torch.arange(b, device=y1.device)[:, None], pick]      # (B, k, 3, 3)

    # 3. local optimisation of the top-k hypotheses of every pair at once: Sampson-reweighted
    # least squares on the inliers of the current model. With weights w_i / |grad_i|^2 the
    # algebraic error (y2^T M y1)^2 (equal for the normalised points) becomes the squared
    # Sampson distance (H&Z Sec. 11.4.3). The inlier threshold shrinks geometrically from
    # LO_SPAN * thr to thr (Lebeda et al. 2012).
    # on a weighted random subset of the points: the final refinement uses all of them
    full = (y1, y2, w)
    if five and n > 4 * LO_POINTS:
        sub = torch.multinomial(sample_w, LO_POINTS, replacement=True, generator=generator)
        y1, y2 = (torch.gather(y, 2, sub.unsqueeze(1).expand(-1, 3, -1)) for y in (y1, y2))
        w = (torch.gather(w, 1, sub) > 0).to(w.dtype)
    T1, T2, y1n, y2n = normalize(y1, y2, w)
    design = _design_rows(y1n, y2n)                                       # (B, 9, N)
    wk = w.unsqueeze(1)
    Z = _kron_rows(y1, y2)
    e, den = _residuals_kron(best, Z, L1, L2)                             # (B, k, N)
    r2 = cur_r2 = e.square() / den
    scores = _msac(r2, wk, thr2)                                          # (B, k)
    for it in range(lo_iters):
        span = LO_SPAN ** ((lo_iters - 1 - it) / (lo_iters - 1)) if lo_iters > 1 else 1.0
        lo_w = wk * (cur_r2 < thr2 * span ** 2) / den
        lo_w = lo_w / lo_w.amax(dim=-1, keepdim=True).clamp(min=1e-30)
        usable = (lo_w > 0).sum(-1) >= MIN_POINTS
        _, vecs = torch.linalg.eigh(_normal_matrices(design, lo_w))
        cand = to_model(vecs[..., 0].reshape(b, topk, 3, 3))
        cand_e, cand_den = _residuals_kron(cand, Z, L1, L2)
        cand_r2 = cand_e.square() / cand_den
        cand_score = _msac(cand_r2, wk, thr2)
        # continue from the candidate; keep the best model seen at the final threshold
        cur_r2 = torch.where(usable[..., None], cand_r2, cur_r2)
        den = torch.where(usable[..., None], cand_den, den)
        better = (cand_score > scores) & usable
        scores = torch.where(better, cand_score, scores)
        best = torch.where(better[..., None, None], cand, best)
        r2 = torch.where(better[..., None], cand_r2, r2)
    ar = torch.arange(b, device=y1.device)
    choice = scores.argmax(dim=1)
    model = best[ar, choice]
    if y1 is full[0]:
        return model, r2[ar, choice]
    # the LO ran on a subset: the distances of its model to all the points
    e, den = _residuals(model, full[0], full[1], L1, L2)
    return model, e.square_().div_(den)


def _finish(model: torch.Tensor, r2: torch.Tensor, w: torch.Tensor, threshold_px: float,
            ok: torch.Tensor, dtype: torch.dtype) -> RansacResult:
    """Inliers and score of the final model; flag pairs with too few points or no model."""
    thr2 = float(threshold_px) ** 2
    # a degenerate sample set (e.g. all points identical) can leave a zero or non-finite model
    ok = ok & torch.isfinite(model).flatten(1).all(1) & (model.flatten(1).norm(dim=1) > 1e-6)
    model = torch.nan_to_num(model, nan=0.0, posinf=0.0, neginf=0.0)
    r2 = torch.nan_to_num(r2, nan=float('inf'), posinf=float('inf'))
    inliers = (r2 < thr2) & (w > 0) & ok[:, None]
    score = torch.where(ok, _msac(r2, w, thr2), torch.zeros_like(r2[:, 0]))
    model = torch.where(ok[:, None, None], _fix_sign(model), torch.zeros_like(model))
    return RansacResult(model=model.to(dtype), inliers=inliers,
                        num_inliers=inliers.sum(1).to(torch.int64), score=score.to(dtype))


def _prepare(x1, x2, weights, threshold_px, num_hypotheses, lo_iters):
    """Check the inputs; return float64 weights (B, N)."""
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', x1.shape)
    if weights is None:
        weights = torch.ones_like(x1[..., 0])
    check_shape(weights, 'weights', x1.shape[:2])
    weights = weights.detach().to(torch.float64)
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ValueError('weights must be finite and non-negative')
    if not threshold_px > 0:
        raise ValueError(f'threshold_px must be positive, got {threshold_px}')
    if num_hypotheses < 1:
        raise ValueError(f'num_hypotheses must be >= 1, got {num_hypotheses}')
    if lo_iters < 0:
        raise ValueError(f'lo_iters must be >= 0, got {lo_iters}')
    return weights


def _failed(x1: torch.Tensor) -> RansacResult:
    """Build the result of a batch whose pairs all have fewer than 8 points."""
    b, n = x1.shape[:2]
    return RansacResult(model=x1.new_zeros(b, 3, 3),
                        inliers=torch.zeros(b, n, dtype=torch.bool, device=x1.device),
                        num_inliers=torch.zeros(b, dtype=torch.int64, device=x1.device),
                        score=x1.new_zeros(b))


def _channels_first(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Homogeneous y = A [x, 1] of pixels (B, N, 2) as (B, 3, N), float64."""
    return A @ to_homogeneous(x.detach().to(torch.float64)).transpose(1, 2)


def ransac_fundamental(x1: torch.Tensor, x2: torch.Tensor, weights: Optional[torch.Tensor] = None,
                       *, threshold_px: float = 0.5, num_hypotheses: int = 256,
                       lo_iters: int = 3, generator: Optional[torch.Generator] = None
                       ) -> RansacResult:
    """
    Robust fundamental matrix by batched LO-MSAC with 8-point hypotheses (H&Z Alg. 11.4).

    Hypotheses are rank-2 8-point solutions of random minimal sets drawn in proportion to
    ``weights``; all are ranked at once by MSAC on the pixel Sampson distance (on at most
    ``SCORE_POINTS`` points drawn by weight); the best is refined ``lo_iters`` times by
    Sampson-reweighted 8-point fits on its inliers. Computed in float64 (scoring in float32).
    On CPU the call runs on one intra-op thread (restored afterwards, see
    :func:`~trianflow_ros.geometry.threads.one_cpu_thread`).

    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param weights: optional non-negative weights, shape (B, N); 0 excludes a point, so pairs
        of a batch may have different numbers of valid points.
    :param threshold_px: inlier threshold on the Sampson distance, in pixels.
    :param num_hypotheses: minimal sets per pair.
    :param lo_iters: local-optimisation iterations.
    :param generator: torch.Generator (on the points' device) for reproducible sampling.
    :return: :class:`RansacResult` with model = F (x2^T F x1 = 0). A pair with fewer than 8
        positive weights gets a zero model, no inliers and score 0. Not differentiable.
    """
    w = _prepare(x1, x2, weights, threshold_px, num_hypotheses, lo_iters)
    if x1.shape[1] < MIN_POINTS:
        return _failed(x1)
    ok = (w > 0).sum(1) >= MIN_POINTS
    with one_cpu_thread(x1.device):
        # y = A x with a Hartley similarity per image keeps everything well conditioned
        _, A1 = normalize_points(x1.detach().to(torch.float64), w)
        _, A2 = normalize_points(x2.detach().to(torch.float64), w)
        y1, y2 = _channels_first(x1, A1), _channels_first(x2, A2)
        M, r2 = _lo_msac(y1, y2, A1[:, :2, :2].transpose(1, 2), A2[:, :2, :2].transpose(1, 2),
                         w, threshold_px, num_hypotheses, lo_iters, generator, essential=False)
        F = A2.transpose(1, 2) @ M @ A1
        F = F / F.flatten(1).norm(dim=1).clamp(min=1e-30)[:, None, None]
        return _finish(F, r2, w, threshold_px, ok, x1.dtype)


# [v]_x = v @ _SKEW_MAP reshaped to 3 x 3: one product instead of a stack of nine entries
_SKEW_MAP = torch.zeros(3, 9, dtype=torch.float64)
_SKEW_MAP[2, 1], _SKEW_MAP[1, 2], _SKEW_MAP[2, 3] = -1.0, 1.0, 1.0
_SKEW_MAP[0, 5], _SKEW_MAP[1, 6], _SKEW_MAP[0, 7] = -1.0, -1.0, 1.0


def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices [v]_x of vectors (..., 3), shape (..., 3, 3)."""
    return (v @ _SKEW_MAP.to(v)).unflatten(-1, (3, 3))


def _rotation(phi: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula for small axis-angle steps (B, 3) -> rotations (B, 3, 3)."""
    theta2 = phi.square().sum(-1, keepdim=True).unsqueeze(-1)             # (B, 1, 1)
    W = _skew(phi)
    # sin(t) / t and (1 - cos t) / t^2 by their Taylor series to t^8 (steps are < 0.1 rad;
    # truncation error below 1e-12 there), exact closed forms for larger steps
    a = 1.0 - theta2 / 6.0 * (1.0 - theta2 / 20.0 * (1.0 - theta2 / 42.0 * (1.0 - theta2 / 72.0)))
    b = 0.5 - theta2 / 24.0 * (1.0 - theta2 / 30.0 * (1.0 - theta2 / 56.0 * (1.0 - theta2 / 90.0)))
    if bool((theta2 > 1e-2).any()):
        t = theta2.sqrt().clamp(min=1e-30)
        big = theta2 > 1e-2
        a = torch.where(big, torch.sin(t) / t, a)
        b = torch.where(big, (1.0 - torch.cos(t)) / t.square(), b)
    return torch.eye(3, dtype=phi.dtype, device=phi.device) + a * W + b * (W @ W)


def _tangent_basis(t: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (B, 3, 2) of the plane orthogonal to unit vectors t (B, 3)."""
    eye = torch.eye(3, dtype=t.dtype, device=t.device)
    a = torch.where(t[:, :1].abs() > 0.9, eye[1], eye[0])
    b1 = a - (a * t).sum(-1, keepdim=True) * t
    b1 = b1 / b1.norm(dim=-1, keepdim=True)
    b2 = torch.linalg.cross(t, b1)
    return torch.stack((b1, b2), dim=-1)


def _sampson_rt(R: torch.Tensor, t: torch.Tensor, Z: torch.Tensor, L1: torch.Tensor,
                L2: torch.Tensor, c2: float, w: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Robust cost and Gauss-Newton system of the Sampson residuals of E = [t]_x R.

    With r = e / s, e = y2^T E y1 and s^2 = |L2 (E y1)_{1,2}|^2 + |L1 (E^T y2)_{1,2}|^2, every
    derivative of E is a matrix Q_k: E [e_k]_x for R exp([omega]_x) and [b_k]_x R for t + B delta.
    All of e, de_k and the gradient rows of s come from ONE matrix product with the per-point
    Kronecker products Z = y2 (x) y1 (B, 9, N): since y1[2] = y2[2] = 1, Z also holds y1 (rows
    6-8) and y2 (rows 2, 5, 8). The exact Jacobian is dr = (de - r ds) / s.

    :param Z: rows y2_i y1_j at row 3 i + j, shape (B, 9, N).
    :param w: point weights (B, N).
    :return: Cauchy cost sum_i w_i log(1 + r_i^2 / c2) (B,), the 6 x 6 matrix
        [J; r] W [J; r]^T with Cauchy IRLS weights W (its 5 x 5 block is the Gauss-Newton
        matrix, its last column the gradient) (B, 6, 6), and the tangent basis of t (B, 3, 2).
    """
    b, n = Z.shape[0], Z.shape[2]
    E = _skew(t) @ R
    Bt = _tangent_basis(t)                                                # (B, 3, 2)
    Q = torch.cat((E.unsqueeze(1), E.unsqueeze(1) @ _GENERATORS.to(E),
                   _skew(Bt.transpose(1, 2)) @ R.unsqueeze(1)), dim=1)   # (B, 6, 3, 3)
    rows = Z.new_zeros(b, 5, 6, 9)            # (value, 4 gradient components) x (Q_0..Q_5)
    rows[:, 0] = Q.reshape(b, 6, 9)                                       # e_k = <Q_k, Z>
    rows[:, 1:3, :, 6:] = (L2.unsqueeze(1) @ Q[:, :, :2]).transpose(1, 2)  # on y1
    rows[:, 3:, :, 2::3] = (L1.unsqueeze(1) @ Q.transpose(-1, -2)[:, :, :2]).transpose(1, 2)
    P = (rows.reshape(b, 30, 9) @ Z).view(b, 5, 6, n)
    num = P[:, 0]                                                         # e, de_k: (B, 6, N)
    s2 = P[:, 1, 0].square()
    ds = P[:, 1, 1:] * P[:, 1, :1]                                        # s ds_k, (B, 5, N)
    for c in range(2, 5):
        s2.addcmul_(P[:, c, 0], P[:, c, 0])
        ds.addcmul_(P[:, c, 1:], P[:, c, :1])
    inv_s = s2.clamp_(min=1e-30).rsqrt_()                                 # (B, N)
    r = num[:, 0] * inv_s
    Jr = torch.empty_like(num)
    torch.mul(num[:, 1:] - ds * (r * inv_s).unsqueeze(1), inv_s.unsqueeze(1), out=Jr[:, :5])
    Jr[:, 5] = r
    q = r.square().div_(c2)
    cost = (w * torch.log1p(q)).sum(-1)                                   # Cauchy loss
    # Newton weights of the Cauchy loss, w (1 - q) / (1 + q)^2 (the IRLS weight w / (1 + q)
    # plus the loss curvature, floored at 0), converge much faster than plain IRLS
    iq = 1.0 / (1.0 + q)
    hw = w * iq * (1.0 - q).clamp_(min=0.0) * iq
    H = (Jr[:, :5] * hw.unsqueeze(1)) @ Jr[:, :5].transpose(1, 2)
    g = Jr[:, :5] @ (w * iq * r).unsqueeze(-1)
    return cost, torch.cat((H, g), dim=2), Bt


def _sampson_rt_residuals(E: torch.Tensor, Z: torch.Tensor, L1: torch.Tensor,
                          L2: torch.Tensor) -> torch.Tensor:
    """Signed pixel Sampson distances (B, N) of E on the points Z = y2 (x) y1 (B, 9, N)."""
    b = E.shape[0]
    rows = Z.new_zeros(b, 5, 9)
    rows[:, 0] = E.reshape(b, 9)
    rows[:, 1:3, 6:] = L2 @ E[:, :2]
    rows[:, 3:, 2::3] = L1 @ E.transpose(1, 2)[:, :2]
    P = rows @ Z
    return P[:, 0] * P[:, 1:].square().sum(1).clamp_(min=1e-30).rsqrt_()


def _levenberg_marquardt(R, t, Z, L1, L2, c2, w, iters, step_tol):
    """LM iterations of :func:`refine_essential` on the points Z (B, 9, N); returns R, t."""
    cost, M6, Bt = _sampson_rt(R, t, Z, L1, L2, c2, w)
    lam = torch.full_like(cost, 1e-3)
    eye = torch.eye(5, dtype=R.dtype, device=R.device)
    for _ in range(iters):
        H = M6[:, :5, :5]
        Hd = H + lam[:, None, None] * (H * eye + 1e-9 * eye)
        step = -torch.linalg.solve(Hd, M6[:, :5, 5])
        R_new = R @ _rotation(step[:, :3])
        t_new = t + (Bt @ step[:, 3:].unsqueeze(-1)).squeeze(-1)
        t_new = t_new / t_new.norm(dim=-1, keepdim=True)
        if bool((step.norm(dim=1) < step_tol).all()):
            # converged: a step this small is taken without evaluating it
            return R_new, t_new
        cost_new, M6_new, Bt_new = _sampson_rt(R_new, t_new, Z, L1, L2, c2, w)
        better = (cost_new < cost) & torch.isfinite(cost_new)
        done = ((cost_new - cost).abs() <= REFINE_TOL * cost) | ~torch.isfinite(cost_new)
        R = torch.where(better[:, None, None], R_new, R)
        t = torch.where(better[:, None], t_new, t)
        M6 = torch.where(better[:, None, None], M6_new, M6)
        Bt = torch.where(better[:, None, None], Bt_new, Bt)
        cost = torch.where(better, cost_new, cost)
        lam = torch.where(better, lam * 0.1, lam * 10.0).clamp(1e-9, 1e6)
        if bool(done.all()):
            break
    return R, t


def refine_essential(E: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor,
                     L2: torch.Tensor, w: torch.Tensor, scale_px: float, iters: int = 8
                     ) -> torch.Tensor:
    """
    Robust Levenberg-Marquardt refinement of E = [t]_x R on the pixel Sampson distance.

    Minimises sum_i w_i log(1 + r_i^2 / c^2) (Cauchy loss, c = ``scale_px``) over R (right
    increments R exp([omega]_x)) and the unit translation t (two tangent-plane increments),
    where r_i is the signed pixel Sampson distance (H&Z eq. 11.9), with its exact Jacobian
    (denominator included) and Cauchy IRLS weights (iteratively reweighted Gauss-Newton with
    Levenberg damping, H&Z A6.2; the Gauss-Newton matrix carries the curvature of the loss,
    weights w (1 - q) / (1 + q)^2 floored at 0, q = r^2 / c^2, which converges in a few
    iterations). All pairs are refined at once; a step is kept per pair only if it lowers that
    pair's cost (then the damping shrinks, else it grows).

    :param E: initial essential matrices in ray coordinates, shape (B, 3, 3).
    :param y1: rays K1^-1 [x1, 1], channels-first, shape (B, 3, N).
    :param y2: rays K2^-1 [x2, 1], channels-first, shape (B, 3, N).
    :param L1: K1^-1[:2, :2]^T, shape (B, 2, 2).
    :param L2: K2^-1[:2, :2]^T, shape (B, 2, 2).
    :param w: point weights, shape (B, N).
    :param scale_px: Cauchy scale in pixels.
    :param iters: at most this many LM iterations; they stop once every pair's step is below
        ``REFINE_STEP`` times its median Sampson distance over the focal length (the noise
        level; a noise-free pair runs all of them) or its cost no longer changes.
    :return: refined E = [t]_x R / sqrt(2) (unit Frobenius norm), shape (B, 3, 3).
        Not differentiable.
    """
    R4, t4 = decompose_essential(E)
    R, t = R4[:, 0], t4[:, 0]
    b = y1.shape[0]
    # only the points of positive weight (padded with zero weights to the batch's largest
    # count) when that saves enough to pay for the gather
    used = w > 0
    m = int(used.sum(1).max())
    if m < 0.75 * w.shape[1]:
        keep = torch.argsort((~used).to(torch.int8), dim=1, stable=True)[:, :max(m, 1)]
        y1 = torch.gather(y1, 2, keep.unsqueeze(1).expand(-1, 3, -1))
        y2 = torch.gather(y2, 2, keep.unsqueeze(1).expand(-1, 3, -1))
        w = torch.gather(w, 1, keep)
    Z = (y2.unsqueeze(2) * y1.unsqueeze(1)).reshape(b, 9, -1)             # y2 (x) y1
    c2 = float(scale_px) ** 2
    # stop once a step is far below the noise: REFINE_STEP times the median Sampson distance
    # (pixels) over the focal length (pixels), i.e. a fraction of the angular noise of a ray
    r2 = _sampson_rt_residuals(E, Z[:, :, ::8], L1, L2).square()
    sigma = torch.where(w[:, ::8] > 0, r2, float('nan')).nanmedian(dim=1).values.sqrt()
    inv_f = (L1.det().abs() * L2.det().abs()) ** 0.25                    # 1 / focal, (B,)
    step_tol = REFINE_STEP * sigma.nan_to_num(nan=0.0) * inv_f
    R, t = _levenberg_marquardt(R, t, Z, L1, L2, c2, w, iters, step_tol)
    return skew(t) @ R / (2.0 ** 0.5)


def ransac_essential(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                     weights: Optional[torch.Tensor] = None, *, threshold_px: float = 0.5,
                     num_hypotheses: int = 256, lo_iters: int = 5,
                     generator: Optional[torch.Generator] = None,
                     refine_iters: int = 4, minimal_solver: str = 'five') -> RansacResult:
    """
    Robust essential matrix by batched LO-MSAC plus a robust Sampson Gauss-Newton refinement.

    The points are mapped to rays y = K^-1 [x, 1]; hypotheses are the real five-point solutions
    of random minimal sets (or 8-point fits projected onto the essential manifold, H&Z
    Sec. 11.7.3), ranked with a wider threshold on a random subset. The pixel threshold
    needs no focal-length conversion: every model is scored by its exact pixel Sampson distance,
    that of F = K2^-T E K1^-1 (H&Z eq. 11.9), evaluated in ray coordinates (exact also for
    fx != fy). Five-point sets are drawn ``CHUNK_SETS`` at a time until, for every pair, their
    number reaches log(1 - p) / log(1 - w^5) (p = ``CONFIDENCE``, w = best inlier ratio so far)
    or num_hypotheses // 4. The ``LO_TOPK`` best hypotheses get ``lo_iters`` Sampson-reweighted
    8-point refits on their inliers (on ``LO_POINTS`` points drawn by weight when N is more than
    4 times that), then :func:`refine_essential` (Cauchy scale = threshold) over (R, t) on the
    points within ``REFINE_SPAN`` thresholds, repeated (at most ``REFINE_ROUNDS`` times) while that
    set changes. Computed in float64 (hypothesis ranking in float32).
    On CPU the call runs on one intra-op thread (restored afterwards, see
    :func:`~trianflow_ros.geometry.threads.one_cpu_thread`).

    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param weights: optional non-negative weights, shape (B, N); 0 excludes a point.
    :param threshold_px: inlier threshold on the Sampson distance, in pixels.
    :param num_hypotheses: candidate models per pair: 8-point sets, or at most
        num_hypotheses // 4 five-point sets (each gives up to 10 solutions, about 4 real on
        average; fewer sets once the adaptive bound is met).
    :param lo_iters: local-optimisation iterations (the inlier threshold shrinks from
        ``LO_SPAN`` times the threshold to the threshold over them), on each of the
        ``LO_TOPK`` best hypotheses.
    :param generator: torch.Generator (on the points' device) for reproducible sampling.
    :param refine_iters: at most this many Levenberg-Marquardt iterations per refinement round
        (0 disables the refinement); it stops earlier once a step is far below the noise.
    :param minimal_solver: ``'five'`` (default):
        :func:`~trianflow_ros.geometry.epipolar.five_point` on num_hypotheses // 4 minimal sets
        (up to 10 real solutions each, all scored); ``'eight'``: 8-point minimal sets projected
        onto the essential manifold, about as fast but far less robust with many outliers or
        sideways motion (8-point minimal solutions are very noise sensitive).
    :return: :class:`RansacResult` with model = E (y2^T E y1 = 0, singular values (s, s, 0)).
        A pair with fewer than 8 positive weights gets a zero model, no inliers and score 0.
        Not differentiable.
    """
    w = _prepare(x1, x2, weights, threshold_px, num_hypotheses, lo_iters)
    check_shape(K1, 'K1', (x1.shape[0], 3, 3))
    check_shape(K2, 'K2', K1.shape)
    if x1.shape[1] < MIN_POINTS:
        return _failed(x1)
    if minimal_solver not in ('eight', 'five'):
        raise ValueError(f"minimal_solver must be 'eight' or 'five', got {minimal_solver!r}")
    ok = (w > 0).sum(1) >= MIN_POINTS
    with one_cpu_thread(x1.device):
        K1i = torch.linalg.inv(K1.detach().to(torch.float64))
        K2i = torch.linalg.inv(K2.detach().to(torch.float64))
        y1, y2 = _channels_first(x1, K1i), _channels_first(x2, K2i)
        L1, L2 = K1i[:, :2, :2].transpose(1, 2), K2i[:, :2, :2].transpose(1, 2)
        E, r2 = _lo_msac(y1, y2, L1, L2, w, threshold_px, num_hypotheses, lo_iters, generator,
                         essential=True, five=minimal_solver == 'five')
        near = w * (r2 < (REFINE_SPAN * threshold_px) ** 2)
        for round_ in range(REFINE_ROUNDS if refine_iters > 0 else 0):
            # each round refines on the points near the current model; a further round only
            # runs while that set still changes (more than REFINE_CHANGE of the points)
            E = refine_essential(E, y1, y2, L1, L2, near, threshold_px, refine_iters)
            e, den = _residuals(E, y1, y2, L1, L2)
            r2 = e.square() / den
            if round_ + 1 < REFINE_ROUNDS:
                new_near = w * (r2 < (REFINE_SPAN * threshold_px) ** 2)
                changed = ((new_near > 0) != (near > 0)).sum(1)
                if not bool((changed > REFINE_CHANGE * near.shape[1]).any()):
                    break
                near = new_near
        return _finish(E, r2, w, threshold_px, ok, x1.dtype)
