"""
PoseNet baseline with the SA4Depth-style pose refinement during training.

As :class:`~trianflow_ros.model.posenet_model.PoseNetModel` ('posenet' or 'flowposenet'),
selected with ``geometry.refine.train=true``, with one difference in the forward pass: the
regressed poses T_21 and T_12 are refined by :func:`~trianflow_ros.geometry.refine.lm_refine`
(both directions in one batch) on the features and confidences of a
:class:`~trianflow_ros.nets.feature_head.RefineFeatureHead`, warped with the predicted depth
of the finest disparity scale, before the photometric and depth-consistency losses. The
refinement is unrolled (``geometry.refine.levels`` = the head's levels, ``iterations`` per
level), so the view-synthesis losses train the features, the confidence, the depth net and
the pose net through it.

A converged refinement makes the refined pose almost independent of the regressed one, which
would leave the pose net (kept alone at test time, as in SA4Depth) without a signal; the extra
loss ``pose_distill_loss`` (weight ``geometry.refine.w_pose_distill``) pulls the regressed
pose towards the refined pose (detached): mean over both directions of
``|t_reg - t_ref|_1 + |R_reg - R_ref|_1`` (matrix entries). This loss term is a choice made
here (SA4Depth's training details are not public).

Outputs: ``T_21`` is the refined pose; diagnostics add ``refine_accepted`` (accepted LM steps
per pair), ``refine_cost_ratio`` (final / initial cost at the finest level) and
``refine_delta_t`` (mean |t_ref - t_reg|).
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from trianflow_ros.config import Config
from trianflow_ros.geometry.refine import lm_refine
from trianflow_ros.model.outputs import LOSS_KEYS, ModelOutput, total_loss
from trianflow_ros.model.posenet_model import PoseNetModel
from trianflow_ros.model.trianflow import check_batch, frozen, full_precision
from trianflow_ros.nets.depth_net import disp_to_depth
from trianflow_ros.nets.feature_head import RefineFeatureHead

#: The extra loss key of this model.
DISTILL_KEY = 'pose_distill_loss'


class RefinedPoseNetModel(PoseNetModel):
    """PoseNet (or PoseNet-Flow) whose poses are LM-refined before the losses."""

    def __init__(self, cfg: Config, mode: Optional[str] = None):
        """
        Build the networks of :class:`PoseNetModel` plus ``feature_head``.

        :param cfg: the resolved configuration (``geometry.refine`` is read as well).
        :param mode: 'posenet' or 'flowposenet'; default ``cfg.train.mode``.
        """
        super().__init__(cfg, mode)
        rc = cfg.geometry.refine
        self.feature_head = RefineFeatureHead(out_dim=rc.feature_dim,
                                              channels=(16, 32, 48, 64, 96, 128)[:rc.levels])
        self.weights = dict(self.weights)
        self.weights[DISTILL_KEY] = rc.w_pose_distill

    def parameters_to_train(self, stage: Optional[str] = None) -> List[torch.nn.Parameter]:
        """
        Pose net, depth net and feature head parameters.

        :param stage: this model's mode (or None).
        :return: list of parameters for the optimizer.
        """
        params = super().parameters_to_train(stage)
        self.feature_head.requires_grad_(True)
        return params + list(self.feature_head.parameters())

    def total_loss(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum with the config weights plus ``pose_distill_loss``."""
        return total_loss(losses, self.weights)

    def refine(self, img_a: torch.Tensor, img_b: torch.Tensor, depth_a: torch.Tensor,
               T_ba: torch.Tensor, K: torch.Tensor):
        """
        Refine T_ba with the learned features (see :func:`lm_refine`).

        :param img_a: (B, 3, H, W) images of frame a.
        :param img_b: (B, 3, H, W) images of frame b.
        :param depth_a: (B, 1, H, W) depth of frame a.
        :param T_ba: (B, 4, 4) initial poses.
        :param K: (B, 3, 3) intrinsics at (H, W).
        :return: :class:`~trianflow_ros.geometry.refine.RefineResult`. Differentiable.
        """
        b = img_a.shape[0]
        feats, confs = self.feature_head(torch.cat((img_a, img_b), dim=0))
        rc = self.cfg.geometry.refine
        return lm_refine(T_ba, [f[:b] for f in feats], [f[b:] for f in feats], depth_a, K,
                         [c[:b] for c in confs], iterations=rc.iterations,
                         lambda0=rc.lambda0, huber=rc.huber, min_depth=rc.min_depth)

    def forward(self, batch: Dict[str, torch.Tensor], stage: Optional[str] = None
                ) -> ModelOutput:
        """
        Regress T_21 and T_12, refine them, and compute the view-synthesis losses.

        :param batch: 'image1', 'image2' (B, 3, H, W) in [0, 1] and 'K' (B, 3, 3).
        :param stage: this model's mode or None.
        :return: :class:`ModelOutput` (T_21 refined, losses with ``pose_distill_loss``).
        """
        self._check_stage(stage)
        b, h, w = check_batch(batch)
        img1, img2, K = batch['image1'], batch['image2'], batch['K']
        flows_12: List[torch.Tensor] = []
        flows_21: List[torch.Tensor] = []
        if self.flow_net is not None:
            with frozen(self.flow_net):
                flows_12, flows_21 = self.flow_net.forward_backward(img1, img2)
            T_21, T_12 = self.pose_net(flows_12[0]), self.pose_net(flows_21[0])
        else:
            T_21, T_12 = self.pose_net(img1, img2), self.pose_net(img2, img1)
        disps = list(zip(self.depth_net(img1), self.depth_net(img2)))
        dc = self.cfg.depth_net
        with full_precision(img1.device):
            img1, img2, K = img1.float(), img2.float(), K.float()
            T_21, T_12 = T_21.float(), T_12.float()
            depths = []
            for disp1, disp2 in disps:
                disp1, disp2 = disp1.float(), disp2.float()
                if tuple(disp1.shape[-2:]) != (h, w):
                    disp1 = F.interpolate(disp1, size=(h, w), mode='bilinear',
                                          align_corners=False)
                    disp2 = F.interpolate(disp2, size=(h, w), mode='bilinear',
                                          align_corners=False)
                depths.append((disp_to_depth(disp1, dc.min_depth, dc.max_depth),
                               disp_to_depth(disp2, dc.min_depth, dc.max_depth)))
            # both directions in one batch: (1 -> 2 with depth 1) and (2 -> 1 with depth 2)
            depth1, depth2 = depths[0]
            res = self.refine(torch.cat((img1, img2)), torch.cat((img2, img1)),
                              torch.cat((depth1, depth2)), torch.cat((T_21, T_12)),
                              torch.cat((K, K)))
            T_init = torch.cat((T_21, T_12))
            T_ref = res.T_ba
            R_T21, R_T12 = T_ref[:b], T_ref[b:]
            target = T_ref.detach()
            distill = ((T_init[:, :3, 3] - target[:, :3, 3]).abs().sum(-1)
                       + (T_init[:, :3, :3] - target[:, :3, :3]).abs().sum((-2, -1)))
            distill = 0.5 * (distill[:b] + distill[b:])
            photo = consistency = smooth = img1.new_zeros(b)
            for d1, d2 in depths:
                p, c, sm = self.pair_losses(img1, img2, d1, d2, R_T21, R_T12, K)
                photo, consistency, smooth = photo + p, consistency + c, smooth + sm
        zero = img1.new_zeros(())
        losses = {k: zero for k in LOSS_KEYS}
        losses.update({'flow_error': photo.mean(), 'pj_depth_loss': consistency.mean(),
                       'depth_smooth_loss': smooth.mean(), DISTILL_KEY: distill.mean()})
        ratio = res.final_cost / res.initial_cost.clamp(min=1e-12)
        numbers = torch.stack((
            R_T21[:, :3, 3].detach().norm(dim=1).mean(), photo.detach().mean(),
            res.num_accepted.float().mean(), ratio.mean(),
            (T_ref.detach()[:, :3, 3] - T_init.detach()[:, :3, 3]).norm(dim=1).mean())).tolist()
        diagnostics = {'translation_norm': numbers[0], 'photometric': numbers[1],
                       'refine_accepted': numbers[2], 'refine_cost_ratio': numbers[3],
                       'refine_delta_t': numbers[4]}
        return ModelOutput(losses=losses, flows_12=[f.detach().float() for f in flows_12],
                           flows_21=[f.detach().float() for f in flows_21],
                           depth1=depth1.detach(), depth2=depth2.detach(),
                           T_21=R_T21.detach(),
                           geometry_ok=torch.ones(b, dtype=torch.bool, device=img1.device),
                           diagnostics=diagnostics)
