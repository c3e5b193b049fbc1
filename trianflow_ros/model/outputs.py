"""
Typed outputs of the training models and the loss names / weights they share with the trainer.

Loss names are those of the original release (its ``loss_pack`` keys), and their weights are the
original's ``generate_loss_weights_dict`` mapping of the ``loss`` config section:

=====================  =========================  ============================================
key                    weight                     what (TrianFlow models)
=====================  =========================  ============================================
``loss_pixel``         ``1 - w_ssim``             photometric L1 of the flow (raw, unweighted)
``loss_ssim``          ``w_ssim``                 photometric SSIM part of the flow (raw)
``loss_flow_smooth``   ``w_flow_smooth``          second-order edge-aware flow smoothness
``loss_flow_consis``   ``w_flow_consis``          always 0 (the original hard-zeroes it)
``geo_loss``           ``w_geo``                  epipolar band loss on the flow
``pt_depth_loss``      ``w_pt_depth``             triangulation depth loss (views 1 + 2)
``pj_depth_loss``      ``w_pj_depth``             dense depth reprojection loss L_pd
``depth_smooth_loss``  ``w_depth_smooth``         edge-aware disparity smoothness (both images)
``flow_error``         ``w_flow_error``           flow to rigid flow L_pf
=====================  =========================  ============================================

Every value in ``ModelOutput.losses`` is a raw (unweighted) scalar, so
``total = sum_k weight[k] * losses[k]`` (:func:`total_loss`) applies each weight exactly once.
The PoseNet baselines reuse the keys as the original did: ``flow_error`` carries their
photometric loss and ``pj_depth_loss`` their depth-consistency loss.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch

from trianflow_ros.config import Config

#: Every loss key, in the order of the original's weights dictionary.
LOSS_KEYS = ('loss_pixel', 'loss_ssim', 'loss_flow_smooth', 'loss_flow_consis', 'geo_loss',
             'pt_depth_loss', 'pj_depth_loss', 'depth_smooth_loss', 'flow_error')

#: Losses that train the flow network (zeros in the 'depth' stage).
FLOW_LOSS_KEYS = ('loss_pixel', 'loss_ssim', 'loss_flow_smooth', 'loss_flow_consis')

#: Losses computed from the solved two-view geometry (masked per sample by ``geometry_ok``).
GEOMETRY_LOSS_KEYS = ('geo_loss', 'pt_depth_loss', 'pj_depth_loss', 'depth_smooth_loss',
                      'flow_error')


def loss_weights(cfg: Config) -> Dict[str, float]:
    """
    Weights of the named losses (the original's ``generate_loss_weights_dict``).

    :param cfg: the configuration; only ``cfg.loss`` is read.
    :return: ``{key: weight}`` for every key of :data:`LOSS_KEYS`.
    """
    w = cfg.loss
    return {'loss_pixel': 1.0 - w.w_ssim, 'loss_ssim': w.w_ssim,
            'loss_flow_smooth': w.w_flow_smooth, 'loss_flow_consis': w.w_flow_consis,
            'geo_loss': w.w_geo, 'pt_depth_loss': w.w_pt_depth, 'pj_depth_loss': w.w_pj_depth,
            'depth_smooth_loss': w.w_depth_smooth, 'flow_error': w.w_flow_error}


def total_loss(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]
               ) -> torch.Tensor:
    """
    Weighted sum ``sum_k weights[k] * losses[k]`` of named scalar losses.

    Every term is kept in the sum, also with weight 0, so the result always has a graph when
    any loss has one (a NaN loss therefore shows in the total instead of hiding behind a zero
    weight).

    :param losses: named scalar losses (keys of :data:`LOSS_KEYS`).
    :param weights: weight of every key (:func:`loss_weights`).
    :return: scalar tensor. Differentiable.
    :raises KeyError: for a loss name without a weight.
    """
    if not losses:
        raise ValueError('no loss to sum')
    unknown = sorted(set(losses) - set(weights))
    if unknown:
        raise KeyError(f'losses without a weight: {unknown}; known names: {sorted(weights)}')
    total = None
    for key, value in losses.items():
        term = float(weights[key]) * value
        total = term if total is None else total + term
    return total


@dataclass
class ModelOutput:
    """
    What a training model returns for one batch.

    Tensors other than ``losses`` are detached (for logging, visualisation and evaluation).

    :param losses: raw scalar losses, one per key of :data:`LOSS_KEYS`; weight them with
        :func:`total_loss`.
    :param flows_12: flow image 1 -> 2 at the network's scales [full, 1/2, 1/4, 1/8], each
        (B, 2, h, w) in pixels of its resolution (empty for the image PoseNet).
    :param flows_21: flow image 2 -> 1, same layout.
    :param valid_12: valid mask of image 1 (visible, and F-B consistent when configured),
        (B, 1, H, W), or None.
    :param score: flow confidence M_s = valid / (0.1 + D_fb), (B, 1, H, W), or None.
    :param depth1: depth of image 1 (B, 1, H, W): aligned to the triangulation (unit-norm
        translation) where ``geometry_ok``, the network's own scale elsewhere; None when the
        depth net did not run.
    :param depth2: depth of image 2, likewise.
    :param F: fundamental matrices (x2^T F x1 = 0), (B, 3, 3), zeros where RANSAC failed;
        None when not solved.
    :param T_21: relative pose (X_2 = T_21 X_1), (B, 4, 4): from F and the cheirality test with
        unit-norm translation for TrianFlow (identity where F or the cheirality test failed;
        a sample that fails only at the triangulation keeps its pose), regressed for the
        PoseNet baselines; None when not solved.
    :param geometry_ok: per-sample success of the geometry, (B,) bool (all True when no
        geometry was solved).
    :param diagnostics: scalar numbers for logging (e.g. ``inlier_ratio``, ``mean_De``).
    """

    losses: Dict[str, torch.Tensor]
    flows_12: List[torch.Tensor] = field(default_factory=list)
    flows_21: List[torch.Tensor] = field(default_factory=list)
    valid_12: Optional[torch.Tensor] = None
    score: Optional[torch.Tensor] = None
    depth1: Optional[torch.Tensor] = None
    depth2: Optional[torch.Tensor] = None
    F: Optional[torch.Tensor] = None
    T_21: Optional[torch.Tensor] = None
    geometry_ok: Optional[torch.Tensor] = None
    diagnostics: Dict[str, float] = field(default_factory=dict)
