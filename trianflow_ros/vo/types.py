# noqa: A005 - the file name vo/types.py is part of the package layout
"""
What one call of :meth:`trianflow_ros.vo.odometry.VisualOdometry.step` returns.

Frames: the odometry frame is the camera (optical, REP-103: x right, y down, z forward) frame of
the first image after construction or :meth:`~trianflow_ros.vo.odometry.VisualOdometry.reset`.
Poses follow the project's naming: ``T_ab`` maps points of frame b into frame a.
"""

from dataclasses import dataclass, field
import enum
from typing import Dict, Optional

import numpy as np

from trianflow_ros.geometry.degeneracy import MotionType


class TrackingState(enum.IntEnum):
    """Tracking state of a frame (the value a ROS status message would carry)."""

    #: first frame (or first after a reset): the pose is the identity by definition.
    INITIALIZING = 0
    #: the pose of this frame was estimated against the reference frame.
    TRACKING = 1
    #: no pose could be estimated: the last pose is held and the covariance is huge.
    LOST = 2
    #: first successful frame after one or more LOST frames (then TRACKING again).
    RECOVERED = 3


@dataclass
class FrameResult:
    """
    The odometry output of one frame; every array is numpy and finite (never NaN).

    :ivar stamp: the stamp given to ``step`` (seconds, or whatever the caller uses).
    :ivar index: running number of the frame since construction / reset (0 = first).
    :ivar T_world_cam: (4, 4) float64 pose of the camera in the odometry frame.
    :ivar T_prev_cur: (4, 4) float64 motion since the previous frame (``inv(T_world_prev) @
        T_world_cam``; the identity for the first frame and for LOST frames).
    :ivar state: :class:`TrackingState`.
    :ivar motion: :class:`~trianflow_ros.geometry.degeneracy.MotionType` of the pair from
        the classification (None for the first frame, LOST frames and PnP-only decisions);
        GENERAL where the translation was observable and no plane possible, so that the
        classification did not run.
    :ivar method: how the pose was obtained: 'init', 'essential' (E + triangulation + scale),
        'pnp' (PnP on the reference depth), 'rotation' (pure rotation, t = 0), 'hold'
        (standstill, T = I) or 'lost'.
    :ivar reference_index: ``index`` of the reference (key) frame this frame was matched
        against (the last good frame; kept across standstill and LOST frames).
    :ivar num_matches: correspondences drawn for the pair.
    :ivar num_inliers: inliers of the model that gave the pose (E or PnP).
    :ivar scale: the factor that multiplied the unit-norm translation of E (1.0 when the
        translation did not come from E).
    :ivar scale_source: 'depth' (fit to the depth provider's depth of the reference frame),
        'propagated' (fit to the depth triangulated in the previous pairs), 'initial'
        (first pair without depth: ``vo.initial_scale``), 'motion' (no usable depth: last
        translation norm), 'pnp' (metric from PnP), or 'none'.
    :ivar depth: (H, W) float32 depth of this frame in the odometry scale at the working
        resolution, 0 where unknown; None when no depth exists (classical mode, first frame).
    :ivar K: (3, 3) float64 intrinsics of ``depth`` (the working resolution).
    :ivar covariance: (6, 6) float64 covariance of ``T_world_cam`` in the odometry frame, in
        nav_msgs/Odometry order [x, y, z, roll, pitch, yaw] (position in odometry units,
        small rotation about the odometry frame's axes in rad); symmetric positive definite;
        ``vo.covariance.BAD_VARIANCE`` on the diagonal while LOST.
    :ivar relative_covariance: (6, 6) float64 covariance of the motion since the reference
        frame (``T_ref_cur``; the reference is the previous frame unless frames were held or
        LOST in between), expressed in the reference camera frame, same order (for a twist
        or differential fusion).
    :ivar timings: milliseconds per stage: 'flow', 'depth', 'select', 'solver', 'scale',
        'total'.
    :ivar message: why a frame was LOST or which fallback was taken (empty when nominal).
    """

    stamp: float
    index: int
    T_world_cam: np.ndarray
    T_prev_cur: np.ndarray
    state: TrackingState
    motion: Optional[MotionType]
    method: str
    reference_index: int
    num_matches: int
    num_inliers: int
    scale: float
    scale_source: str
    depth: Optional[np.ndarray]
    K: np.ndarray
    covariance: np.ndarray
    relative_covariance: np.ndarray
    timings: Dict[str, float] = field(default_factory=dict)
    message: str = ''

    @property
    def ok(self) -> bool:
        """Return True unless the frame is LOST."""
        return self.state != TrackingState.LOST
