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
curvature of the robust loss, a Cauchy scale set by the noise level of the pair, and early
termination (for large point sets: iterations on a subset, then one step on all points).

Internally point sets are channels-first, (B, 3, N) homogeneous, which keeps the per-point
arithmetic in contiguous rows. References are to Hartley & Zisserman, 2nd ed. (H&Z).
"""

from dataclasses import dataclass
import math
from typing import Optional, Tuple

import torch

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.epipolar import (_design_matrix, _fix_sign, enforce_rank2,
                                             five_point, normalize_points)
from trianflow_ros.geometry.lie import skew
from trianflow_ros.geometry.sampling import msac_score, sample_minimal_sets
from trianflow_ros.geometry.threads import one_cpu_thread

MIN_POINTS = 8
SOLUTIONS_PER_SET = 4  # five-point sets = num_hypotheses // SOLUTIONS_PER_SET
LO_SPAN = 16.0      # first local-optimisation threshold, in multiples of the final one
HYP_SPAN = 8.0      # threshold that ranks the minimal-set hypotheses, in multiples of the final
LO_TOPK = 4         # best hypotheses that each get the local optimisation
SCORE_POINTS = 512  # points (drawn by weight) on which all hypotheses are ranked
LO_POINTS = 512     # points (drawn by weight) of the local optimisation (if N > 4x)
CHUNK_SETS = 8      # five-point sets solved per adaptive round
CONFIDENCE = 0.999  # probability of an all-inlier set behind the adaptive stop
COUNT_SPAN = 1.0    # inlier ratio of the adaptive stop: at this many thresholds
REFINE_ROUNDS = 2   # at most this many refinements, each on the points near the previous model
REFINE_CHANGE = 0.01  # another refinement round only if the near set changed by more
REFINE_TOL = 1e-6   # relative cost change that ends the refinement early
REFINE_STEP = 0.5   # refinement stop: step norm (rad) below this * median Sampson / focal
NOISE_SCALE = 2.0   # Cauchy scale of the refinement: this times the median Sampson distance
SCALE_MIN = 1.0 / 16  # ... clamped to [SCALE_MIN, 1] times the threshold
REFINE_POINTS = 1024  # LM iterations on every k-th point, k = N // REFINE_POINTS if >= 2, ...
SUBSET_TOL = 10.0   # ... stopped at SUBSET_TOL x the step tolerance, then one step on all points
REFINE_SPAN = 2.0   # points within REFINE_SPAN * threshold of the LO model enter the refinement
# I and the generators [e_k]_x of so(3), (4, 3, 3)
_E_GENERATORS = torch.cat((torch.eye(3, dtype=torch.float64)[None],
                           skew(torch.eye(3, dtype=torch.float64))))
_W90 = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


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


def _quadratic_map() -> torch.Tensor:
    """
    Map (18, 17) from two quadratic forms [M | N] (entries 3 i + j) to :func:`_sampson_features`.

    y1^T M y1 + y2^T N y2 (y1[2] = y2[2] = 1) is the dot product of ``[vec M, vec N] @ map``
    with the point features: u v terms land on the products y_a y_b (a, b < 2), linear terms on
    the rows of Z = y2 (x) y1 that hold y1 (6, 7) and y2 (2, 5), constants on its row 8.
    """
    m = torch.zeros(18, 17, dtype=torch.float64)
    for side, quad, lin in ((0, 9, (6, 7)), (1, 13, (2, 5))):
        for i in range(3):
            for j in range(3):
                if i < 2 and j < 2:
                    col = quad + 2 * i + j
                elif i == 2 and j == 2:
                    col = 8
                else:
                    col = lin[min(i, j)]
                m[9 * side + 3 * i + j, col] = 1.0
    return m


_QUAD_MAP = _quadratic_map()


def _sampson_features(y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """
    Per-point features (B, 17, N) of :func:`_sampson_rows`, from rays (B, 3, N) with y[2] = 1.

    Rows 0-8: Z = y2 (x) y1 (row 3 i + j = y2_i y1_j); rows 9-12: y1_a y1_b, rows 13-16:
    y2_a y2_b (row 2 a + b, a, b < 2).
    """
    b = y1.shape[0]
    return torch.cat(((y2.unsqueeze(2) * y1.unsqueeze(1)).reshape(b, 9, -1),
                      (y1[:, :2, None] * y1[:, None, :2]).reshape(b, 4, -1),
                      (y2[:, :2, None] * y2[:, None, :2]).reshape(b, 4, -1)), dim=1)


def _sampson_rows(Q: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor, pairwise: bool = True
                  ) -> torch.Tensor:
    """
    Rows (B, 2 K, 17) that give, on :func:`_sampson_features`, the Sampson terms of K models.

    Row k (< K) gives e_k = y2^T Q_k y1; row K + k gives sum_c g_c(Q_0) g_c(Q_k) (pairwise) or
    sum_c g_c(Q_k)^2, where g(Q) = (L2 (Q y1)_{1,2}, L1 (Q^T y2)_{1,2}) are the pixel-gradient
    components of the epipolar residual (H&Z eq. 11.9): the squared Sampson denominator s^2 of
    every model, or, pairwise, that of Q_0 for k = 0 and s ds_k when Q_k is the derivative of
    Q_0 along parameter k. Each g_c is linear in y1 or y2, so the products are quadratic forms
    y1^T M_k y1 + y2^T N_k y2 (M_k = a_0^T a_k or a_k^T a_k with a_k = L2 (Q_k)_{1,2},
    likewise N_k): two values per point and model instead of five.

    :param Q: models (B, K, 3, 3), pairwise: Q_0 the model itself.
    :param L1: shape (B, 2, 2).
    :param L2: shape (B, 2, 2).
    :param pairwise: products with the gradient of Q_0 instead of the model's own.
    """
    b, k = Q.shape[:2]
    a = L2.unsqueeze(1) @ Q[:, :, :2]                                     # (B, K, 2, 3), on y1
    c = L1.unsqueeze(1) @ Q.transpose(-1, -2)[:, :, :2]                   # on y2
    a0, c0 = (a[:, :1], c[:, :1]) if pairwise else (a, c)
    quad = torch.cat(((a0.transpose(-1, -2) @ a).reshape(b, k, 9),
                      (c0.transpose(-1, -2) @ c).reshape(b, k, 9)), dim=2)
    return torch.cat((torch.nn.functional.pad(Q.reshape(b, k, 9), (0, 8)),
                      quad @ _QUAD_MAP.to(Q)), dim=1)


def _model_terms(M: torch.Tensor, W: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Algebraic residuals and squared Sampson denominators (B, K, N) of K models on features W.

    :param M: models in y coordinates, shape (B, K, 3, 3).
    :param W: :func:`_sampson_features` of the points, shape (B, 17, N).
    :return: e = y2^T M y1 and |grad e|^2 in pixels: the squared pixel Sampson distance is
        e^2 / den (H&Z eq. 11.9).
    """
    k = M.shape[1]
    P = _sampson_rows(M, L1, L2, pairwise=False) @ W                       # (B, 2 K, N)
    return P[:, :k], P[:, k:].clamp(min=1e-30)


def _unit_essential(M: torch.Tensor) -> torch.Tensor:
    """
    Closest essential matrices (..., 3, 3) of unit Frobenius norm: U diag(1, 1, 0) V^T / sqrt 2.

    Same direction as :func:`~trianflow_ros.geometry.epipolar.project_to_essential` (H&Z
    Sec. 11.7.3) followed by the normalisation, from the SVD alone.
    """
    U, _, Vh = torch.linalg.svd(M)
    return (U[..., :2] @ Vh[..., :2, :]).mul_(0.5 ** 0.5)


def _design_rows(y1n: torch.Tensor, y2n: torch.Tensor) -> torch.Tensor:
    """Rows A_i of the 8-point system (H&Z eq. 11.3), channels-first, shape (B, 9, N)."""
    u1, v1 = y1n[:, 0], y1n[:, 1]
    u2, v2 = y2n[:, 0], y2n[:, 1]
    return torch.stack((u2 * u1, u2 * v1, u2, v2 * u1, v2 * v1, v2, u1, v1,
                        torch.ones_like(u1)), dim=1)


def _outer_rows(A: torch.Tensor) -> torch.Tensor:
    """Per-point outer products A_i A_i^T of rows A (B, 9, N), flattened: (B, N, 81)."""
    return (A.unsqueeze(1) * A.unsqueeze(2)).flatten(1, 2).transpose(1, 2)


def _normal_matrices(AA: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A^T W A (B, K, 9, 9) for K weight vectors w (B, K, N), AA = :func:`_outer_rows` of A."""
    return (w @ AA).unflatten(-1, (9, 9))


def _axis_normalization(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """
    Affine normalisation with a unit weighted RMS per axis (H&Z Sec. 4.4.4, non-isotropic).

    Wide, flat images (KITTI: 3.3 : 1) leave the v axis badly scaled under isotropic Hartley
    normalisation; scaling the axes separately conditions the 8-point system better.

    :param y: points, channels-first (..., 3, N).
    :param w: weights (..., N), broadcast against y.
    :return: T (..., 3, 3) with T y centred and of unit RMS along u and v.
    """
    wn = (w / w.sum(-1, keepdim=True).clamp(min=1e-30)).unsqueeze(-2)
    mean = (y[..., :2, :] * wn).sum(-1)                                   # (..., 2)
    var = ((y[..., :2, :] - mean.unsqueeze(-1)).square() * wn).sum(-1)
    scale = var.clamp(min=1e-30).rsqrt()                                  # (..., 2)
    T = y.new_zeros(y.shape[:-2] + (3, 3))
    T[..., 0, 0], T[..., 1, 1], T[..., 2, 2] = scale[..., 0], scale[..., 1], 1.0
    T[..., :2, 2] = -scale * mean
    return T


def _five_point_hypotheses(y1, y2, sW, L1f, L2f, sw, sample_w, thr_h2, num_hypotheses,
                           generator, min_hypotheses: int = 0):
    """
    Adaptive five-point hypotheses: minimal sets in chunks until the RANSAC bound is met.

    Chunks of ``CHUNK_SETS`` sets (all batch elements at once) are solved and scored on the
    subset (features sW, weights sw) until, for every batch element, the number of sets drawn
    reaches log(1 - p) / log(1 - w^5) (H&Z Sec. 4.7.1, p = ``CONFIDENCE``) for the best ratio w
    seen so far of points within ``COUNT_SPAN`` thresholds, or the cap num_hypotheses // 4;
    never fewer than min_hypotheses // 4 sets (the bound assumes that any all-inlier set gives a
    good model, which fails for short baselines: their minimal solutions scatter between the
    true pose and a rotation-translation ambiguity, and 16 sets missed the right one on a real
    TUM pair 4 times in 12; 64 sets never did, but on far-field scenes more hypotheses found
    wrong models that fit the many far points best, so the default floor is 0).

    :return: models (B, H, 3, 3), unit Frobenius norm, and their MSAC quality (B, H) on the
        subset (-1 for complex or degenerate roots).
    """
    b = y1.shape[0]
    cap = max(1, num_hypotheses // SOLUTIONS_PER_SET)
    floor = min(cap, -(-int(min_hypotheses) // SOLUTIONS_PER_SET))
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
        e, den = _model_terms(models.float(), sW, L1f, L2f)                # (B, 10 S, P)
        r2 = e.square_().div_(den)
        quality = torch.where(valid, msac_score(r2, thr_h2, sw.unsqueeze(1)), -1.0)
        frac = ((r2 < thr_h2 * (COUNT_SPAN / HYP_SPAN) ** 2).float() @ sw.unsqueeze(-1)
                ).squeeze(-1) / wsum.unsqueeze(1)
        best_frac = torch.maximum(best_frac, torch.where(valid, frac, 0.0).amax(1))
        all_models.append(models)
        all_quality.append(quality)
        drawn += sets
        miss = (1.0 - best_frac.double() ** 5).clamp(1e-12, 1.0 - 1e-12)
        if drawn >= floor and bool((log_fail / torch.log(miss) <= drawn).all()):
            break
    if len(all_models) == 1:
        return all_models[0], all_quality[0]
    return torch.cat(all_models, 1), torch.cat(all_quality, 1)


def _lo_msac(y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor,
             w: torch.Tensor, threshold_px: float, num_hypotheses: int, lo_iters: int,
             generator: Optional[torch.Generator], essential: bool, five: bool = False,
             W_all: Optional[torch.Tensor] = None, min_hypotheses: int = 0
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Shared LO-MSAC core in affine-normalised coordinates y (float64, channels-first).

    W_all: optional :func:`_sampson_features` of all the points, for the final distances.

    :return: the best model (B, 3, 3) in y coordinates and its squared pixel Sampson
        distances (B, N).
    """
    b, _, n = y1.shape
    thr2 = float(threshold_px) ** 2

    def normalize(y1, y2, w):
        # normalisation of the y coordinates (H&Z Alg. 11.1 (i), per axis), both images at
        # once; models are mapped back by to_model with vec(M) = vec(Fn) kron(T2, T1)
        y = torch.stack((y1, y2), dim=1)                                  # (B, 2, 3, N)
        T = _axis_normalization(y, w.unsqueeze(1))                        # (B, 2, 3, 3)
        yn = T[..., :2, :2] @ y[..., :2, :] + T[..., :2, 2:]              # (B, 2, 2, N)
        kron = (T[:, 1, :, None, :, None] * T[:, 0, None, :, None, :]).reshape(b, 9, 9)
        return kron, yn[:, 0], yn[:, 1]

    if not five:
        kron, y1n, y2n = normalize(y1, y2, w)

    def to_model(Fn: torch.Tensor) -> torch.Tensor:
        # back from the normalised coordinates: M = T2^T Fn T1 (H&Z Alg. 11.1 (iv)), for
        # flattened models Fn (B, K, 9)
        M = (Fn @ kron).unflatten(-1, (3, 3))
        if essential:
            return _unit_essential(M)
        M = enforce_rank2(M)
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
    sW, L1f, L2f = _sampson_features(sy1, sy2).float(), L1.float(), L2.float()
    thr_h2 = thr2 * HYP_SPAN ** 2
    if five:
        models, quality = _five_point_hypotheses(y1, y2, sW, L1f, L2f, sw, sample_w, thr_h2,
                                                 num_hypotheses, generator, min_hypotheses)
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
        models = to_model(Q[..., 8])
        e, den = _model_terms(models.float(), sW, L1f, L2f)
        quality = msac_score(e.square_().div_(den), thr_h2, sw.unsqueeze(1))
    topk = min(LO_TOPK if five else 2 * LO_TOPK, models.shape[1])
    pick = quality.topk(topk, dim=1).indices
    best = models[torch.arange(b, device=y1.device)[:, None], pick]      # (B, k, 3, 3)

    # 3. local optimisation of the top-k hypotheses of every pair at once: Sampson-reweighted
    # least squares on the inliers of the current model. With weights w_i / |grad_i|^2 the
    # algebraic error (y2^T M y1)^2 (equal for the normalised points) becomes the squared
    # Sampson distance (H&Z Sec. 11.4.3). The inlier threshold shrinks geometrically from
    # LO_SPAN * thr to thr (Lebeda et al. 2012).
    # for E and more than 4 x LO_POINTS points, on a weighted random subset (drawn afresh: the
    # ranking subset would favour hypotheses that happen to fit it); the final refinement uses
    # all of them
    full = (y1, y2, w)
    if five and n > 4 * LO_POINTS:
        sub = torch.multinomial(sample_w, LO_POINTS, replacement=True, generator=generator)
        y1, y2 = (torch.gather(y, 2, sub.unsqueeze(1).expand(-1, 3, -1)) for y in (y1, y2))
        w = (torch.gather(w, 1, sub) > 0).to(w.dtype)
    kron, y1n, y2n = normalize(y1, y2, w)
    AA = _outer_rows(_design_rows(y1n, y2n))                              # (B, N, 81)
    wk = w.unsqueeze(1)
    W = _sampson_features(y1, y2)
    e, den = _model_terms(best, W, L1, L2)                                # (B, k, N)
    r2 = cur_r2 = e.square() / den
    scores = msac_score(r2, thr2, wk)                                     # (B, k)
    for it in range(lo_iters):
        span = LO_SPAN ** ((lo_iters - 1 - it) / (lo_iters - 1)) if lo_iters > 1 else 1.0
        lo_w = wk * (cur_r2 < thr2 * span ** 2) / den
        usable = (lo_w > 0).sum(-1) >= MIN_POINTS
        _, vecs = torch.linalg.eigh(_normal_matrices(AA, lo_w))
        cand = to_model(vecs[..., 0])
        cand_e, cand_den = _model_terms(cand, W, L1, L2)
        cand_r2 = cand_e.square() / cand_den
        cand_score = msac_score(cand_r2, thr2, wk)
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
    if W_all is not None:
        e, den = _model_terms(model.unsqueeze(1), W_all, L1, L2)
        return model, e[:, 0].square().div_(den[:, 0])
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
    score = torch.where(ok, msac_score(r2, thr2, w), torch.zeros_like(r2[:, 0]))
    model = torch.where(ok[:, None, None], _fix_sign(model), torch.zeros_like(model))
    return RansacResult(model=model.to(dtype), inliers=inliers,
                        num_inliers=inliers.sum(1).to(torch.int64), score=score.to(dtype))


def _prepare(x1, x2, weights, threshold_px, num_hypotheses, lo_iters):
    """Check the inputs; return float64 weights (B, N)."""
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', x1.shape)
    if weights is None:
        weights = torch.ones(x1.shape[:2], dtype=torch.float64, device=x1.device)
    else:
        check_shape(weights, 'weights', x1.shape[:2])
        weights = weights.detach().to(torch.float64)
        if not bool((weights >= 0).all()) or not bool(torch.isfinite(weights).all()):
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
    x = x.detach().to(torch.float64).transpose(1, 2)
    return torch.baddbmm(A[:, :, 2:], A[:, :, :2], x)


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


def _levenberg_marquardt(RF, W, L1, L2, c2, w, iters, step_tol):
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
        done = ((cost_new - cost).abs() <= REFINE_TOL * cost) | ~torch.isfinite(cost_new)
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
                     noise_scale: float = 0.0) -> torch.Tensor:
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
    shrinks, else it grows). With at least 2 ``REFINE_POINTS`` points, the iterations run on
    every k-th point (k = N // ``REFINE_POINTS``) and stop at ``SUBSET_TOL`` times the step
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
        ``REFINE_STEP`` times its median Sampson distance over the focal length (the noise
        level; a noise-free pair runs all of them) or its cost no longer changes.
    :param noise_scale: if > 0, the Cauchy scale of each pair is ``noise_scale`` times the
        median Sampson distance of E over the weighted points (a robust estimate of the noise),
        clamped to [``scale_px`` * ``SCALE_MIN``, ``scale_px``].
    :return: refined E = [t]_x R / sqrt(2) (unit Frobenius norm), shape (B, 3, 3).
        Not differentiable.
    """
    return _refine(E, y1, y2, L1, L2, w, scale_px, iters, noise_scale)[0]


def _refine(E, y1, y2, L1, L2, w, scale_px, iters, noise_scale, r2=None, W=None
            ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
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
    # stop once a step is far below the noise: REFINE_STEP times the median Sampson distance
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
    step_tol = REFINE_STEP * sigma * inv_f
    c2 = float(scale_px) ** 2
    if noise_scale > 0:
        c = (noise_scale * sigma).clamp(min=scale_px * SCALE_MIN, max=scale_px)
        c2 = c.square().unsqueeze(1)
    k = W.shape[-1] // REFINE_POINTS
    r = None
    if k < 2:
        RF = _levenberg_marquardt(RF, W, L1, L2, c2, w, iters, step_tol)
    else:
        # the iterations on every k-th point, then one step on all of them (from so close to
        # their optimum, one Gauss-Newton step reaches it to well below the noise)
        RF = _levenberg_marquardt(RF, W[:, :, ::k].contiguous(), L1, L2, c2,
                                  w[:, ::k].contiguous(), iters, step_tol * SUBSET_TOL)
        RF, r = _final_step(RF, W, L1, L2, c2, w)
    return skew(RF[:, 1, :, 2]) @ RF[:, 0] / (2.0 ** 0.5), None if gathered else r


def ransac_essential(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                     weights: Optional[torch.Tensor] = None, *, threshold_px: float = 0.5,
                     num_hypotheses: int = 256, lo_iters: int = 3,
                     generator: Optional[torch.Generator] = None,
                     refine_iters: int = 4, minimal_solver: str = 'five',
                     min_hypotheses: int = 0) -> RansacResult:
    """
    Robust essential matrix by batched LO-MSAC plus a robust Sampson Gauss-Newton refinement.

    The points are mapped to rays y = K^-1 [x, 1]; hypotheses are the real five-point solutions
    of random minimal sets (or 8-point fits projected onto the essential manifold, H&Z
    Sec. 11.7.3), ranked with a wider threshold on a random subset. The pixel threshold
    needs no focal-length conversion: every model is scored by its exact pixel Sampson distance,
    that of F = K2^-T E K1^-1 (H&Z eq. 11.9), evaluated in ray coordinates (exact also for
    fx != fy). Five-point sets are drawn ``CHUNK_SETS`` at a time until, for every pair, their
    number reaches log(1 - p) / log(1 - w^5) (p = ``CONFIDENCE``, w = best ratio so far of points
    within ``COUNT_SPAN`` thresholds) or num_hypotheses // 4. The ``LO_TOPK`` best hypotheses get
    ``lo_iters`` Sampson-reweighted 8-point refits on their inliers (on ``LO_POINTS`` points
    drawn by weight when N is more than 4 times that), then
    :func:`refine_essential` over (R, t) on the points within ``REFINE_SPAN`` thresholds, with
    a Cauchy scale of ``NOISE_SCALE`` times the median Sampson distance of the pair (at most the
    threshold), repeated (at most ``REFINE_ROUNDS`` times) while that set changes. Computed in
    float64 (hypothesis ranking in float32).
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
        (0 disables the refinement); it stops earlier once a step is far below the noise. With
        N >= 2 ``REFINE_POINTS`` they run on every k-th point and one more step on all.
    :param minimal_solver: ``'five'`` (default):
        :func:`~trianflow_ros.geometry.epipolar.five_point` on num_hypotheses // 4 minimal sets
        (up to 10 real solutions each, all scored); ``'eight'``: 8-point minimal sets projected
        onto the essential manifold, about as fast but far less robust with many outliers or
        sideways motion (8-point minimal solutions are very noise sensitive).
    :param min_hypotheses: the adaptive stop comes after at least min_hypotheses // 4
        five-point sets (at most the cap; 256 = the cap of the default num_hypotheses: no early
        stop, see :func:`_five_point_hypotheses`; 0 = the RANSAC bound alone, the default:
        more hypotheses made far-field scenes worse, docs/BENCHMARKS.md).
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
        K2i = K1i if K2 is K1 else torch.linalg.inv(K2.detach().to(torch.float64))
        y1, y2 = _channels_first(x1, K1i), _channels_first(x2, K2i)
        L1, L2 = K1i[:, :2, :2].transpose(1, 2), K2i[:, :2, :2].transpose(1, 2)
        W = _sampson_features(y1, y2)
        E, r2 = _lo_msac(y1, y2, L1, L2, w, threshold_px, num_hypotheses, lo_iters, generator,
                         essential=True, five=minimal_solver == 'five', W_all=W,
                         min_hypotheses=min_hypotheses)
        near = w * (r2 < (REFINE_SPAN * threshold_px) ** 2)
        for round_ in range(REFINE_ROUNDS if refine_iters > 0 else 0):
            # each round refines on the points near the current model; a further round only
            # runs while that set still changes (more than REFINE_CHANGE of the points)
            E, r = _refine(E, y1, y2, L1, L2, near, threshold_px, refine_iters, NOISE_SCALE,
                           r2, W)
            if r is None:
                e, den = _model_terms(E.unsqueeze(1), W, L1, L2)
                r2 = e[:, 0].square().div_(den[:, 0])
            else:
                r2 = r.square()
            if round_ + 1 < REFINE_ROUNDS:
                new_near = w * (r2 < (REFINE_SPAN * threshold_px) ** 2)
                changed = ((new_near > 0) != (near > 0)).sum(1)
                if not bool((changed > REFINE_CHANGE * near.shape[1]).any()):
                    break
                near = new_near
        return _finish(E, r2, w, threshold_px, ok, x1.dtype)
