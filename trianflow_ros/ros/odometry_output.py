"""
From the core's FrameResult to the robot's odometry: pose, twist and their covariances.

The core's odometry is ``T_cam0_cami`` (camera optical frames). For the base (REP-105):
``T_odom_base = T_base_cam @ T_cam0_cami @ inv(T_base_cam)``, covariances transformed with
the same conjugation (:func:`~trianflow_ros.ros.conversions.conjugate_covariance`).

Twist (in base_frame): the base motion since the previous published frame over the stamp
difference, with the relative covariance over dt^2. It is *unknown* (zero, with the prior of
:func:`~trianflow_ros.vo.covariance.unknown_twist_covariance`) for the first frame after
start or reset and after a time jump (stamps more than ``max_frame_interval`` apart, or not
increasing): never the meaningless 1e6 it was.

LOST frames (``publish_when_lost``): the last pose held, zero twist, both covariances
:data:`~trianflow_ros.vo.covariance.BAD_VARIANCE` on the diagonal (rtabmap's
``publish_null_when_lost`` publishes BAD_COVARIANCE 9999 the same way), so a filter gets the
tracking loss instead of silence. They do not move the twist's reference.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from trianflow_ros.ros import conversions as conv
from trianflow_ros.vo import covariance as cov
from trianflow_ros.vo.types import FrameResult, TrackingState


@dataclass
class OdometrySample:
    """What one frame publishes: the base pose, twist and covariances (nav_msgs order)."""

    T_odom_base: np.ndarray
    pose_covariance: np.ndarray
    linear: np.ndarray
    angular: np.ndarray
    twist_covariance: np.ndarray
    lost: bool = False
    twist_known: bool = True
    time_jump: float = 0.0      #: seconds of a stamp jump (0 = none)


class OdometryOutput:
    """Stateful conversion of FrameResults into :class:`OdometrySample` (one per frame)."""

    def __init__(self, max_frame_interval: float = 10.0,
                 twist_sigma: Tuple[float, float] = cov.UNKNOWN_TWIST_SIGMA):
        """
        Create the conversion.

        :param max_frame_interval: larger stamp steps (s) are time jumps: twist unknown.
        :param twist_sigma: (linear, angular) prior standard deviations of an unknown twist.
        """
        self.max_frame_interval = float(max_frame_interval)
        self.twist_sigma = tuple(float(v) for v in twist_sigma)
        self._prev: Optional[int] = None

    def reset(self) -> None:
        """Forget the previous frame (odometry reset)."""
        self._prev = None

    def _unknown_twist(self) -> np.ndarray:
        return cov.unknown_twist_covariance(*self.twist_sigma)

    def sample(self, r: FrameResult, T_base_cam: np.ndarray, stamp_ns: int,
               publish_when_lost: bool = True) -> Optional[OdometrySample]:
        """
        Return the odometry of one frame, or None (a LOST frame without publish_when_lost).

        :param r: the core's result.
        :param T_base_cam: (4, 4) base <- camera extrinsics.
        :param stamp_ns: the image stamp (ns).
        :param publish_when_lost: publish LOST frames (held pose, BAD covariances).
        """
        T_bc = np.asarray(T_base_cam, dtype=np.float64)
        T_ob = conv.conjugate_pose(T_bc, r.T_world_cam)
        zero = np.zeros(3)
        if r.state == TrackingState.LOST:
            if not publish_when_lost:
                return None
            bad = cov.lost_covariance()
            return OdometrySample(T_ob, bad, zero, zero.copy(), bad.copy(), lost=True,
                                  twist_known=False)
        pose_cov = cov.make_spd(conv.conjugate_covariance(r.covariance, T_bc, r.T_world_cam),
                                floor=cov.MIN_VARIANCE)
        prev, self._prev = self._prev, stamp_ns
        dt = None if prev is None else (stamp_ns - prev) * 1e-9
        if r.state == TrackingState.INITIALIZING or dt is None:
            return OdometrySample(T_ob, pose_cov, zero, zero.copy(), self._unknown_twist(),
                                  twist_known=False)
        if not 0.0 < dt <= self.max_frame_interval:
            return OdometrySample(T_ob, pose_cov, zero, zero.copy(), self._unknown_twist(),
                                  twist_known=False, time_jump=dt)
        motion = conv.conjugate_pose(T_bc, r.T_prev_cur)
        lin, ang = conv.twist_from_motion(motion, dt)
        twist_cov = conv.conjugate_covariance(r.relative_covariance, T_bc, r.T_prev_cur) / dt ** 2
        return OdometrySample(T_ob, pose_cov, lin, ang, cov.make_spd(twist_cov))
