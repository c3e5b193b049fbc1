"""
Networks of TrianFlow: ResNet-18 depth net, PWC-Net flow net, PoseNet baselines, checkpoints.

Parameter names and shapes follow the original release so its checkpoints load strictly
(:func:`trianflow_ros.nets.checkpoint.load_original_checkpoint`). No network here imports ROS
or assumes a device.
"""

from trianflow_ros.nets.checkpoint import (
    CheckpointError, load_original_checkpoint, load_state_dict_strict, OriginalCheckpointReport,
    state_dict_from_manifest)
from trianflow_ros.nets.depth_decoder import DepthDecoder
from trianflow_ros.nets.depth_net import DepthNet, disp_to_depth
from trianflow_ros.nets.feature_pyramid import FeaturePyramid
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.nets.posenet import FlowPoseNet, pose_from_vector, PoseNet
from trianflow_ros.nets.pwc_decoder import cost_volume, PWCDecoder, upsample_flow
from trianflow_ros.nets.resnet_encoder import ResNet18, ResnetEncoder

__all__ = [
    'CheckpointError', 'DepthDecoder', 'DepthNet', 'FeaturePyramid', 'FlowNet', 'FlowPoseNet',
    'OriginalCheckpointReport', 'PWCDecoder', 'PoseNet', 'ResNet18', 'ResnetEncoder',
    'cost_volume', 'disp_to_depth', 'load_original_checkpoint', 'load_state_dict_strict',
    'pose_from_vector', 'state_dict_from_manifest', 'upsample_flow',
]
