"""
TrianFlow training model: flow net + depth net + two-view geometry + losses, per training stage.

Laid out like the paper's Fig. 2 (Zhao et al., CVPR 2020):

1. **Flow** (Sec. 3.2): PWC-Net flow forward and backward; valid mask = visibility (forward
   splatting) x forward-backward consistency; stages ``flow`` and ``depth_pose`` train it with
   the photometric loss (L1 + SSIM on valid pixels) and second-order edge-aware smoothness, in
   both directions over ``flow_net.num_scales`` scales (image pyramid by
   ``adaptive_avg_pool2d``), summed without per-scale weights as the original.
2. **Geometry** (Sec. 3.3), stages ``depth`` and ``depth_pose``, all without gradient:
   M_s = valid / (0.1 + D_fb); ``loss.ransac_points`` matches drawn without replacement from the
   top 20 % of M_s; F by the batched LO-MSAC of :mod:`trianflow_ros.geometry.ransac`;
   D_e (epipolar distance of every pixel's flow) and M_r = [D_e < rigid_thres] / (1 + D_e);
   E = K^T F K -> (R, t) by the batch-correct cheirality test (unit-norm t).
3. **Triangulation** (Sec. 3.4): ``loss.depth_match_num`` matches from the top
   ``loss.depth_sample_ratio`` of M_r * M_s, mid-point triangulated, filtered by the ray angle
   (at least ``geometry.triangulation.min_angle_deg`` and a parallax of
   ``loss.tri_min_parallax_px`` pixels), positive depth in both views and projection inside
   both images.
4. **Depth losses** (Sec. 3.4): the predicted depth of each image is aligned to the
   triangulated structure by one scale (closed-form least squares, no gradient through it, as
   the original's ``register_depth``); triangulation loss in views 1 and 2, dense reprojection
   loss L_pd with the aligned depths and T_21 (weight M_r * M_s), flow-to-rigid-flow loss L_pf
   (weight M_r, trains the flow only), edge-aware disparity smoothness of both images, and the
   epipolar band loss on the flow (``geo_loss``).

Fixes over the original (notes Sec. 6.2): correspondences without replacement and without the
``topk``-on-binary-mask bias; cheirality per batch element; a parallax floor in pixels for the
triangulated points (the original's ray test keeps points whose depth is flow noise; at 64x128
they made the triangulation loss of a constant depth map equal that of the true depth, and the
depth net collapsed to a constant: docs/BENCHMARKS.md, "Learning"); a sample whose geometry fails
(fewer than MIN_MATCHES matches, a median match displacement below
``geometry.degeneracy.standstill_px`` (standstill), RANSAC failure or fewer than MIN_INLIERS
inliers, fewer than MIN_INLIERS points in front of both cameras, fewer than 10 % (or
MIN_INLIERS) usable triangulated points) is masked out **alone** (``geometry_ok`` False,
its depth losses count 0 and the others are averaged over the good samples) instead of
zeroing the whole batch; never NaN; reproducible sampling (a generator seeded from
``geometry.ransac.seed`` and a per-call counter).

Stage ``depth``: the flow net is frozen (eval mode, no_grad) and its losses are reported as
zeros without being computed. Stage ``depth_pose`` with every depth weight at 0 (the released
``*_3stage`` configs) runs the depth net in eval mode without gradient: it then only provides
the (detached) rigid-flow target, and its BatchNorm statistics no longer drift as they did in
the original.
"""

from dataclasses import dataclass
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from trianflow_ros.config import Config
from trianflow_ros.geometry.epipolar import epipolar_distance_map, essential_from_fundamental
from trianflow_ros.geometry.flow_masks import (Correspondences, fb_consistency_mask,
                                               fb_difference, occlusion_mask, rigid_score,
                                               sample_correspondences, score_map)
from trianflow_ros.geometry.pose import recover_pose
from trianflow_ros.geometry.ransac import ransac_fundamental
from trianflow_ros.geometry.scale import masked_median
from trianflow_ros.geometry.triangulation import (midpoint_triangulate, min_angle_for_parallax,
                                                  positive_depth_mask, ray_angle_mask, reproject)
from trianflow_ros.losses.depth import (align_and_triangulation_loss, depth_reprojection_loss,
                                        flow_rigid_loss)
from trianflow_ros.losses.epipolar import epipolar_geo_loss
from trianflow_ros.losses.photometric import flow_photometric_loss
from trianflow_ros.losses.smoothness import disparity_smoothness, flow_smoothness_2nd
from trianflow_ros.model.common import check_batch, frozen, full_precision
from trianflow_ros.model.outputs import (FLOW_LOSS_KEYS, GEOMETRY_LOSS_KEYS, loss_weights,
                                         ModelOutput, total_loss)
from trianflow_ros.nets.depth_net import DepthNet, disp_to_depth
from trianflow_ros.nets.flow_net import FlowNet

STAGES = ('flow', 'depth', 'depth_pose')

#: Share of the best-scored pixels F-RANSAC samples from (the original's constant).
F_TOP_RATIO = 0.2
#: Offset of the score map M_s = valid / (offset + D_fb).
SCORE_OFFSET = 0.1
#: A sample needs at least this many matches for F and for the triangulation.
MIN_MATCHES = 32
#: ... at least this many RANSAC inliers and points in front of both cameras.
MIN_INLIERS = 16
#: ... and at least this share (and MIN_INLIERS) of its triangulation matches usable.
MIN_TRIANGULATED_RATIO = 0.1
#: Scale fit of the prediction to the triangulation: 'lsq' equals the original's median
#: pre-scaling followed by its closed-form relative least squares.
SCALE_METHOD = 'lsq'


def gated_mean(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """
    Mean of per-sample values over the samples where ``ok`` holds; 0 if none does.

    Entries of failed samples are replaced (not multiplied) by 0, so a non-finite value there
    never reaches the result or its gradient.

    :param values: shape (B,).
    :param ok: shape (B,) bool.
    :return: scalar. Differentiable w.r.t. the selected values.
    """
    selected = torch.where(ok, values, torch.zeros_like(values))
    return selected.sum() / ok.sum().clamp(min=1).to(values.dtype)


@dataclass
class TwoViewGeometry:
    """
    Geometry solved from one batch of flows (all detached; see :func:`solve_two_view`).

    :param score: M_s, (B, 1, H, W).
    :param F: fundamental matrices, zeros where RANSAC failed, (B, 3, 3).
    :param epipolar_dist: D_e of the detached flow, (B, 1, H, W).
    :param rigid: M_r, (B, 1, H, W).
    :param T_21: pose from E with unit-norm t (identity where F or the pose failed), (B, 4, 4).
    :param matches: the F-RANSAC correspondences.
    :param inliers: their RANSAC inliers, (B, N) bool.
    :param x1: reprojected triangulated points in image 1, (B, M, 2).
    :param z1: their depths in camera 1 (baseline = 1), (B, M).
    :param x2: the points in image 2, (B, M, 2).
    :param z2: their depths in camera 2, (B, M).
    :param tri_ok: usable triangulated points, (B, M) bool.
    :param f_ok: F (and hence D_e, M_r, geo_loss) usable, (B,) bool.
    :param ok: the whole geometry usable (F, pose and triangulation), (B,) bool.
    :param stats: per-sample numbers for the diagnostics (name -> (B,) tensor).
    """

    score: torch.Tensor
    F: torch.Tensor
    epipolar_dist: torch.Tensor
    rigid: torch.Tensor
    T_21: torch.Tensor
    matches: Correspondences
    inliers: torch.Tensor
    x1: torch.Tensor
    z1: torch.Tensor
    x2: torch.Tensor
    z2: torch.Tensor
    tri_ok: torch.Tensor
    f_ok: torch.Tensor
    ok: torch.Tensor
    stats: Dict[str, torch.Tensor]


def _inside(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return (x[..., 0] >= 0) & (x[..., 0] <= w - 1) & (x[..., 1] >= 0) & (x[..., 1] <= h - 1)


def solve_two_view(flow_12: torch.Tensor, flow_21: torch.Tensor, valid: torch.Tensor,
                   K: torch.Tensor, cfg: Config, generator: Optional[torch.Generator] = None
                   ) -> TwoViewGeometry:
    """
    Solve F, the pose and the triangulation of a batch of flows, per sample (Sec. 3.3-3.4).

    Everything is computed on detached flows and without gradient, as the original. Failures
    are per sample (``f_ok``, ``ok``); a failed sample keeps finite placeholders.

    :param flow_12: flow 1 -> 2, (B, 2, H, W).
    :param flow_21: flow 2 -> 1, (B, 2, H, W).
    :param valid: valid mask of image 1, (B, 1, H, W).
    :param K: intrinsics at the flow resolution, (B, 3, 3).
    :param cfg: configuration (``loss``, ``geometry`` sections).
    :param generator: random generator on the flow's device (sampling and RANSAC).
    :return: :class:`TwoViewGeometry` (float32). Not differentiable.
    """
    b, _, h, w = flow_12.shape
    lc, gc = cfg.loss, cfg.geometry
    with torch.no_grad(), full_precision(flow_12.device):
        f12, f21 = flow_12.detach().float(), flow_21.detach().float()
        K = K.detach().to(f12.dtype)
        valid = valid.float()
        score = score_map(valid.detach(), fb_difference(f12, f21), SCORE_OFFSET)
        # --- F from the top 20 % of M_s (without replacement, unbiased ties)
        matches = sample_correspondences(score, f12, num=lc.ransac_points, top_ratio=F_TOP_RATIO,
                                         generator=generator)
        displacement = (matches.x2 - matches.x1).norm(dim=-1)
        median_flow = masked_median(displacement, matches.valid)
        moving = median_flow >= gc.degeneracy.standstill_px
        ransac = ransac_fundamental(matches.x1, matches.x2, matches.weights,
                                    generator=generator, params=gc.ransac)
        f_ok = ((matches.count >= MIN_MATCHES) & moving & (ransac.score > 0)
                & (ransac.num_inliers >= MIN_INLIERS))
        Fm = torch.where(f_ok[:, None, None], ransac.model.to(f12.dtype),
                         torch.zeros_like(ransac.model, dtype=f12.dtype))
        epipolar_dist = epipolar_distance_map(Fm, f12)
        epipolar_dist = torch.where(torch.isfinite(epipolar_dist), epipolar_dist,
                                    torch.full_like(epipolar_dist, math.inf))
        rigid = rigid_score(epipolar_dist, lc.rigid_thres) * f_ok[:, None, None, None]
        # --- pose: E = K^T F K, cheirality on the RANSAC inliers (per sample)
        E = essential_from_fundamental(Fm, K, K)
        inliers = ransac.inliers & f_ok[:, None]
        pose = recover_pose(E, matches.x1, matches.x2, K, K, mask=inliers)
        pose_ok = f_ok & (pose.num_positive >= MIN_INLIERS)
        eye = torch.eye(4, dtype=f12.dtype, device=f12.device).expand(b, 4, 4)
        T_21 = torch.where(pose_ok[:, None, None], pose.T_21.to(f12.dtype), eye)
        # --- triangulation of the top share of M_r * M_s
        tri = sample_correspondences(rigid * score, f12, num=lc.depth_match_num,
                                     top_ratio=lc.depth_sample_ratio, generator=generator)
        X1 = midpoint_triangulate(tri.x1, tri.x2, K, K, T_21)
        min_angle = min_angle_for_parallax(lc.tri_min_parallax_px, K,
                                           gc.triangulation.min_angle_deg)
        x1, z1, x2, z2 = reproject(X1, T_21, K, K)
        tri_ok = (tri.valid & pose_ok[:, None] & torch.isfinite(X1).all(dim=-1)
                  & ray_angle_mask(tri.x1, tri.x2, K, K, T_21, min_angle)
                  & positive_depth_mask(X1, T_21, gc.triangulation.min_depth)
                  & _inside(x1, h, w) & _inside(x2, h, w))
        num_tri = tri_ok.sum(dim=1)
        tri_ratio = num_tri.to(f12.dtype) / tri.count.clamp(min=1).to(f12.dtype)
        ok = (pose_ok & (tri.count >= MIN_MATCHES) & (num_tri >= MIN_INLIERS)
              & (tri_ratio >= MIN_TRIANGULATED_RATIO))
        tri_ok = tri_ok & ok[:, None]
        # finite placeholders for what is masked out
        x1 = torch.where(tri_ok[..., None], x1, torch.zeros_like(x1))
        x2 = torch.where(tri_ok[..., None], x2, torch.zeros_like(x2))
        z1 = torch.where(tri_ok, z1, torch.ones_like(z1))
        z2 = torch.where(tri_ok, z2, torch.ones_like(z2))
        count = matches.count.clamp(min=1).to(f12.dtype)
        valid_px = valid.detach().flatten(1) > 0
        de = epipolar_dist.flatten(1)
        de_ok = valid_px & torch.isfinite(de)
        de_sum = torch.where(de_ok, de, torch.zeros_like(de)).sum(1)
        stats = {
            'matches': matches.count.to(f12.dtype),
            'median_flow_px': median_flow,
            'inlier_ratio': ransac.num_inliers.to(f12.dtype) / count,
            'positive_ratio': pose.num_positive.to(f12.dtype)
            / ransac.num_inliers.clamp(min=1).to(f12.dtype),
            'mean_De': de_sum / de_ok.sum(1).clamp(min=1).to(f12.dtype),
            'rigid_ratio': ((de < lc.rigid_thres) & valid_px).sum(1).to(f12.dtype)
            / valid_px.sum(1).clamp(min=1).to(f12.dtype),
            'tri_valid_ratio': tri_ratio,
        }
    return TwoViewGeometry(score=score, F=Fm, epipolar_dist=epipolar_dist, rigid=rigid,
                           T_21=T_21, matches=matches, inliers=inliers, x1=x1, z1=z1, x2=x2,
                           z2=z2, tri_ok=tri_ok, f_ok=f_ok, ok=ok, stats=stats)


class TrianFlowModel(nn.Module):
    """
    The TrianFlow training model of the three stages ``flow``, ``depth``, ``depth_pose``.

    ``forward(batch, stage)`` returns a :class:`ModelOutput` whose ``losses`` hold one raw
    scalar per loss name; :meth:`total_loss` weights them with the config. Submodules
    ``flow_net`` (:class:`FlowNet`) and ``depth_net`` (:class:`DepthNet`) keep the parameter
    names of the networks, so their state dicts load as those of the nets.

    :ivar geometry_calls: counter mixed into the sampling seed, incremented by every forward
        that solves geometry; set it (e.g. from a checkpoint's iteration) to resume a
        reproducible run.
    """

    def __init__(self, cfg: Config):
        """
        Build the networks from the configuration.

        :param cfg: the resolved configuration (``flow_net``, ``depth_net``, ``loss``,
            ``geometry`` sections are read).
        """
        super().__init__()
        self.cfg = cfg
        self.flow_net = FlowNet.from_config(cfg)      # variant (width_mult) from the config
        self.depth_net = DepthNet.from_config(cfg)
        self.weights = loss_weights(cfg)
        self.geometry_calls = 0

    # ---------------------------------------------------------------------------------------
    # trainer interface
    # ---------------------------------------------------------------------------------------
    def parameters_to_train(self, stage: str) -> List[nn.Parameter]:
        """
        Select (and unfreeze) the parameters a stage trains; freeze the others.

        ``flow``: the flow net; ``depth``: the depth net (the flow net gets
        ``requires_grad=False`` and runs in eval mode under no_grad); ``depth_pose``: both.

        :param stage: 'flow', 'depth' or 'depth_pose'.
        :return: list of parameters for the optimizer.
        """
        self._check_stage(stage)
        train_flow = stage in ('flow', 'depth_pose')
        train_depth = stage in ('depth', 'depth_pose')
        self.flow_net.requires_grad_(train_flow)
        self.depth_net.requires_grad_(train_depth)
        params = []
        if train_flow:
            params += list(self.flow_net.parameters())
        if train_depth:
            params += list(self.depth_net.parameters())
        return params

    def total_loss(self, losses: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Weighted sum ``sum_k w[k] * losses[k]`` with the config's weights.

        Weights: loss_pixel 1 - w_ssim, loss_ssim w_ssim, loss_flow_smooth w_flow_smooth,
        loss_flow_consis w_flow_consis, geo_loss w_geo, pt_depth_loss w_pt_depth,
        pj_depth_loss w_pj_depth, depth_smooth_loss w_depth_smooth, flow_error w_flow_error.
        The losses are raw, so every weight applies exactly once.

        :param losses: ``ModelOutput.losses``.
        :return: scalar tensor. Differentiable.
        """
        return total_loss(losses, self.weights)

    def forward(self, batch: Dict[str, torch.Tensor], stage: str) -> ModelOutput:
        """
        Compute the outputs and the named losses of one training stage.

        :param batch: 'image1', 'image2' (B, 3, H, W) in [0, 1] and 'K' (B, 3, 3) at this
            resolution (H, W multiples of 64 reproduce the original networks exactly).
        :param stage: 'flow', 'depth' or 'depth_pose'.
        :return: :class:`ModelOutput` with every key of ``LOSS_KEYS`` in ``losses``.
        """
        self._check_stage(stage)
        b, h, w = check_batch(batch)
        img1, img2 = batch['image1'], batch['image2']
        K = batch['K']

        # 1. networks (under the caller's autocast, if any): flow forward and backward (frozen
        # in the depth stage), disparities of both images (frozen when no depth loss counts)
        if stage == 'depth':
            with frozen(self.flow_net):
                flows_12, flows_21 = self.flow_net.forward_backward(img1, img2)
        else:
            flows_12, flows_21 = self.flow_net.forward_backward(img1, img2)
        disps = None
        if stage != 'flow':
            if self._depth_trained(stage):
                disps = self._predict_disparities(img1, img2)
            else:
                with frozen(self.depth_net):
                    disps = self._predict_disparities(img1, img2)
        # losses and geometry in float32 whatever the networks ran in (pixel coordinates in
        # float16 would be quantised to 0.5 px at 832 columns)
        with full_precision(img1.device):
            return self._losses(img1.float(), img2.float(), K.float(),
                                [f.float() for f in flows_12], [f.float() for f in flows_21],
                                disps, stage, b)

    def _losses(self, img1: torch.Tensor, img2: torch.Tensor, K: torch.Tensor,
                flows_12: List[torch.Tensor], flows_21: List[torch.Tensor],
                disps: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]], stage: str,
                b: int) -> ModelOutput:
        """Masks, flow losses, geometry and depth losses of :meth:`forward` (float32)."""
        zero = img1.new_zeros(())
        losses: Dict[str, torch.Tensor] = {}
        diagnostics: Dict[str, float] = {}
        valid_12 = self.valid_mask(flows_12[0], flows_21[0])
        if stage == 'depth':
            losses.update({k: zero for k in FLOW_LOSS_KEYS})
        else:
            losses.update(self.flow_losses(img1, img2, flows_12, flows_21, valid_12))

        out = ModelOutput(losses=losses, flows_12=[f.detach() for f in flows_12],
                          flows_21=[f.detach() for f in flows_21], valid_12=valid_12,
                          geometry_ok=torch.ones(b, dtype=torch.bool, device=img1.device),
                          diagnostics=diagnostics)
        diagnostics['valid_ratio'] = float(valid_12.mean())
        if stage == 'flow':
            losses.update({k: zero for k in GEOMETRY_LOSS_KEYS})
            return out

        # 2. geometry (detached) and 3. depth losses
        generator = self._generator(img1.device)
        geo = solve_two_view(flows_12[0], flows_21[0], valid_12, K, self.cfg, generator)
        disps1, disps2 = disps
        losses.update(self.geometry_losses(img1, img2, K, flows_12[0], disps1, disps2, geo,
                                           out))
        out.score, out.F, out.T_21, out.geometry_ok = geo.score, geo.F, geo.T_21, geo.ok
        diagnostics.update(self._geometry_diagnostics(geo))
        return out

    # ---------------------------------------------------------------------------------------
    # pieces
    # ---------------------------------------------------------------------------------------
    def valid_mask(self, flow_ab: torch.Tensor, flow_ba: torch.Tensor) -> torch.Tensor:
        """
        Compute the valid mask of image a: visibility x F-B consistency, as configured.

        ``flow_net.use_occlusion`` switches the visibility (forward splatting of flow_ba),
        ``flow_net.use_fb_check`` the consistency (off for NYUv2 as the original).

        :param flow_ab: flow a -> b, (B, 2, h, w).
        :param flow_ba: flow b -> a, (B, 2, h, w).
        :return: mask in [0, 1], (B, 1, h, w). Not differentiable.
        """
        fc = self.cfg.flow_net
        flow_ab, flow_ba = flow_ab.detach(), flow_ba.detach()
        mask = torch.ones_like(flow_ab[:, :1])
        if fc.use_occlusion:
            mask = mask * occlusion_mask(flow_ba)
        if fc.use_fb_check:
            mask = mask * fb_consistency_mask(flow_ab, flow_ba, fc.fb_alpha, fc.fb_beta)
        return mask

    def flow_losses(self, img1: torch.Tensor, img2: torch.Tensor,
                    flows_12: List[torch.Tensor], flows_21: List[torch.Tensor],
                    valid_12: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """
        Photometric and smoothness losses of the flow, both directions, summed over scales.

        At every scale s < ``flow_net.num_scales`` the images are average-pooled to the flow's
        size and each direction's valid mask is computed from that scale's flows. The
        photometric parts are returned raw (L1 and SSIM unweighted) and summed over scales
        and directions; each part is a batch mean of mask-normalised means (the original).

        :return: 'loss_pixel', 'loss_ssim', 'loss_flow_smooth', 'loss_flow_consis' (always 0,
            as the original hard-zeroes it). Differentiable w.r.t. the flows.
        """
        pixel = ssim = smooth = img1.new_zeros(())
        for s in range(min(self.cfg.flow_net.num_scales, len(flows_12))):
            f12, f21 = flows_12[s], flows_21[s]
            size = tuple(f12.shape[-2:])
            i1 = img1 if size == tuple(img1.shape[-2:]) else F.adaptive_avg_pool2d(img1, size)
            i2 = img2 if size == tuple(img2.shape[-2:]) else F.adaptive_avg_pool2d(img2, size)
            m1 = valid_12 if (s == 0 and valid_12 is not None) else self.valid_mask(f12, f21)
            m2 = self.valid_mask(f21, f12)
            for img_a, img_b, flow, mask in ((i1, i2, f12, m1), (i2, i1, f21, m2)):
                # w_ssim = 0.5 weighs both parts by exactly 1/2: undo it for the raw parts
                part_pixel, part_ssim = flow_photometric_loss(img_a, img_b, flow, mask, 0.5)
                pixel = pixel + 2.0 * part_pixel.mean()
                ssim = ssim + 2.0 * part_ssim.mean()
                smooth = smooth + flow_smoothness_2nd(flow, img_a).mean()
        return {'loss_pixel': pixel, 'loss_ssim': ssim, 'loss_flow_smooth': smooth,
                'loss_flow_consis': img1.new_zeros(())}

    def _depth_trained(self, stage: str) -> bool:
        lc = self.cfg.loss
        if stage == 'depth':
            return True
        return any(wt != 0.0 for wt in (lc.w_pt_depth, lc.w_pj_depth, lc.w_depth_smooth))

    def _predict_disparities(self, img1: torch.Tensor, img2: torch.Tensor
                             ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Full-resolution disparities of both images, one per disp scale (finest first)."""
        size = tuple(img1.shape[-2:])

        def full(disps: List[torch.Tensor]) -> List[torch.Tensor]:
            return [d if tuple(d.shape[-2:]) == size else
                    F.interpolate(d, size=size, mode='bilinear', align_corners=False)
                    for d in disps]
        return full(self.depth_net(img1)), full(self.depth_net(img2))

    def geometry_losses(self, img1: torch.Tensor, img2: torch.Tensor, K: torch.Tensor,
                        flow_12: torch.Tensor, disps1: List[torch.Tensor],
                        disps2: List[torch.Tensor], geo: TwoViewGeometry,
                        out: ModelOutput) -> Dict[str, torch.Tensor]:
        """
        Depth and geometric losses from the solved geometry, masked per sample.

        ``geo_loss`` is averaged over the samples with a usable F, every other loss over the
        samples whose whole geometry succeeded; losses sum over the disparity scales.
        Fills ``out.depth1`` / ``out.depth2`` (aligned where the geometry succeeded).

        :param disps1: disparities of image 1 at full resolution, one per disp scale.
        :param disps2: disparities of image 2, likewise.
        :return: 'geo_loss', 'pt_depth_loss', 'pj_depth_loss', 'depth_smooth_loss',
            'flow_error'.
        """
        lc = self.cfg.loss
        dc = self.cfg.depth_net
        # geo_loss: F fixed, D_e differentiable w.r.t. the flow (trains it in depth_pose)
        d_e = epipolar_distance_map(geo.F.to(flow_12.dtype), flow_12)
        geo_loss = epipolar_geo_loss(d_e, lc.inlier_thres, lc.rigid_thres)
        losses = {'geo_loss': gated_mean(geo_loss.value, geo.f_ok)}

        weight_pj = (geo.rigid * geo.score).detach()
        pt = pj = smooth = flow_error = img1.new_zeros(img1.shape[0])
        for s, (disp1, disp2) in enumerate(zip(disps1, disps2)):
            disp1, disp2 = disp1.float(), disp2.float()
            depth1 = disp_to_depth(disp1, dc.min_depth, dc.max_depth)
            depth2 = disp_to_depth(disp2, dc.min_depth, dc.max_depth)
            al1 = align_and_triangulation_loss(depth1, geo.x1, geo.z1, geo.tri_ok, SCALE_METHOD)
            al2 = align_and_triangulation_loss(depth2, geo.x2, geo.z2, geo.tri_ok, SCALE_METHOD)
            pt = pt + al1.loss.value + al2.loss.value
            pj = pj + depth_reprojection_loss(al1.depth, al2.depth, geo.T_21, K,
                                              weight_pj).value
            smooth = smooth + disparity_smoothness(disp1, img1) + disparity_smoothness(disp2,
                                                                                       img2)
            flow_error = flow_error + flow_rigid_loss(flow_12, al1.depth, geo.T_21, K,
                                                      geo.rigid).value
            if s == 0:
                ok4 = geo.ok[:, None, None, None]
                out.depth1 = torch.where(ok4, al1.depth, depth1).detach()
                out.depth2 = torch.where(ok4, al2.depth, depth2).detach()
        losses.update({'pt_depth_loss': gated_mean(pt, geo.ok),
                       'pj_depth_loss': gated_mean(pj, geo.ok),
                       'depth_smooth_loss': gated_mean(smooth, geo.ok),
                       'flow_error': gated_mean(flow_error, geo.ok)})
        return losses

    # ---------------------------------------------------------------------------------------
    # helpers
    # ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_stage(stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f'stage must be one of {STAGES}, got {stage!r} (the PoseNet '
                             "baselines 'posenet' / 'flowposenet' use PoseNetModel)")

    def _generator(self, device: torch.device) -> torch.Generator:
        """Return a generator seeded from ``geometry.ransac.seed`` and the call counter."""
        seed = (self.cfg.geometry.ransac.seed * 1_000_003 + self.geometry_calls) % (2 ** 63)
        self.geometry_calls += 1
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        return generator

    @staticmethod
    def _geometry_diagnostics(geo: TwoViewGeometry) -> Dict[str, float]:
        ok, f_ok = geo.ok, geo.f_ok
        names, values = ['geometry_ok_ratio', 'f_ok_ratio'], [ok.float().mean(),
                                                              f_ok.float().mean()]
        for name, v in geo.stats.items():
            sel = f_ok if name not in ('matches', 'median_flow_px') else torch.ones_like(f_ok)
            names.append(name)
            values.append(gated_mean(v.float(), sel))
        numbers = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).tolist()
        result = dict(zip(names, numbers))
        result['num_geometry_ok'] = float(int(ok.sum()))
        result['all_geometry_failed'] = float(not bool(ok.any()))
        return result
