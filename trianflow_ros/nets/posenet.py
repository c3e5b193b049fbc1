"""
Pose-regression baselines of the TrianFlow paper (Table 5): PoseNet and PoseNet-Flow.

TrianFlow itself never regresses pose (it is solved from flow correspondences in
trianflow_ros/geometry); these two networks exist for the paper's generalisation comparison.

- :class:`FlowPoseNet` ("PoseNet-Flow"): the original ``FlowPoseNet`` (keys ``pose_net.*`` of
  ``Model_flowposenet`` checkpoints). Input: the optical flow flow_12, normalised by the image
  width and height; seven stride-2 convs (2->16 k7, 16->32 k5, then k3 to 64, 128, 256, 256,
  256, each + ReLU), a 1x1 conv to 6, the spatial mean, times 0.01.
- :class:`PoseNet`: the standard image PoseNet (two stacked RGB frames -> 6-DoF) in the style
  of SfMLearner / monodepth2: a ResNet-18 encoder with 6 input channels and a small conv head
  (1x1 to 256, two 3x3 256, 1x1 to 6; ReLU between), spatial mean, times 0.01. No original
  checkpoint exists for it in this layout.

Both return ``T_21`` (B, 4, 4), mapping points of frame 1 into frame 2 (``X_2 = T_21 X_1``),
from a 6-vector ``(t, r)`` with the translation first. The rotation part ``r`` is read as
``'euler'``: ``R = R_x(r_0) R_y(r_1) R_z(r_2)``, the convention of the original baseline's
losses (SfMLearner's ``euler2mat``), or as ``'axis_angle'``: ``R = exp([r]_x)``. The two
agree to first order (the small inter-frame rotations these nets predict).
"""

import torch
from torch import nn
import torch.nn.functional as F

from trianflow_ros.geometry.se3 import make_pose, so3_exp
from trianflow_ros.nets.depth_net import IMAGE_MEAN, IMAGE_STD
from trianflow_ros.nets.resnet_encoder import ResnetEncoder

ROTATIONS = ('euler', 'axis_angle')


def pose_from_vector(vec: torch.Tensor, rotation: str = 'axis_angle') -> torch.Tensor:
    """
    Build poses from 6-vectors ``(t_x, t_y, t_z, r_0, r_1, r_2)``.

    :param vec: pose vectors, shape (B, 6), translation first.
    :param rotation: ``'euler'`` (``R_x(r_0) R_y(r_1) R_z(r_2)``, radians) or
        ``'axis_angle'`` (Rodrigues, ``so3_exp(r)``).
    :return: poses (B, 4, 4) with rotation R and translation t. Differentiable.
    """
    if vec.dim() != 2 or vec.shape[1] != 6:
        raise ValueError(f'pose vectors must have shape (B, 6), got {tuple(vec.shape)}')
    t, r = vec[:, :3], vec[:, 3:]
    if rotation == 'axis_angle':
        R = so3_exp(r)
    elif rotation == 'euler':
        zeros = torch.zeros_like(r[:, :1])
        R_x = so3_exp(torch.cat((r[:, 0:1], zeros, zeros), dim=1))
        R_y = so3_exp(torch.cat((zeros, r[:, 1:2], zeros), dim=1))
        R_z = so3_exp(torch.cat((zeros, zeros, r[:, 2:3]), dim=1))
        R = R_x @ R_y @ R_z
    else:
        raise ValueError(f'rotation must be one of {ROTATIONS}, got {rotation!r}')
    return make_pose(R, t)


class FlowPoseNet(nn.Module):
    """PoseNet-Flow: relative pose T_21 regressed from the optical flow flow_12."""

    conv_channels = (16, 32, 64, 128, 256, 256, 256)
    kernel_sizes = (7, 5, 3, 3, 3, 3, 3)

    def __init__(self, *, rotation: str = 'euler', pose_scale: float = 0.01):
        """
        Build the network (PyTorch default initialisation).

        :param rotation: how the rotation triple is read, see :func:`pose_from_vector`
            (``'euler'`` reproduces the original baseline).
        :param pose_scale: factor on the raw 6-vector (the original: 0.01).
        """
        super().__init__()
        if rotation not in ROTATIONS:
            raise ValueError(f'rotation must be one of {ROTATIONS}, got {rotation!r}')
        self.rotation = rotation
        self.pose_scale = float(pose_scale)
        width = 2
        for i, (channels, k) in enumerate(zip(self.conv_channels, self.kernel_sizes)):
            setattr(self, f'conv{i + 1}', nn.Sequential(
                nn.Conv2d(width, channels, k, stride=2, padding=(k - 1) // 2),
                nn.ReLU(inplace=True)))
            width = channels
        self.pose_pred = nn.Conv2d(width, 6, 1, padding=0)

    def pose_vector(self, flow_12: torch.Tensor) -> torch.Tensor:
        """
        Regress the 6-vector ``(t, r)`` of T_21.

        :param flow_12: flow in pixels, shape (B, 2, H, W), channel 0 = u; it is divided by
            W (u) and H (v) here, as the original did before calling its net.
        :return: (B, 6), translation first. Differentiable.
        """
        if flow_12.dim() != 4 or flow_12.shape[1] != 2:
            raise ValueError(f'flow_12 must have shape (B, 2, H, W), got {tuple(flow_12.shape)}')
        h, w = flow_12.shape[-2:]
        x = flow_12 / flow_12.new_tensor([w, h]).view(1, 2, 1, 1)
        for i in range(len(self.conv_channels)):
            x = getattr(self, f'conv{i + 1}')(x)
        return self.pose_scale * self.pose_pred(x).mean(dim=(2, 3))

    def forward(self, flow_12: torch.Tensor) -> torch.Tensor:
        """
        Regress T_21 from flow_12.

        :param flow_12: flow in pixels, shape (B, 2, H, W).
        :return: T_21, shape (B, 4, 4). Differentiable.
        """
        return pose_from_vector(self.pose_vector(flow_12), self.rotation)


class PoseNet(nn.Module):
    """Image PoseNet: relative pose T_21 regressed from two stacked frames."""

    def __init__(self, *, rotation: str = 'axis_angle', pose_scale: float = 0.01):
        """
        Build the network (He-initialised encoder, default-initialised head).

        :param rotation: how the rotation triple is read, see :func:`pose_from_vector`.
        :param pose_scale: factor on the raw 6-vector.
        """
        super().__init__()
        if rotation not in ROTATIONS:
            raise ValueError(f'rotation must be one of {ROTATIONS}, got {rotation!r}')
        self.rotation = rotation
        self.pose_scale = float(pose_scale)
        self.encoder = ResnetEncoder(in_channels=6, with_fc=False)
        self.squeeze = nn.Conv2d(ResnetEncoder.num_ch_enc[-1], 256, 1)
        self.pose_conv1 = nn.Conv2d(256, 256, 3, padding=1)
        self.pose_conv2 = nn.Conv2d(256, 256, 3, padding=1)
        self.pose_pred = nn.Conv2d(256, 6, 1)

    def pose_vector(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """
        Regress the 6-vector ``(t, r)`` of T_21.

        :param img1: frame 1 in [0, 1], shape (B, 3, H, W); normalised with
            ``(x - 0.45) / 0.225`` here.
        :param img2: frame 2 in [0, 1], shape (B, 3, H, W).
        :return: (B, 6), translation first. Differentiable.
        """
        if img1.dim() != 4 or img1.shape[1] != 3 or img2.shape != img1.shape:
            raise ValueError('img1 and img2 must both have shape (B, 3, H, W), got '
                             f'{tuple(img1.shape)} and {tuple(img2.shape)}')
        x = (torch.cat((img1, img2), dim=1) - IMAGE_MEAN) / IMAGE_STD
        x = F.relu(self.squeeze(self.encoder(x)[-1]))
        x = F.relu(self.pose_conv1(x))
        x = F.relu(self.pose_conv2(x))
        return self.pose_scale * self.pose_pred(x).mean(dim=(2, 3))

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """
        Regress T_21 (frame 1 -> frame 2) from the two frames.

        :param img1: frame 1 in [0, 1], shape (B, 3, H, W).
        :param img2: frame 2 in [0, 1], shape (B, 3, H, W).
        :return: T_21, shape (B, 4, 4). Differentiable.
        """
        return pose_from_vector(self.pose_vector(img1, img2), self.rotation)
