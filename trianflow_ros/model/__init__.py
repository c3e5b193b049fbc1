"""
Training models: networks + geometry + losses, with typed outputs and named losses.

- :class:`TrianFlowModel` (stages 'flow', 'depth', 'depth_pose' of the paper's training).
- :class:`PoseNetModel` (the PoseNet / PoseNet-Flow baselines, modes 'posenet', 'flowposenet').
- :func:`build_model` picks one from ``cfg.train.mode``; :class:`ModelOutput` is what both
  return; :func:`loss_weights` / :func:`total_loss` weight the named losses.
"""

from trianflow_ros.model.build import build_model
from trianflow_ros.model.outputs import (FLOW_LOSS_KEYS, GEOMETRY_LOSS_KEYS, LOSS_KEYS,
                                         loss_weights, ModelOutput, total_loss)
from trianflow_ros.model.posenet_model import PoseNetModel
from trianflow_ros.model.trianflow import solve_two_view, STAGES, TrianFlowModel, TwoViewGeometry

__all__ = [
    'build_model', 'FLOW_LOSS_KEYS', 'GEOMETRY_LOSS_KEYS', 'LOSS_KEYS', 'loss_weights',
    'ModelOutput', 'PoseNetModel', 'solve_two_view', 'STAGES', 'total_loss', 'TrianFlowModel',
    'TwoViewGeometry',
]
