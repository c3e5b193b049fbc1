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

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from trianflow_ros.config import RansacConfig
from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.epipolar import (_design_matrix, _fix_sign, enforce_rank2,
                                             five_point, fundamental_from_essential,
                                             normalize_points, sampson_distance)
# refine_essential and the refinement helpers are part of this module's interface (tests)
from trianflow_ros.geometry.essential_refine import (  # noqa: F401
    _cayley, _refine, _sampson_rt, _STEP_MAP, _tangent_frame, refine_essential)
from trianflow_ros.geometry.msac import (Estimator, hypothesise, local_optimisation, Threshold,
                                         top_hypotheses)
from trianflow_ros.geometry.sampling import msac_score
from trianflow_ros.geometry.sampson import (  # noqa: F401
    _model_terms, _residuals, _sampson_features)
from trianflow_ros.geometry.threads import one_cpu_thread

MIN_POINTS = 8
SOLUTIONS_PER_SET = 4  # five-point sets = num_hypotheses // SOLUTIONS_PER_SET


# the tuning constants: the config section geometry.ransac (defaults: the measured ones,
# docs/BENCHMARKS.md); every estimator takes it as ``params`` (None: the defaults)
DEFAULT_PARAMS = RansacConfig()
REFINE_POINTS = DEFAULT_PARAMS.refine_points


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


def _sampson_r2(W: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor, dtype=None):
    """
    Return the residual function of the framework on the point features W.

    Models (B, K, 3, 3) -> squared pixel Sampson distances (B, K, N), with their Sampson
    denominators as aux.
    """
    def residuals(models: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        e, den = _model_terms(models if dtype is None else models.to(dtype), W, L1, L2)
        return e.square_().div_(den), den
    return residuals


def _gather_sets(y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Coordinates y (B, 2+, N) of index sets (B, S, k) as (B, S, k, 2)."""
    b, sets, k = idx.shape
    g = torch.gather(y[:, :2], 2, idx.reshape(b, 1, -1).expand(-1, 2, -1))
    return g.reshape(b, 2, sets, k).permute(0, 2, 3, 1)


def _five_point_solver(y1: torch.Tensor, y2: torch.Tensor):
    """
    Return the minimal solver of the framework: five-point sets on the rays.

    Sets (B, S, 5) -> up to 10 solutions each, (B, 10 S, 3, 3) of unit Frobenius norm, and
    their validity (real, non-degenerate roots). No normalisation: it would break the E
    structure.
    """
    def solve(idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, sets = idx.shape[:2]
        models, valid = five_point(_gather_sets(y1, idx), _gather_sets(y2, idx))
        models = models.reshape(b, sets * 10, 3, 3)
        valid = valid.reshape(b, sets * 10)
        return models / models.flatten(-2).norm(dim=-1).clamp(min=1e-30)[..., None, None], valid
    return solve


def _lo_msac(y1: torch.Tensor, y2: torch.Tensor, L1: torch.Tensor, L2: torch.Tensor,
             w: torch.Tensor, threshold_px: float, num_hypotheses: int, lo_iters: int,
             generator: Optional[torch.Generator], essential: bool, five: bool = False,
             W_all: Optional[torch.Tensor] = None, min_hypotheses: int = 0,
             params: RansacConfig = DEFAULT_PARAMS) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    LO-MSAC of E / F in affine-normalised coordinates y (float64, channels-first).

    On the framework of :mod:`~trianflow_ros.geometry.msac`.

    Hypotheses (:func:`~trianflow_ros.geometry.msac.hypothesise`): five-point sets on the rays
    in rounds of ``chunk_sets`` until the RANSAC bound for the best ratio of points within
    ``count_span`` thresholds is met (p = ``confidence``; at most num_hypotheses // 4 sets, at
    least min_hypotheses // 4: the bound assumes that any all-inlier set gives a good model,
    which fails for short baselines, whose minimal solutions scatter between the true pose and
    a rotation-translation ambiguity; 64 sets fixed a real TUM pair, but on far-field scenes
    more hypotheses found wrong models that fit the many far points best, so the default floor
    is 0), or num_hypotheses 8-point sets at once; ranked in float32 with a ``hyp_span`` times
    wider threshold on ``score_points`` points drawn by weight (preemptive scoring). Local
    optimisation (:func:`~trianflow_ros.geometry.msac.local_optimisation`) of the
    ``lo_topk`` best: Sampson-reweighted 8-point refits on the inliers of the current model,
    the threshold shrinking from ``lo_span`` times the threshold to the threshold.

    W_all: optional :func:`_sampson_features` of all the points, for the final distances.

    :return: the best model (B, 3, 3) in y coordinates and its squared pixel Sampson
        distances (B, N).
    """
    b, _, n = y1.shape
    thr2 = float(threshold_px) ** 2
    p = params

    def normalize(y1, y2, w):
        # normalisation of the y coordinates (H&Z Alg. 11.1 (i), per axis), both images at
        # once; models are mapped back by to_model with vec(M) = vec(Fn) kron(T2, T1)
        y = torch.stack((y1, y2), dim=1)                                  # (B, 2, 3, N)
        T = _axis_normalization(y, w.unsqueeze(1))                        # (B, 2, 3, 3)
        yn = T[..., :2, :2] @ y[..., :2, :] + T[..., :2, 2:]              # (B, 2, 2, N)
        kron = (T[:, 1, :, None, :, None] * T[:, 0, None, :, None, :]).reshape(b, 9, 9)
        return kron, yn[:, 0], yn[:, 1]

    def to_model(Fn: torch.Tensor, kron: torch.Tensor) -> torch.Tensor:
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
    score_points = p.score_points if five else 2 * p.score_points
    if n > score_points:
        sub = torch.multinomial(sample_w, score_points, replacement=True, generator=generator)
        sy1 = torch.gather(y1, 2, sub.unsqueeze(1).expand(-1, 3, -1))
        sy2 = torch.gather(y2, 2, sub.unsqueeze(1).expand(-1, 3, -1))
        sw = (torch.gather(w, 1, sub) > 0).float()
    else:
        sy1, sy2, sw = y1, y2, w.float()
    residuals = _sampson_r2(_sampson_features(sy1, sy2).float(), L1.float(), L2.float(),
                            torch.float32)
    thr_h2 = thr2 * p.hyp_span ** 2
    if five:
        cap = max(1, num_hypotheses // SOLUTIONS_PER_SET)
        est = Estimator(5, _five_point_solver(y1, y2), residuals)
        hyps = hypothesise(est, sample_w, sw, Threshold(thr_h2), cap, chunk_sets=p.chunk_sets,
                           confidence=p.confidence,
                           min_sets=-(-int(min_hypotheses) // SOLUTIONS_PER_SET),
                           count_threshold=thr_h2 * (p.count_span / p.hyp_span) ** 2,
                           generator=generator)
    else:
        kron, y1n, y2n = normalize(y1, y2, w)

        def solve(idx: torch.Tensor) -> torch.Tensor:
            # null vector of each 8 x 9 system (H&Z Alg. 11.1 (ii)): the last column of the
            # complete QR factorisation of A^T, cheaper and better conditioned than A^T A
            Q, _ = torch.linalg.qr(_design_matrix(_gather_sets(y1n, idx),
                                                  _gather_sets(y2n, idx)).transpose(-1, -2),
                                   mode='complete')
            return to_model(Q[..., 8], kron)

        est = Estimator(MIN_POINTS, solve, residuals)
        hyps = hypothesise(est, sample_w, sw, Threshold(thr_h2), num_hypotheses,
                           generator=generator)
    best = top_hypotheses(hyps, p.lo_topk if five else 2 * p.lo_topk)     # (B, k, 3, 3)

    # 2. local optimisation of the top-k hypotheses of every pair at once: Sampson-reweighted
    # least squares on the inliers of the current model. With weights w_i / |grad_i|^2 the
    # algebraic error (y2^T M y1)^2 (equal for the normalised points) becomes the squared
    # Sampson distance (H&Z Sec. 11.4.3).
    # for E and more than 4 x lo_points points, on a weighted random subset (drawn afresh: the
    # ranking subset would favour hypotheses that happen to fit it); the final refinement uses
    # all of them
    full = (y1, y2, w)
    if five and n > 4 * p.lo_points:
        sub = torch.multinomial(sample_w, p.lo_points, replacement=True, generator=generator)
        y1, y2 = (torch.gather(y, 2, sub.unsqueeze(1).expand(-1, 3, -1)) for y in (y1, y2))
        w = (torch.gather(w, 1, sub) > 0).to(w.dtype)
    kron, y1n, y2n = normalize(y1, y2, w)
    AA = _outer_rows(_design_rows(y1n, y2n))                              # (B, N, 81)

    def refit(lo_w: torch.Tensor) -> torch.Tensor:
        _, vecs = torch.linalg.eigh(_normal_matrices(AA, lo_w))
        return to_model(vecs[..., 0], kron)

    est = dataclasses.replace(est, residuals=_sampson_r2(_sampson_features(y1, y2), L1, L2),
                              refit=refit, reweight=lambda lo_w, den: lo_w / den,
                              min_refit_points=MIN_POINTS)
    model, r2, _ = local_optimisation(est, best, w, Threshold(thr2), lo_iters, span=p.lo_span,
                                      follow_candidate=True).best()
    if y1 is full[0]:
        return model, r2
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


def essential_quality(E: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor,
                      K2: torch.Tensor, threshold_px: float,
                      weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    MSAC quality of given essential matrices: the ``score`` of :func:`ransac_essential`.

    ``sum_i w_i (1 - min(d_i^2, thr^2) / thr^2)`` with ``d_i`` the pixel Sampson distance of
    ``F = K2^-T E K1^-1``; two models can be compared on any subset of the points (weight 0
    leaves a point out).

    :param E: (B, 3, 3) essential matrices.
    :param x1: (B, N, 2) pixels in image 1.
    :param x2: (B, N, 2) pixels in image 2.
    :param K1: (B, 3, 3) intrinsics of camera 1.
    :param K2: (B, 3, 3) intrinsics of camera 2.
    :param threshold_px: the inlier threshold (px).
    :param weights: (B, N) non-negative weights, None: all ones.
    :return: (B,) float64 quality (higher is better). Not differentiable.
    """
    check_shape(E, 'E', ('B', 3, 3))
    w = _prepare(x1, x2, weights, threshold_px, 1, 0)
    d = sampson_distance(fundamental_from_essential(E.detach().double(), K1.double(),
                                                    K2.double()), x1.double(), x2.double())
    d2 = torch.nan_to_num(d.square(), nan=float('inf'), posinf=float('inf'))
    return msac_score(d2, float(threshold_px) ** 2, w)


def _or_params(params: RansacConfig, **given) -> tuple:
    """Return the given values in order, each None replaced by the field of ``params``."""
    return tuple(getattr(params, k) if v is None else v for k, v in given.items())


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
                       *, threshold_px: Optional[float] = None,
                       num_hypotheses: Optional[int] = None, lo_iters: Optional[int] = None,
                       generator: Optional[torch.Generator] = None,
                       params: Optional[RansacConfig] = None) -> RansacResult:
    """
    Robust fundamental matrix by batched LO-MSAC with 8-point hypotheses (H&Z Alg. 11.4).

    Hypotheses are rank-2 8-point solutions of random minimal sets drawn in proportion to
    ``weights``; all are ranked at once by MSAC on the pixel Sampson distance (on at most
    ``params.score_points`` x 2 points drawn by weight); the best are refined ``lo_iters`` times by
    Sampson-reweighted 8-point fits on its inliers. Computed in float64 (scoring in float32).
    On CPU the call runs on one intra-op thread (restored afterwards, see
    :func:`~trianflow_ros.geometry.threads.one_cpu_thread`).

    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: pixel coordinates in image 2, shape (B, N, 2).
    :param weights: optional non-negative weights, shape (B, N); 0 excludes a point, so pairs
        of a batch may have different numbers of valid points.
    :param threshold_px: inlier threshold on the Sampson distance, in pixels (None:
        ``params.threshold_px``).
    :param num_hypotheses: minimal sets per pair (None: ``params.num_hypotheses``).
    :param lo_iters: local-optimisation iterations (None: ``params.lo_iters``).
    :param generator: torch.Generator (on the points' device) for reproducible sampling.
    :param params: the tuning constants, ``geometry.ransac`` of the config
        (:class:`~trianflow_ros.config.RansacConfig`; None: the defaults); an argument given
        (not None) replaces its field.
    :return: :class:`RansacResult` with model = F (x2^T F x1 = 0). A pair with fewer than 8
        positive weights gets a zero model, no inliers and score 0. Not differentiable.
    """
    p = DEFAULT_PARAMS if params is None else params
    threshold_px, num_hypotheses, lo_iters = _or_params(
        p, threshold_px=threshold_px, num_hypotheses=num_hypotheses, lo_iters=lo_iters)
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
                         w, threshold_px, num_hypotheses, lo_iters, generator, essential=False,
                         params=p)
        F = A2.transpose(1, 2) @ M @ A1
        F = F / F.flatten(1).norm(dim=1).clamp(min=1e-30)[:, None, None]
        return _finish(F, r2, w, threshold_px, ok, x1.dtype)


def ransac_essential(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                     weights: Optional[torch.Tensor] = None, *,
                     threshold_px: Optional[float] = None,
                     num_hypotheses: Optional[int] = None, lo_iters: Optional[int] = None,
                     generator: Optional[torch.Generator] = None,
                     refine_iters: Optional[int] = None, minimal_solver: str = 'five',
                     min_hypotheses: Optional[int] = None,
                     params: Optional[RansacConfig] = None
                     ) -> RansacResult:
    """
    Robust essential matrix by batched LO-MSAC plus a robust Sampson Gauss-Newton refinement.

    The points are mapped to rays y = K^-1 [x, 1]; hypotheses are the real five-point solutions
    of random minimal sets (or 8-point fits projected onto the essential manifold, H&Z
    Sec. 11.7.3), ranked with a wider threshold on a random subset. The pixel threshold
    needs no focal-length conversion: every model is scored by its exact pixel Sampson distance,
    that of F = K2^-T E K1^-1 (H&Z eq. 11.9), evaluated in ray coordinates (exact also for
    fx != fy). Five-point sets are drawn ``chunk_sets`` at a time until, for every pair, their
    number reaches log(1 - p) / log(1 - w^5) (p = ``confidence``, w = best ratio so far of points
    within ``count_span`` thresholds) or num_hypotheses // 4. The ``lo_topk`` best hypotheses get
    ``lo_iters`` Sampson-reweighted 8-point refits on their inliers (on ``lo_points`` points
    drawn by weight when N is more than 4 times that), then
    :func:`refine_essential` over (R, t) on the points within ``refine_span`` thresholds, with
    a Cauchy scale of ``noise_scale`` times the median Sampson distance of the pair (at most the
    threshold), repeated (at most ``refine_rounds`` times) while that set changes (the names are
    fields of :class:`~trianflow_ros.config.RansacConfig`). Computed in
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
        ``lo_span`` times the threshold to the threshold over them), on each of the
        ``lo_topk`` best hypotheses.
    :param generator: torch.Generator (on the points' device) for reproducible sampling.
    :param refine_iters: at most this many Levenberg-Marquardt iterations per refinement round
        (0 disables the refinement); it stops earlier once a step is far below the noise. With
        N >= 2 ``refine_points`` they run on every k-th point and one more step on all.
    :param minimal_solver: ``'five'`` (default):
        :func:`~trianflow_ros.geometry.epipolar.five_point` on num_hypotheses // 4 minimal sets
        (up to 10 real solutions each, all scored); ``'eight'``: 8-point minimal sets projected
        onto the essential manifold, about as fast but far less robust with many outliers or
        sideways motion (8-point minimal solutions are very noise sensitive).
    :param min_hypotheses: the adaptive stop comes after at least min_hypotheses // 4
        five-point sets (at most the cap; 256 = the cap of the default num_hypotheses: no early
        stop, see :func:`_lo_msac`; 0 = the RANSAC bound alone, the default:
        more hypotheses made far-field scenes worse, docs/BENCHMARKS.md).
    :param params: the tuning constants, ``geometry.ransac`` of the config
        (:class:`~trianflow_ros.config.RansacConfig`; None: the defaults). ``threshold_px``,
        ``num_hypotheses``, ``lo_iters``, ``refine_iters`` and ``min_hypotheses`` are its
        fields of those names unless given (not None) as arguments.
    :return: :class:`RansacResult` with model = E (y2^T E y1 = 0, singular values (s, s, 0)).
        A pair with fewer than 8 positive weights gets a zero model, no inliers and score 0.
        Not differentiable.
    """
    p = DEFAULT_PARAMS if params is None else params
    threshold_px, num_hypotheses, lo_iters, refine_iters, min_hypotheses = _or_params(
        p, threshold_px=threshold_px, num_hypotheses=num_hypotheses, lo_iters=lo_iters,
        refine_iters=refine_iters, min_hypotheses=min_hypotheses)
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
                         min_hypotheses=min_hypotheses, params=p)
        near = w * (r2 < (p.refine_span * threshold_px) ** 2)
        for round_ in range(p.refine_rounds if refine_iters > 0 else 0):
            # each round refines on the points near the current model; a further round only
            # runs while that set still changes (more than refine_change of the points)
            E, r = _refine(E, y1, y2, L1, L2, near, threshold_px, refine_iters, p.noise_scale,
                           p, r2, W)
            if r is None:
                e, den = _model_terms(E.unsqueeze(1), W, L1, L2)
                r2 = e[:, 0].square().div_(den[:, 0])
            else:
                r2 = r.square()
            if round_ + 1 < p.refine_rounds:
                new_near = w * (r2 < (p.refine_span * threshold_px) ** 2)
                changed = ((new_near > 0) != (near > 0)).sum(1)
                if not bool((changed > p.refine_change * near.shape[1]).any()):
                    break
                near = new_near
        return _finish(E, r2, w, threshold_px, ok, x1.dtype)
