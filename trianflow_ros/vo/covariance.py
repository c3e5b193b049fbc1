"""
A first-order pose covariance for nav_msgs/Odometry.

Conventions:

- A pose error is a left perturbation ``T = exp(xi) T_hat`` with ``xi = [rho, phi]``
  (translation part first, rotation vector second), expressed in the frame the pose maps into
  (the odometry frame for ``T_world_cam``, the previous camera frame for ``T_prev_cur``).
- nav_msgs order is [x, y, z, roll, pitch, yaw]: the position error and a small rotation about
  the parent frame's axes. For ``T = exp(xi) T_hat`` the position moves by
  ``rho + phi x p``, so ``e_nav = J xi`` with ``J = [[I, -[p]_x], [0, I]]``
  (:func:`nav_from_left`).
- Composition ``T_w_cur = T_w_prev T_prev_cur`` with independent errors gives, to first order,
  ``Sigma_cur = Sigma_prev + Ad(T_w_prev) Sigma_rel Ad(T_w_prev)^T`` with the adjoint
  ``Ad(T) = [[R, [t]_x R], [0, R]]`` (Barfoot, "State Estimation for Robotics", Sec. 7.3).

The per-frame model (:func:`relative_covariance`) is a documented heuristic, not a Cramer-Rao
bound; it is large where the estimate is weak and always finite and positive definite:

- rotation: ``sigma_phi = sigma_px / (f sqrt(n))`` rad per axis (angular noise of one ray,
  ``sigma_px / f``, averaged over ``n`` inliers, at most :data:`MAX_EFFECTIVE_POINTS` as
  dense-flow errors are correlated), with ``sigma_px`` the robust spread of the inlier
  residuals (floored at ``MIN_SIGMA_PX``).
- translation: two parts. The scale error ``|t| sigma_s`` (``sigma_s``: robust spread of the
  log depth ratios of the scale fit over ``sqrt(n_scale)``) moves the translation along its
  own direction ``u = t / |t|`` only (monocular VO knows the direction of travel far better
  than its length); the direction error, ``sigma_d^2 = 2 (sigma_phi Z)^2`` (angular noise
  times the median scene depth Z, in odometry units), is spread over every axis. Given the
  translation (``translation=``), ``Sigma_rho = sigma_d^2 I + (|t| sigma_s)^2 u u^T``, so the
  largest axis of the covariance is the direction of travel; without it (or for rotation /
  hold, where t is not observed) the old isotropic ``(sigma_d^2 + (|t| sigma_s)^2) I``.
- inflation by method: PnP x2 (one view of noisy depth); rotation-only and hold: the
  translation was not observed, so its sigma is at least half the last speed plus the
  detection limit ``standstill_px / f * Z``; a scale from the motion model: ``sigma_s = 0.5``.
- LOST: :data:`BAD_VARIANCE` on the diagonal (like rtabmap's BAD_COVARIANCE 9999).

Never zero: the origin (first frame after start or reset) has :func:`initial_covariance`
(:data:`ORIGIN_VARIANCE` on the diagonal: the origin is the definition of the odometry frame,
but a filter must not be handed a singular matrix), and every later pose adds to it. A twist
that cannot be measured (first frame, a time jump) gets :func:`unknown_twist_covariance`, a
stated prior on the speed, instead of a meaningless huge value.
"""

from typing import Optional, Sequence

import numpy as np

from trianflow_ros.geometry.lie import hat

#: Variance put on the diagonal of a LOST frame's covariances.
BAD_VARIANCE = 1e6
#: Variance on the diagonal of the origin's covariance (1 mm / 1 mrad standard deviation).
ORIGIN_VARIANCE = 1e-6
#: Default prior standard deviations of a twist that was not measured: linear (odometry
#: units / s) and angular (rad / s).
UNKNOWN_TWIST_SIGMA = (1.0, 1.0)
#: Translations shorter than this (odometry units) have no direction: isotropic covariance.
MIN_DIRECTION_NORM = 1e-9
#: Smallest correspondence noise assumed (px): flow is not more accurate than this.
MIN_SIGMA_PX = 0.1
#: Floor of every variance (keeps the matrices positive definite).
MIN_VARIANCE = 1e-12
#: Most independent measurements a frame's matches count as: dense-flow errors are spatially
#: correlated (smooth), so thousands of matches are far fewer independent observations.
MAX_EFFECTIVE_POINTS = 100
#: Inflation of the standard deviations by method.
METHOD_INFLATION = {'essential': 1.0, 'pnp': 2.0, 'rotation': 1.0, 'hold': 1.0, 'init': 1.0}


def adjoint(T: np.ndarray) -> np.ndarray:
    """Return the (6, 6) adjoint of a pose for ``xi = [rho, phi]``: [[R, [t]_x R], [0, R]]."""
    R, t = T[:3, :3], T[:3, 3]
    A = np.zeros((6, 6))
    A[:3, :3] = R
    A[:3, 3:] = hat(t) @ R
    A[3:, 3:] = R
    return A


def nav_from_left(cov_left: np.ndarray, T: np.ndarray) -> np.ndarray:
    """
    Convert a left-perturbation covariance of ``T`` to nav_msgs order [x y z roll pitch yaw].

    :param cov_left: (6, 6) covariance of ``xi = [rho, phi]``.
    :param T: (4, 4) the pose.
    :return: (6, 6) covariance of [position error, rotation error].
    """
    J = np.eye(6)
    J[:3, 3:] = -hat(T[:3, 3])
    return make_spd(J @ cov_left @ J.T)


def make_spd(cov: np.ndarray, floor: float = MIN_VARIANCE) -> np.ndarray:
    """
    Return a symmetric positive definite, finite version of a covariance.

    Non-finite entries become :data:`BAD_VARIANCE` on the diagonal (0 off it); eigenvalues
    are floored at ``floor``.

    :param cov: (6, 6) matrix.
    :param floor: smallest eigenvalue.
    :return: (6, 6) float64.
    """
    cov = np.asarray(cov, dtype=np.float64)
    if not np.all(np.isfinite(cov)):
        return lost_covariance()
    cov = 0.5 * (cov + cov.T)
    w, V = np.linalg.eigh(cov)
    w = np.clip(w, floor, BAD_VARIANCE)
    return 0.5 * ((V * w) @ V.T + ((V * w) @ V.T).T)


def lost_covariance() -> np.ndarray:
    """Return the covariance of a LOST frame: ``BAD_VARIANCE * I``."""
    return np.eye(6) * BAD_VARIANCE


def relative_covariance(method: str, *, focal_px: float, sigma_px: float, num_inliers: int,
                        translation_norm: float, scene_depth: float,
                        scale_sigma: Optional[float] = None, last_speed: float = 0.0,
                        standstill_px: float = 0.5,
                        translation: Optional[Sequence[float]] = None) -> np.ndarray:
    """
    Left-perturbation covariance of one frame's relative pose (see the module docstring).

    :param method: 'essential', 'pnp', 'rotation', 'hold' or 'init'.
    :param focal_px: focal length in pixels (mean of fx, fy) at the working resolution.
    :param sigma_px: robust spread of the inlier residuals (px).
    :param num_inliers: inliers behind the estimate.
    :param translation_norm: |t| of the relative pose (odometry units).
    :param scene_depth: median depth of the matched points (odometry units), or 0 if unknown.
    :param scale_sigma: relative sigma of the scale (None: no scale fit, e.g. PnP: 0.05).
    :param last_speed: translation norm of the last successful motion (odometry units).
    :param standstill_px: displacement below which motion is not detected (px).
    :param translation: the relative translation t (3,) in the previous camera frame (the
        pose's ``T[:3, 3]``); with it the scale error lies along t (anisotropic), without it
        (None) every axis gets the same variance.
    :return: (6, 6) covariance of ``[rho, phi]``, symmetric positive definite.
    """
    n = min(max(int(num_inliers), 1), MAX_EFFECTIVE_POINTS)
    f = max(float(focal_px), 1e-6)
    sigma = max(float(sigma_px), MIN_SIGMA_PX) if np.isfinite(sigma_px) else 1.0
    k = METHOD_INFLATION.get(method, 1.0)
    depth = float(scene_depth) if np.isfinite(scene_depth) and scene_depth > 0 else 0.0
    if depth == 0.0:
        depth = max(10.0 * translation_norm, 10.0 * last_speed, 1.0)
    sigma_phi = k * sigma / (f * np.sqrt(n))
    t = abs(float(translation_norm))
    s = 0.05 if scale_sigma is None or not np.isfinite(scale_sigma) else float(scale_sigma)
    var_scale = (k * t * s) ** 2
    var_dir = 2.0 * (sigma_phi * depth) ** 2
    direction = _unit(translation)
    if method in ('rotation', 'hold'):
        unobserved = 0.5 * last_speed + standstill_px / f * depth
        cov_rho = np.eye(3) * max(var_scale + var_dir, unobserved ** 2)
    elif direction is None:
        cov_rho = np.eye(3) * (var_scale + var_dir)
    else:
        cov_rho = np.eye(3) * var_dir + var_scale * np.outer(direction, direction)
    cov = np.zeros((6, 6))
    cov[:3, :3] = cov_rho
    cov[3:, 3:] = np.eye(3) * sigma_phi ** 2
    return make_spd(cov)


def _unit(v: Optional[Sequence[float]]) -> Optional[np.ndarray]:
    """Return v / |v| for a finite 3-vector longer than :data:`MIN_DIRECTION_NORM`, else None."""
    if v is None:
        return None
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        return None
    norm = float(np.linalg.norm(a))
    return a / norm if norm > MIN_DIRECTION_NORM else None


def initial_covariance(variance: float = ORIGIN_VARIANCE) -> np.ndarray:
    """
    Return the covariance of the origin (first frame after start or reset): ``variance * I``.

    Small but never zero, so that the first message of a filter's input is not singular.
    """
    return np.eye(6) * max(float(variance), MIN_VARIANCE)


def unknown_twist_covariance(linear_sigma: float = UNKNOWN_TWIST_SIGMA[0],
                             angular_sigma: float = UNKNOWN_TWIST_SIGMA[1]) -> np.ndarray:
    """
    Return the covariance of a twist that was not measured (reported as zero).

    :param linear_sigma: prior standard deviation of each linear velocity component
        (odometry units / s).
    :param angular_sigma: prior standard deviation of each angular velocity component (rad/s).
    :return: (6, 6) diagonal, order [vx, vy, vz, wx, wy, wz].
    """
    lin = max(float(linear_sigma), 1e-6) ** 2
    ang = max(float(angular_sigma), 1e-6) ** 2
    return np.diag([lin] * 3 + [ang] * 3)


def propagate(cov_prev: np.ndarray, T_world_prev: np.ndarray, cov_rel: np.ndarray
              ) -> np.ndarray:
    """
    Compose covariances: ``Sigma_cur = Sigma_prev + Ad(T_w_prev) Sigma_rel Ad^T`` (left xi).

    :param cov_prev: (6, 6) left covariance of ``T_world_prev``.
    :param T_world_prev: (4, 4) the previous pose.
    :param cov_rel: (6, 6) left covariance of ``T_prev_cur`` in the previous camera frame.
    :return: (6, 6) left covariance of ``T_world_cur``.
    """
    A = adjoint(T_world_prev)
    return make_spd(cov_prev + A @ cov_rel @ A.T)
