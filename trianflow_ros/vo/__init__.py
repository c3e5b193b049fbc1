"""
Visual odometry: ``VisualOdometry.step(stamp, image, K) -> FrameResult`` (no ROS imports).

See :mod:`trianflow_ros.vo.odometry` for the per-frame pipeline, :mod:`.providers` for the flow
and depth providers and :mod:`.covariance` for the pose covariance.
"""

from trianflow_ros.vo.odometry import VisualOdometry
from trianflow_ros.vo.providers import (DepthProvider, DISFlowProvider, FlowProvider,
                                        KLTFlowProvider, NetworkDepthProvider, NetworkFlowProvider,
                                        OracleDepthProvider, OracleFlowProvider)
from trianflow_ros.vo.types import FrameResult, TrackingState

__all__ = ['DepthProvider', 'DISFlowProvider', 'FlowProvider', 'FrameResult',
           'KLTFlowProvider', 'NetworkDepthProvider', 'NetworkFlowProvider', 'OracleDepthProvider',
           'OracleFlowProvider', 'TrackingState', 'VisualOdometry']
