"""
The odometry's state: prepared frames, the keyframe with its depth map, a pair's estimate.

Everything here is a frozen dataclass: a strategy returns a new :class:`PairEstimate`, the
odometry replaces its :class:`Keyframe`, nothing is mutated in place.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from trianflow_ros.geometry.degeneracy import MotionType


@dataclass(frozen=True)
class Frame:
    """
    One prepared frame at the working resolution.

    :ivar index: running number since construction / reset.
    :ivar stamp: the caller's stamp.
    :ivar image: (1, 3, h, w) RGB in [0, 1] on the odometry's device.
    :ivar K: (1, 3, 3) float32 intrinsics at (h, w).
    :ivar depth: (1, 1, h, w) the depth provider's depth, or None.
    """

    index: int
    stamp: float
    image: torch.Tensor
    K: torch.Tensor
    depth: Optional[torch.Tensor]


@dataclass(frozen=True)
class MapPoints:
    """
    The keyframe's tracked structure: points with a fused depth, at raw pixels of its image.

    A point is re-found in the next frames by the flow (refined by KLT) and, when the next
    keyframe is made, moved into it with its depth fused with the new triangulation: its depth
    carries the information of every keyframe that saw it. The scale of a new pair is fitted
    against these depths (and PnP uses them), so the odometry unit is held by structure seen
    over many frames, not passed from pair to pair.

    :ivar x: (1, M, 2) float64 raw pixels in the keyframe image.
    :ivar depth: (1, M) float64 depth (odometry units, > 0).
    :ivar sigma: (1, M) float64 log-depth sigma (relative error).
    :ivar age: (1, M) int64 keyframes each point has been tracked over (0 = new).
    :ivar ids: (M,) int64 persistent point ids (for the window bundle adjustment).
    :ivar u: (1, M, 2) float64 pinhole pixels where the point was observed in this keyframe.
    """

    x: torch.Tensor
    depth: torch.Tensor
    sigma: torch.Tensor
    age: torch.Tensor
    ids: torch.Tensor
    u: torch.Tensor

    @property
    def count(self) -> int:
        """Return M."""
        return int(self.x.shape[1])


@dataclass(frozen=True)
class Keyframe:
    """
    The frame new images are matched against, with its pose, covariance and depth map.

    :ivar frame: the keyframe's :class:`Frame`.
    :ivar T_world: (4, 4) float64 pose ``T_world_cam``.
    :ivar cov_left: (6, 6) left covariance of ``T_world``.
    :ivar depth: (1, 1, h, w) depth in odometry units (0 = unknown), or None.
    :ivar sigma: (1, 1, h, w) log-depth sigma of ``depth`` (relative error), or None.
    :ivar kind: 'none' (no depth yet), 'propagated' (triangulated and carried from earlier
        keyframes) or 'depth' (a depth provider's depth, possibly fused with the propagated;
        the odometry unit is then the provider's).
    :ivar points: the tracked structure (:class:`MapPoints`), or None.
    """

    frame: Frame
    T_world: np.ndarray
    cov_left: np.ndarray
    depth: Optional[torch.Tensor] = None
    sigma: Optional[torch.Tensor] = None
    kind: str = 'none'
    points: Optional[MapPoints] = None

    @property
    def has_structure(self) -> bool:
        """Return True when a depth map or tracked points exist."""
        return self.depth is not None or (self.points is not None and self.points.count > 0)


@dataclass(frozen=True)
class PairEstimate:
    """
    The motion of the current frame relative to the keyframe, as one strategy solved it.

    :ivar method: 'essential' (E + parallax vote + scale), 'pnp' (PnP on the keyframe depth),
        'rotation' (rotation only, t = 0) or 'hold' (standstill, T = I).
    :ivar T_21: (4, 4) float64 pose mapping keyframe points into the current frame.
    :ivar motion: the GRIC classification of the pair.
    :ivar num_matches: matches drawn.
    :ivar num_inliers: inliers of the model that gave the pose.
    :ivar sigma_px: robust spread of the inlier residuals (px).
    :ivar parallax_px: parallax (focal x ray angle after removing the rotation) of the
        inliers, their 90th percentile (px): what decides a new keyframe.
    :ivar scale: factor of the unit translation (1 when t did not come from E).
    :ivar scale_source: 'depth', 'propagated', 'initial', 'motion', 'pnp' or 'none'.
    :ivar scale_sigma: relative sigma of the scale, or None.
    :ivar scene_depth: median depth of the matched points (odometry units), 0 if unknown.
    :ivar message: which fallback was taken and why (empty when nominal).
    :ivar matches: the pair's matches (:class:`~trianflow_ros.vo.matches.Matches`), or None.
    :ivar inliers: (1, N) bool, the matches consistent with the pose, or None.
    """

    method: str
    T_21: np.ndarray
    motion: Optional[MotionType]
    num_matches: int
    num_inliers: int
    sigma_px: float = 1.0
    parallax_px: float = 0.0
    scale: float = 1.0
    scale_source: str = 'none'
    scale_sigma: Optional[float] = None
    scene_depth: float = 0.0
    message: str = ''
    matches: Optional[object] = None
    inliers: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class PairFailure:
    """No strategy gave a pose: the frame is LOST (the message says why)."""

    message: str
    num_matches: int = 0
    num_inliers: int = 0
