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

from typing import Dict, List, Optional, Tuple

import torch

from trianflow_ros.config import Config
from trianflow_ros.geometry.refine import lm_refine
from trianflow_ros.model.outputs import total_loss
from trianflow_ros.model.posenet_model import PoseNetModel
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

    def adjust_poses(self, img1: torch.Tensor, img2: torch.Tensor,
                     depths: List[Tuple[torch.Tensor, torch.Tensor]], T_21: torch.Tensor,
                     T_12: torch.Tensor, K: torch.Tensor):
        """
        Refine T_21 and T_12 (both directions in one batch) with the finest depths.

        Called by :meth:`PoseNetModel.forward` between the pose net and the losses.

        :return: (refined T_21, refined T_12, {``pose_distill_loss``: (B,)}, the
            ``refine_accepted``, ``refine_cost_ratio`` and ``refine_delta_t`` diagnostics).
        """
        b = img1.shape[0]
        # both directions in one batch: (1 -> 2 with depth 1) and (2 -> 1 with depth 2)
        depth1, depth2 = depths[0]
        res = self.refine(torch.cat((img1, img2)), torch.cat((img2, img1)),
                          torch.cat((depth1, depth2)), torch.cat((T_21, T_12)), torch.cat((K, K)))
        T_init = torch.cat((T_21, T_12))
        T_ref = res.T_ba
        R_T21, R_T12 = T_ref[:b], T_ref[b:]
        target = T_ref.detach()
        distill = ((T_init[:, :3, 3] - target[:, :3, 3]).abs().sum(-1)
                   + (T_init[:, :3, :3] - target[:, :3, :3]).abs().sum((-2, -1)))
        distill = 0.5 * (distill[:b] + distill[b:])
        ratio = res.final_cost / res.initial_cost.clamp(min=1e-12)
        stats = {'refine_accepted': res.num_accepted.float().mean(),
                 'refine_cost_ratio': ratio.mean(),
                 'refine_delta_t': (target[:, :3, 3] - T_init.detach()[:, :3, 3]).norm(dim=1)
                 .mean()}
        return R_T21, R_T12, {DISTILL_KEY: distill}, stats
