"""
Stateful monocular visual odometry in the TrianFlow manner: ``VisualOdometry.step`` per frame.

Per frame (image i) against the reference frame r (the last good frame):

1. Input: an (H, W, 3) uint8 image (RGB, or BGR with ``bgr=True``) or a (3, H, W) float tensor
   in [0, 1], and K at the input resolution. The working resolution is ``vo.resolution``:
   'network' resizes to ``data.img_height x data.img_width`` (K rescaled with
   ``resize_intrinsics``), 'native' keeps the input size (the classical flow needs no fixed
   size). A frame without texture (grey std < ``vo.min_image_std``: black, covered,
   saturated) or with non-finite pixels is LOST at once.
2. Depth of frame i from the depth provider, computed once and kept with the frame for the
   next pair.
3. Flow r -> i and i -> r from the flow provider.
4. Correspondences (:func:`select_correspondences`): valid = visible x forward-backward
   consistent (``flow_valid_mask``) x photometrically consistent; score = M_s =
   valid / (0.1 + D_fb); the image is cut into ``grid_rows x grid_cols`` cells and each cell
   draws its share of ``vo.num_matches`` without replacement from its best ``top_ratio`` pixels
   (``sample_correspondences`` per cell: the paper's top-share sampling, spatially spread
   like DF-VO's local best-N). Fewer than ``vo.min_valid_ratio`` of the pixels with a
   match consistent to 0.5 px (an unrelated or corrupted image) or fewer than
   ``vo.min_matches`` matches: LOST. The epipolar part of TrianFlow's score (M_r) is applied to the
   drawn matches by the E-RANSAC: only its Sampson inliers are triangulated and used for the
   scale, instead of a second (F) RANSAC per frame to build a dense M_r.
5. Geometry: one E-RANSAC (``ransac_essential``), then ``classify_motion`` (GRIC) on a random
   subset of ``vo.classify_points`` matches with the E residuals (+inf when E failed):

   - STANDSTILL: hold (T = I); the reference frame is kept, so slow motion accumulates.
   - a depth of the reference exists and (mean flow < ``vo.min_flow_px``, PURE_ROTATION,
     no valid E, or too few depth pairs for the scale): PnP (``pnp_ransac``) of the
     back-projected reference depth (the original's fallback; it also recovers a small
     translation that the rotation model would drop).
   - PURE_ROTATION (no usable depth): R from the classification, t = 0; while the reference
     has no depth and the rotation is below ``vo.keyframe_rotation_deg`` the reference is
     kept, so that a slow translation accumulates parallax until E becomes usable.
   - GENERAL: ``recover_pose`` (cheirality), mid-point triangulation of the E inliers
     (``ray_angle_mask``, ``positive_depth_mask``), and the scale: robust fit (``fit_scale``,
     ``geometry.scale.method``) of the triangulated depths to the reference depth at x1
     (depths beyond ``geometry.scale.max_depth`` ignored); fewer than
     ``geometry.scale.min_points`` pairs -> PnP; without any depth: the first pair gets
     ``vo.initial_scale``, later ones the last translation norm (motion model).
   - nothing worked: LOST.

Scale of the odometry (what one unit of translation is):

- depth network: the depth network's scale (as TrianFlow's VO; metric if the network is).
- oracle depth (tests): metric.
- no depth provider (classical): the first translation has norm ``vo.initial_scale``; every
  later one is fitted to the depth triangulated (E) or transferred (PnP, rotation) into the
  reference frame by the previous pairs, so the trajectory is consistent up to one global
  scale (drifting slowly, as every monocular VO).

Failures: a LOST frame holds the last pose, reports :data:`~trianflow_ros.vo.covariance.
BAD_VARIANCE` covariances and keeps the reference (the last good frame); the next frames are
matched against it until one succeeds (RECOVERED, then TRACKING). No output is ever NaN.
"""

import math
import time
from typing import Dict, Optional, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from trianflow_ros.config import Config, validate
from trianflow_ros.geometry.camera import (backproject_pixels, pixel_grid, project,
                                           resize_intrinsics)
from trianflow_ros.geometry.degeneracy import classify_motion, MotionType
from trianflow_ros.geometry.epipolar import fundamental_from_essential, sampson_distance
from trianflow_ros.geometry.flow_masks import (fb_difference, flow_valid_mask,
                                               sample_correspondences, score_map)
from trianflow_ros.geometry.pnp import pnp_ransac
from trianflow_ros.geometry.pose import recover_pose
from trianflow_ros.geometry.ransac import ransac_essential
from trianflow_ros.geometry.scale import fit_scale
from trianflow_ros.geometry.se3 import transform_points
from trianflow_ros.geometry.threads import one_cpu_thread
from trianflow_ros.geometry.triangulation import (midpoint_triangulate, positive_depth_mask,
                                                  ray_angle_mask)
from trianflow_ros.geometry.warp import backward_warp, sample_at
from trianflow_ros.vo import covariance as cov
from trianflow_ros.vo.providers import DepthProvider, FlowProvider, make_providers
from trianflow_ros.vo.types import FrameResult, TrackingState

STAGES = ('flow', 'depth', 'select', 'solver', 'scale', 'refine', 'total')
MAD_TO_SIGMA = 1.4826
#: Forward-backward difference (px) of a "consistent" match for ``vo.min_valid_ratio``.
GOOD_FB_PX = 0.5
#: Share of the E inliers that must lie in front of both cameras.
MIN_CHEIRALITY_RATIO = 0.5


def resolve_device(name: Union[str, torch.device, None]) -> torch.device:
    """
    Return the torch device of a ``vo.device`` value.

    :param name: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N', a device, or None.
    """
    if isinstance(name, torch.device):
        return name
    if name in (None, '', 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(name)


# --------------------------------------------------------------------------------------------
# per-pair building blocks (pure functions, B = 1)
# --------------------------------------------------------------------------------------------

def match_validity(img1: torch.Tensor, img2: torch.Tensor, flow_12: torch.Tensor,
                   flow_21: torch.Tensor, cfg: Config) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Return the valid mask and the score of the pixels of image 1.

    :param img1: (1, 3, H, W) image 1 in [0, 1].
    :param img2: (1, 3, H, W) image 2.
    :param flow_12: (1, 2, H, W); non-finite = no match.
    :param flow_21: (1, 2, H, W).
    :param cfg: ``flow_net.fb_alpha/fb_beta`` and ``vo.photometric_threshold`` are used.
    :return: valid (1, 1, H, W) bool and the score M_s (1, 1, H, W) (0 where invalid).
    """
    fin1 = torch.isfinite(flow_12).all(1, keepdim=True)
    fin2 = torch.isfinite(flow_21).all(1, keepdim=True)
    f12 = torch.nan_to_num(flow_12, nan=0.0, posinf=0.0, neginf=0.0)
    f21 = torch.nan_to_num(flow_21, nan=0.0, posinf=0.0, neginf=0.0)
    valid = flow_valid_mask(f12, f21, consistency=True, alpha=cfg.flow_net.fb_alpha,
                            beta=cfg.flow_net.fb_beta) > 0.5
    valid = valid & fin1 & (backward_warp(fin2.float(), f12, 'zeros') > 0.999)
    thr = cfg.vo.photometric_threshold
    if thr > 0:
        warped = backward_warp(img2, f12, 'zeros')
        valid = valid & ((warped - img1).abs().mean(1, keepdim=True) < thr)
    score = score_map(valid.float(), fb_difference(f12, f21))
    return valid, torch.where(valid, score, torch.zeros_like(score))


def select_correspondences(img1: torch.Tensor, img2: torch.Tensor, flow_12: torch.Tensor,
                           flow_21: torch.Tensor, cfg: Config,
                           generator: Optional[torch.Generator] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """
    Draw spatially spread, flow-consistent matches (see the module docstring, step 4).

    The image is padded (score 0) to a multiple of the grid; every cell draws
    ``ceil(vo.num_matches / cells)`` matches without replacement from its best
    ``vo.top_ratio`` share of pixels (``sample_correspondences``, uniform weighting).

    :param img1: (1, 3, H, W) image 1.
    :param img2: (1, 3, H, W) image 2.
    :param flow_12: (1, 2, H, W).
    :param flow_21: (1, 2, H, W).
    :param cfg: the configuration.
    :param generator: torch.Generator on the flow's device.
    :return: x1, x2 of shape (1, N, 2) (only real matches; N may be 0) and the share of the
        pixels whose match is consistent to :data:`GOOD_FB_PX` (an unrelated image gets
        smooth, partly consistent flow from DIS, but almost none of it this consistent).
    """
    _, score = match_validity(img1, img2, flow_12, flow_21, cfg)
    good_ratio = float((score > 1.0 / (0.1 + GOOD_FB_PX)).float().mean())
    f12 = torch.nan_to_num(flow_12, nan=0.0, posinf=0.0, neginf=0.0)
    _, _, h, w = score.shape
    rows, cols = cfg.vo.grid_rows, cfg.vo.grid_cols
    ch, cw = math.ceil(h / rows), math.ceil(w / cols)
    pad = (0, cols * cw - w, 0, rows * ch - h)
    s = F.pad(score, pad, value=0.0)
    f = F.pad(f12, pad, value=0.0)

    def cells(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return (x.reshape(c, rows, ch, cols, cw).permute(1, 3, 0, 2, 4)
                .reshape(rows * cols, c, ch, cw))

    quota = math.ceil(cfg.vo.num_matches / (rows * cols))
    corr = sample_correspondences(cells(s), cells(f), num=quota, top_ratio=cfg.vo.top_ratio,
                                  generator=generator)
    r = torch.arange(rows * cols, device=score.device)
    offset = torch.stack(((r % cols) * cw, torch.div(r, cols, rounding_mode='floor') * ch),
                         -1).to(corr.x1.dtype)[:, None, :]                  # (cells, 1, 2)
    keep = corr.valid.reshape(-1)
    x1 = (corr.x1 + offset).reshape(-1, 2)[keep]
    x2 = (corr.x2 + offset).reshape(-1, 2)[keep]
    return x1[None], x2[None], good_ratio


def triangulate_depth_map(flow_21: torch.Tensor, valid_2: torch.Tensor, K1: torch.Tensor,
                          K2: torch.Tensor, T_21: torch.Tensor, *, min_angle_deg: float,
                          min_depth: float, max_sampson_px: float) -> torch.Tensor:
    """
    Depth of every pixel of image 2 by mid-point triangulation along the backward flow.

    :param flow_21: (1, 2, H, W) flow of image 2 into image 1.
    :param valid_2: (1, 1, H, W) bool, pixels of image 2 with a trusted match.
    :param K1: (1, 3, 3) intrinsics of image 1.
    :param K2: (1, 3, 3) intrinsics of image 2.
    :param T_21: (1, 4, 4) pose (scaled: the depth has its unit).
    :param min_angle_deg: rays meeting at a smaller angle get no depth.
    :param min_depth: cheirality margin.
    :param max_sampson_px: matches farther from the epipolar geometry of T_21 (moving
        objects, flow errors) get no depth.
    :return: depth of image 2, (1, 1, H, W) float32, 0 = unknown.
    """
    _, _, h, w = flow_21.shape
    dt = torch.float64
    x2 = pixel_grid(1, h, w, flow_21.device, dt).reshape(1, 2, -1).transpose(1, 2)
    f21 = torch.nan_to_num(flow_21.to(dt)).reshape(1, 2, -1).transpose(1, 2)
    x1 = x2 + f21
    K1d, K2d, T = K1.to(dt), K2.to(dt), T_21.to(dt)
    X1 = midpoint_triangulate(x1, x2, K1d, K2d, T)
    z2 = transform_points(T, X1)[..., 2]
    ok = valid_2.reshape(1, -1) & ray_angle_mask(x1, x2, K1d, K2d, T, min_angle_deg)
    ok = ok & positive_depth_mask(X1, T, min_depth) & torch.isfinite(z2)
    R, t = T[:, :3, :3], T[:, :3, 3]
    tx = torch.zeros(1, 3, 3, dtype=dt, device=T.device)
    tx[0, 0, 1], tx[0, 0, 2], tx[0, 1, 2] = -t[0, 2], t[0, 1], -t[0, 0]
    tx = tx - tx.transpose(1, 2)
    Fm = fundamental_from_essential(tx @ R, K1d, K2d)
    ok = ok & (sampson_distance(Fm, x1, x2) < max_sampson_px)
    return torch.where(ok, z2, torch.zeros_like(z2)).reshape(1, 1, h, w).float()


def transfer_depth(depth_1: torch.Tensor, flow_21: torch.Tensor, valid_2: torch.Tensor,
                   K1: torch.Tensor, T_21: torch.Tensor) -> torch.Tensor:
    """
    Move a depth map of image 1 into image 2 with a known pose and the backward flow.

    :param depth_1: (1, 1, H, W) depth of image 1, 0 = unknown.
    :param flow_21: (1, 2, H, W) flow of image 2 into image 1.
    :param valid_2: (1, 1, H, W) bool, pixels of image 2 with a trusted match.
    :param K1: (1, 3, 3) intrinsics of image 1.
    :param T_21: (1, 4, 4) pose mapping frame-1 points into frame 2.
    :return: depth of image 2, (1, 1, H, W) float32, 0 = unknown.
    """
    _, _, h, w = flow_21.shape
    dt = torch.float64
    x2 = pixel_grid(1, h, w, flow_21.device, dt).reshape(1, 2, -1).transpose(1, 2)
    x1 = x2 + torch.nan_to_num(flow_21.to(dt)).reshape(1, 2, -1).transpose(1, 2)
    d1 = depth_1.to(dt)
    known = sample_at((d1 > 0).to(dt), x1, 'zeros')[..., 0] > 0.999
    z1 = sample_at(d1, x1, 'zeros')[..., 0]
    X2 = transform_points(T_21.to(dt), backproject_pixels(x1, z1, K1.to(dt)))
    z2 = X2[..., 2]
    ok = valid_2.reshape(1, -1) & known & (z1 > 0) & (z2 > 0) & torch.isfinite(z2)
    return torch.where(ok, z2, torch.zeros_like(z2)).reshape(1, 1, h, w).float()


def _robust_sigma(values: torch.Tensor) -> float:
    """Return 1.4826 * median |values| (0 for an empty tensor)."""
    if values.numel() == 0:
        return 0.0
    return float(MAD_TO_SIGMA * values.abs().median())


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------

class _Frame:
    """One prepared frame: image and K at the working resolution, its depth if any."""

    def __init__(self, index: int, stamp: float, image: torch.Tensor, K: torch.Tensor,
                 depth: Optional[torch.Tensor]):
        self.index = index
        self.stamp = stamp
        self.image = image
        self.K = K
        self.depth = depth


class _Reference:
    """The frame new images are matched against, with its pose, covariance and depth."""

    def __init__(self, frame: _Frame, T_world: np.ndarray, cov_left: np.ndarray,
                 depth: Optional[torch.Tensor], depth_kind: str):
        self.frame = frame
        self.T_world = T_world
        self.cov_left = cov_left
        self.depth = depth
        self.depth_kind = depth_kind          # 'depth' (provider), 'propagated' or 'none'


class _Outcome:
    """What the solver decided for one pair."""

    def __init__(self, ok: bool, message: str = ''):
        self.ok = ok
        self.message = message
        self.T_21 = np.eye(4)
        self.method = 'lost'
        self.motion: Optional[MotionType] = None
        self.num_matches = 0
        self.num_inliers = 0
        self.scale = 1.0
        self.scale_source = 'none'
        self.sigma_px = 1.0
        self.scale_sigma: Optional[float] = None
        self.scene_depth = 0.0
        self.new_depth: Optional[torch.Tensor] = None
        self.advance = True


class VisualOdometry:
    """
    Monocular visual odometry, one :meth:`step` per frame (see the module docstring).

    Example::

        vo = VisualOdometry(cfg)                          # classical: DIS flow, no depth
        vo = VisualOdometry(cfg, flow='ckpt.pth', depth='ckpt.pth')   # learned networks
        for stamp, image, K in sequence:
            result = vo.step(stamp, image, K)             # FrameResult

    The object is not thread-safe; the ROS node calls it from one callback.
    """

    def __init__(self, cfg: Optional[Config] = None,
                 flow: Union[FlowProvider, str, torch.nn.Module, None] = None,
                 depth: Union[DepthProvider, str, torch.nn.Module, None] = None, *,
                 device: Union[str, torch.device, None] = None, bgr: bool = False):
        """
        Build the odometry.

        :param cfg: configuration (``vo``, ``geometry``, ``data``, ``flow_net``, ``depth_net``
            sections); defaults when None.
        :param flow: a FlowProvider, 'dis', a FlowNet / model with ``.flow_net``, a checkpoint
            path, or None for ``cfg.vo.flow_provider``.
        :param depth: a DepthProvider, a DepthNet / model with ``.depth_net``, a checkpoint
            path, 'none', or None for ``cfg.vo.depth_provider``.
        :param device: torch device (default ``cfg.vo.device``).
        :param bgr: input uint8 images are BGR (e.g. from cv2.imread or a bgr8 message).
        """
        self.cfg = cfg if cfg is not None else Config()
        validate(self.cfg)
        self.device = resolve_device(device if device is not None else self.cfg.vo.device)
        self.flow, self.depth = make_providers(flow, depth, self.cfg, self.device)
        self.bgr = bgr
        self._refiner = None    # geometry.refine: the LM pose refinement, built on first use
        self.reset()

    # ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: the next frame starts a new odometry frame (INITIALIZING)."""
        self._ref: Optional[_Reference] = None
        self._T_world = np.eye(4)
        self._cov_left = cov.initial_covariance()
        self._count = 0
        self._lost = False
        self._last_speed = 0.0
        self._scale_defined = False

    @property
    def pose(self) -> np.ndarray:
        """Return the last output pose ``T_world_cam`` (4, 4) float64 (a copy)."""
        return self._T_world.copy()

    @property
    def is_lost(self) -> bool:
        """Return True while the last frame was LOST."""
        return self._lost

    # ----------------------------------------------------------------------------------------
    def working_size(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        """Return the working (height, width) for an input of size ``input_hw``."""
        if self.cfg.vo.resolution == 'native':
            return int(input_hw[0]), int(input_hw[1])
        return self.cfg.data.img_height, self.cfg.data.img_width

    def _prepare(self, image, K) -> Tuple[torch.Tensor, torch.Tensor]:
        """Validate and convert the input to (1, 3, h, w) RGB [0, 1] and K (1, 3, 3)."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise ValueError(f'image must be uint8 (H, W, 3), got dtype {image.dtype}; '
                                 'pass floats as a (3, H, W) torch tensor in [0, 1]')
            if image.ndim == 2:
                image = np.repeat(image[:, :, None], 3, axis=2)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f'image must have shape (H, W, 3), got {image.shape}')
            dst = self.working_size(image.shape[:2])
            if dst != tuple(image.shape[:2]):
                # cv2.resize (half-pixel centres, as resize_intrinsics) on uint8 is ~30x
                # faster than an antialiased float interpolate; K is rescaled below
                shrink = dst[0] < image.shape[0] or dst[1] < image.shape[1]
                resized = cv2.resize(np.ascontiguousarray(image), (dst[1], dst[0]),
                                     interpolation=cv2.INTER_AREA if shrink
                                     else cv2.INTER_LINEAR)
                src_hw = tuple(image.shape[:2])
                image = resized
            else:
                src_hw = None
            img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        elif isinstance(image, torch.Tensor):
            src_hw = None
            img = image.detach()
            if img.dim() == 4 and img.shape[0] == 1:
                img = img[0]
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f'image tensor must have shape (3, H, W), got '
                                 f'{tuple(image.shape)}')
            img = img.float()
        else:
            raise TypeError(f'image must be a numpy uint8 (H, W, 3) array or a (3, H, W) '
                            f'tensor, got {type(image).__name__}')
        if self.bgr:
            img = img.flip(0)
        Kt = torch.as_tensor(np.asarray(K, dtype=np.float64) if not isinstance(K, torch.Tensor)
                             else K.detach().double().cpu(), dtype=torch.float64)
        if Kt.shape != (3, 3) or not bool(torch.isfinite(Kt).all()) or Kt[0, 0] <= 0 \
                or Kt[1, 1] <= 0:
            raise ValueError(f'K must be a finite (3, 3) matrix with fx, fy > 0, got '
                             f'{Kt.tolist()}')
        src = tuple(img.shape[-2:])
        dst = self.working_size(src)
        img = img[None].to(self.device)
        if dst != src:
            img = F.interpolate(img, size=dst, mode='bilinear', align_corners=False,
                                antialias=dst[0] < src[0] or dst[1] < src[1])
            Kt = resize_intrinsics(Kt[None], src, dst)[0]
        elif src_hw is not None:                                # resized by cv2 above
            Kt = resize_intrinsics(Kt[None], src_hw, dst)[0]
        return img.clamp(0.0, 1.0), Kt[None].float().to(self.device)

    # ----------------------------------------------------------------------------------------
    def step(self, stamp: float, image, K, distortion=None) -> FrameResult:
        """
        Process one frame.

        :param stamp: the frame's time stamp (passed through).
        :param image: (H, W, 3) uint8 (RGB, or BGR if constructed with ``bgr=True``) or a
            (3, H, W) float tensor in [0, 1].
        :param K: (3, 3) intrinsics at the input resolution (numpy or tensor).
        :param distortion: the lens distortion of the input image
            (:class:`~trianflow_ros.geometry.distortion.Distortion`, a ``(model, coeffs)``
            pair, or None for a pinhole / rectified image); the matches are undistorted
            before any geometry, the depth stays on the raw pixel grid.
        :return: :class:`FrameResult`.
        :raises ValueError: malformed image or K (shape, dtype); bad pixel values (NaN) and
            untrackable frames are reported as LOST instead.
        """
        t_start = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        img, Kw = self._prepare(image, K)
        index = self._count
        self._count += 1

        def finish(result: FrameResult) -> FrameResult:
            timings['total'] = 1000.0 * (time.perf_counter() - t_start)
            result.timings = timings
            return result

        if not bool(torch.isfinite(img).all()):
            return finish(self._lost_result(stamp, index, Kw, 'image has non-finite pixels'))
        grey_std = float((img * img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))
                         .sum(1).std())
        if grey_std < self.cfg.vo.min_image_std:
            return finish(self._lost_result(
                stamp, index, Kw, f'image has no texture (grey std {grey_std:.4f} < '
                f'vo.min_image_std {self.cfg.vo.min_image_std})'))

        t0 = time.perf_counter()
        depth = None
        if self.depth is not None:
            depth = self.depth(img)
            if depth is not None:
                depth = torch.nan_to_num(depth.float(), nan=0.0, posinf=0.0, neginf=0.0)
                depth = depth.clamp(min=0.0)
        timings['depth'] = 1000.0 * (time.perf_counter() - t0)
        frame = _Frame(index, float(stamp), img, Kw, depth)

        if self._ref is None:
            self._T_world = np.eye(4)
            self._cov_left = cov.initial_covariance()
            self._ref = _Reference(frame, np.eye(4), self._cov_left, depth,
                                   'depth' if depth is not None else 'none')
            self._lost = False
            return finish(self._result(stamp, index, Kw, TrackingState.INITIALIZING, None,
                                       'init', index, 0, 0, 1.0, 'none', depth,
                                       np.eye(4), self._cov_left, np.zeros((6, 6)), ''))

        ref = self._ref
        generator = torch.Generator(device=self.device).manual_seed(
            self.cfg.geometry.ransac.seed + index)
        t0 = time.perf_counter()
        flow_12, flow_21 = self.flow(ref.frame.image, img)
        timings['flow'] = 1000.0 * (time.perf_counter() - t0)
        with one_cpu_thread(self.device):   # thousands of small ops: one thread is fastest
            outcome = self._solve(ref, frame, flow_12, flow_21, generator, timings)
            if self.cfg.geometry.refine.enabled:
                if self._refiner is None:
                    # imported here: vo.refinement imports this module
                    from trianflow_ros.vo.refinement import PoseRefiner
                    self._refiner = PoseRefiner(self.cfg, self.flow)
                self._refiner.refine_outcome(outcome, ref, frame, timings)
        if not outcome.ok:
            result = self._lost_result(stamp, index, Kw, outcome.message)
            result.num_matches = outcome.num_matches
            result.num_inliers = outcome.num_inliers
            result.reference_index = ref.frame.index
            return finish(result)

        T_ref_cur = np.linalg.inv(outcome.T_21)
        T_world_cur = ref.T_world @ T_ref_cur
        focal = 0.5 * float(Kw[0, 0, 0] + Kw[0, 1, 1])
        t_norm = float(np.linalg.norm(T_ref_cur[:3, 3]))
        cov_rel = cov.relative_covariance(
            outcome.method, focal_px=focal, sigma_px=outcome.sigma_px,
            num_inliers=outcome.num_inliers, translation_norm=t_norm,
            scene_depth=outcome.scene_depth, scale_sigma=outcome.scale_sigma,
            last_speed=self._last_speed,
            standstill_px=self.cfg.geometry.degeneracy.standstill_px,
            translation=T_ref_cur[:3, 3])
        cov_left = cov.propagate(ref.cov_left, ref.T_world, cov_rel)
        if not np.all(np.isfinite(T_world_cur)):
            return finish(self._lost_result(stamp, index, Kw, 'non-finite pose'))

        state = TrackingState.RECOVERED if self._lost else TrackingState.TRACKING
        self._lost = False
        if outcome.method in ('essential', 'pnp'):
            self._last_speed = t_norm
        T_prev_cur = np.linalg.inv(self._T_world) @ T_world_cur
        self._T_world = T_world_cur
        self._cov_left = cov_left
        out_depth = outcome.new_depth
        if outcome.advance:
            kind = ('depth' if depth is not None else
                    'propagated' if outcome.new_depth is not None else 'none')
            self._ref = _Reference(frame, T_world_cur, cov_left,
                                   depth if depth is not None else outcome.new_depth, kind)
            out_depth = self._ref.depth
        elif out_depth is None:
            out_depth = depth if depth is not None else ref.depth
        return finish(self._result(
            stamp, index, Kw, state, outcome.motion, outcome.method, ref.frame.index,
            outcome.num_matches, outcome.num_inliers, outcome.scale, outcome.scale_source,
            out_depth, T_prev_cur, cov_left, cov_rel, outcome.message, T_ref_cur))

    # ----------------------------------------------------------------------------------------
    def _result(self, stamp, index, Kw, state, motion, method, ref_index, num_matches,
                num_inliers, scale, scale_source, depth, T_prev_cur, cov_left, cov_rel,
                message, T_ref_cur=None) -> FrameResult:
        depth_np = None
        if depth is not None:
            depth_np = np.nan_to_num(depth[0, 0].detach().float().cpu().numpy(), nan=0.0,
                                     posinf=0.0, neginf=0.0).astype(np.float32)
        T_ref_cur = T_prev_cur if T_ref_cur is None else T_ref_cur
        return FrameResult(
            stamp=float(stamp), index=index, T_world_cam=self._T_world.copy(),
            T_prev_cur=np.asarray(T_prev_cur, dtype=np.float64).copy(), state=state,
            motion=motion, method=method, reference_index=int(ref_index),
            num_matches=int(num_matches), num_inliers=int(num_inliers),
            scale=float(scale) if math.isfinite(scale) else 1.0, scale_source=scale_source,
            depth=depth_np, K=Kw[0].double().cpu().numpy(),
            covariance=cov.nav_from_left(cov_left, self._T_world),
            relative_covariance=cov.nav_from_left(cov_rel, T_ref_cur), message=message)

    def _lost_result(self, stamp, index, Kw, message: str) -> FrameResult:
        self._lost = True
        ref_index = self._ref.frame.index if self._ref is not None else -1
        return FrameResult(
            stamp=float(stamp), index=index, T_world_cam=self._T_world.copy(),
            T_prev_cur=np.eye(4), state=TrackingState.LOST, motion=None, method='lost',
            reference_index=ref_index, num_matches=0, num_inliers=0, scale=1.0,
            scale_source='none', depth=None, K=Kw[0].double().cpu().numpy(),
            covariance=cov.lost_covariance(), relative_covariance=cov.lost_covariance(),
            message=message)

    # ----------------------------------------------------------------------------------------
    def _solve(self, ref: _Reference, cur: _Frame, flow_12: torch.Tensor,
               flow_21: torch.Tensor, generator: torch.Generator,
               timings: Dict[str, float]) -> _Outcome:
        """Estimate T_21 (reference -> current) and the current frame's depth."""
        cfg = self.cfg
        g = cfg.geometry
        t0 = time.perf_counter()
        x1, x2, good_ratio = select_correspondences(ref.frame.image, cur.image, flow_12,
                                                    flow_21, cfg, generator)
        n = int(x1.shape[1])
        timings['select'] = 1000.0 * (time.perf_counter() - t0)
        if good_ratio < cfg.vo.min_valid_ratio:
            out = _Outcome(False, f'too few consistent matches ({100 * good_ratio:.1f} % of the '
                                  f'pixels < vo.min_valid_ratio {cfg.vo.min_valid_ratio})')
            out.num_matches = n
            return out
        if n < cfg.vo.min_matches:
            out = _Outcome(False, f'too few valid matches ({n} < vo.min_matches '
                                  f'{cfg.vo.min_matches})')
            out.num_matches = n
            return out

        t0 = time.perf_counter()
        K1, K2 = ref.frame.K, cur.K
        mean_flow = float((x2 - x1).norm(dim=-1).mean())
        ransac = ransac_essential(x1, x2, K1, K2, threshold_px=g.ransac.threshold_px,
                                  num_hypotheses=g.ransac.num_hypotheses,
                                  lo_iters=g.ransac.lo_iters, generator=generator)
        num_e = int(ransac.num_inliers[0])
        e_ok = float(ransac.score[0]) > 0 and num_e >= max(8, cfg.vo.min_inlier_ratio * n)
        F_est = fundamental_from_essential(ransac.model.to(x1.dtype), K1, K2)
        residuals = sampson_distance(F_est, x1, x2)
        if not e_ok:
            residuals = torch.full_like(residuals, float('inf'))
        m = min(n, cfg.vo.classify_points)
        sub = torch.randperm(n, generator=generator, device=x1.device)[:m]
        cls = classify_motion(x1[:, sub], x2[:, sub], K1, K2, residuals[:, sub],
                              standstill_px=g.degeneracy.standstill_px,
                              num_hypotheses=128, lo_iters=2, generator=generator)
        motion = cls.types()[0]
        timings['solver'] = 1000.0 * (time.perf_counter() - t0)

        def base(method: str) -> _Outcome:
            o = _Outcome(True)
            o.method = method
            o.motion = motion
            o.num_matches = n
            return o

        valid_2 = None

        def valid2() -> torch.Tensor:
            nonlocal valid_2
            if valid_2 is None:
                valid_2, score_2 = match_validity(cur.image, ref.frame.image, flow_21,
                                                  flow_12, cfg)
                # depth only from matches whose forward-backward difference is below the
                # RANSAC threshold (M_s = 1 / (0.1 + D_fb)); the F-B gate of the matches
                # (flow_net.fb_alpha, 3 px) is far too loose for triangulation
                valid_2 = valid_2 & (score_2 > 1.0 / (0.1 + g.ransac.threshold_px))
            return valid_2

        if motion == MotionType.STANDSTILL:
            out = base('hold')
            out.num_inliers = int(cls.num_points[0])
            out.sigma_px = float(cls.sigma_px[0])
            out.advance = False
            out.scene_depth = self._median_depth(ref.depth)
            return out

        has_depth = ref.depth is not None
        tried_pnp = False
        if has_depth and (mean_flow < cfg.vo.min_flow_px or not e_ok
                          or motion == MotionType.PURE_ROTATION):
            tried_pnp = True
            out = self._pnp(ref, cur, x1, x2, flow_21, generator, timings, base('pnp'),
                            valid2)
            if out is not None:
                return out

        if motion == MotionType.PURE_ROTATION:
            t0 = time.perf_counter()
            out = base('rotation')
            T = np.eye(4)
            T[:3, :3] = cls.R_21[0].double().cpu().numpy()
            out.T_21 = T
            out.num_inliers = int(cls.rotation_inliers[0].sum())
            out.sigma_px = float(cls.sigma_px[0])
            out.scene_depth = self._median_depth(ref.depth)
            angle = math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(T[:3, :3]) - 1) / 2))))
            if ref.depth is None and angle < cfg.vo.keyframe_rotation_deg:
                # no depth to carry over: keep the reference so that a slow translation
                # accumulates parallax (the rotation is measured against the reference)
                out.advance = False
            if self.depth is None and ref.depth is not None:
                out.new_depth = transfer_depth(ref.depth, flow_21, valid2(), K1,
                                               torch.from_numpy(T)[None].to(K1.device))
            timings['scale'] += 1000.0 * (time.perf_counter() - t0)
            return out

        if not e_ok:
            o = _Outcome(False, f'no valid essential matrix ({num_e} inliers of {n} matches)'
                         + ('; PnP failed' if tried_pnp else ''))
            o.num_matches, o.num_inliers = n, num_e
            return o

        # GENERAL: cheirality, triangulation, scale
        t0 = time.perf_counter()
        inl = ransac.inliers
        pose = recover_pose(ransac.model.to(x1.dtype), x1, x2, K1, K2, inl)
        timings['solver'] += 1000.0 * (time.perf_counter() - t0)
        if int(pose.num_positive[0]) < MIN_CHEIRALITY_RATIO * num_e:
            o = _Outcome(False, f'cheirality: {int(pose.num_positive[0])} of {num_e} E inliers '
                                'in front of both cameras')
            o.num_matches, o.num_inliers = n, num_e
            return o
        t0 = time.perf_counter()
        T_unit = pose.T_21.to(torch.float64)
        x1d, x2d = x1.double(), x2.double()
        K1d, K2d = K1.double(), K2.double()
        X1 = midpoint_triangulate(x1d, x2d, K1d, K2d, T_unit)
        z1 = X1[..., 2]
        good = inl & pose.positive & ray_angle_mask(x1d, x2d, K1d, K2d, T_unit,
                                                    g.triangulation.min_angle_deg)
        good = good & positive_depth_mask(X1, T_unit, g.triangulation.min_depth)
        out = base('essential')
        out.num_inliers = num_e
        out.sigma_px = _robust_sigma(residuals[inl])
        scale = None
        if has_depth:
            target = sample_at(ref.depth.double(), x1d, 'zeros')[..., 0]
            usable = good & torch.isfinite(target) & (target > 0)
            if ref.depth_kind == 'depth' and g.scale.max_depth > 0:
                usable = usable & (target < g.scale.max_depth)
            n_scale = int(usable.sum())
            if n_scale >= g.scale.min_points:
                fit = fit_scale(z1, target, usable, g.scale.method)
                if bool(fit.valid[0]) and float(fit.scale[0]) > 0:
                    scale = float(fit.scale[0])
                    inl_s = fit.inliers[0]
                    log_r = torch.log(target[0, inl_s] / (scale * z1[0, inl_s]))
                    n_inl = max(int(inl_s.sum()), 1)
                    out.scale_sigma = max(_robust_sigma(log_r), 1e-3) / math.sqrt(
                        min(n_inl, cov.MAX_EFFECTIVE_POINTS))
                    out.scale_source = 'depth' if ref.depth_kind == 'depth' else 'propagated'
                    out.scene_depth = float(target[0, inl_s].median()) if n_inl > 1 else 0.0
            if scale is None and not tried_pnp:
                timings['scale'] += 1000.0 * (time.perf_counter() - t0)
                pnp = self._pnp(ref, cur, x1, x2, flow_21, generator, timings,
                                base('pnp'), valid2)
                if pnp is not None:
                    pnp.message = f'too few depth pairs for the scale ({n_scale}); PnP'
                    return pnp
                t0 = time.perf_counter()
        if scale is None:
            if not self._scale_defined:
                scale, out.scale_source, out.scale_sigma = cfg.vo.initial_scale, 'initial', 1e-3
            else:
                scale, out.scale_source, out.scale_sigma = self._last_speed, 'motion', 0.5
                out.message = 'no usable depth for the scale: last translation norm used'
            if good.any():
                out.scene_depth = float(z1[good].median()) * scale
        self._scale_defined = True
        out.scale = scale
        T = T_unit[0].cpu().numpy().copy()
        T[:3, 3] *= scale
        out.T_21 = T
        if self.depth is None:
            out.new_depth = triangulate_depth_map(
                flow_21, valid2(), K1, K2, torch.from_numpy(T)[None].to(K1.device),
                min_angle_deg=cfg.vo.propagate_min_angle_deg,
                min_depth=g.triangulation.min_depth, max_sampson_px=2.0 * g.ransac.threshold_px)
        timings['scale'] += 1000.0 * (time.perf_counter() - t0)
        return out

    def _pnp(self, ref: _Reference, cur: _Frame, x1: torch.Tensor, x2: torch.Tensor,
             flow_21: torch.Tensor, generator: torch.Generator, timings: Dict[str, float],
             out: _Outcome, valid2) -> Optional[_Outcome]:
        """Solve PnP of the back-projected reference depth; None when it fails."""
        cfg = self.cfg
        g = cfg.geometry
        t0 = time.perf_counter()
        d = sample_at(ref.depth, x1, 'zeros')[..., 0]
        ok = torch.isfinite(d) & (d > 0)
        if ref.depth_kind == 'depth' and g.scale.max_depth > 0:
            ok = ok & (d < g.scale.max_depth)
        n_ok = int(ok.sum())
        if n_ok < max(cfg.vo.min_matches // 2, 6):
            timings['solver'] += 1000.0 * (time.perf_counter() - t0)
            return None
        X1 = backproject_pixels(x1, torch.where(ok, d, torch.ones_like(d)), ref.frame.K)
        res = pnp_ransac(X1, x2, cur.K, ok.float(), threshold_px=g.pnp.threshold_px,
                         num_hypotheses=g.pnp.num_hypotheses, refine_iters=g.pnp.refine_iters,
                         generator=generator)
        n_inl = int(res.num_inliers[0])
        timings['solver'] += 1000.0 * (time.perf_counter() - t0)
        if not bool(res.success[0]) or n_inl < cfg.vo.min_inlier_ratio * n_ok:
            return None
        T = res.T_21[0].double().cpu().numpy()
        if not np.all(np.isfinite(T)):
            return None
        t0 = time.perf_counter()
        x2_hat, _ = project(transform_points(res.T_21.to(X1.dtype), X1), cur.K)
        err = (x2_hat - x2).norm(dim=-1)[res.inliers]
        out.T_21 = T
        out.num_inliers = n_inl
        out.sigma_px = _robust_sigma(err) / math.sqrt(2.0)
        out.scale_source = 'pnp'
        out.scene_depth = float(d[ok].median())
        if self.depth is None:
            out.new_depth = transfer_depth(ref.depth, flow_21, valid2(), ref.frame.K,
                                           torch.from_numpy(T)[None].to(x1.device))
        timings['scale'] += 1000.0 * (time.perf_counter() - t0)
        return out

    @staticmethod
    def _median_depth(depth: Optional[torch.Tensor]) -> float:
        if depth is None:
            return 0.0
        d = depth[depth > 0]
        return float(d.median()) if d.numel() else 0.0
