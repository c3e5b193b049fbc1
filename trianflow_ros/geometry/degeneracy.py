"""
Degenerate two-view motion: detect pure rotation and standstill by model selection (GRIC).

A relative pose from an essential matrix needs translation: under a pure rotation every E of the
form ``[t]_x R`` fits the flow (t is unobservable; see the degeneracies of H&Z Sec. 11.9), and with
the camera standing still E is fitted to noise. TrianFlow (Zhao et al. 2020) names pure rotation as
a failure it cannot handle; its VO only switches to PnP below 5 px mean flow. Here the flow is
explained by nested models and Torr's geometric robust information criterion (GRIC: P. Torr, "An
assessment of information criteria for motion model selection", CVPR 1997; Torr, Fitzgibbon &
Zisserman, "The problem of degeneracy in structure and motion recovery from uncalibrated image
sequences", IJCV 1999; used for key-frame selection by Pollefeys et al., "Visual modeling with a
hand-held camera", IJCV 2004, and by DF-VO) picks the simplest one that the data supports:

=================  ==========  =============  ====================================
model              DoF ``k``   ``d`` (Torr)   relation in R^4 of ``(x1, x2)``
=================  ==========  =============  ====================================
identity (R = I)   0           2              ``x2 ~ K2 K1^-1 x1``
pure rotation      3           2              ``x2 ~ K2 R_21 K1^-1 x1``
homography         8           2              ``x2 ~ H x1`` (plane, or rotation)
essential / F      5 / 7       3              ``x2^T K2^-T E K1^-1 x1 = 0``
=================  ==========  =============  ====================================

The caller runs its E-RANSAC once and passes that model's Sampson distances; this module fits the
rotation (and homography) models itself and never imports the epipolar code.
"""

from dataclasses import dataclass
import enum
import math
from typing import Optional, Union

import torch

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.homography import (ransac_homography, ransac_rotation,
                                               sampson_homography)

#: Torr's truncation constant lambda3 of the robust cost rho (Torr 1997).
GRIC_LAMBDA3 = 2.0
#: Image noise (pixels per coordinate) assumed where it cannot be estimated.
DEFAULT_SIGMA_PX = 0.8
#: sigma = 1.4826 * median |e| for zero-mean Gaussian e (the normal MAD consistency constant).
MAD_TO_SIGMA = 1.4826
#: Default standstill threshold on the median displacement, in multiples of the image noise.
STANDSTILL_SIGMAS = 2.5


def gric(residuals_sq: torch.Tensor, sigma: Union[float, torch.Tensor], *, data_dim: int,
         model_dof: int, structure_dim: int = 4,
         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Torr's geometric robust information criterion of a fitted relation (lower is better).

    ``GRIC = sum_i rho(e_i^2 / sigma^2) + lambda1 * d * n + lambda2 * k`` with

    - ``e_i``: the residual of correspondence i, the (first-order) distance in the joint image
      space R^r from the data point ``(u1, v1, u2, v2)`` to the model's variety, in pixels (the
      Sampson distance of the epipolar or homography model); ``residuals_sq`` holds ``e_i^2``;
    - ``sigma``: the standard deviation of the image noise on each coordinate, in pixels;
    - ``rho(x) = min(x, lambda3 * (r - d))``: the robust (truncated) cost, so that an outlier
      costs as much as an inlier lying at the edge of the model's ``lambda3``-sigma region;
    - ``n``: the number of correspondences (the sum of ``mask``);
    - ``r`` = ``structure_dim``: the dimension of one datum, 4 for a pair of 2D points;
    - ``d`` = ``data_dim``: the dimension of the model's variety in R^r, i.e. the number of
      parameters of the structure each datum is explained by: 2 for a homography or a pure
      rotation (``x2`` is a function of ``x1``), 3 for an epipolar relation (E or F: ``x1`` plus a
      depth);
    - ``k`` = ``model_dof``: the number of model parameters: 0 identity, 3 rotation, 5 E, 7 F,
      8 H;
    - ``lambda1 = log(r)``: the cost per structure parameter (one per dimension of d per point);
    - ``lambda2 = log(r * n)``: the cost per model parameter (BIC-like, grows with the data);
    - ``lambda3 = 2``: the truncation constant of ``rho``.

    Not meant for gradients (the criterion is a selection score; ``min`` has a kink).

    :param residuals_sq: squared residuals ``e_i^2`` in pixels^2, shape (B, N).
    :param sigma: noise standard deviation in pixels, a float or a tensor of shape (B,).
    :param data_dim: d, the variety dimension of the model (Torr's d), 0 <= d < r.
    :param model_dof: k, the number of model parameters, >= 0.
    :param structure_dim: r, the dimension of one datum (4 for two views).
    :param mask: which residuals count, bool or 0/1 (or fractional weights), shape (B, N);
        None counts all.
    :return: GRIC per batch element, shape (B,).
    """
    check_shape(residuals_sq, 'residuals_sq', ('B', 'N'))
    if not 0 <= data_dim < structure_dim:
        raise ValueError(f'data_dim (d in Torr 1997, the dimension of the model variety) must '
                         f'be in [0, structure_dim) = [0, {structure_dim}), got {data_dim}')
    if model_dof < 0:
        raise ValueError(f'model_dof must be >= 0, got {model_dof}')
    sigma = torch.as_tensor(sigma, dtype=residuals_sq.dtype, device=residuals_sq.device)
    if sigma.dim() == 1:
        check_shape(sigma, 'sigma', (residuals_sq.shape[0],))
        sigma = sigma.unsqueeze(-1)
    elif sigma.dim() != 0:
        raise ValueError(f'sigma must be a float or shape (B,), got {tuple(sigma.shape)}')
    if bool((sigma <= 0).any()):
        raise ValueError('sigma must be positive')
    if mask is None:
        m = torch.ones_like(residuals_sq)
    else:
        check_shape(mask, 'mask', tuple(residuals_sq.shape))
        m = mask.to(residuals_sq.dtype)
    r, d = float(structure_dim), float(data_dim)
    lambda1 = math.log(r)
    n = m.sum(-1)
    lambda2 = torch.log((r * n).clamp(min=1.0))
    e2 = torch.nan_to_num(residuals_sq / sigma ** 2, nan=float('inf'))
    rho = e2.clamp(max=GRIC_LAMBDA3 * (r - d))
    return (m * rho).sum(-1) + lambda1 * d * n + lambda2 * model_dof


def estimate_sigma(epipolar_residuals: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   iterations: int = 2) -> torch.Tensor:
    """
    Estimate the image noise from the Sampson distances of a fitted epipolar model.

    An epipolar relation leaves one residual dimension (r - d = 1), so for inliers
    ``e ~ N(0, sigma^2)`` and ``sigma = 1.4826 * median |e|``. Outliers inflate the plain median
    (40 % of them about doubles it), so the median is taken again over ``|e| < 3 sigma`` of the
    previous estimate, ``iterations`` times; truncating at 3 sigma or more biases it by < 0.5 %.
    Rows without a finite residual get :data:`DEFAULT_SIGMA_PX`.

    Not differentiable.

    :param epipolar_residuals: Sampson distances in pixels, shape (B, N); inf marks unusable.
    :param mask: points to use, bool, shape (B, N); None uses all.
    :param iterations: outlier-trimming rounds after the first estimate.
    :return: sigma in pixels, shape (B,).
    """
    check_shape(epipolar_residuals, 'epipolar_residuals', ('B', 'N'))
    e = epipolar_residuals.detach().abs()
    usable = torch.isfinite(e)
    if mask is not None:
        check_shape(mask, 'mask', tuple(e.shape))
        usable = usable & mask.bool()
    nan = torch.full_like(e, float('nan'))
    sigma = MAD_TO_SIGMA * torch.nanmedian(torch.where(usable, e, nan), dim=1).values
    for _ in range(iterations):
        keep = usable & (e < 3.0 * sigma.unsqueeze(-1))
        trimmed = MAD_TO_SIGMA * torch.nanmedian(torch.where(keep, e, nan), dim=1).values
        sigma = torch.where(torch.isnan(trimmed), sigma, trimmed)
    return torch.nan_to_num(sigma, nan=DEFAULT_SIGMA_PX)


class MotionType(enum.IntEnum):
    """What two views of a static scene allow the odometry to estimate."""

    #: translation and rotation observable: use the essential matrix (and its scale).
    GENERAL = 0
    #: no measurable parallax: update the rotation only (``R_21``), keep the translation 0.
    PURE_ROTATION = 1
    #: no measurable motion: hold the pose (``R_21`` = I, t = 0).
    STANDSTILL = 2
    #: a homography explains the flow better than E but a rotation does not (a dominant plane
    #: seen with translation); only reported when ``detect_planar=True``. E remains valid.
    PLANAR = 3


@dataclass
class MotionClassification:
    """
    Result of :func:`classify_motion`; every field has batch size B.

    :ivar motion: :class:`MotionType` values, int64 tensor of shape (B,).
    :ivar R_21: rotation of camera 1 into camera 2 for PURE_ROTATION (the rotation model's fit),
        the identity for STANDSTILL, the rotation-only fit for GENERAL / PLANAR (biased by the
        translation: use the essential matrix there), shape (B, 3, 3).
    :ivar flow_px: median displacement ``|x2 - x1|`` over the points that entered the GRIC
        (explained by some model; all points of positive weight if none is), pixels (B,).
    :ivar gric_identity: GRIC of the standstill model R = I (k = 0, d = 2), (B,).
    :ivar gric_rotation: GRIC of the pure-rotation model (k = 3, d = 2), (B,).
    :ivar gric_homography: GRIC of the general homography (k = 8, d = 2), (B,).
    :ivar gric_epipolar: GRIC of the caller's epipolar model (k = 5 for E or 7 for F, d = 3), (B,).
    :ivar num_points: correspondences that entered the GRIC (inliers of at least one model), (B,).
    :ivar sigma_px: GRIC's sigma: the given ``sigma_px``, or ``sigma_scale`` times the noise
        estimated from the epipolar residuals, pixels (B,).
    :ivar rotation_inliers: inliers of the rotation model's RANSAC, (B, N) bool.
    :ivar off_plane_share: share of the epipolar model's inliers (among the points that entered
        the GRIC) that the homography does not explain, (B,): ~0 for a scene that is one
        plane, larger where structure lies off the plane (a road under facades).
    """

    motion: torch.Tensor
    R_21: torch.Tensor
    flow_px: torch.Tensor
    gric_identity: torch.Tensor
    gric_rotation: torch.Tensor
    gric_homography: torch.Tensor
    gric_epipolar: torch.Tensor
    num_points: torch.Tensor
    sigma_px: torch.Tensor
    rotation_inliers: torch.Tensor
    off_plane_share: Optional[torch.Tensor] = None

    def types(self):
        """Return the motion of every batch element as a list of :class:`MotionType`."""
        return [MotionType(int(m)) for m in self.motion.tolist()]


def _noise(epipolar_residuals: torch.Tensor, valid: torch.Tensor, dtype: torch.dtype,
           sigma_px: Optional[float], sigma_scale: float, min_sigma_px: float):
    """Return |e| of the epipolar model (inf where unusable), the noise and GRIC's sigma (B,)."""
    e_epi = epipolar_residuals.detach().to(dtype).abs()
    e_epi = torch.where(torch.isfinite(e_epi), e_epi, torch.full_like(e_epi, float('inf')))
    if sigma_px is None:
        noise = estimate_sigma(e_epi, valid).clamp(min=min_sigma_px)
        return e_epi, noise, sigma_scale * noise
    noise = torch.full(e_epi.shape[:1], float(sigma_px), dtype=dtype, device=e_epi.device)
    return e_epi, noise, noise


def off_plane_share(x1: torch.Tensor, x2: torch.Tensor, epipolar_residuals: torch.Tensor,
                    weights: Optional[torch.Tensor] = None, *,
                    sigma_px: Optional[float] = None, sigma_scale: float = 2.0,
                    min_sigma_px: float = 0.25, gate_sigmas: float = 3.0,
                    num_hypotheses: int = 64, lo_iters: int = 1,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """
    Return the share of the epipolar inliers that the best homography found does not explain.

    The ``off_plane_share`` of :func:`classify_motion` alone, from a smaller homography RANSAC
    and without the rotation model or the GRIC: a quick test of whether one plane can dominate
    the pair. The noise, the gate and the share are those of :func:`classify_motion` (same
    arguments); only the search is shorter. A plane that explains a share p of the points is
    found by n 4-point sets with probability ``1 - (1 - p^4)^n``: for p >= 0.85 and the default
    64 sets that is 1 - 1e-20, and one local-optimisation round fits it to all its points. So a
    pair whose share here is well above a planarity bound is, with overwhelming probability,
    not a plane for :func:`classify_motion` either (measured on KITTI 06 at 832x256: 0.47-0.68
    from both); the share can only be larger here where the shorter search misses a plane that
    explains fewer points.

    Not differentiable.

    :param x1: pixel coordinates in image 1, shape (B, N, 2).
    :param x2: matching pixel coordinates in image 2, shape (B, N, 2).
    :param epipolar_residuals: Sampson distances (px) to the caller's epipolar model, (B, N);
        +inf where it failed.
    :param weights: as :func:`classify_motion`; so are ``sigma_px``, ``sigma_scale``,
        ``min_sigma_px``, ``gate_sigmas``, ``lo_iters`` and ``generator``.
    :param num_hypotheses: 4-point sets of the homography RANSAC.
    :return: the share in [0, 1], shape (B,) (0 where there is no epipolar inlier).
    """
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', tuple(x1.shape))
    check_shape(epipolar_residuals, 'epipolar_residuals', tuple(x1.shape[:2]))
    with torch.no_grad():
        x1, x2 = x1.detach(), x2.detach()
        w = (torch.ones_like(x1[..., 0]) if weights is None
             else weights.detach().to(x1.dtype))
        check_shape(w, 'weights', tuple(x1.shape[:2]))
        valid = w > 0
        e_epi, _, sigma = _noise(epipolar_residuals, valid, x1.dtype, sigma_px, sigma_scale,
                                 min_sigma_px)
        thr = gate_sigmas * math.sqrt(2.0) * sigma      # transfer error: noise of both images
        hom = ransac_homography(x1.float(), x2.float(), w.float(),
                                threshold_px=thr.float(), num_hypotheses=num_hypotheses,
                                lo_iters=lo_iters, generator=generator)
        e2_h = sampson_homography(hom.model.to(x1.dtype), x1, x2).square()
        gate = ((gate_sigmas * sigma) ** 2).unsqueeze(-1)                   # (B, 1)
        return _share_off_plane(valid & (e_epi.square() < gate), e2_h, gate)


def _share_off_plane(e_inliers: torch.Tensor, e2_plane: torch.Tensor, gate: torch.Tensor
                     ) -> torch.Tensor:
    """Share (B,) of the E inliers whose squared homography distance is not below the gate."""
    off = e_inliers & ~(e2_plane < gate)                # a non-finite distance is off the plane
    return off.sum(-1).to(e2_plane.dtype) / e_inliers.sum(-1).clamp(min=1).to(e2_plane.dtype)


def classify_motion(x1: torch.Tensor, x2: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                    epipolar_residuals: torch.Tensor,
                    weights: Optional[torch.Tensor] = None, *,
                    sigma_px: Optional[float] = None, sigma_scale: float = 2.0,
                    min_sigma_px: float = 0.25,
                    standstill_px: Optional[float] = None, epipolar_dof: int = 5,
                    gate_sigmas: float = 3.0, num_hypotheses: int = 128, lo_iters: int = 3,
                    detect_planar: bool = False,
                    generator: Optional[torch.Generator] = None) -> MotionClassification:
    """
    Classify two-view motion as general, pure rotation or standstill (GRIC model selection).

    Steps, all batched (each element is classified as it would be alone, up to the random
    draws of the RANSACs):

    1. Noise: ``sigma_px`` if given (then sigma = noise), else ``noise`` =
       :func:`estimate_sigma` of the caller's epipolar residuals (floored at ``min_sigma_px``)
       and the GRIC works at ``sigma = sigma_scale * noise``.
    2. Fit the rotation model by :func:`ransac_rotation` and the homography by
       :func:`ransac_homography` (transfer-error threshold ``gate_sigmas * sqrt(2) * sigma``, as
       the transfer error carries the noise of both images); take the Sampson distances of the
       identity, rotation and homography models (:func:`sampson_homography`), which are
       directly comparable with the caller's epipolar Sampson distances (both approximate the
       distance in R^4 of ``(u1, v1, u2, v2)`` to the model's variety).
    3. Keep the correspondences that some model explains (Sampson distance below
       ``gate_sigmas * sigma``). Junk matches (moving objects, flow failures) would otherwise
       be charged GRIC's truncation cost ``lambda3 (r - d)``, which is larger for the
       2-dimensional models than for E, so that the choice drifts to E as outliers grow (at
       40 % junk, ungated GRIC already prefers E for a pure rotation); they would also inflate
       the median displacement ``flow_px``, which is taken over the kept points.
    4. :func:`gric` of each model on the kept points, and decide:

       - STANDSTILL if ``flow_px < standstill_px`` and the identity (R = I) has the lowest
         GRIC of identity, rotation and epipolar model (neither the fitted rotation nor a
         translation is significant);
       - PURE_ROTATION, else, if ``GRIC(rotation) <= GRIC(epipolar)``: the parallax the
         rotation leaves unexplained is not worth E's extra dimension and parameters;
       - PLANAR (only with ``detect_planar``), else, if ``GRIC(H) < GRIC(epipolar)``;
       - GENERAL otherwise.

    Why these defaults:

    - ``sigma_px = None`` (estimate per pair): GRIC is asymmetric in sigma. An underestimate
      truncates every residual, which favours the model of higher dimension (E) and turns pure
      rotations and standstills into GENERAL, the costly failure (the VO would triangulate
      with a meaningless translation): with a fixed 0.8 px and 1.5 px of real noise every pure
      rotation and standstill was GENERAL. An overestimate only lets a translation whose
      parallax is about sigma pass as a rotation (a small translation lost for this frame).
      The estimate follows the noise (measured: correct classes for 0.2-2 px noise with 10 %
      and 40 % junk). A fixed value (e.g. 0.8 px, DF-VO's choice for this criterion) makes the
      result independent of the epipolar fit; err on the large side.
    - ``sigma_scale = 2``: at the measured noise GRIC already detects translations whose
      parallax is about one sigma, where E's direction is unreliable (measured, 0.4 px noise,
      scene at 30-50 m, 10 cm forward: GENERAL at sigma = noise, but OpenCV's recoverPose gave
      a median direction error of 148 deg, i.e. the sign of t flips). Doubling sigma asks for
      parallax well above the noise; such frames are reported PURE_ROTATION (rotation kept).
      This matches a fixed 0.8 px at 0.4 px noise.
    - ``min_sigma_px = 0.25``: flow correspondences are not more accurate than about a quarter
      pixel; the floor keeps an over-fitted or noise-free E from collapsing the noise.
    - ``standstill_px = None``, i.e. ``2.5 * noise`` (the unscaled noise; 2 px at 0.8 px):
      under noise only the median displacement is ``1.67 * noise`` (Rayleigh median of
      ``sqrt(2) * noise``). 2 px is about 0.16 deg of rotation at f = 718 px - a real rotation
      of that size is kept, as the identity then loses to the rotation model (0.1 deg is
      reported PURE_ROTATION) - or about 0.1 m of forward motion in a 15 m deep scene, which is
      STANDSTILL unless GRIC finds its parallax significant.
    - For PURE_ROTATION and STANDSTILL the VO should keep its reference (key) frame for the
      translation, so that slow motion accumulates parallax over the next frames instead of
      being lost frame by frame.
    - ``gate_sigmas = 3``: keeps 99 % of the inliers of the 2-dimensional models
      (chi^2_2 < 9) and 99.7 % of the epipolar ones.

    Known limits (measured on synthetic KITTI-like scenes, 0.4 px noise, 10 % junk matches,
    defaults):

    - A translation whose parallax is comparable to sigma is reported as PURE_ROTATION: 5 cm
      forward (2 deg rotation) in a 2-50 m scene, 10 cm forward (20 cm sideways) with the
      whole scene at 30-50 m. That is honest - an E fitted to such a pair gives a translation
      direction off by 5-150 deg (median over 10 pairs; sign flips in the far scene) - and the
      rotation estimate stays accurate; that frame's translation is lost. The switch is sharp:
      10 cm (2-50 m) or 20 cm (30-50 m) forward is GENERAL. More noise moves it up.
    - GENERAL only says that the translation is detectable, not that its direction is
      accurate: just above the switch E's direction can still be off by 10-40 deg and its
      sign can flip (far scene, 20 cm: median error 19 deg, worst 163 deg).
    - A scene that is a single plane seen under translation is explained by a homography but
      not by a rotation, so it stays GENERAL (or PLANAR with ``detect_planar``).
    - The estimated sigma trusts the caller's epipolar fit; pass +inf residuals where that fit
      failed (such rows fall back to :data:`DEFAULT_SIGMA_PX`).

    Not differentiable. Memory is O(B * num_hypotheses * N) for the hypothesis scoring.

    :param x1: pixel coordinates in image 1, shape (B, N, 2), at least 4 of positive weight.
    :param x2: matching pixel coordinates in image 2, shape (B, N, 2).
    :param K1: intrinsics of camera 1, shape (B, 3, 3).
    :param K2: intrinsics of camera 2, shape (B, 3, 3).
    :param epipolar_residuals: Sampson distances (pixels, not squared) of the caller's robustly
        fitted epipolar model (E via ``fundamental_from_essential``, or F), shape (B, N). Where
        that fit failed, pass +inf: a zero model has zero Sampson distances and would win.
    :param weights: non-negative weights, shape (B, N), steering the RANSAC sampling and
        scoring; 0 excludes a point; in the GRIC every point of positive weight counts once.
        None: all ones.
    :param sigma_px: image noise standard deviation per coordinate, pixels, used as GRIC's
        sigma; None estimates the noise from ``epipolar_residuals`` per batch element.
    :param sigma_scale: GRIC's sigma in multiples of the estimated noise (not applied to a
        given ``sigma_px``).
    :param min_sigma_px: floor of the estimated noise, pixels.
    :param standstill_px: median displacement below which standstill is possible, pixels;
        None means ``2.5 * noise``.
    :param epipolar_dof: k of the epipolar model: 5 for E (calibrated), 7 for F.
    :param gate_sigmas: a point enters the GRIC if some model explains it within this many sigma.
    :param num_hypotheses: RANSAC hypotheses of the rotation model (the homography uses twice).
    :param lo_iters: local-optimisation rounds of both RANSACs.
    :param detect_planar: report PLANAR instead of GENERAL where the homography wins.
    :param generator: torch.Generator on the points' device, for reproducible results.
    :return: :class:`MotionClassification`.
    """
    check_shape(x1, 'x1', ('B', 'N', 2))
    check_shape(x2, 'x2', ('B', 'N', 2))
    check_shape(K1, 'K1', ('B', 3, 3))
    check_shape(K2, 'K2', ('B', 3, 3))
    check_shape(epipolar_residuals, 'epipolar_residuals', ('B', 'N'))
    if x1.shape != x2.shape or epipolar_residuals.shape != x1.shape[:2] \
            or K1.shape[0] != x1.shape[0] or K2.shape[0] != x1.shape[0]:
        raise ValueError(
            f'x1 {tuple(x1.shape)}, x2 {tuple(x2.shape)}, K1 {tuple(K1.shape)}, K2 '
            f'{tuple(K2.shape)} and epipolar_residuals {tuple(epipolar_residuals.shape)} must '
            f'agree on B and N')
    options = {'sigma_px': 1.0 if sigma_px is None else sigma_px, 'sigma_scale': sigma_scale,
               'min_sigma_px': min_sigma_px, 'gate_sigmas': gate_sigmas}
    for name, value in options.items():
        if not value > 0:
            raise ValueError(f'{name} must be positive, got {value}')
    if standstill_px is not None and not standstill_px >= 0:
        raise ValueError(f'standstill_px must be >= 0 or None, got {standstill_px}')
    if epipolar_dof not in (5, 7):
        raise ValueError(f'epipolar_dof must be 5 (E) or 7 (F), got {epipolar_dof}')
    with torch.no_grad():
        x1, x2 = x1.detach(), x2.detach()
        K1, K2 = K1.detach().to(x1.dtype), K2.detach().to(x1.dtype)
        if weights is None:
            weights = torch.ones_like(x1[..., 0])
        check_shape(weights, 'weights', tuple(x1.shape[:2]))
        w = weights.detach().to(x1.dtype)
        valid = w > 0
        b = x1.shape[0]
        eye = torch.eye(3, dtype=x1.dtype, device=x1.device).expand(b, 3, 3)

        # 1. noise level: given, or from the epipolar residuals (1 DoF: median |e| = 0.674 sigma)
        e_epi, noise, sigma = _noise(epipolar_residuals, valid, x1.dtype, sigma_px, sigma_scale,
                                     min_sigma_px)

        # 2. fit the 2-dimensional models; residuals as Sampson distances (squared)
        # the RANSACs in float32 (a quarter faster on CPU; pixels of a few thousand keep ~1e-4 px),
        # the models' Sampson distances and the GRIC in the caller's dtype
        thr = gate_sigmas * math.sqrt(2.0) * sigma      # transfer error: noise of both images
        f1, f2, k1, k2, wf = (v.float() for v in (x1, x2, K1, K2, w))
        rot = ransac_rotation(f1, f2, k1, k2, wf, threshold_px=thr.to(f1.dtype),
                              num_hypotheses=num_hypotheses, lo_iters=lo_iters,
                              generator=generator)
        hom = ransac_homography(f1, f2, wf, threshold_px=thr.to(f1.dtype),
                                num_hypotheses=2 * num_hypotheses, lo_iters=lo_iters,
                                generator=generator)
        R_21, H = rot.model.to(x1.dtype), hom.model.to(x1.dtype)
        K1inv = torch.linalg.inv(K1)
        e2 = torch.stack([sampson_homography(M, x1, x2).square()
                          for M in (K2 @ K1inv, K2 @ R_21 @ K1inv, H)], dim=1)
        e2 = torch.where(torch.isfinite(e2), e2, torch.full_like(e2, float('inf')))  # (B, 3, N)
        e2_epi = e_epi.square()

        # 3. gate: inliers of at least one model
        gate = ((gate_sigmas * sigma) ** 2).unsqueeze(-1)                   # (B, 1)
        explained = (e2 < gate.unsqueeze(1)).any(dim=1) | (e2_epi < gate)
        m = valid & explained                     # every point counts once, whatever its weight

        # median displacement of these points (junk matches would inflate it)
        flow = (x2 - x1).norm(dim=-1)
        nan = torch.full_like(flow, float('nan'))
        flow_px = torch.nanmedian(torch.where(m, flow, nan), dim=1).values
        flow_all = torch.nanmedian(torch.where(valid, flow, nan), dim=1).values
        flow_px = torch.where(torch.isnan(flow_px), flow_all, flow_px)

        # 4. GRIC and decision
        g_id = gric(e2[:, 0], sigma, data_dim=2, model_dof=0, mask=m)
        g_rot = gric(e2[:, 1], sigma, data_dim=2, model_dof=3, mask=m)
        g_hom = gric(e2[:, 2], sigma, data_dim=2, model_dof=8, mask=m)
        g_epi = gric(e2_epi, sigma, data_dim=3, model_dof=epipolar_dof, mask=m)

        still_px = STANDSTILL_SIGMAS * noise if standstill_px is None else standstill_px
        standstill = (flow_px < still_px) & (g_id <= g_rot) & (g_id <= g_epi)
        rotation = ~standstill & (g_rot <= g_epi)
        motion = torch.full((b,), int(MotionType.GENERAL), dtype=torch.int64, device=x1.device)
        if detect_planar:
            planar = ~standstill & ~rotation & (g_hom < g_epi)
            motion = torch.where(planar, int(MotionType.PLANAR), motion)
        motion = torch.where(rotation, int(MotionType.PURE_ROTATION), motion)
        motion = torch.where(standstill, int(MotionType.STANDSTILL), motion)
        R_21 = torch.where(standstill[:, None, None], eye, R_21)
        off_plane = _share_off_plane(m & (e2_epi < gate), e2[:, 2], gate)
    return MotionClassification(motion=motion, R_21=R_21, flow_px=flow_px, gric_identity=g_id,
                                gric_rotation=g_rot, gric_homography=g_hom, gric_epipolar=g_epi,
                                num_points=m.sum(-1), sigma_px=sigma,
                                rotation_inliers=rot.inliers, off_plane_share=off_plane)
