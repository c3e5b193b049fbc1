"""
Inference-time LM refinement of the VO pose and scale (``geometry.refine.enabled``).

Beyond TrianFlow and SA4Depth (which refine only while training): after the pose of a pair is
solved and scaled (E + triangulation + scale fit, or PnP), :class:`PoseRefiner` refines the 6
DoF of T_21 (the translation's magnitude included, i.e. the scale) by
:func:`~trianflow_ros.geometry.refine.lm_refine`, aligning the features of the current image
with those of the reference image warped through the reference depth:

- depth: the reference frame's depth in odometry units (the depth provider's, which the scale
  was fitted to; or, in classical mode, the depth propagated by triangulation); depths beyond
  ``geometry.scale.max_depth`` of a depth provider are ignored, as by the scale fit;
- features (``geometry.refine.features``): 'flow_net' = levels 1-3 (1/2, 1/4, 1/8) of the flow
  network's own FeaturePyramid, L2-normalised per pixel (no extra weights; needs a learned
  flow provider); 'image' = :func:`~trianflow_ros.geometry.refine.image_feature_pyramid`
  (the blurred grey image and its two gradients, per-image normalised; no weights at all),
  ``geometry.refine.levels`` levels down from ``finest_level``; 'auto' = 'flow_net' when the
  flow provider is learned, else 'image'. No confidence map (uniform) in either case.

The refined pose replaces the solved one only when it is plausible: the valid share of pixels
is at least ``min_valid_fraction``, the rotation correction is below ``max_rotation_deg`` and
the translation correction below ``max_translation_ratio * |t|``; otherwise the solved pose is
kept and the frame's message says why. When accepted, the translation-norm ratio multiplies the
reported scale; a new keyframe's map is triangulated with the refined pose. Its time is
``timings['refine']`` (ms).

Wiring: ``VisualOdometry.step`` calls :meth:`PoseRefiner.refine_estimate` on the solved pair
when ``geometry.refine.enabled``; it returns a new estimate (nothing is mutated).
"""

import dataclasses
import math
import time
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from trianflow_ros.config import Config
from trianflow_ros.geometry.refine import image_feature_pyramid, lm_refine
from trianflow_ros.geometry.threads import one_cpu_thread
from trianflow_ros.vo.state import Frame, Keyframe, PairEstimate

#: Methods whose pose has a translation with a scale (refined); 'hold' and 'rotation' are not.
REFINED_METHODS = ('essential', 'pnp')


class PoseRefiner:
    """Refine a solved, scaled VO pose on feature residuals (see the module docstring)."""

    def __init__(self, cfg: Config, flow_provider=None):
        """
        Choose the features.

        :param cfg: configuration (``geometry.refine``, ``geometry.scale.max_depth``).
        :param flow_provider: the odometry's flow provider; its ``net.fpyramid`` gives the
            'flow_net' features when it is learned.
        """
        self.cfg = cfg
        rc = cfg.geometry.refine
        net = getattr(flow_provider, 'net', None)
        self.pyramid = getattr(net, 'fpyramid', None)
        self.bgr = bool(getattr(flow_provider, 'bgr', False))
        kind = rc.features
        if kind == 'auto':
            kind = 'flow_net' if (self.pyramid is not None
                                  and getattr(flow_provider, 'learned', False)) else 'image'
        if kind == 'flow_net' and self.pyramid is None:
            raise ValueError("geometry.refine.features='flow_net' needs a learned flow provider "
                             "(vo.flow_provider=net); use 'image' or 'auto' with DIS flow")
        self.kind = kind
        self._cache = None

    def features(self, image: torch.Tensor) -> List[torch.Tensor]:
        """
        Feature pyramid of one image, coarse first.

        :param image: (1, 3, H, W) RGB in [0, 1].
        :return: list of (1, C, h, w).
        """
        if self._cache is not None and self._cache[0] is image:
            return self._cache[1]
        rc = self.cfg.geometry.refine
        with torch.no_grad():
            if self.kind == 'flow_net':
                dev = next(self.pyramid.parameters()).device
                x = image.to(dev).flip(1) if self.bgr else image.to(dev)
                levels = self.pyramid(x)[:min(rc.levels, 6)]
                feats = [F.normalize(f.float(), dim=1, eps=1e-6).to(image.device)
                         for f in levels][::-1]
            else:
                feats = image_feature_pyramid(image, rc.levels + rc.finest_level)
                feats = feats[:rc.levels]
        self._cache = (image, feats)
        return feats

    def refine(self, img_ref: torch.Tensor, img_cur: torch.Tensor, depth_ref: torch.Tensor,
               K: torch.Tensor, T_21: np.ndarray, max_depth: float = 0.0):
        """
        Refine one pose.

        :param img_ref: (1, 3, H, W) reference image.
        :param img_cur: (1, 3, H, W) current image.
        :param depth_ref: (1, 1, H, W) depth of the reference (0 = unknown), odometry unit.
        :param K: (1, 3, 3) intrinsics of both images at (H, W).
        :param T_21: (4, 4) solved pose (reference -> current).
        :param max_depth: ignore depths beyond this (0 = none).
        :return: (T_21 refined (4, 4) float64 or None when rejected, message, RefineResult).
        """
        rc = self.cfg.geometry.refine
        depth = depth_ref.float()
        if max_depth > 0:
            depth = torch.where(depth < max_depth, depth, torch.zeros_like(depth))
        fa = self.features(img_ref)
        fb = self.features(img_cur)
        T0 = torch.as_tensor(T_21, dtype=torch.float64)[None].to(img_ref.device)
        res = lm_refine(T0.float(), fa, fb, depth, K.float(), None, iterations=rc.iterations,
                        lambda0=rc.lambda0, huber=rc.huber, min_depth=rc.min_depth)
        T = res.T_ba[0].double().cpu().numpy()
        if not np.all(np.isfinite(T)):
            return None, 'refinement: non-finite pose, kept the solved one', res
        vf = float(res.valid_fraction[0])
        if vf < rc.min_valid_fraction:
            return None, (f'refinement: {100 * vf:.0f} % valid pixels < '
                          f'{100 * rc.min_valid_fraction:.0f} %, kept the solved pose'), res
        dR = T[:3, :3] @ np.asarray(T_21)[:3, :3].T
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(dR) - 1.0) / 2.0))))
        t0 = np.asarray(T_21)[:3, 3]
        dt = float(np.linalg.norm(T[:3, 3] - t0))
        if angle > rc.max_rotation_deg or dt > rc.max_translation_ratio * max(
                float(np.linalg.norm(t0)), 1e-9):
            return None, (f'refinement: correction too large ({angle:.2f} deg, '
                          f'{dt:.3g} of |t| {np.linalg.norm(t0):.3g}), kept the solved '
                          'pose'), res
        return T, f'refined ({int(res.num_accepted[0])} LM steps, {angle:.3f} deg)', res

    def refine_estimate(self, est: PairEstimate, kf: Keyframe, cur: Frame,
                        timings: Dict[str, float]) -> PairEstimate:
        """
        Return the estimate with its pose refined (the hook of ``VisualOdometry.step``).

        The estimate is returned unchanged (a new message aside) unless its method is in
        :data:`REFINED_METHODS` and the keyframe has a depth. Sets ``timings['refine']`` (ms).

        :param est: the solved pair (keyframe -> current).
        :param kf: the keyframe (``frame.image``, ``frame.K``, ``depth``, ``kind``).
        :param cur: the current frame (``image``).
        :param timings: the frame's timing dict.
        :return: a new :class:`~trianflow_ros.vo.state.PairEstimate`.
        """
        t0 = time.perf_counter()
        timings.setdefault('refine', 0.0)
        if not (est.method in REFINED_METHODS and kf.depth is not None):
            return est
        g = self.cfg.geometry
        max_depth = g.scale.max_depth if kf.kind == 'depth' else 0.0
        with one_cpu_thread(cur.image.device):
            T, message, _ = self.refine(kf.frame.image, cur.image, kf.depth, kf.frame.K,
                                        est.T_21, max_depth)
        changes = {'message': (est.message + '; ' if est.message else '') + message}
        if T is not None:
            n0 = float(np.linalg.norm(np.asarray(est.T_21)[:3, 3]))
            ratio = float(np.linalg.norm(T[:3, 3])) / n0 if n0 > 0 else 1.0
            changes['T_21'] = T
            if math.isfinite(ratio) and ratio > 0:
                changes['scale'] = est.scale * ratio
        timings['refine'] = 1000.0 * (time.perf_counter() - t0)
        return dataclasses.replace(est, **changes)
