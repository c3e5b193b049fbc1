"""The training model of a configuration: :func:`build_model` (above every model module)."""

from torch import nn

from trianflow_ros.config import Config
from trianflow_ros.model.posenet_model import MODES as POSENET_MODES, PoseNetModel
from trianflow_ros.model.refined_posenet import RefinedPoseNetModel
from trianflow_ros.model.trianflow import STAGES, TrianFlowModel


def build_model(cfg: Config) -> nn.Module:
    """
    Build the training model of ``cfg.train.mode``.

    :param cfg: the resolved configuration.
    :return: :class:`TrianFlowModel` for 'flow', 'depth', 'depth_pose';
        :class:`~trianflow_ros.model.posenet_model.PoseNetModel` for 'posenet', 'flowposenet'
        (:class:`~trianflow_ros.model.refined_posenet.RefinedPoseNetModel` with
        ``geometry.refine.train``).
    """
    mode = cfg.train.mode
    if mode in POSENET_MODES:
        if cfg.geometry.refine.train:
            return RefinedPoseNetModel(cfg)
        return PoseNetModel(cfg)
    if mode in STAGES:
        return TrianFlowModel(cfg)
    raise ValueError(f'train.mode {mode!r} has no model; choose one of '
                     f'{STAGES + POSENET_MODES}')
