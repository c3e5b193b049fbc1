"""
The pose-regression baselines of the TrianFlow paper (Table 5): PoseNet and PoseNet-Flow.

A depth net and a pose net trained jointly by view synthesis (SfMLearner / SC-SfMLearner
losses, as the original ``Model_flowposenet``):

- ``posenet``: :class:`PoseNet` regresses T_21 from the two images;
- ``flowposenet``: :class:`FlowPoseNet` regresses T_21 from the optical flow of a frozen,
  pretrained flow net (eval mode, no gradient; load it from a stage-1 checkpoint).

Losses, in both directions (image 2 warped into image 1 with T_21, image 1 into image 2 with
T_12, each regressed by the pose net: from (image 2, image 1) or from the backward flow, as the
original), on the pixels that project inside the other image in front of its camera:

- photometric: 0.15 L1 + 0.85 SSIM (``loss.w_ssim``) of the other image warped through the
  depth and the pose; reported under ``flow_error`` as the original's posenet configs do;
- depth consistency ``|D_c - D_p| / (D_c + D_p)`` between the depth of the moved points D_c
  and the other image's predicted depth read there D_p (SC-SfMLearner); under
  ``pj_depth_loss``;
- edge-aware smoothness of the mean-normalised inverse depth of both images,
  ``depth_smooth_loss``.

The original baseline mapped the disparity to depths in [0.01, 80] m; here the ``depth_net``
config section decides (set ``depth_net.min_depth=0.01``, ``depth_net.max_depth=80`` for
parity).

Every other key of :data:`LOSS_KEYS` is 0. Differences from the original baseline (on
purpose): its photometric and consistency terms were plain means over all pixels (also those
projecting outside the other image, compared with zero padding); here they are means over the
valid pixels. Its smoothness call overwrote the image-1 term with the image-2 term and smoothed
the raw depth; here both images' mean-normalised inverse depths count.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from trianflow_ros.config import Config
from trianflow_ros.geometry.camera import pixel_grid
from trianflow_ros.geometry.warp import backward_warp, rigid_flow
from trianflow_ros.losses import masked_mean
from trianflow_ros.losses.photometric import photometric_loss
from trianflow_ros.losses.smoothness import disparity_smoothness
from trianflow_ros.model.common import check_batch, frozen, full_precision
from trianflow_ros.model.outputs import LOSS_KEYS, loss_weights, ModelOutput, total_loss
from trianflow_ros.nets.depth_net import DepthNet, disp_to_depth
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.nets.posenet import FlowPoseNet, PoseNet

MODES = ('posenet', 'flowposenet')
MIN_DEPTH = 1e-3


def view_synthesis_losses(img_a: torch.Tensor, img_b: torch.Tensor, depth_a: torch.Tensor,
                          depth_b: torch.Tensor, T_ba: torch.Tensor, K: torch.Tensor,
                          w_ssim: float = 0.85):
    """
    Photometric and depth-consistency losses of image b warped into image a.

    Pixels of image a are lifted with ``depth_a``, moved by ``T_ba`` and projected into image
    b; image b and ``depth_b`` are read there (bilinear, align_corners=True; zero padding for
    the image, border for the depth).

    :param img_a: target image, (B, 3, H, W).
    :param img_b: source image, (B, 3, H, W).
    :param depth_a: depth of image a, (B, 1, H, W).
    :param depth_b: depth of image b, (B, 1, H, W).
    :param T_ba: pose mapping frame-a points into frame b, (B, 4, 4).
    :param K: intrinsics of both images, (B, 3, 3).
    :param w_ssim: SSIM share of the photometric loss.
    :return: (photometric (B,), depth consistency (B,), valid mask (B, 1, H, W)).
        Differentiable w.r.t. the depths, the pose and the images.
    """
    b, _, h, w = img_a.shape
    flow, z_b = rigid_flow(depth_a, T_ba, K)                               # (B,2|1,H,W)
    x_b = pixel_grid(b, h, w, img_a.device, img_a.dtype) + flow
    with torch.no_grad():
        valid = ((x_b[:, :1] >= 0) & (x_b[:, :1] <= w - 1) & (x_b[:, 1:] >= 0)
                 & (x_b[:, 1:] <= h - 1) & (z_b > MIN_DEPTH)
                 & torch.isfinite(flow).all(dim=1, keepdim=True)).to(img_a.dtype)
    safe_flow = torch.where(valid > 0, flow, torch.zeros_like(flow))
    warped = backward_warp(img_b, safe_flow, padding_mode='zeros', align_corners=True)
    pixel, structure = photometric_loss(img_a, warped, valid, w_ssim)
    depth_p = backward_warp(depth_b, safe_flow, padding_mode='border', align_corners=True)
    depth_c = torch.where(valid > 0, z_b, torch.ones_like(z_b))
    depth_p = torch.where(valid > 0, depth_p, torch.ones_like(depth_p))
    difference = ((depth_c - depth_p).abs() / (depth_c + depth_p)).clamp(0.0, 1.0)
    consistency = masked_mean(difference, valid)
    return pixel.value + structure.value, consistency.value, valid


class PoseNetModel(nn.Module):
    """
    PoseNet / PoseNet-Flow baseline with the :class:`ModelOutput` of the TrianFlow model.

    Submodules: ``depth_net`` (:class:`DepthNet`), ``pose_net`` (:class:`PoseNet` or
    :class:`FlowPoseNet`) and, for 'flowposenet', ``flow_net`` (:class:`FlowNet`, frozen).
    """

    def __init__(self, cfg: Config, mode: Optional[str] = None):
        """
        Build the networks.

        :param cfg: the resolved configuration (``train.mode``, ``depth_net``, ``flow_net``,
            ``loss`` sections are read).
        :param mode: 'posenet' or 'flowposenet'; default ``cfg.train.mode``.
        """
        super().__init__()
        mode = cfg.train.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f'PoseNetModel mode must be one of {MODES}, got {mode!r}')
        self.cfg = cfg
        self.mode = mode
        self.depth_net = DepthNet.from_config(cfg)
        if mode == 'posenet':
            self.pose_net = PoseNet()
            self.flow_net = None
        else:
            self.pose_net = FlowPoseNet()
            self.flow_net = FlowNet.from_config(cfg)
            self.flow_net.requires_grad_(False)
        self.weights = loss_weights(cfg)

    def parameters_to_train(self, stage: Optional[str] = None) -> List[nn.Parameter]:
        """
        Pose net and depth net parameters (the flow net of 'flowposenet' stays frozen).

        :param stage: this model's mode (or None).
        :return: list of parameters for the optimizer.
        """
        self._check_stage(stage)
        self.pose_net.requires_grad_(True)
        self.depth_net.requires_grad_(True)
        if self.flow_net is not None:
            self.flow_net.requires_grad_(False)
        return list(self.pose_net.parameters()) + list(self.depth_net.parameters())

    def total_loss(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum with the config weights (see :func:`total_loss`)."""
        return total_loss(losses, self.weights)

    def forward(self, batch: Dict[str, torch.Tensor], stage: Optional[str] = None
                ) -> ModelOutput:
        """
        Regress T_21, predict both depths and compute the view-synthesis losses.

        :param batch: 'image1', 'image2' (B, 3, H, W) in [0, 1] and 'K' (B, 3, 3).
        :param stage: this model's mode ('posenet' or 'flowposenet') or None.
        :return: :class:`ModelOutput` (T_21 regressed, depths at the network's scale,
            geometry_ok all True, F None).
        """
        self._check_stage(stage)
        b, h, w = check_batch(batch)
        img1, img2 = batch['image1'], batch['image2']
        K = batch['K']
        flows_12: List[torch.Tensor] = []
        flows_21: List[torch.Tensor] = []
        if self.flow_net is not None:
            with frozen(self.flow_net):
                flows_12, flows_21 = self.flow_net.forward_backward(img1, img2)
            T_21, T_12 = self.pose_net(flows_12[0]), self.pose_net(flows_21[0])
        else:
            T_21, T_12 = self.pose_net(img1, img2), self.pose_net(img2, img1)
        disps = list(zip(self.depth_net(img1), self.depth_net(img2)))
        # the losses in float32 whatever the networks ran in
        with full_precision(img1.device):
            img1, img2, K = img1.float(), img2.float(), K.float()
            T_21, T_12 = T_21.float(), T_12.float()
            depths = [self.depth_pair(disp1, disp2, h, w) for disp1, disp2 in disps]
            T_21, T_12, extra_losses, extra_stats = self.adjust_poses(img1, img2, depths, T_21,
                                                                      T_12, K)
            photo = consistency = smooth = img1.new_zeros(b)
            for depth1, depth2 in depths:
                p, c, sm = self.pair_losses(img1, img2, depth1, depth2, T_21, T_12, K)
                photo, consistency, smooth = photo + p, consistency + c, smooth + sm
        zero = img1.new_zeros(())
        losses = {k: zero for k in LOSS_KEYS}
        losses.update({'flow_error': photo.mean(), 'pj_depth_loss': consistency.mean(),
                       'depth_smooth_loss': smooth.mean()})
        losses.update({k: v.mean() for k, v in extra_losses.items()})
        numbers = torch.stack([T_21[:, :3, 3].detach().norm(dim=1).mean(),
                               photo.detach().mean()] + list(extra_stats.values())).tolist()
        diagnostics = dict(zip(['translation_norm', 'photometric'] + list(extra_stats),
                               numbers))
        depth1, depth2 = depths[0]
        return ModelOutput(losses=losses, flows_12=[f.detach().float() for f in flows_12],
                           flows_21=[f.detach().float() for f in flows_21],
                           depth1=depth1.detach(), depth2=depth2.detach(), T_21=T_21.detach(),
                           geometry_ok=torch.ones(b, dtype=torch.bool, device=img1.device),
                           diagnostics=diagnostics)

    def depth_pair(self, disp1: torch.Tensor, disp2: torch.Tensor, h: int, w: int):
        """
        Depths of both images at one disparity scale, upsampled to (h, w), in float32.

        :param disp1: (B, 1, h', w') disparity of image 1 (any precision).
        :param disp2: (B, 1, h', w') disparity of image 2.
        :return: (depth1, depth2), each (B, 1, h, w). Differentiable.
        """
        dc = self.cfg.depth_net
        disp1, disp2 = disp1.float(), disp2.float()
        if tuple(disp1.shape[-2:]) != (h, w):
            disp1 = F.interpolate(disp1, size=(h, w), mode='bilinear', align_corners=False)
            disp2 = F.interpolate(disp2, size=(h, w), mode='bilinear', align_corners=False)
        return (disp_to_depth(disp1, dc.min_depth, dc.max_depth),
                disp_to_depth(disp2, dc.min_depth, dc.max_depth))

    def adjust_poses(self, img1: torch.Tensor, img2: torch.Tensor,
                     depths: List[Tuple[torch.Tensor, torch.Tensor]], T_21: torch.Tensor,
                     T_12: torch.Tensor, K: torch.Tensor):
        """
        Return the poses the losses use, extra per-sample losses and extra diagnostics.

        The step between the pose net and the view-synthesis losses; here the identity (a
        subclass refines the poses, see
        :class:`~trianflow_ros.model.refined_posenet.RefinedPoseNetModel`).

        :param img1: (B, 3, H, W) float32.
        :param img2: (B, 3, H, W) float32.
        :param depths: (depth1, depth2) of every disparity scale, finest first, (B, 1, H, W).
        :param T_21: (B, 4, 4) regressed pose mapping frame-1 points into frame 2.
        :param T_12: (B, 4, 4) regressed pose the other way.
        :param K: (B, 3, 3).
        :return: (T_21, T_12, {loss key: (B,)}, {diagnostic name: scalar tensor}).
        """
        return T_21, T_12, {}, {}

    def pair_losses(self, img1: torch.Tensor, img2: torch.Tensor, depth1: torch.Tensor,
                    depth2: torch.Tensor, T_21: torch.Tensor, T_12: torch.Tensor,
                    K: torch.Tensor):
        """
        Per-sample losses of one depth scale, both directions.

        :return: photometric, depth-consistency and inverse-depth smoothness (the original
            baseline's SC-SfMLearner smoothness), each of shape (B,). Differentiable.
        """
        photo = consistency = img1.new_zeros(img1.shape[0])
        for img_a, img_b, depth_a, depth_b, T_ba in (
                (img1, img2, depth1, depth2, T_21), (img2, img1, depth2, depth1, T_12)):
            p, c, _ = view_synthesis_losses(img_a, img_b, depth_a, depth_b, T_ba, K,
                                            self.cfg.loss.w_ssim)
            photo, consistency = photo + p, consistency + c
        smooth = (disparity_smoothness(1.0 / depth1, img1)
                  + disparity_smoothness(1.0 / depth2, img2))
        return photo, consistency, smooth

    def _check_stage(self, stage: Optional[str]) -> None:
        if stage is not None and stage != self.mode:
            raise ValueError(f'this PoseNetModel was built for mode {self.mode!r}, '
                             f'got stage {stage!r}')
