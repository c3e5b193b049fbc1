"""
Stateful monocular visual odometry in the TrianFlow manner: ``VisualOdometry.step`` per frame.

Per frame (image i) against the keyframe k:

1. Input: an (H, W, 3) uint8 image (RGB, or BGR with ``bgr=True``) or a (3, H, W) float tensor
   in [0, 1], K at the input resolution and optionally the lens distortion. The working
   resolution is ``vo.resolution`` (:func:`working_size`): 'network' resizes to
   ``data.img_height x data.img_width`` (K rescaled with ``resize_intrinsics``;
   ``vo.resize_interpolation``), 'native' keeps the input size, 'aspect' scales it to about
   that many pixels keeping its aspect ratio, 'auto' (default) is 'aspect' for the classical
   pipeline (the network size at KITTI's aspect ratio) and 'network' with a network. A frame
   without texture (grey std < ``vo.min_image_std``) or with non-finite pixels is LOST at
   once.
2. Depth of frame i from the depth provider, if any.
3. Flow k -> i and i -> k from the flow provider; matches (:mod:`~trianflow_ros.vo.matches`):
   forward-backward and photometrically consistent, spread over a grid, undistorted into
   pinhole pixels. The sparse front end (``vo.flow_provider: klt``,
   :mod:`~trianflow_ros.vo.sparse_matches`) tracks the keyframe's map points and corners by
   Lucas-Kanade instead and computes no dense flow unless a dense map needs it (a depth
   output, a depth provider, the refinement). Fewer than ``vo.min_matches`` consistent
   matches, or fewer than ``vo.min_zncc_ratio`` of the textured matches with correlated
   patches: LOST (no texture in common, an unrelated or corrupted image).
4. Geometry: one E-RANSAC, the parallax vote of
   :func:`~trianflow_ros.geometry.pose.choose_pose` (only matches with at least
   ``vo.sign_parallax_px`` of parallax vote on the sign of t; a clear winner is needed) and,
   where it can change the pose, the GRIC motion classification (t not observable, or a
   plane possible: with ``vo.planar_pnp`` and keyframe structure, an observable pair first
   gets the quick plane test :func:`~trianflow_ros.geometry.degeneracy.off_plane_share`, and
   GRIC only when at most ``vo.planar_max_off_plane`` + :data:`PLANE_TEST_MARGIN` of its E
   inliers lie off the plane found; ``FrameResult.motion`` is GENERAL where GRIC did not
   run), then the first strategy of :mod:`~trianflow_ros.vo.strategies` that gives a pose:

   - STANDSTILL (GRIC) and t not observable: hold (T = I; the keyframe is kept, so slow
     motion accumulates);
   - PLANAR (GRIC: a homography explains the matches better than E; ``vo.planar_pnp``) and
     the keyframe has structure: PnP on it (E is ill-conditioned on a plane);
   - translation observable (E decided by the vote, whatever GRIC says: in a far-field
     scene most matches barely move although the near ones fix t): E + the scale of its
     translation fitted to the keyframe's structure (weighted log fit of the triangulated
     inliers); without structure, ``vo.initial_scale`` for the first pair;
   - keyframe structure exists: PnP on it;
   - translation observable but too few map points for the scale and PnP failed: E with the
     constant-speed scale;
   - else rotation only (t = 0 relative to the keyframe);
   - nothing: LOST (no model).

   E and PnP poses both triangulate the pair's matches into the next keyframe's points.

5. Keyframes by parallax, as DF-VO and ORB-SLAM: the keyframe is kept until the
   rotation-compensated parallax of the inliers (90th percentile) reaches
   ``vo.keyframe_parallax_px``, the rotation ``vo.keyframe_rotation_deg``, or the inliers
   fall below ``vo.keyframe_inlier_ratio`` of the keyframe's first pair (the flow degrades
   with the baseline); the first translation-observable pair always makes one. Frames in
   between are posed against the keyframe (no drift accumulates between keyframes).
6. The new keyframe's depth map (:mod:`~trianflow_ros.geometry.depth_map`, ``vo.map_fusion``):
   the log-depth fusion, weighted by inverse variances, of the triangulation of the pair
   (sigma = noise / parallax), the previous keyframe's map moved along the flow, and the
   depth provider's depth (sigma ``geometry.scale.depth_sigma``). The scale of each pair is
   fitted against this map, so it is carried by many frames; with a depth network the odometry
   unit is the network's and every keyframe pulls the map towards it (no drift, little noise).

Scale of the odometry: the depth network's (as TrianFlow's VO), metric for oracle depth, or
without a depth provider (classical) the first translation has norm ``vo.initial_scale``.

Failures: a LOST frame holds the last pose, reports
:data:`~trianflow_ros.vo.covariance.BAD_VARIANCE` covariances and keeps the keyframe; the next
frames are matched against it until one succeeds (RECOVERED, then TRACKING). No output is ever
NaN.
"""

from concurrent.futures import ThreadPoolExecutor
import dataclasses
import math
import time
from typing import Dict, List, Optional, Tuple, Union
import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from trianflow_ros.config import Config, validate
from trianflow_ros.devices import resolve_device
from trianflow_ros.geometry.camera import backproject_pixels, project, resize_intrinsics
from trianflow_ros.geometry.checks import all_finite
from trianflow_ros.geometry.degeneracy import classify_motion, MotionType, off_plane_share
from trianflow_ros.geometry.depth_map import (fuse_log_depth, sample_known,
                                              transfer_flow_depth, triangulate_flow_depth)
from trianflow_ros.geometry.distortion import (as_distortion, distort_pixels, Distortion,
                                               PixelUndistorter)
from trianflow_ros.geometry.epipolar import fundamental_from_essential, sampson_distance
from trianflow_ros.geometry.pose import (choose_pose, rotation_parallax_px,
                                         translation_axis_angle_deg)
from trianflow_ros.geometry.ransac import essential_quality, ransac_essential, RansacResult
from trianflow_ros.geometry.se3 import transform_points
from trianflow_ros.geometry.threads import one_cpu_thread
from trianflow_ros.geometry.triangulation import midpoint_triangulate, ray_angle
from trianflow_ros.geometry.window_ba import window_adjust
from trianflow_ros.vo import covariance as cov
from trianflow_ros.vo import strategies
from trianflow_ros.vo.dense_inputs import DenseInputs
from trianflow_ros.vo.matches import match_validity, Matches, select_matches
from trianflow_ros.vo.providers import (DepthProvider, DISFlowProvider, FlowProvider,
                                        make_providers, remember_grey, to_grey_uint8)
from trianflow_ros.vo.sparse_matches import (corner_response, predict_corners, predict_pixels,
                                             select_corners, track_matches)
from trianflow_ros.vo.state import Frame, Keyframe, MapPoints, PairEstimate, PairFailure
from trianflow_ros.vo.types import FrameResult, TrackingState

STAGES = ('flow', 'depth', 'select', 'solver', 'scale', 'refine', 'window', 'total')
#: An observable pair skips GRIC when the quick plane test (``degeneracy.off_plane_share``)
#: leaves more than ``vo.planar_max_off_plane`` + this share of its E inliers off the plane:
#: the shorter search can only find a worse plane than GRIC's, and a margin this wide keeps
#: a plane that GRIC would fit within the bound (one plane: 0.01-0.09, a road under facades
#: 0.16-0.28, KITTI 06 0.47-0.68).
PLANE_TEST_MARGIN = 0.15
_INTERPOLATION = {'area': cv2.INTER_AREA, 'linear': cv2.INTER_LINEAR}


#: Methods whose pose (with its scale) triangulates the pair's matches into new structure:
#: E, and PnP (without it a run of PnP frames, e.g. over a plane, only kept the old points
#: and the map decayed until PnP failed: 33 LOST frames on the hand-held checkerboard).
TRIANGULATED = ('essential', 'pnp')


#: 'auto' keeps the network size where the input's aspect ratio is within this factor of it.
AUTO_ASPECT_TOLERANCE = 1.05


def _classical(cfg: Config) -> bool:
    """Whether the configuration runs the classical pipeline (no flow or depth network)."""
    return 'net' not in (cfg.vo.flow_provider, cfg.vo.depth_provider)


def _aspect_overridden(cfg: Config, classical: Optional[bool] = None) -> bool:
    """Whether 'aspect' is asked for with a network (which needs its own input size)."""
    classical = _classical(cfg) if classical is None else classical
    return cfg.vo.resolution == 'aspect' and not classical


def resolution_mode(cfg: Config, classical: Optional[bool] = None) -> str:
    """
    Return ``vo.resolution`` as it applies: 'aspect' and 'auto' are 'network' with a network.

    :param classical: whether the pipeline has no network (None: from the config's names).
    """
    classical = _classical(cfg) if classical is None else classical
    mode = cfg.vo.resolution
    return 'network' if mode in ('aspect', 'auto') and not classical else mode


def working_size(cfg: Config, input_hw: Tuple[int, int], classical: Optional[bool] = None
                 ) -> Tuple[int, int]:
    """
    Return the working (height, width) of ``vo.resolution`` for an input of size ``input_hw``.

    'network': ``data.img_height x data.img_width`` (what the networks need). 'native': the
    input. 'aspect' (classical pipeline only): the input scaled to about that many pixels with
    its aspect ratio kept (the pixel thresholds ``vo.keyframe_parallax_px``,
    ``vo.sign_parallax_px``, ... are tuned at that pixel count). 'auto' (default): 'aspect'
    for the classical pipeline, except that an input whose aspect ratio lies within
    :data:`AUTO_ASPECT_TOLERANCE` of the network size's gets the network size itself (KITTI's
    1226x370: 832x256, not 840x254); 'network' with a network. A 4:3 camera squeezed to
    832x256 loses half of its vertical resolution: on the hand-held checkerboard (752x480)
    'aspect' gave 0.004-0.006 m against 0.004-0.025 m over seeds (docs/BENCHMARKS.md).

    :param classical: whether the pipeline has no network (None: from ``vo.flow_provider``
        and ``vo.depth_provider``; :class:`VisualOdometry` passes what its providers are).
    """
    mode = resolution_mode(cfg, classical)          # the networks need their input size
    h, w = int(input_hw[0]), int(input_hw[1])
    net_h, net_w = cfg.data.img_height, cfg.data.img_width
    if mode == 'auto':
        ratio = (w / max(h, 1)) / (net_w / max(net_h, 1))
        near = 1.0 / AUTO_ASPECT_TOLERANCE <= ratio <= AUTO_ASPECT_TOLERANCE
        mode = 'network' if near else 'aspect'
    if mode == 'native':
        return h, w
    if mode == 'aspect':
        budget = net_h * net_w
        s = math.sqrt(budget / max(h * w, 1))
        return max(1, int(round(h * s))), max(1, int(round(w * s)))
    return net_h, net_w


def _rotation_deg(R: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(R)) - 1.0) / 2.0))))


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
        if _aspect_overridden(self.cfg, self.classical):
            warnings.warn("vo.resolution 'aspect' is for the classical pipeline: with a network "
                          '(vo.flow_provider / vo.depth_provider net) the working size is the '
                          "network's, data.img_height x data.img_width. Fix: vo.resolution: "
                          'network (or dis flow and no depth network)', stacklevel=2)
        self.bgr = bgr
        self._refiner = None    # geometry.refine: the LM pose refinement, built on first use
        self._undistort_cache = None
        #: Whether the caller uses ``FrameResult.depth``. False skips the dense depth map
        #: wherever only the output would use it (no depth provider, no refinement): the
        #: classical pipeline then keeps only its tracked map points, and the poses are the
        #: same (tested). The node sets it from publish_depth / publish_points, trianflow-vo
        #: from --no-depth-output.
        self.output_depth = True
        #: A list to record every pair's scale fit in (``strategies.ScaleFitRecord``; the
        #: diagnostic ``bench/scale_bias.py``), or None (the default: nothing is kept).
        self.scale_fits: Optional[list] = None
        self._corner_worker: Optional[ThreadPoolExecutor] = None   # started by the first
        # sparse step; (frame, its grey, its CornerResponse being computed on the other
        # core): the last current frame of the sparse front end, the likely next keyframe
        self._next_corners = None
        self.reset()

    # ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """
        Stop the worker threads and wait for them.

        The workers: the next keyframe's corners, the flow provider's backward flow. A later
        :meth:`step` starts them again; a node calls this when it shuts down.
        ``with VisualOdometry(...) as vo:`` closes on leaving.
        """
        self._stop_corner_worker()
        close = getattr(self.flow, 'close', None)
        if close is not None:
            close()

    def __enter__(self) -> 'VisualOdometry':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _stop_corner_worker(self) -> None:
        """Stop the corner worker; forget the corners it computes (``_next_corners``)."""
        worker, self._corner_worker, self._next_corners = self._corner_worker, None, None
        if worker is not None:
            worker.shutdown(wait=True)

    def reset(self) -> None:
        """Forget everything: the next frame starts a new odometry frame (INITIALIZING)."""
        self._stop_corner_worker()
        self._kf: Optional[Keyframe] = None
        self._kf_inliers: Optional[int] = None   # inliers of the keyframe's first pair
        self._next_id = 0                          # next map point id
        self._window: List[Keyframe] = []          # the last keyframes (window adjustment)
        self._T_world = np.eye(4)
        self._cov_left = cov.initial_covariance()
        self._count = 0
        self._lost = False
        self._lost_run = 0                  # consecutive LOST frames of failed pairs
        self._last_speed = 0.0
        self._scale_defined = False
        self._sparse_cache = None   # (keyframe, its corners, its grey): the sparse front end
        self._last_motion: Optional[np.ndarray] = None   # T_prev_cur of the last frame

    @property
    def pose(self) -> np.ndarray:
        """Return the last output pose ``T_world_cam`` (4, 4) float64 (a copy)."""
        return self._T_world.copy()

    @property
    def is_lost(self) -> bool:
        """Return True while the last frame was LOST."""
        return self._lost

    @property
    def keyframe_index(self) -> Optional[int]:
        """Return the ``index`` of the current keyframe (None before the first frame)."""
        return None if self._kf is None else self._kf.frame.index

    # ----------------------------------------------------------------------------------------
    def working_size(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        """Return the working (height, width) for an input of size ``input_hw``."""
        return working_size(self.cfg, input_hw, self.classical)

    @property
    def classical(self) -> bool:
        """Whether the flow is DIS or KLT and there is no depth provider (no network)."""
        return isinstance(self.flow, DISFlowProvider) and self.depth is None

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
                                     interpolation=_INTERPOLATION[
                                         self.cfg.vo.resize_interpolation] if shrink
                                     else cv2.INTER_LINEAR)
                src_hw = tuple(image.shape[:2])
                image = resized
            else:
                src_hw = None
            image = np.ascontiguousarray(image)
            # the grey image of the flow, Lucas-Kanade and the checks, from the uint8 pixels
            # (BT.601 luma in fixed point: within 1/255 of the float luma of to_grey_uint8;
            # equal for grey frames); 0.05 ms instead of ~2 ms from the float tensor
            grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if self.bgr else cv2.COLOR_RGB2GRAY)
            img = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        elif isinstance(image, torch.Tensor):
            src_hw = None
            grey = None
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
        # an array was resized to its working size above (the 'aspect' size of a resized
        # image is not the image's own size: never apply the rule twice)
        dst = src if src_hw is not None else self.working_size(src)
        img = img[None].to(self.device)
        if dst != src:
            shrink = dst[0] < src[0] or dst[1] < src[1]
            img = F.interpolate(img, size=dst, mode='bilinear', align_corners=False,
                                antialias=shrink and self.cfg.vo.resize_interpolation == 'area')
            Kt = resize_intrinsics(Kt[None], src, dst)[0]
        elif src_hw is not None:                                # resized by cv2 above
            Kt = resize_intrinsics(Kt[None], src_hw, dst)[0]
        if grey is None:
            img = img.clamp(0.0, 1.0)
        elif dst == src:                            # uint8 / 255 is in [0, 1] already
            remember_grey(img, grey)
        return img, Kt[None].float().to(self.device)

    def _undistorter(self, distortion, K: torch.Tensor, hw: Tuple[int, int]):
        """Return (undistort function or None, pinhole pixels of the raw grid or None)."""
        dist = as_distortion(distortion)
        if dist is None:
            return None, None
        key = (dist, tuple(K.flatten().tolist()), hw)
        if self._undistort_cache is not None and self._undistort_cache[0] == key:
            return self._undistort_cache[1], self._undistort_cache[1].grid
        # exact for the matches, a table lookup for the dense depth maps: the Newton inversion
        # of every flow pixel cost 260 ms per VAMR frame (two maps per keyframe)
        undistort = PixelUndistorter(K, dist, hw)
        self._undistort_cache = (key, undistort)
        return undistort, undistort.grid

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
            pair, a string, or None for a pinhole / rectified image); the matches are
            undistorted before any geometry, the depth stays on the raw pixel grid.
        :return: :class:`FrameResult`.
        :raises ValueError: malformed image, K or distortion (shape, dtype, model); bad pixel
            values (NaN) and untrackable frames are reported as LOST instead.
        """
        # thousands of small tensor ops: on a 2-core CPU one intra-op thread is fastest (a
        # loaded machine made every op wait for the second thread: VAMR 330 -> 460 ms per
        # frame with 2); the networks run on all threads (providers' ``all_cpu_threads``)
        with one_cpu_thread(self.device):
            return self._step(stamp, image, K, distortion)

    def _step(self, stamp: float, image, K, distortion) -> FrameResult:
        """:meth:`step` on one CPU thread."""
        t_start = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        img, Kw = self._prepare(image, K)
        dist = as_distortion(distortion)
        undistort, grid = self._undistorter(dist, Kw, tuple(img.shape[-2:]))
        index = self._count
        self._count += 1

        def finish(result: FrameResult) -> FrameResult:
            timings['total'] = 1000.0 * (time.perf_counter() - t_start)
            result.timings = timings
            return result

        if not all_finite(img):
            return finish(self._lost_result(stamp, index, Kw, 'image has non-finite pixels'))
        # the grey levels' std (of the grey image every front end reads; cached)
        grey_std = float(cv2.meanStdDev(to_grey_uint8(img))[1][0, 0]) / 255.0
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
        frame = Frame(index, float(stamp), img, Kw, depth)

        if self._kf is None:
            self._T_world = np.eye(4)
            self._cov_left = cov.initial_covariance()
            d, s, kind = self._provider_map(depth)
            self._kf = Keyframe(frame, np.eye(4), self._cov_left, d, s, kind)
            self._kf_inliers = None
            self._lost = False
            return finish(self._result(frame, TrackingState.INITIALIZING, None, 'init', 0, 0,
                                       1.0, 'none', depth, np.eye(4), self._cov_left,
                                       np.zeros((6, 6)), ''))

        kf = self._kf
        if tuple(kf.frame.image.shape[-2:]) != tuple(img.shape[-2:]):
            # the input changed size (a camera switched its resolution) and with it the working
            # size ('auto', 'aspect', 'native'): nothing matches across two sizes, so this
            # frame starts a new map at the held pose, as after a run of LOST frames
            result = self._lost_result(
                stamp, index, Kw, f'the working size changed from '
                f'{tuple(kf.frame.image.shape[-2:])} to {tuple(img.shape[-2:])} (the input '
                'size changed)')
            result.message += self._reanchor(frame, depth, 'because the working size changed')
            return finish(result)
        generator = torch.Generator(device=self.device).manual_seed(
            self.cfg.geometry.ransac.seed + index)
        t0 = time.perf_counter()
        flow_12 = flow_21 = None
        if not getattr(self.flow, 'sparse', False) or self._needs_dense_flow():
            flow_12, flow_21 = self.flow(kf.frame.image, img)
        timings['flow'] = 1000.0 * (time.perf_counter() - t0)
        est = self._solve(kf, frame, flow_12, flow_21, undistort, generator, timings, dist)
        if self.cfg.geometry.refine.enabled and isinstance(est, PairEstimate):
            if self._refiner is None:
                from trianflow_ros.vo.refinement import PoseRefiner
                self._refiner = PoseRefiner(self.cfg, self.flow)
            est = self._refiner.refine_estimate(est, kf, frame, timings)
        if isinstance(est, PairFailure):
            result = self._lost_result(stamp, index, Kw, est.message)
            result.num_matches = est.num_matches
            result.num_inliers = est.num_inliers
            result.reference_index = kf.frame.index
            self._lost_run += 1
            limit = self.cfg.vo.reanchor_lost_frames
            if limit > 0 and self._lost_run >= limit:
                result.message += self._reanchor(frame, depth)
            return finish(result)

        T_kf_cur = np.linalg.inv(est.T_21)
        T_world_cur = kf.T_world @ T_kf_cur
        if not np.all(np.isfinite(T_world_cur)):
            return finish(self._lost_result(stamp, index, Kw, 'non-finite pose'))
        focal = 0.5 * float(Kw[0, 0, 0] + Kw[0, 1, 1])
        t_norm = float(np.linalg.norm(T_kf_cur[:3, 3]))
        frames = max(index - kf.frame.index, 1)
        cov_rel = cov.relative_covariance(
            est.method, focal_px=focal, sigma_px=est.sigma_px, num_inliers=est.num_inliers,
            translation_norm=t_norm, scene_depth=est.scene_depth, scale_sigma=est.scale_sigma,
            last_speed=self._last_speed * frames,
            standstill_px=self.cfg.geometry.degeneracy.standstill_px,
            translation=T_kf_cur[:3, 3])
        cov_left = cov.propagate(kf.cov_left, kf.T_world, cov_rel)

        state = TrackingState.RECOVERED if self._lost else TrackingState.TRACKING
        self._lost = False
        self._lost_run = 0
        if est.method in ('essential', 'pnp'):
            self._last_speed = t_norm / frames
            self._scale_defined = True
        T_world_prev = self._T_world
        T_prev_cur = np.linalg.inv(T_world_prev) @ T_world_cur
        self._T_world = T_world_cur
        self._cov_left = cov_left

        t0 = time.perf_counter()
        message = est.message
        advance, why = self._is_keyframe(est, kf)
        out_depth = depth
        if advance:
            d, s, kind = self._new_map(est, kf, frame, flow_21, flow_12, undistort, grid)
            points = self._new_points(est, kf, frame, dist)
            self._kf = Keyframe(frame, T_world_cur, cov_left, d, s, kind, points)
            self._kf_inliers = None
            if est.method != 'hold' and self.cfg.vo.window_keyframes >= 3:
                t1 = time.perf_counter()
                message = self._adjust_window(message)
                timings['window'] = 1000.0 * (time.perf_counter() - t1)
                T_world_cur = self._kf.T_world
                T_kf_cur = np.linalg.inv(kf.T_world) @ T_world_cur
                T_prev_cur = np.linalg.inv(T_world_prev) @ T_world_cur
                self._T_world = T_world_cur
            if out_depth is None:
                out_depth = d
        elif out_depth is None and kf.depth is not None and self.output_depth:
            x = self._dense_inputs(kf, frame, flow_12, flow_21, undistort, grid)
            out_depth, _ = transfer_flow_depth(
                x.strided(kf.depth), None, x.flow_21, self._valid_2(x), x.K1,
                torch.from_numpy(est.T_21)[None].to(kf.frame.K.device),
                undistort=x.undistort, grid_2=x.grid)
            out_depth = x.full(out_depth)
        timings['scale'] += 1000.0 * (time.perf_counter() - t0)
        self._last_motion = T_prev_cur
        if advance and why:
            message = (message + '; ' if message else '') + why
        return finish(self._result(
            frame, state, est.motion, est.method, est.num_matches, est.num_inliers, est.scale,
            est.scale_source, out_depth, T_prev_cur, cov_left, cov_rel, message, T_kf_cur,
            ref_index=kf.frame.index))

    # ----------------------------------------------------------------------------------------
    def _solve(self, kf: Keyframe, cur: Frame, flow_12: Optional[torch.Tensor],
               flow_21: Optional[torch.Tensor], undistort, generator: torch.Generator,
               timings: Dict[str, float], dist: Optional[Distortion] = None
               ) -> Union[PairEstimate, PairFailure]:
        """Estimate the keyframe -> current motion (see the module docstring, step 4)."""
        cfg = self.cfg
        g = cfg.geometry
        t0 = time.perf_counter()
        flow_ms = timings['flow']
        if getattr(self.flow, 'sparse', False):
            m = self._sparse_matches(kf, cur, undistort, dist, timings)
        else:
            m = select_matches(kf.frame.image, cur.image, flow_12, flow_21, cfg, undistort,
                               generator, kf.points.x if kf.points is not None else None,
                               cfg.vo.klt_window if getattr(self.flow, 'refine_matches', True)
                               else 0)
        n = m.count
        # the sparse front end's DIS start counts as 'flow'
        timings['select'] = 1000.0 * (time.perf_counter() - t0) - (timings['flow'] - flow_ms)
        if m.num_consistent < cfg.vo.min_matches or m.consistent_ratio < cfg.vo.min_valid_ratio:
            return PairFailure(
                f'too few consistent matches ({m.num_consistent} pixels, '
                f'{100 * m.consistent_ratio:.1f} %, with a forward-backward difference < 0.5 '
                f'px; vo.min_matches {cfg.vo.min_matches}, vo.min_valid_ratio '
                f'{cfg.vo.min_valid_ratio})', n)
        if n < cfg.vo.min_matches:
            return PairFailure(f'too few valid matches ({n} < vo.min_matches '
                               f'{cfg.vo.min_matches})', n)
        if m.num_zncc_checked >= cfg.vo.min_matches and m.zncc_ratio < cfg.vo.min_zncc_ratio:
            return PairFailure(
                f'matches do not correlate: {100 * m.zncc_ratio:.0f} % of '
                f'{m.num_zncc_checked} textured matches have a patch ZNCC >= '
                f'vo.zncc_threshold {cfg.vo.zncc_threshold} (< vo.min_zncc_ratio '
                f'{cfg.vo.min_zncc_ratio}): an unrelated or corrupted image', n)

        t0 = time.perf_counter()
        K1, K2 = kf.frame.K.double(), cur.K.double()
        ransac = ransac_essential(m.u1, m.u2, K1, K2, generator=generator, params=g.ransac)
        if cfg.vo.pose_recheck and float(ransac.score[0]) > 0:
            ransac = self._recheck_essential(ransac, m, K1, K2, cur)
        num_e = int(ransac.num_inliers[0])
        e_ok = float(ransac.score[0]) > 0 and num_e >= max(8, cfg.vo.min_inlier_ratio * n)
        F_est = fundamental_from_essential(ransac.model.double(), K1, K2)
        residuals = sampson_distance(F_est, m.u1, m.u2)
        noise = strategies.robust_sigma(residuals[ransac.inliers]) if e_ok else 1.0
        if not e_ok:
            residuals = torch.full_like(residuals, float('inf'))
        k = min(n, cfg.vo.classify_points)
        sub = torch.randperm(n, generator=generator, device=m.u1.device)[:k]
        detect_planar = cfg.vo.planar_pnp and self.depth is None

        def classify():
            return classify_motion(m.u1[:, sub], m.u2[:, sub], K1, K2, residuals[:, sub],
                                   standstill_px=g.degeneracy.standstill_px,
                                   num_hypotheses=128, lo_iters=2, generator=generator,
                                   detect_planar=detect_planar)
        ctx = strategies.PairContext(cfg=cfg, kf=kf, cur=cur, m=m, ransac=ransac, e_ok=e_ok,
                                     residuals=residuals, classify=classify,
                                     generator=generator, noise_px=noise,
                                     last_speed=self._last_speed,
                                     scale_defined=self._scale_defined, subset=sub,
                                     max_depth=self.max_depth, scale_fits=self.scale_fits)
        # the parallax vote decides whether t is observable, not the share of far points: in
        # a far-field scene (a highway: sky and facades far away) most matches barely move and
        # GRIC calls the pair a standstill or a rotation, although the near road fixes t
        observable = False
        choice = None
        if e_ok:
            choice = choose_pose(ransac.model.double(), m.u1, m.u2, K1, K2, ransac.inliers,
                                 min_parallax_px=cfg.vo.sign_parallax_px,
                                 similar_ratio=cfg.vo.pose_similar_ratio,
                                 min_votes=cfg.vo.pose_min_votes,
                                 min_vote_share=cfg.vo.pose_min_vote_share)
            observable = bool(choice.decided[0])
        # GRIC (ctx.cls, ~12 ms a pair) only where it can change the pose: for the standstill
        # and the rotation of a pair without an observable t, and for a dominant plane (PnP);
        # an observable pair whose quick plane test leaves far more than
        # vo.planar_max_off_plane of its E inliers off the plane goes to E without it
        may_be_planar = detect_planar and kf.has_structure and (
            not observable or float(off_plane_share(
                m.u1[:, sub], m.u2[:, sub], residuals[:, sub], generator=generator)[0])
            <= cfg.vo.planar_max_off_plane + PLANE_TEST_MARGIN)
        # GRIC runs here (the solver's time) where its class is read, else not at all
        motion = (ctx.cls.types()[0] if may_be_planar or not observable
                  else MotionType.GENERAL)
        timings['solver'] = 1000.0 * (time.perf_counter() - t0)
        if not observable and motion == MotionType.STANDSTILL:
            return strategies.hold(ctx)
        planar = (may_be_planar and motion == MotionType.PLANAR
                  and float(ctx.cls.off_plane_share[0]) <= cfg.vo.planar_max_off_plane)
        if planar:
            # a dominant plane: E is ill-conditioned there (its LO refits and the twofold
            # ambiguity), while PnP on the map points is exact (planar PnP); measured on the
            # hand-held checkerboard: ATE 0.06 m by E, 0.010 m by PnP. A road under a far field
            # is PLANAR too, and there PnP was worse than E (synthetic highway 0.06 -> 0.15 m;
            # docs/BENCHMARKS.md): vo.planar_pnp turns it off. Not with a depth network: at
            # its 64x192 GRIC calls most KITTI pairs PLANAR and PnP on the learned depth
            # drifted (ATE 0.43 -> 6.3 m). A plane with structure off it (E inliers the
            # homography does not explain: a road under facades) is E's case, not PnP's
            t0 = time.perf_counter()
            est = strategies.pnp(ctx)
            timings['solver'] += 1000.0 * (time.perf_counter() - t0)
            if est is not None:
                return est
        notes = []
        if observable:
            t0 = time.perf_counter()
            est = strategies.essential(ctx, choice)
            timings['scale'] += 1000.0 * (time.perf_counter() - t0)
            if est is not None:
                return est
            notes.append('too few points for the scale')
        elif e_ok and choice is not None:
            votes = choice.votes[0].tolist()
            notes.append(f'translation not observable (parallax votes {votes})')
        est = None
        if not planar:                      # else PnP ran (and failed) above on these inputs
            t0 = time.perf_counter()
            est = strategies.pnp(ctx)
            timings['solver'] += 1000.0 * (time.perf_counter() - t0)
        if est is None and kf.depth is not None:
            notes.append('PnP failed')
        if est is None and observable:
            est = strategies.essential(ctx, choice, motion_scale=True)
        if est is None:
            est = strategies.rotation(ctx)
        if est is None:
            return PairFailure(
                f'no model: E {"ok" if e_ok else "failed"} ({num_e} inliers of {n} matches), '
                f'{"; ".join(notes) + "; " if notes else ""}no rotation model', n, num_e)
        if notes and motion not in (MotionType.PURE_ROTATION, MotionType.STANDSTILL):
            note = '; '.join(notes) + f': {est.method}'
            est = dataclasses.replace(est, message=(est.message + '; ' if est.message else '')
                                      + note)
        return est

    def _recheck_essential(self, first: RansacResult, m: Matches, K1: torch.Tensor,
                           K2: torch.Tensor, cur: Frame) -> RansacResult:
        """
        Return the better of ``first`` and a second, longer E-RANSAC (its own draws).

        Only where the first E's translation lies at least ``vo.pose_recheck_min_angle_deg``
        from the optical axis (the ambiguity confuses a sideways translation with a rotation;
        a forward drive never pays for it); elsewhere ``first``.

        The adaptive stop of the RANSAC assumes that any all-inlier minimal set gives the right
        model; at a short baseline the minimal solutions scatter between the pose and the
        rotation-translation ambiguity, and an early stop returned the ambiguity (TUM fr1 pair
        at 400x533: RANSAC seed 4 of 0-23, rotation 2.0 deg and direction 41 deg off;
        docs/BENCHMARKS.md). The second run (its own generator, so that the pair's
        other draws stay as they were) draws at least ``vo.pose_recheck_sets`` five-point sets
        (16: enough on that pair, ~7 ms at 832x256; all 64 cost ~15 ms); the two
        are compared by their MSAC quality over the matches with parallax under the first
        model's rotation (``vo.sign_parallax_px``): matches without parallax fit any model
        with the right rotation and would favour a model fitted to their noise (a far field).
        """
        if float(translation_axis_angle_deg(first.model.double())[0]) < \
                self.cfg.vo.pose_recheck_min_angle_deg:
            return first
        g = self.cfg.geometry
        gen = torch.Generator(device=m.u1.device).manual_seed(
            g.ransac.seed * 7919 + cur.index + 1)
        alt = ransac_essential(m.u1, m.u2, K1, K2, generator=gen, params=g.ransac,
                               min_hypotheses=4 * self.cfg.vo.pose_recheck_sets)
        if not float(alt.score[0]) > 0:
            return first
        par = rotation_parallax_px(first.model.double(), m.u1, m.u2, K1, K2)
        near = (par >= self.cfg.vo.sign_parallax_px).double()
        thr = g.ransac.threshold_px
        if float(essential_quality(alt.model, m.u1, m.u2, K1, K2, thr, near)[0]) > float(
                essential_quality(first.model, m.u1, m.u2, K1, K2, thr, near)[0]):
            return alt
        return first

    @property
    def _maps_for_output_only(self) -> bool:
        """Whether only the depth output reads the dense maps (no depth net, no refinement)."""
        return self.depth is None and not self.cfg.geometry.refine.enabled

    def _needs_dense_flow(self) -> bool:
        """Whether a dense map needs the flow (a sparse front end computes it only then)."""
        return self.output_depth or not self._maps_for_output_only

    def _sparse_matches(self, kf: Keyframe, cur: Frame, undistort, dist: Optional[Distortion],
                        timings: Dict[str, float]) -> Matches:
        """
        Return the matches of the sparse front end (:mod:`~trianflow_ros.vo.sparse_matches`).

        The keyframe's corners (away from its map points) are detected once per keyframe and
        kept until the keyframe changes; their image-only part (:func:`corner_response`) is
        computed for every current frame in a worker thread while that frame's geometry runs,
        so that a frame that becomes the keyframe only selects them (KITTI 832x256: ~5 ms
        less per frame on two cores). Lucas-Kanade starts (``vo.klt_prior``) where a
        one-way DIS flow puts every point ('dis', and without a prediction: the first pair,
        after a LOST frame), or where the map points are expected by a constant-velocity
        prediction (the last frame's motion repeated) and the corners by the median inverse
        depth of the map points near them ('motion'). On KITTI at 832x256 the matches move
        18 px (median) to 60 px (90th percentile) between frames, beyond the reach of a small
        window. The DIS start's time is added to ``timings['flow']``.
        """
        pending, self._next_corners = self._next_corners, None
        tracked = kf.points.x if kf.points is not None else None
        if self._sparse_cache is not None and self._sparse_cache[0] is kf:
            grey1, corners = self._sparse_cache[2], self._sparse_cache[1]
        else:
            avoid = None if tracked is None else tracked[0].detach().cpu().numpy()
            if pending is not None and pending[0] is kf.frame:
                grey1, response = pending[1], pending[2].result()
            else:
                grey1 = to_grey_uint8(kf.frame.image)
                response = corner_response(grey1, self.cfg)
            corners = select_corners(response, self.cfg, self.cfg.vo.klt_points, avoid)
            self._sparse_cache = (kf, corners, grey1)
        grey2 = to_grey_uint8(cur.image)
        # the current frame usually becomes the next keyframe: its corner response (image
        # only, no VO state) is computed on the other core while this frame's geometry runs
        if self._corner_worker is None:
            self._corner_worker = ThreadPoolExecutor(1, thread_name_prefix='trianflow-corners')
        self._next_corners = (cur, grey2,
                              self._corner_worker.submit(corner_response, grey2, self.cfg))
        guess = prior = corner_guess = None
        predict = (self.cfg.vo.klt_prior == 'motion' and tracked is not None
                   and self._last_motion is not None and not self._lost)
        if predict:
            T_world_cur = self._T_world @ self._last_motion
            T_21 = np.linalg.inv(T_world_cur) @ kf.T_world
            guess = predict_pixels(kf.points.u, kf.points.depth, kf.frame.K, cur.K, T_21, dist)
            corner_guess = predict_corners(corners, kf.points.x, kf.points.depth,
                                           kf.frame.K, T_21, tuple(kf.frame.image.shape[-2:]),
                                           undistort, dist)
        else:
            # vo.klt_prior 'dis', or no prediction (the first pair, after a LOST frame): DIS
            # flow one way (the provider's vo.klt_prior_preset) gives the starts
            t0 = time.perf_counter()
            prior = self.flow.prior(grey1, grey2)
            timings['flow'] += 1000.0 * (time.perf_counter() - t0)
        return track_matches(kf.frame.image, cur.image, grey1, grey2, corners,
                             self.cfg, undistort, tracked, guess, prior, corner_guess)

    # ----------------------------------------------------------------------------------------
    def _is_keyframe(self, est: PairEstimate, kf: Keyframe) -> Tuple[bool, str]:
        """Decide whether the current frame becomes the keyframe (step 5) and say why."""
        v = self.cfg.vo
        if est.method == 'hold':
            return False, ''
        if est.method == 'essential' and not kf.has_structure:
            return True, ''
        angle = _rotation_deg(est.T_21[:3, :3])
        if v.keyframe_rotation_deg > 0 and angle >= v.keyframe_rotation_deg:
            return True, ''
        if self._kf_inliers is None:
            self._kf_inliers = est.num_inliers
        elif est.num_inliers < v.keyframe_inlier_ratio * self._kf_inliers:
            return True, ''
        if est.method in ('essential', 'pnp') and est.parallax_px >= v.keyframe_parallax_px:
            return True, ''
        return False, ''

    def _reanchor(self, frame: Frame, depth: Optional[torch.Tensor],
                  why: Optional[str] = None) -> str:
        """
        Make a frame the keyframe at the held pose after a run of LOST frames; say so.

        The camera has moved away from the keyframe (a turn into a new view, a long
        occlusion): every later frame would fail against it. The new keyframe starts a new
        map at the last known pose; its absolute pose is unknown by the motion during the
        LOST run (covariance grown by the LOST covariance), the scale continues from the
        last speed until the new map holds it. ``why``: another reason than the LOST run.
        """
        run = self._lost_run
        self._cov_left = cov.propagate(self._cov_left, self._T_world, cov.lost_covariance())
        d, s, kind = self._provider_map(depth)
        self._kf = Keyframe(frame, self._T_world.copy(), self._cov_left, d, s, kind)
        self._kf_inliers = None
        self._lost_run = 0
        reason = why or f'after {run} LOST frames (vo.reanchor_lost_frames)'
        return f'; re-anchored {reason}: frame {frame.index} is the new keyframe at the last pose'

    def _dense_inputs(self, kf: Keyframe, cur: Frame, flow_12: torch.Tensor,
                      flow_21: torch.Tensor, undistort, grid) -> DenseInputs:
        """Return the dense maps' inputs: every pixel, or every n-th for the output alone."""
        stride = self.cfg.vo.output_depth_stride if self._maps_for_output_only else 1
        return DenseInputs.at_stride(stride,
                                     kf.frame.image, cur.image, kf.frame.K, cur.K, flow_12,
                                     flow_21, undistort, grid)

    def _valid_2(self, x: DenseInputs) -> torch.Tensor:
        """Pixels of the current frame whose match is trusted for depth."""
        valid, score = match_validity(x.img2, x.img1, x.flow_21, x.flow_12, self.cfg)
        # depth only from matches whose forward-backward difference is below the RANSAC
        # threshold (M_s = 1 / (0.1 + D_fb)); the F-B gate of the matches (3 px) is too loose
        return valid & (score > 1.0 / (0.1 + self.cfg.geometry.ransac.threshold_px))

    def _provider_map(self, depth: Optional[torch.Tensor]):
        """Return the depth provider's depth as a keyframe map: (depth, sigma, kind)."""
        if depth is None:
            return None, None, 'none'
        d = depth
        max_depth = self.max_depth
        if max_depth > 0:
            d = torch.where(d < max_depth, d, torch.zeros_like(d))
        return d, torch.where(d > 0, torch.full_like(d, self._depth_sigma()),
                              torch.zeros_like(d)), 'depth'

    @property
    def max_depth(self) -> float:
        """Depths of the provider beyond this are not used (0: no limit)."""
        limit = getattr(self.depth, 'max_depth', None)
        return float(limit) if limit is not None else self.cfg.geometry.scale.max_depth

    def _depth_sigma(self) -> float:
        """Relative error of the depth provider's depth."""
        sigma = getattr(self.depth, 'relative_sigma', None)
        return float(sigma) if sigma is not None else self.cfg.geometry.scale.depth_sigma

    def _new_map(self, est: PairEstimate, kf: Keyframe, cur: Frame, flow_21: torch.Tensor,
                 flow_12: torch.Tensor, undistort, grid):
        """Return the depth map of a new keyframe (step 6): (depth, sigma, kind)."""
        cfg, g = self.cfg, self.cfg.geometry
        net_d, net_s, kind = self._provider_map(cur.depth)
        if not cfg.vo.map_fusion and net_d is not None:
            return net_d, net_s, kind
        output_only = self._maps_for_output_only
        if output_only and not self.output_depth:
            return None, None, 'none'        # only the depth output would read the dense map
        T = torch.from_numpy(est.T_21)[None].to(cur.K.device)
        x = self._dense_inputs(kf, cur, flow_12, flow_21, undistort, grid)
        valid_2 = None
        maps = []
        if est.method in TRIANGULATED:
            valid_2 = self._valid_2(x)
            # pixel figures in the pixels of the (strided) maps
            maps.append(triangulate_flow_depth(
                x.flow_21, valid_2, x.K1, x.K2, T,
                min_angle_deg=cfg.vo.propagate_min_angle_deg, min_depth=g.triangulation.min_depth,
                max_sampson_px=2.0 * g.ransac.threshold_px / x.stride,
                sigma_px=max(est.sigma_px, 0.1) / x.stride, undistort=x.undistort,
                grid_2=x.grid,
                # float32 (2x faster) where only the depth output reads the map
                dtype=torch.float32 if output_only else torch.float64))
        if kf.depth is not None and cfg.vo.map_fusion:
            if valid_2 is None:
                valid_2 = self._valid_2(x)
            maps.append(transfer_flow_depth(
                x.strided(kf.depth), x.strided(kf.sigma), x.flow_21, valid_2, x.K1, T,
                undistort=x.undistort, grid_2=x.grid))
        if maps:                                 # fused on the strided grid, then repeated
            d, s = maps[0]
            for d2, s2 in maps[1:]:
                d, s = fuse_log_depth(d, s, d2, s2)
            d, s = x.full(d, s)
            if net_d is not None:
                d, s = fuse_log_depth(d, s, net_d, net_s)
        elif net_d is not None:
            d, s = net_d, net_s
        else:
            return None, None, 'none'
        if not bool((d > 0).any()):
            return None, None, 'none'
        return d, s, ('depth' if net_d is not None else 'propagated')

    def _new_points(self, est: PairEstimate, kf: Keyframe, cur: Frame,
                    dist: Optional[Distortion]) -> Optional[MapPoints]:
        """
        Return the tracked points of a new keyframe: the inlier matches, moved with the pose.

        Each point lies on its keyframe ray ``u1``; its depth along that ray is the log-depth
        fusion of what is known of it: its triangulation in this pair (E poses; sigma = noise
        / the parallax its map depth predicts, or / the measured parallax for a fresh point),
        its map depth (a tracked point; sigma grows by ``vo.map_process_sigma``) and the depth
        provider's depth (sigma ``geometry.scale.depth_sigma``). The point is then moved into
        the new keyframe with the pose and *projected* there: its pixel is where its 3D point
        is seen, not the flow's match, so a point's pixel never wanders off its depth (a
        tracked pixel's noise would accumulate over keyframes, and on a slanted surface the
        depth read at a wandered pixel is biased: the scale drifted). At most
        ``vo.map_points`` are kept: the tracked ones first, then the most certain fresh ones.
        """
        cfg, g = self.cfg, self.cfg.geometry
        m = est.matches
        if m is None or est.inliers is None or m.count == 0 or cfg.vo.map_points == 0:
            return None
        nt = m.num_tracked
        T = torch.from_numpy(est.T_21)[None].to(m.u1.device, torch.float64)
        K1, K2 = kf.frame.K.double(), cur.K.double()
        dev = m.u1.device
        zeros = torch.zeros(1, m.count, dtype=torch.float64, device=dev)
        d, s = zeros.clone(), zeros.clone()                   # depth along the ray u1 (kf)
        noise = max(est.sigma_px, 0.1)
        min_depth = g.triangulation.min_depth
        if est.method in TRIANGULATED:
            X1 = midpoint_triangulate(m.u1, m.u2, K1, K2, T)
            z2 = transform_points(T, X1)[..., 2]
            par = ray_angle(m.u1, m.u2, K1, K2, T) * 0.5 * float(K2[0, 0, 0] + K2[0, 1, 1])
            ok = ((par >= max(cfg.vo.scale_min_parallax_px, 1e-6)) & (X1[..., 2] > min_depth)
                  & (z2 > min_depth) & torch.isfinite(z2))
            s = torch.where(ok, noise / par.clamp(min=1e-9), zeros)
            d = torch.where(ok, X1[..., 2], zeros)
        age = torch.zeros(1, m.count, dtype=torch.int64, device=dev)
        if nt > 0 and kf.points is not None and est.method in TRIANGULATED:
            # the triangulation's sigma from the parallax the map predicts, not the one
            # measured (weighting a measurement by its own error biases the fusion)
            idx = m.track_index.to(dev)
            par_map = strategies.map_parallax_px(kf.points.depth[:, idx].to(dev),
                                                 m.u1[:, :nt], K1, K2, T, 1.0)
            s[:, :nt] = torch.where(d[:, :nt] > 0, noise / par_map.clamp(min=1e-9), s[:, :nt])
        if est.method in TRIANGULATED and strategies.LOG_DEPTH_BIAS:
            # the log of a triangulated depth (~ 1 / parallax) is biased up by s^2 / 2: points
            # first seen far and later near carried that bias into the scale (KITTI 06: +1.9 %
            # over 50 frames)
            d = d * strategies.log_bias_factor(s)
        if nt > 0 and kf.points is not None:
            idx = m.track_index.to(dev)
            zt = kf.points.depth[:, idx].to(dev)
            st = (kf.points.sigma[:, idx].to(dev).square()
                  + cfg.vo.map_process_sigma ** 2).sqrt()
            dt_, st_ = fuse_log_depth(d[:, :nt], s[:, :nt], zt, st)
            d = torch.cat((dt_.double(), d[:, nt:]), 1)
            s = torch.cat((st_.double(), s[:, nt:]), 1)
            age[:, :nt] = kf.points.age[:, idx].to(dev) + 1
        if cur.depth is not None:
            net = sample_known(cur.depth, m.x2.to(cur.depth.device)).to(dev)
            if self.max_depth > 0:
                net = torch.where(net < self.max_depth, net, torch.zeros_like(net))
            # the provider sees the point along u2: its depth along u1 through the pose
            Xn = transform_points(torch.linalg.inv(T), backproject_pixels(m.u2, net, K2))
            zn = torch.where((net > 0) & (Xn[..., 2] > min_depth), Xn[..., 2], zeros)
            d_, s_ = fuse_log_depth(d, s, zn, torch.where(zn > 0, torch.full_like(
                zn, self._depth_sigma()), zeros))
            d, s = d_.double(), s_.double()
        # move the fused points into the new keyframe and project them there
        X2 = transform_points(T, backproject_pixels(m.u1, d, K1))
        u2, z2 = project(X2, K2)
        x2 = distort_pixels(u2, K2, dist) if dist is not None else u2
        h, w = cur.image.shape[-2:]
        keep = est.inliers[0] & (d[0] > 0) & (z2[0] > min_depth) & torch.isfinite(s[0])
        keep = keep & torch.isfinite(x2[0]).all(-1) & (x2[0, :, 0] >= 0) \
            & (x2[0, :, 0] <= w - 1) & (x2[0, :, 1] >= 0) & (x2[0, :, 1] <= h - 1)
        idx = torch.nonzero(keep).flatten()
        if idx.numel() > cfg.vo.map_points:
            # tracked points first (they hold the scale longest: far points live for many
            # keyframes), then the fresh ones, the most certain first
            rank = s[0, idx] - (age[0, idx] > 0).to(s.dtype) * 1e6
            idx = idx[torch.argsort(rank)[:cfg.vo.map_points]]
        if idx.numel() == 0:
            return None
        ids = torch.full((m.count,), -1, dtype=torch.int64, device=dev)
        if nt > 0 and kf.points is not None:
            ids[:nt] = kf.points.ids[m.track_index.to(kf.points.ids.device)].to(dev)
        fresh = ids < 0
        ids[fresh] = self._next_id + torch.arange(int(fresh.sum()), device=dev)
        self._next_id += int(fresh.sum())
        if cfg.vo.window_keyframes >= 3:
            # the window adjustment makes the depths agree with the measured pixels: keep
            # (and track) those; the depth (z of the 3D point) is the same
            x2, u2 = m.x2, m.u2
        return MapPoints(x=x2[:, idx].double(), depth=z2[:, idx],
                         sigma=s[:, idx].clamp(min=1e-3), age=age[:, idx], ids=ids[idx],
                         u=u2[:, idx].double())

    def _adjust_window(self, message: str) -> str:
        """
        Bundle-adjust the last ``vo.window_keyframes`` keyframes and the current map points.

        The new keyframe (``self._kf``) joins the window; every point of its map that was seen
        in at least two window keyframes takes part (at most ``vo.window_points``, the longest
        tracks first), anchored at its first window keyframe. The two oldest keyframes are
        held (gauge and scale). The refined poses replace the window's; the new keyframe's
        points get their refined depths, and points whose reprojection error stays above
        ``vo.window_outlier_px`` are dropped.

        :return: the frame message (a note is added when the adjustment was rejected).
        """
        v = self.cfg.vo
        kf = self._kf
        self._window.append(kf)
        self._window = self._window[-v.window_keyframes:]
        win = self._window
        pts = kf.points
        if len(win) < 3 or pts is None or pts.count == 0:
            return message
        dev = pts.depth.device
        dt = torch.float64
        ids_all, f_all, u_all = [], [], []
        for k, w in enumerate(win):
            if w.points is None or w.points.count == 0:
                continue
            ids_all.append(w.points.ids.to(dev))
            f_all.append(torch.full((w.points.count,), k, dtype=torch.int64, device=dev))
            u_all.append(w.points.u[0].to(dev, dt))
        ids_all, f_all, u_all = torch.cat(ids_all), torch.cat(f_all), torch.cat(u_all)
        sel = torch.isin(ids_all, pts.ids.to(dev))
        ids_all, f_all, u_all = ids_all[sel], f_all[sel], u_all[sel]
        # point index = position in the new keyframe's map
        lookup = torch.full((int(pts.ids.max()) + 1,), -1, dtype=torch.int64, device=dev)
        lookup[pts.ids.to(dev)] = torch.arange(pts.count, device=dev)
        pidx = lookup[ids_all]
        nobs = torch.zeros(pts.count, dtype=torch.int64, device=dev).index_add_(
            0, pidx, torch.ones_like(pidx))
        chosen = torch.nonzero(nobs >= 2).flatten()
        if chosen.numel() < 20:
            return message
        if chosen.numel() > v.window_points:
            order = torch.argsort(nobs[chosen], descending=True, stable=True)
            chosen = chosen[order[:v.window_points]]
        newidx = torch.full((pts.count,), -1, dtype=torch.int64, device=dev)
        newidx[chosen] = torch.arange(chosen.numel(), device=dev)
        keep = newidx[pidx] >= 0
        q, f, u = newidx[pidx[keep]], f_all[keep], u_all[keep]
        # anchor: the first window keyframe of each point
        order = torch.argsort(f * (q.numel() + 1) + 0, stable=True)
        q, f, u = q[order], f[order], u[order]
        first = torch.full((chosen.numel(),), len(win), dtype=torch.int64, device=dev)
        first = first.scatter_reduce(0, q, f, reduce='amin')
        is_anchor = f == first[q]
        u_anchor = torch.zeros(chosen.numel(), 2, dtype=dt, device=dev)
        u_anchor[q[is_anchor]] = u[is_anchor]
        T_world = torch.from_numpy(np.stack([w.T_world for w in win])).to(dev, dt)
        K = torch.stack([w.frame.K[0].to(dev, dt) for w in win])
        # initial inverse depth in the anchor: the new keyframe's 3D point moved there
        X = backproject_pixels(pts.u[:, chosen].to(dev, dt), pts.depth[:, chosen].to(dev, dt),
                               K[-1:])[0]
        Tl = T_world[-1]
        Xw = X @ Tl[:3, :3].T + Tl[:3, 3]
        Ta = T_world[first]
        Xa = ((Xw - Ta[:, :3, 3]).unsqueeze(1) @ Ta[:, :3, :3]).squeeze(1)
        ok_a = Xa[:, 2] > 0
        if int(ok_a.sum()) < 20:
            return message
        rho = torch.where(ok_a, 1.0 / Xa[:, 2].clamp(min=1e-9), torch.full_like(Xa[:, 2], 1e-3))
        obs = ~is_anchor & ok_a[q]
        res = window_adjust(T_world, K, first, u_anchor, rho, q[obs], f[obs], u[obs],
                            fixed=2, iterations=v.window_iterations, huber_px=1.0)
        if not (res.cost_after <= res.cost_before) or not bool(torch.isfinite(res.T_world).all()):
            return (message + '; ' if message else '') + 'window adjustment rejected'
        T_new = res.T_world.cpu().numpy()
        for k, w in enumerate(win):
            win[k] = dataclasses.replace(w, T_world=T_new[k].copy())
        # refined depths of the chosen points in the new keyframe
        Xa = torch.cat((u_anchor, torch.ones_like(u_anchor[:, :1])), -1)
        Xa = (torch.linalg.inv(K[first]) @ Xa.unsqueeze(-1)).squeeze(-1) / res.rho[:, None]
        Xw = (Ta_new := res.T_world[first])[:, :3, :3].matmul(Xa.unsqueeze(-1)).squeeze(-1) \
            + Ta_new[:, :3, 3]
        Tl = res.T_world[-1]
        z = ((Xw - Tl[:3, 3]) @ Tl[:3, :3])[:, 2]
        depth = pts.depth.clone().to(dev, dt)
        good = ok_a & (z > 0) & torch.isfinite(z)
        depth[0, chosen[good]] = z[good]
        worst = torch.zeros(chosen.numel(), dtype=dt, device=dev).scatter_reduce(
            0, q[obs], res.residual_px, reduce='amax')
        bad = torch.zeros(pts.count, dtype=torch.bool, device=dev)
        bad[chosen] = (worst > v.window_outlier_px) | ~good
        keep_pts = ~bad
        new_pts = MapPoints(x=pts.x[:, keep_pts], depth=depth[:, keep_pts],
                            sigma=pts.sigma[:, keep_pts], age=pts.age[:, keep_pts],
                            ids=pts.ids[keep_pts], u=pts.u[:, keep_pts])
        self._kf = dataclasses.replace(win[-1], points=new_pts)
        win[-1] = self._kf
        return message

    # ----------------------------------------------------------------------------------------
    def _result(self, frame: Frame, state, motion, method, num_matches, num_inliers, scale,
                scale_source, depth, T_prev_cur, cov_left, cov_rel, message, T_ref_cur=None,
                ref_index=None) -> FrameResult:
        depth_np = None
        if depth is not None:
            depth_np = np.nan_to_num(depth[0, 0].detach().float().cpu().numpy(), nan=0.0,
                                     posinf=0.0, neginf=0.0).astype(np.float32)
        T_ref_cur = T_prev_cur if T_ref_cur is None else T_ref_cur
        return FrameResult(
            stamp=float(frame.stamp), index=frame.index, T_world_cam=self._T_world.copy(),
            T_prev_cur=np.asarray(T_prev_cur, dtype=np.float64).copy(), state=state,
            motion=motion, method=method,
            reference_index=int(frame.index if ref_index is None else ref_index),
            num_matches=int(num_matches), num_inliers=int(num_inliers),
            scale=float(scale) if math.isfinite(scale) else 1.0, scale_source=scale_source,
            depth=depth_np, K=frame.K[0].double().cpu().numpy(),
            covariance=cov.nav_from_left(cov_left, self._T_world),
            relative_covariance=cov.nav_from_left(cov_rel, T_ref_cur), message=message)

    def _lost_result(self, stamp, index, Kw, message: str) -> FrameResult:
        self._lost = True
        ref_index = self._kf.frame.index if self._kf is not None else -1
        return FrameResult(
            stamp=float(stamp), index=index, T_world_cam=self._T_world.copy(),
            T_prev_cur=np.eye(4), state=TrackingState.LOST, motion=None, method='lost',
            reference_index=ref_index, num_matches=0, num_inliers=0, scale=1.0,
            scale_source='none', depth=None, K=Kw[0].double().cpu().numpy(),
            covariance=cov.lost_covariance(), relative_covariance=cov.lost_covariance(),
            message=message)
