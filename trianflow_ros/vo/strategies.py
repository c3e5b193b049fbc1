"""
The ways a VO pair (keyframe -> current frame) gets its pose: one function per strategy.

Each function takes a :class:`PairContext` and returns a frozen
:class:`~trianflow_ros.vo.state.PairEstimate`, or None when it cannot give a pose; the odometry
(:mod:`trianflow_ros.vo.odometry`) tries them in the order of its decision:

- :func:`hold`: standstill (GRIC: the identity explains the flow): T = I.
- :func:`essential`: the translation is observable (the parallax vote of
  :func:`~trianflow_ros.geometry.pose.choose_pose` has a clear winner): R and the direction
  of t from E, the length of t from the triangulated inliers fitted to the keyframe's depth
  (log-domain weighted fit, :func:`~trianflow_ros.geometry.scale.fit_scale` ``'log'``);
  without keyframe depth the first pair gets ``vo.initial_scale``, later ones the last speed.
- :func:`pnp`: PnP-RANSAC of the keyframe depth back-projected at the matches (the original's
  fallback below 5 px of flow; here whenever the translation is not observable from E, or the
  scale fit had too few points).
- :func:`rotation`: no depth and no observable translation: R of the rotation model, t = 0
  relative to the keyframe (the keyframe is kept so that parallax accumulates).
"""

from dataclasses import dataclass
import functools
import math
from typing import Callable, Optional

import numpy as np
import torch

from trianflow_ros.config import Config
from trianflow_ros.geometry.camera import backproject_pixels, project
from trianflow_ros.geometry.degeneracy import MotionClassification, MotionType
from trianflow_ros.geometry.depth_map import sample_known
from trianflow_ros.geometry.epipolar import fundamental_from_essential, sampson_distance
from trianflow_ros.geometry.lie import hat
from trianflow_ros.geometry.pnp import pnp_ransac
from trianflow_ros.geometry.pose import PoseChoice
from trianflow_ros.geometry.ransac import RansacResult
from trianflow_ros.geometry.scale import fit_scale
from trianflow_ros.geometry.se3 import transform_points
from trianflow_ros.geometry.triangulation import (midpoint_triangulate, positive_depth_mask,
                                                  ray_angle)
from trianflow_ros.vo import covariance as cov
from trianflow_ros.vo.matches import Matches
from trianflow_ros.vo.state import Frame, Keyframe, PairEstimate

MAD_TO_SIGMA = 1.4826
#: Floor of the matching noise (px) used for the triangulation uncertainties.
MIN_NOISE_PX = 0.1
#: The quantile of the inliers' parallax that decides a keyframe. Not the median: the near
#: matches, which carry the parallax, are the first the flow loses as the baseline grows, so
#: the median of the survivors stays low while the pair degrades.
PARALLAX_QUANTILE = 0.9

#: Correct the log-depth bias of triangulated points (sigma^2 / 2, see ``essential``).
LOG_DEPTH_BIAS = True
#: ... only up to this log-depth sigma (the second-order term is no model of worse points).
LOG_BIAS_MAX_SIGMA = 0.1


def log_bias_factor(sigma: torch.Tensor) -> torch.Tensor:
    """
    Return exp(-sigma^2 / 2): the factor that removes the log bias of a triangulated depth.

    A depth is ~ 1 / parallax; with parallax noise its log is biased up by sigma^2 / 2 to
    second order (sigma = noise / parallax, the log-depth sigma). Sigmas are clamped at
    :data:`LOG_BIAS_MAX_SIGMA`.

    :param sigma: log-depth sigmas, any shape.
    :return: factors in (0, 1], same shape.
    """
    return torch.exp(-0.5 * sigma.clamp(max=LOG_BIAS_MAX_SIGMA).square())


@dataclass(frozen=True)
class PairContext:
    """
    Everything a strategy reads (nothing is written).

    :ivar cfg: the configuration.
    :ivar kf: the keyframe.
    :ivar cur: the current frame.
    :ivar m: the matches (raw and pinhole pixels).
    :ivar ransac: the E-RANSAC of the pinhole matches.
    :ivar e_ok: whether that E has enough inliers to be used.
    :ivar residuals: (1, N) Sampson distances of the matches to E (+inf when not e_ok).
    :ivar classify: computes the GRIC motion classification (:attr:`cls`) when first read: a
        pair whose translation is observable and that has no dominant plane never needs it.
    :ivar generator: torch.Generator of the pair.
    :ivar noise_px: robust spread of the E inliers' residuals (px).
    :ivar last_speed: translation norm per frame of the last translated motion.
    :ivar scale_defined: whether the odometry unit is already fixed (not the first pair).
    :ivar subset: (k,) indices of the matches the classification ran on.
    :ivar max_depth: the depth provider's depths beyond this are not used (0: no limit).
    :ivar scale_fits: where :func:`essential` appends a :class:`ScaleFitRecord` of every
        scale it fits to the keyframe's structure (None: nothing is recorded).
    """

    cfg: Config
    kf: Keyframe
    cur: Frame
    m: Matches
    ransac: RansacResult
    e_ok: bool
    residuals: torch.Tensor
    classify: Callable[[], MotionClassification]
    generator: torch.Generator
    noise_px: float
    last_speed: float
    scale_defined: bool
    subset: torch.Tensor
    max_depth: float = 0.0
    scale_fits: Optional[list] = None

    @functools.cached_property
    def cls(self) -> MotionClassification:
        """Return the GRIC motion classification (computed on the first read)."""
        return self.classify()

    @property
    def classified(self) -> bool:
        """Return whether :attr:`cls` has been computed."""
        return 'cls' in self.__dict__

    @property
    def motion(self) -> MotionType:
        """
        Return the GRIC class of the pair; GENERAL where the classification was not needed.

        The odometry skips it only where the parallax vote found the translation observable
        and the quick plane test found no dominant plane (``VisualOdometry._solve``).
        """
        return self.cls.types()[0] if self.classified else MotionType.GENERAL


@dataclass(frozen=True)
class ScaleFitRecord:
    """
    What one pair's scale was fitted to (a diagnostic: ``bench/scale_bias.py``).

    The scale solves ``scale * depth ~ target`` over ``used`` (the fit's inliers), weighted by
    ``weights``: ``log scale`` is their weighted mean log ratio (``geometry.scale.method``
    ``log``).

    :ivar keyframe: index of the keyframe's frame.
    :ivar frame: index of the current frame.
    :ivar u1: (N, 2) float64 pinhole pixels of the matches in the keyframe.
    :ivar depth: (N,) float64 their depth triangulated with the unit translation (after the log
        bias correction), keyframe camera.
    :ivar target: (N,) float64 the keyframe structure's depth (0 = unknown).
    :ivar weights: (N,) float64 the fit's weights.
    :ivar used: (N,) bool the points the final fit averaged.
    :ivar age: (N,) int64 keyframes a tracked map point has been fused over (-1: not a map
        point).
    :ivar scale: the fitted scale.
    """

    keyframe: int
    frame: int
    u1: torch.Tensor
    depth: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor
    used: torch.Tensor
    age: torch.Tensor
    scale: float


def _record_fit(ctx: PairContext, depth: torch.Tensor, target: torch.Tensor,
                weights: torch.Tensor, used: torch.Tensor, scale: float) -> None:
    """Append the final scale fit of the pair to ``ctx.scale_fits`` (see the class)."""
    m, kf = ctx.m, ctx.kf
    age = torch.full((m.count,), -1, dtype=torch.int64)
    if m.num_tracked > 0 and kf.points is not None:
        age[:m.num_tracked] = kf.points.age[0, m.track_index].cpu()
    ctx.scale_fits.append(ScaleFitRecord(
        keyframe=kf.frame.index, frame=ctx.cur.index, u1=m.u1[0].detach().cpu().double(),
        depth=depth[0].detach().cpu().double(), target=target[0].detach().cpu().double(),
        weights=weights[0].detach().cpu().double(), used=used[0].detach().cpu(), age=age,
        scale=scale))


def robust_sigma(values: torch.Tensor) -> float:
    """Return 1.4826 * median |values| (0 for an empty tensor)."""
    if values.numel() == 0:
        return 0.0
    return float(MAD_TO_SIGMA * values.abs().median())


def median_parallax_px(ctx: PairContext, R: np.ndarray, mask: Optional[torch.Tensor] = None
                       ) -> float:
    """
    Return the rotation-compensated parallax of the matches (px).

    Focal x angle(R y1, y2), the :data:`PARALLAX_QUANTILE` quantile.

    :param ctx: the pair.
    :param R: (3, 3) rotation of the keyframe -> current motion.
    :param mask: (1, N) bool selection (None: all matches).
    """
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.as_tensor(R, dtype=torch.float64)
    K1, K2 = ctx.kf.frame.K.double().cpu(), ctx.cur.K.double().cpu()
    angle = ray_angle(ctx.m.u1.cpu(), ctx.m.u2.cpu(), K1, K2, T[None])
    if mask is not None:
        angle = angle[mask.cpu()]
    if angle.numel() == 0:
        return 0.0
    focal = 0.5 * float(K2[0, 0, 0] + K2[0, 1, 1])
    return float(torch.quantile(angle, PARALLAX_QUANTILE)) * focal


def map_parallax_px(depth: torch.Tensor, u1: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                    T_unit: torch.Tensor, scale: float) -> torch.Tensor:
    """
    Parallax (px) that points of known depth in image 1 show from camera 2.

    :param depth: (1, N) depth of the points in camera 1 (0 = unknown: parallax 0).
    :param u1: (1, N, 2) their pinhole pixels.
    :param K1: (1, 3, 3) intrinsics of camera 1.
    :param K2: (1, 3, 3) intrinsics of camera 2 (its focal converts the angle to pixels).
    :param T_unit: (1, 4, 4) pose with a unit translation.
    :param scale: length of the translation.
    :return: (1, N) focal x angle between the two viewing rays of each point.
    """
    X1 = backproject_pixels(u1, depth, K1)
    R, t = T_unit[:, :3, :3], T_unit[:, :3, 3] * scale
    c2 = -(R.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)          # camera 2 in frame 1
    r2 = X1 - c2[:, None, :]
    angle = torch.atan2(torch.linalg.cross(X1, r2, dim=-1).norm(dim=-1), (X1 * r2).sum(-1))
    focal = 0.5 * (K2[:, 0, 0] + K2[:, 1, 1])
    return torch.where(depth > 0, angle * focal[:, None], torch.zeros_like(angle))


def _median_depth(depth: Optional[torch.Tensor]) -> float:
    if depth is None:
        return 0.0
    d = depth[depth > 0]
    return float(d.median()) if d.numel() else 0.0


def keyframe_scene_depth(kf: Keyframe) -> float:
    """
    Median depth of the keyframe's structure (the covariance's scene depth), 0 if unknown.

    The depth provider's map where there is one, else the tracked map points (the structure
    the scale rests on), else a propagated dense map: the figure does not depend on whether
    the dense map was built for the depth output.
    """
    if kf.depth is not None and kf.kind == 'depth':
        return _median_depth(kf.depth)
    if kf.points is not None and kf.points.count > 0:
        return _median_depth(kf.points.depth)
    return _median_depth(kf.depth)


def keyframe_depth_at(ctx: PairContext):
    """
    Keyframe depth and log-depth sigma of every match (what its scale and PnP rely on).

    The leading ``m.num_tracked`` matches are map points: their fused depth. The fresh
    samples read the depth provider's map (``kind == 'depth'``, beyond
    ``geometry.scale.max_depth`` ignored); a propagated dense map is not used for them (it is
    triangulated from the unrefined dense flow, for the depth output only).

    :return: depth (1, N) float64 (0 = unknown) and sigma (1, N) float64.
    """
    kf, g, m = ctx.kf, ctx.cfg.geometry, ctx.m
    n, nt = m.count, m.num_tracked
    dev = m.x1.device
    d = torch.zeros(1, n, dtype=torch.float64, device=dev)
    s = torch.zeros(1, n, dtype=torch.float64, device=dev)
    if nt > 0:
        d[0, :nt] = kf.points.depth[0, m.track_index].to(dev)
        s[0, :nt] = kf.points.sigma[0, m.track_index].to(dev)
    if kf.depth is not None and kf.kind == 'depth' and n > nt:
        fresh = sample_known(kf.depth, m.x1[:, nt:].to(kf.depth.device).double()).to(dev)
        if ctx.max_depth > 0:
            fresh = torch.where(fresh < ctx.max_depth, fresh, torch.zeros_like(fresh))
        d[:, nt:] = fresh
        if kf.sigma is not None:
            s[:, nt:] = sample_known(kf.sigma.clamp(min=1e-6),
                                     m.x1[:, nt:].to(kf.depth.device).double()).to(dev)
        else:
            s[:, nt:] = g.scale.depth_sigma
    s = torch.where(d > 0, s.clamp(min=1e-3), torch.zeros_like(s))
    return d, s


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------

def hold(ctx: PairContext) -> PairEstimate:
    """Standstill: the identity, the keyframe kept."""
    return PairEstimate(method='hold', T_21=np.eye(4), motion=ctx.motion,
                        num_matches=ctx.m.count, num_inliers=int(ctx.cls.num_points[0]),
                        sigma_px=float(ctx.cls.sigma_px[0]), parallax_px=0.0,
                        scene_depth=keyframe_scene_depth(ctx.kf))


def essential(ctx: PairContext, choice: PoseChoice, motion_scale: bool = False
              ) -> Optional[PairEstimate]:
    """
    Pose from E (the parallax vote's winner) and the scale of its translation.

    :param motion_scale: where the keyframe's structure cannot fit the scale (too few
        points), take it from the constant-speed model (as without structure) instead of
        giving up: the caller's last resort before a rotation-only pose, which would lose the
        observed translation (a far-field scene's small first map: 7 frames of rotation only).
    :return: the estimate; None when the keyframe has depth but too few points to fit the
        scale and ``motion_scale`` is False (the caller then tries PnP).
    """
    cfg, g = ctx.cfg, ctx.cfg.geometry
    m, kf = ctx.m, ctx.kf
    inl = ctx.ransac.inliers
    T_unit = choice.T_21.double()
    K1, K2 = kf.frame.K.double(), ctx.cur.K.double()
    X1 = midpoint_triangulate(m.u1, m.u2, K1, K2, T_unit)
    z1 = X1[..., 2]
    par = choice.parallax_px.double()
    good = inl & choice.positive & (par >= max(cfg.vo.scale_min_parallax_px, 1e-6))
    good = good & positive_depth_mask(X1, T_unit, g.triangulation.min_depth)
    parallax = float(torch.quantile(par[inl], PARALLAX_QUANTILE)) if bool(inl.any()) else 0.0
    noise = max(ctx.noise_px, MIN_NOISE_PX)
    scale, source, scale_sigma, scene_depth, message = None, 'none', None, 0.0, ''
    if kf.has_structure:
        target, sigma_t = keyframe_depth_at(ctx)
        base = inl & choice.positive & positive_depth_mask(X1, T_unit, g.triangulation.min_depth)
        base = base & (target > 0)
        fit = None
        if int(base.sum()) >= g.scale.min_points:
            # weights must not come from this pair's own parallax: a match whose parallax is
            # measured too large also has a depth too small, and weighting it more biases the
            # scale up by ~2 (noise / parallax)^2 per pair (measured: +4 % over 50 KITTI
            # frames). First fit with the map's sigmas, then weigh by the parallax the map
            # point would have at that scale.
            first = fit_scale(z1, target, base, g.scale.method, threshold=g.scale.threshold,
                              weights=1.0 / sigma_t.square().clamp(min=1e-12))
            if bool(first.valid[0]):
                par_map = map_parallax_px(target, m.u1, K1, K2, T_unit,
                                          float(first.scale[0]))
                usable = base & (par_map >= max(cfg.vo.scale_min_parallax_px, 1e-6))
                if int(usable.sum()) >= g.scale.min_points:
                    sigma_z = noise / par_map.clamp(min=1e-6)
                    weights = 1.0 / (sigma_z.square() + sigma_t.square())
                    # a triangulated depth is ~ 1 / parallax: its log is biased up by
                    # sigma_z^2 / 2 (log is concave); the map's older, smaller-parallax
                    # measurements were corrected alike (VisualOdometry._new_points)
                    z1c = z1 * log_bias_factor(sigma_z) if LOG_DEPTH_BIAS else z1
                    fit = fit_scale(z1c, target, usable, g.scale.method,
                                    threshold=g.scale.threshold, weights=weights)
        if fit is not None:
            if bool(fit.valid[0]) and float(fit.scale[0]) > 0:
                scale = float(fit.scale[0])
                inl_s = fit.inliers[0]
                w = weights[0, inl_s]
                log_r = torch.log(target[0, inl_s] / (scale * z1c[0, inl_s]))
                n_eff = float(w.sum() ** 2 / (w.square().sum()).clamp(min=1e-30))
                scale_sigma = max(robust_sigma(log_r), 1e-3) / math.sqrt(
                    max(min(n_eff, cov.MAX_EFFECTIVE_POINTS), 1.0))
                source = 'depth' if kf.kind == 'depth' else 'propagated'
                scene_depth = float(target[0, inl_s].median())
                if ctx.scale_fits is not None:
                    _record_fit(ctx, z1c, target, weights, fit.inliers, scale)
        if scale is None and not (motion_scale and ctx.scale_defined):
            return None
    if scale is None:
        if not ctx.scale_defined:
            scale, source, scale_sigma = cfg.vo.initial_scale, 'initial', 1e-3
        else:
            frames = max(ctx.cur.index - kf.frame.index, 1)
            scale, source, scale_sigma = ctx.last_speed * frames, 'motion', 0.5
            message = ('too few map points for the scale' if kf.has_structure else
                       'no keyframe depth for the scale') + ': constant speed assumed'
        if bool(good.any()):
            scene_depth = float(z1[good].median()) * scale
    T = T_unit[0].cpu().numpy().copy()
    T[:3, 3] *= scale
    return PairEstimate(method='essential', T_21=T, motion=ctx.motion, num_matches=m.count,
                        num_inliers=int(ctx.ransac.num_inliers[0]),
                        sigma_px=robust_sigma(ctx.residuals[inl]), parallax_px=parallax,
                        scale=scale, scale_source=source, scale_sigma=scale_sigma,
                        scene_depth=scene_depth, message=message, matches=m, inliers=inl)


def epipolar_inliers(ctx: PairContext, T_21: torch.Tensor) -> torch.Tensor:
    """
    Return the matches a pose explains: Sampson distance of its E below the RANSAC threshold.

    :param T_21: (1, 4, 4) float64 pose (its scale does not matter).
    :return: (1, N) bool.
    """
    K1, K2 = ctx.kf.frame.K.double(), ctx.cur.K.double()
    F = fundamental_from_essential(hat(T_21[:, :3, 3]) @ T_21[:, :3, :3], K1, K2)
    return sampson_distance(F, ctx.m.u1, ctx.m.u2) < ctx.cfg.geometry.ransac.threshold_px


def pnp(ctx: PairContext) -> Optional[PairEstimate]:
    """Pose by PnP-RANSAC of the keyframe depth at the matches; None when it fails."""
    cfg, g = ctx.cfg, ctx.cfg.geometry
    m, kf = ctx.m, ctx.kf
    if not kf.has_structure:
        return None
    d, _ = keyframe_depth_at(ctx)
    ok = d > 0
    n_ok = int(ok.sum())
    if n_ok < max(cfg.vo.min_matches // 2, 6):
        return None
    K1, K2 = kf.frame.K.double(), ctx.cur.K.double()
    X1 = backproject_pixels(m.u1, torch.where(ok, d, torch.ones_like(d)), K1)
    res = pnp_ransac(X1, m.u2, K2, ok.double(), threshold_px=g.pnp.threshold_px,
                     num_hypotheses=g.pnp.num_hypotheses, refine_iters=g.pnp.refine_iters,
                     generator=ctx.generator)
    n_inl = int(res.num_inliers[0])
    if not bool(res.success[0]) or n_inl < cfg.vo.min_inlier_ratio * n_ok:
        return None
    T = res.T_21[0].double().cpu().numpy()
    if not np.all(np.isfinite(T)):
        return None
    x2_hat, _ = project(transform_points(res.T_21.to(X1.dtype), X1), K2)
    err = (x2_hat - m.u2).norm(dim=-1)[res.inliers]
    # the matches without depth that the pose explains (Sampson distance of its E below the
    # RANSAC threshold) are inliers too: the next keyframe triangulates them with this pose
    # (PnP alone kept only the old points, and over a run of PnP frames the map decayed)
    epipolar = ~ok & epipolar_inliers(ctx, res.T_21.double())
    return PairEstimate(method='pnp', T_21=T, motion=ctx.motion, num_matches=m.count,
                        num_inliers=n_inl, sigma_px=robust_sigma(err) / math.sqrt(2.0),
                        parallax_px=median_parallax_px(ctx, T[:3, :3], res.inliers),
                        scale_source='pnp', scene_depth=float(d[ok].median()), matches=m,
                        inliers=res.inliers | epipolar)


def rotation(ctx: PairContext) -> Optional[PairEstimate]:
    """Rotation only (t = 0 relative to the keyframe); None without a rotation model."""
    sub_inliers = ctx.cls.rotation_inliers                        # over ctx.subset
    n_inl = int(sub_inliers[0].sum())
    if n_inl < max(8, ctx.cfg.vo.min_inlier_ratio * ctx.subset.numel()):
        return None
    inliers = torch.zeros(1, ctx.m.count, dtype=torch.bool, device=sub_inliers.device)
    inliers[0, ctx.subset.to(sub_inliers.device)] = sub_inliers[0]
    T = np.eye(4)
    T[:3, :3] = ctx.cls.R_21[0].double().cpu().numpy()
    return PairEstimate(method='rotation', T_21=T, motion=ctx.motion, num_matches=ctx.m.count,
                        num_inliers=n_inl, sigma_px=float(ctx.cls.sigma_px[0]),
                        parallax_px=median_parallax_px(ctx, T[:3, :3], inliers),
                        scene_depth=keyframe_scene_depth(ctx.kf), matches=ctx.m,
                        inliers=inliers)


Strategy = Callable[[PairContext], Optional[PairEstimate]]
