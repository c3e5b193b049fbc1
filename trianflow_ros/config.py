"""
One typed configuration tree for training, evaluation, the VO pipeline and the ROS node.

Every field is a dataclass field with help text and, where it applies, a range or a set of
choices. YAML files in ``config/`` override the defaults (a file may name a ``base`` file it
extends), ``--set a.b=value`` overrides a single field, and a resolved config round-trips to YAML.
The ROS node maps the same dotted names onto ROS parameters (``flatten`` / ``field_specs``).
"""

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import yaml


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key and the fix."""


def param(default: Any, help: str, *, range: Optional[Tuple[float, float]] = None,  # noqa: A002
          choices: Optional[Iterable[Any]] = None) -> Any:
    """
    Declare a configuration field.

    :param default: the default value (its type is the field's type).
    :param help: one sentence for users: what it does, units.
    :param range: inclusive (low, high) bounds for numbers.
    :param choices: the allowed values.
    """
    return dataclasses.field(default=default, metadata={
        'help': help, 'range': range, 'choices': tuple(choices) if choices else None})


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DataConfig:
    """What the networks see: dataset, input size and frame pairing."""

    dataset: str = param('kitti_odo', 'dataset reader', choices=(
        'synthetic', 'kitti_raw', 'kitti_odo', 'nyu', 'tum', 'images'))
    root: str = param('', 'dataset root directory (native layout)')
    img_height: int = param(256, 'network input height in pixels', range=(32, 4096))
    img_width: int = param(832, 'network input width in pixels', range=(32, 4096))
    stride: int = param(1, 'frame stride of a pair (the paper tests stride 3)', range=(1, 100))
    bgr: bool = param(True, 'feed images in BGR order like the original (released weights)')


@dataclasses.dataclass
class FlowNetConfig:
    """PWC-Net optical flow and its masks."""

    search_range: int = param(4, 'cost-volume search range in pixels per level', range=(1, 16))
    num_scales: int = param(3, 'flow scales used by the losses', range=(1, 4))
    fb_alpha: float = param(3.0, 'forward-backward consistency: absolute bound (px)',
                            range=(0.0, 100.0))
    fb_beta: float = param(0.05, 'forward-backward consistency: relative bound', range=(0.0, 1.0))
    use_occlusion: bool = param(True, 'multiply the valid mask by the forward-splat visibility')
    use_fb_check: bool = param(True, 'multiply the valid mask by the F-B consistency (NYU: off)')
    width_mult: float = param(1.0, 'channel multiplier of every layer: 1 = the paper network '
                              '(original checkpoints), 0.5 = the small variant of the shipped '
                              'models/default.pth', range=(0.125, 1.0))
    cost_volume_norm: bool = param(False, 'normalise the feature pair of each level (mean, std) '
                                   'before the cost volume: not in the original (its weights '
                                   'need false); trains from scratch far faster')


@dataclasses.dataclass
class DepthNetConfig:
    """ResNet-18 + DispNet depth network."""

    num_layers: int = param(18, 'ResNet encoder depth', choices=(18,))
    num_disp_scales: int = param(1, 'disparity output scales', range=(1, 4))
    min_depth: float = param(0.1, 'depth of disparity 1 (m)', range=(1e-4, 1e3))
    max_depth: float = param(100.0, 'depth of disparity 0 (m)', range=(1e-2, 1e5))
    width_mult: float = param(1.0, 'channel multiplier of encoder and decoder: 1 = the paper '
                              'network (original checkpoints), 0.5 = the small variant of the '
                              'shipped models/default.pth (no unused fc)', range=(0.125, 1.0))


@dataclasses.dataclass
class LossConfig:
    """Loss weights (the original's generate_loss_weights_dict) and sampling constants."""

    w_ssim: float = param(0.85, 'SSIM share of the photometric loss (pixel: 1 - w_ssim)',
                          range=(0.0, 1.0))
    w_flow_smooth: float = param(10.0, 'second-order flow smoothness', range=(0.0, 1e4))
    w_flow_consis: float = param(0.01, 'flow consistency (inert in the original)',
                                 range=(0.0, 1e4))
    w_geo: float = param(1.0, 'epipolar (geometry) loss on the flow', range=(0.0, 1e4))
    w_pt_depth: float = param(1.0, 'triangulation depth loss L_d', range=(0.0, 1e4))
    w_pj_depth: float = param(0.1, 'depth reprojection loss L_pd', range=(0.0, 1e4))
    w_flow_error: float = param(0.0, 'flow vs rigid flow loss L_pf', range=(0.0, 1e4))
    w_depth_smooth: float = param(0.001, 'edge-aware depth smoothness L_s', range=(0.0, 1e4))
    inlier_thres: float = param(0.1, 'epipolar inlier threshold (px)', range=(0.0, 100.0))
    rigid_thres: float = param(0.5, 'rigid mask threshold on D_e (px)', range=(0.0, 100.0))
    depth_sample_ratio: float = param(0.2, 'top score share sampled for triangulation',
                                      range=(0.0, 1.0))
    depth_match_num: int = param(6000, 'correspondences triangulated per pair', range=(8, 10**6))
    ransac_points: int = param(6000, 'correspondences given to F-RANSAC', range=(8, 10**6))
    tri_min_parallax_px: float = param(
        1.0, 'triangulated points need this parallax (focal x ray angle, px); 0 keeps only '
        'geometry.triangulation.min_angle_deg (the original)', range=(0.0, 100.0))


@dataclasses.dataclass
class TrainConfig:
    """Optimisation; every value saved with each checkpoint."""

    mode: str = param('flow', 'training stage or baseline', choices=(
        'flow', 'depth', 'depth_pose', 'posenet', 'flowposenet'))
    batch_size: int = param(8, 'pairs per step', range=(1, 1024))
    lr: float = param(1e-4, 'Adam learning rate', range=(0.0, 1.0))
    num_iterations: int = param(200000, 'optimisation steps of the stage', range=(1, 10**8))
    seed: int = param(0, 'global random seed', range=(0, 2**31 - 1))
    num_workers: int = param(4, 'data loader workers', range=(0, 256))
    log_interval: int = param(100, 'steps between TensorBoard scalars', range=(1, 10**8))
    val_interval: int = param(2000, 'steps between validations', range=(1, 10**8))
    save_interval: int = param(2000, 'steps between checkpoints', range=(1, 10**8))
    amp: bool = param(True, 'mixed precision on CUDA (ignored on CPU)')


@dataclasses.dataclass
class RansacConfig:
    """Batched E/F RANSAC (geometry/ransac.py)."""

    threshold_px: float = param(0.5, 'inlier threshold on the Sampson distance (px)',
                                range=(1e-3, 100.0))
    num_hypotheses: int = param(256, 'hypotheses per pair, evaluated at once', range=(1, 10**5))
    lo_iters: int = param(3, 'local-optimisation refits on the inliers', range=(0, 100))
    min_hypotheses: int = param(0, 'E: at least this many hypotheses (five-point sets x 4) '
                                'before the adaptive stop (256: no early stop; fixed a short-'
                                'baseline TUM pair, worsened far-field scenes: see '
                                'docs/BENCHMARKS.md)', range=(0, 10**5))
    seed: int = param(0, 'seed of the hypothesis sampler', range=(0, 2**31 - 1))
    # tuning constants of geometry/ransac.py and geometry/essential_refine.py (E and F)
    confidence: float = param(0.999, 'E: adaptive stop at this all-inlier probability',
                              range=(0.5, 1.0 - 1e-9))
    chunk_sets: int = param(8, 'E: five-point sets per adaptive round', range=(1, 10**4))
    count_span: float = param(1.0, 'E: stop ratio counted within this many thresholds',
                              range=(0.01, 100.0))
    hyp_span: float = param(8.0, 'hypotheses ranked at this many thresholds', range=(1.0, 100.0))
    score_points: int = param(512, 'points that rank the hypotheses (x2 for F)', range=(8, 10**6))
    lo_span: float = param(16.0, 'first LO threshold, in thresholds', range=(1.0, 1000.0))
    lo_topk: int = param(4, 'best hypotheses that get the LO (x2 for F)', range=(1, 1000))
    lo_points: int = param(512, 'E: LO on this many points when N > 4x', range=(8, 10**6))
    refine_rounds: int = param(2, 'E: most refinements, each on the near points', range=(1, 100))
    refine_span: float = param(2.0, 'E: near = within this many thresholds', range=(0.1, 100.0))
    refine_change: float = param(0.01, 'E: another round if near changed more', range=(0.0, 1.0))
    noise_scale: float = param(2.0, 'E: Cauchy scale / median Sampson', range=(0.01, 100.0))
    scale_min: float = param(0.0625, 'E: Cauchy scale / threshold at least', range=(1e-6, 1.0))
    refine_tol: float = param(1e-6, 'E: relative cost change that stops LM', range=(0.0, 1.0))
    refine_step: float = param(0.5, 'E: LM stops at steps below this x noise', range=(0.0, 100.0))
    refine_points: int = param(1024, 'E: LM on every (N // this)-th point', range=(8, 10**7))
    subset_tol: float = param(10.0, 'E: ... to this x the step tolerance', range=(1.0, 1000.0))
    refine_iters: int = param(4, 'E: LM iterations of the (R, t) refinement per round (0: off)',
                              range=(0, 100))


@dataclasses.dataclass
class TriangulationConfig:
    """Mid-point triangulation filters (geometry/triangulation.py)."""

    min_angle_deg: float = param(0.05, 'minimum angle between the two rays (deg)',
                                 range=(0.0, 90.0))
    min_depth: float = param(0.01, 'points must lie this far in front of both cameras',
                             range=(0.0, 1e3))


@dataclasses.dataclass
class ScaleConfig:
    """Alignment of the depth-network scale to the triangulated structure."""

    method: str = param('log', 'scale estimator: log (weighted mean log ratio of the '
                        'consensus, unbiased; the VO default), robust (consensus + relative '
                        'least squares, biased low by the relative variance), median, lsq',
                        choices=('median', 'lsq', 'robust', 'log'))
    max_depth: float = param(50.0, 'ignore predicted depths beyond this (m)', range=(0.0, 1e5))
    min_points: int = param(100, 'fewer valid depth pairs -> PnP fallback', range=(1, 10**6))
    threshold: float = param(0.1, 'consensus half-width on |log(scale * z / target)| of the '
                             'robust and log fits', range=(1e-3, 10.0))
    depth_sigma: float = param(0.1, "relative (log) error assumed for a depth provider's "
                               'depth: weighs it against the triangulation', range=(1e-3, 10.0))


@dataclasses.dataclass
class PnPConfig:
    """PnP-RANSAC fallback from depth + correspondences (geometry/pnp.py)."""

    threshold_px: float = param(1.0, 'reprojection inlier threshold (px)', range=(1e-3, 100.0))
    num_hypotheses: int = param(256, 'hypotheses per frame', range=(1, 10**5))
    refine_iters: int = param(10, 'Gauss-Newton refinement steps', range=(0, 1000))


@dataclasses.dataclass
class DegeneracyConfig:
    """Standstill and pure-rotation detection (geometry/degeneracy.py)."""

    standstill_px: float = param(0.5, 'median flow below this (px) means standstill',
                                 range=(0.0, 100.0))
    sigma_px: float = param(0.5, 'assumed correspondence noise for GRIC (px)',
                            range=(1e-3, 100.0))


@dataclasses.dataclass
class RefineConfig:
    """SA4Depth-style LM pose refinement on feature-alignment residuals (geometry/refine.py)."""

    enabled: bool = param(False, 'refine the VO pose (and scale) after the scale alignment by LM '
                          'on feature residuals warped with the reference depth')
    train: bool = param(False, 'train.mode=posenet: refine the regressed pose before the '
                        'photometric and geometric losses (features and confidence trained)')
    features: str = param('auto', 'VO features: auto (flow-net pyramid when the flow is '
                          'learned, else image), image (grey + gradients, no weights) or '
                          'flow_net', choices=('auto', 'image', 'flow_net'))
    levels: int = param(3, 'pyramid levels, refined coarse to fine', range=(1, 6))
    finest_level: int = param(0, 'image features: finest level refined (0 = working '
                              'resolution, 1 = half, ...)', range=(0, 5))
    iterations: int = param(5, 'LM iterations per level (fixed budget, unrolled)',
                            range=(1, 100))
    lambda0: float = param(0.01, 'initial LM damping of every level', range=(0.0, 1e6))
    huber: float = param(0.25, 'Huber threshold on the feature residual norm',
                         range=(1e-6, 1e3))
    min_depth: float = param(0.001, 'points nearer than this are ignored (odometry unit)',
                             range=(0.0, 1e3))
    min_valid_fraction: float = param(0.1, 'VO: keep the unrefined pose when fewer pixels '
                                      'are valid', range=(0.0, 1.0))
    max_rotation_deg: float = param(2.0, 'VO: larger rotation corrections are rejected (deg)',
                                    range=(0.0, 180.0))
    max_translation_ratio: float = param(0.5, 'VO: larger translation corrections, relative '
                                         'to |t|, are rejected', range=(0.0, 100.0))
    feature_dim: int = param(16, 'training: channels of the learned refinement features',
                             range=(1, 256))
    w_pose_distill: float = param(0.1, 'training: weight pulling the regressed pose to the '
                                  'refined one (pose_distill_loss)', range=(0.0, 1e4))


@dataclasses.dataclass
class GeometryConfig:
    """The geometric solver behind every pose."""

    ransac: RansacConfig = dataclasses.field(default_factory=RansacConfig)
    triangulation: TriangulationConfig = dataclasses.field(default_factory=TriangulationConfig)
    scale: ScaleConfig = dataclasses.field(default_factory=ScaleConfig)
    pnp: PnPConfig = dataclasses.field(default_factory=PnPConfig)
    degeneracy: DegeneracyConfig = dataclasses.field(default_factory=DegeneracyConfig)
    refine: RefineConfig = dataclasses.field(default_factory=RefineConfig)


@dataclasses.dataclass
class VOConfig:
    """Per-frame visual odometry (vo/)."""

    num_matches: int = param(5000, 'correspondences per frame pair', range=(8, 10**6))
    top_ratio: float = param(0.3, 'share of best-scored pixels matches are drawn from (0 would '
                             'leave no candidate: every frame LOST)', range=(0.01, 1.0))
    select_stride: int = param(2, 'with the KLT refinement of the matches (vo.klt_window > 0) '
                               'only every n-th pixel (both axes) of the dense flow proposes '
                               'matches; each is refined at full resolution (1 = every pixel)',
                               range=(1, 8))
    min_flow_px: float = param(5.0, 'mean flow below this uses PnP instead of E (px)',
                               range=(0.0, 1000.0))
    device: str = param('auto', 'torch device: auto (cuda if available), cpu, cuda, cuda:N')
    resize_interpolation: str = param('area', 'interpolation when the input is shrunk to the '
                                      'working size: area (cv2.INTER_AREA) or linear '
                                      '(cv2.INTER_LINEAR, what the original TrianFlow and its '
                                      'released checkpoints used)', choices=('area', 'linear'))
    resolution: str = param('auto', 'working resolution: network (data.img_height x '
                            'data.img_width, K rescaled), native (input size), aspect (the '
                            'input scaled to about data.img_height x data.img_width pixels, '
                            'its aspect ratio kept; not with networks) or auto (aspect for the '
                            'classical pipeline, but the network size where the aspect ratios '
                            'differ by at most 5 % (KITTI); network with a network)',
                            choices=('auto', 'network', 'native', 'aspect'))
    flow_provider: str = param('dis', 'flow: dis (OpenCV DIS dense flow, no weights), klt '
                               '(sparse: Shi-Tomasi corners of the keyframe tracked by '
                               'Lucas-Kanade, vo.klt_*, no weights; dense DIS runs only where '
                               'a dense map is needed: depth output, depth net, refinement) or '
                               'net (checkpoint)', choices=('dis', 'klt', 'net'))
    depth_provider: str = param('none', 'depth: none (scale propagated by triangulation) or '
                                'net (checkpoint depth net gives the scale)',
                                choices=('none', 'net'))
    checkpoint: str = param('', 'checkpoint of the learned networks (flow and/or depth)')
    dis_preset: str = param('medium', 'OpenCV DIS preset of the classical flow',
                            choices=('ultrafast', 'fast', 'medium'))
    grid_rows: int = param(4, 'rows of the grid that spreads the matches', range=(1, 64))
    grid_cols: int = param(8, 'columns of the grid that spreads the matches', range=(1, 64))
    photometric_threshold: float = param(0.15, 'max mean |I1 - warped I2| of a match in [0, 1] '
                                         'intensity (0 disables)', range=(0.0, 1.0))
    min_image_std: float = param(0.02, 'grey-level std below which a frame is untrackable '
                                 '(black, covered)', range=(0.0, 1.0))
    min_matches: int = param(100, 'fewer valid matches -> tracking lost', range=(8, 10**6))
    min_valid_ratio: float = param(0.0, 'share of pixels with a consistent match (D_fb < 0.5 '
                                   'px) below which the frame is lost (0: only the absolute '
                                   'count vo.min_matches; a share failed fast hand-held '
                                   'motion with thousands of good matches)', range=(0.0, 1.0))
    zncc_threshold: float = param(0.8, 'a match is photometrically consistent when the '
                                  'zero-normalised cross-correlation of its 7x7 patches is at '
                                  'least this', range=(-1.0, 1.0))
    min_zncc_ratio: float = param(0.5, 'share of the textured matches that must be '
                                  'photometrically consistent (vo.zncc_threshold), else the '
                                  'frame is lost: an unrelated or corrupted image (0 disables)',
                                  range=(0.0, 1.0))
    keyframe_rotation_deg: float = param(5.0, 'a new keyframe when the rotation from the '
                                         'keyframe exceeds this (deg), whatever the parallax',
                                         range=(0.0, 180.0))
    keyframe_parallax_px: float = param(3.0, 'a new keyframe when the median rotation-'
                                        'compensated parallax of the matches reaches this '
                                        '(px at the working resolution)', range=(0.0, 1e4))
    keyframe_inlier_ratio: float = param(0.7, 'a new keyframe when the inliers fall below this '
                                         "share of the keyframe's first pair (tracking "
                                         'quality)', range=(0.0, 1.0))
    pose_recheck: bool = param(True, 'a second E-RANSAC with its own draws and no early stop '
                               'before vo.pose_recheck_sets five-point sets, where the first '
                               "E's translation is sideways (vo.pose_recheck_min_angle_deg); "
                               'its E replaces the first where it fits the matches with '
                               'parallax (>= vo.sign_parallax_px under the rotation of the '
                               'first) better: at a short baseline the early stop can return '
                               'the rotation-translation ambiguity (~7 ms a checked pair at '
                               '832x256)')
    pose_recheck_sets: int = param(16, 'the second E-RANSAC of vo.pose_recheck draws at '
                                   'least this many five-point sets before its adaptive stop '
                                   '(at most geometry.ransac.num_hypotheses / 4)',
                                   range=(1, 10**5))
    pose_recheck_min_angle_deg: float = param(
        30.0, 'vo.pose_recheck runs only where the first E translates at least this far from '
        'the optical axis (deg): the rotation-translation ambiguity confuses a sideways '
        'translation with a rotation, not a forward one (0: every pair)', range=(0.0, 90.0))
    sign_parallax_px: float = param(2.0, 'parallax (focal x ray angle, px) a match needs to '
                                    "vote on the sign of E's translation", range=(0.0, 1e4))
    pose_similar_ratio: float = param(0.7, 'E candidates with more than this share of the '
                                      "winner's votes make the translation unobservable",
                                      range=(0.0, 1.0))
    pose_min_votes: int = param(30, 'fewer parallax votes for the winning E candidate: the '
                                'translation is unobservable (rotation or PnP)',
                                range=(1, 10**6))
    pose_min_vote_share: float = param(0.05, 'fewer parallax votes for the winning E '
                                       'candidate than this share of the E inliers: the '
                                       'translation is unobservable (a rotation: only junk '
                                       'matches get parallax)', range=(0.0, 1.0))
    planar_pnp: bool = param(True, 'when GRIC finds a dominant plane (a homography explains '
                             'the matches better than E) and the keyframe has structure, the '
                             'pose comes from PnP on it (E is ill-conditioned on a plane); '
                             'classical pipeline only (no depth network)')
    planar_max_off_plane: float = param(
        0.15, 'a PLANAR pair goes to PnP only when at most this share of its E inliers lies '
        'off the homography (one plane: 0.01-0.09 on vamr_checkerboard; a road under facades '
        '0.16-0.28 on the synthetic highway, where PnP on the far map was worse than E)',
        range=(0.0, 1.0))
    scale_min_parallax_px: float = param(1.0, 'triangulated points need this parallax (px) to '
                                         'enter the scale fit', range=(0.0, 1e4))
    klt_window: int = param(7, 'Lucas-Kanade window (px) refining every match of the dense '
                            'flow (removes its bias at large displacements); 0 = off',
                            range=(0, 101))
    klt_max_fb_px: float = param(0.25, 'a Lucas-Kanade refined match is kept when LK from '
                                 'the current image comes back within this many px (at least; '
                                 'see vo.klt_fb_ratio)',
                                 range=(0.0, 100.0))
    klt_fb_ratio: float = param(0.04, 'the Lucas-Kanade round-trip bound grows to this share '
                                'of the match displacement (0 = fixed vo.klt_max_fb_px)',
                                range=(0.0, 1.0))
    klt_points: int = param(3000, 'points the sparse front end (vo.flow_provider klt) tracks '
                            "per frame: the keyframe's map points first, then its fresh "
                            'corners', range=(8, 10**6))
    klt_quality: float = param(0.001, 'a corner of the sparse front end needs this share of '
                               "the image's strongest Shi-Tomasi score (and vo.min_texture)",
                               range=(0.0, 1.0))
    klt_min_distance: float = param(3.0, 'corners of the sparse front end are local maxima '
                                    'within this radius (px) and keep this far from map '
                                    'points', range=(1.0, 1000.0))
    klt_fill: bool = param(True, 'a grid cell of the sparse front end with fewer corners than '
                           'its share is filled with textured pixels (vo.min_texture) drawn at '
                           'random (seeded)')
    klt_track_window: int = param(7, 'Lucas-Kanade window (px) of the sparse front end',
                                  range=(5, 101))
    klt_prior: str = param('dis', 'where Lucas-Kanade of the sparse front end starts: dis '
                           '(every point moved by a one-way OpenCV DIS flow of '
                           'vo.klt_prior_preset; LK then only refines, vo.klt_levels 0) or '
                           'motion (no dense flow: map points where the last motion puts '
                           'them, corners by the depth of the map points near them; use '
                           'vo.klt_levels 3 and vo.klt_track_window 9); the first pair and the '
                           'one after a LOST frame always start from the DIS flow',
                           choices=('dis', 'motion'))
    klt_prior_preset: str = param('fast', 'OpenCV DIS preset of the start of the sparse front '
                                  'end (vo.klt_prior); one way at 832x256: ~2 ms ultrafast, '
                                  '~4 ms fast, ~20 ms medium',
                                  choices=('ultrafast', 'fast', 'medium'))
    klt_levels: int = param(0, 'pyramid levels above the image of the sparse front end '
                            "(Lucas-Kanade's reach is about window x 2^levels px)",
                            range=(0, 8))
    min_texture: float = param(1e-4, 'fresh matches are drawn first where the smallest '
                               'structure-tensor eigenvalue over the KLT window reaches this '
                               '(grey in [0, 1]; 0 = no preference): KLT can follow them',
                               range=(0.0, 1.0))
    map_points: int = param(4000, 'most tracked map points a keyframe keeps (the structure the '
                            'scale is fitted to)', range=(0, 10**6))
    map_process_sigma: float = param(0.01, 'log-depth sigma added to a map point each time it '
                                     'is moved to a new keyframe', range=(0.0, 10.0))
    window_keyframes: int = param(0, 'keyframes of the sliding-window bundle adjustment of '
                                  'poses and point depths (0 or < 3: off)', range=(0, 100))
    window_points: int = param(1500, 'most points in the window adjustment (longest tracks '
                               'first)', range=(1, 10**6))
    window_iterations: int = param(5, 'Levenberg-Marquardt iterations of the window '
                                   'adjustment', range=(1, 100))
    window_outlier_px: float = param(3.0, 'map points whose reprojection error stays above '
                                     'this after the window adjustment are dropped (px)',
                                     range=(0.0, 1e4))
    map_fusion: bool = param(True, "fuse the new keyframe's depth (triangulation, the "
                             "previous keyframe's map, the depth network) in log depth; off: "
                             "the depth provider's depth or the triangulation alone")
    reanchor_lost_frames: int = param(
        5, 'after this many LOST frames in a row (failed pairs, not unusable images) the '
        'current frame becomes the keyframe at the last pose: a camera that turned into a new '
        'view recovers; 0: keep the keyframe until a frame matches it', range=(0, 10**6))
    output_depth_stride: int = param(
        2, 'the dense depth output, where only the output reads it (no depth network, no '
        'refinement), is computed on every n-th pixel of both axes and repeated (4x less work '
        'at 2); 1: every pixel', range=(1, 8))
    min_inlier_ratio: float = param(0.25, 'E or PnP inliers / matches below this -> rejected',
                                    range=(0.0, 1.0))
    classify_points: int = param(300, 'matches used by the motion classification (GRIC; '
                                 '300 and 1000 gave the same bench/vo_real.py results, 15 ms '
                                 'less per frame)', range=(16, 10**6))
    initial_scale: float = param(1.0, 'translation norm of the first pair without a depth '
                                 'provider (odometry unit)', range=(1e-6, 1e6))
    propagate_min_angle_deg: float = param(0.25, 'parallax below which a pixel gets no '
                                           'propagated (triangulated) depth (deg)',
                                           range=(0.0, 90.0))
    net_backend: str = param('auto', 'how the flow and depth networks run: auto (onnx on the '
                             'CPU when onnxruntime is installed, else eager), eager (torch), '
                             'onnx (ONNX Runtime, CPU only), compile (torch.compile), '
                             'channels_last; an unavailable backend, or one whose first output '
                             'differs from eager torch by more than 1e-4, falls back to eager '
                             'with a warning', choices=('auto', 'eager', 'onnx', 'compile',
                                                        'channels_last'))
    net_cache_dir: str = param('', 'folder of the exported ONNX models (empty: '
                               '$TRIANFLOW_CACHE_DIR or ~/.cache/trianflow_ros; memory: no '
                               'files); python -m trianflow_ros.vo.onnx_cache --clear empties it')


@dataclasses.dataclass
class Config:
    """The whole tree; ``load_config`` builds one from defaults, YAML files and overrides."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    flow_net: FlowNetConfig = dataclasses.field(default_factory=FlowNetConfig)
    depth_net: DepthNetConfig = dataclasses.field(default_factory=DepthNetConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    geometry: GeometryConfig = dataclasses.field(default_factory=GeometryConfig)
    vo: VOConfig = dataclasses.field(default_factory=VOConfig)


# --------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One leaf of the tree, for help output and ROS parameter declarations."""

    name: str
    value_type: type
    default: Any
    description: str
    bounds: Optional[Tuple[float, float]]
    choices: Optional[Tuple[Any, ...]]


def _leaf_type(f: dataclasses.Field) -> type:
    return type(f.default)


def field_specs(cfg: Any = None, prefix: str = '') -> List[FieldSpec]:
    """
    List every leaf field as a FieldSpec with its dotted name.

    :param cfg: a config (section) instance; defaults to ``Config()``.
    :param prefix: dotted prefix for the names.
    """
    cfg = Config() if cfg is None else cfg
    specs = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = prefix + f.name
        if dataclasses.is_dataclass(value):
            specs.extend(field_specs(value, name + '.'))
        else:
            specs.append(FieldSpec(name, _leaf_type(f), value, f.metadata.get('help', ''),
                                   f.metadata.get('range'), f.metadata.get('choices')))
    return specs


def to_dict(cfg: Any) -> Dict[str, Any]:
    """Nested plain dict of a config (section)."""
    return dataclasses.asdict(cfg)


def flatten(cfg: Any) -> Dict[str, Any]:
    """Map of dotted names to values, e.g. ``{'geometry.ransac.threshold_px': 0.5, ...}``."""
    return {s.name: s.default for s in field_specs(cfg)}


# --------------------------------------------------------------------------------------------
# Validation and construction
# --------------------------------------------------------------------------------------------

def _coerce(name: str, value: Any, spec_type: type) -> Any:
    """Convert a YAML/override value to the field's type, or raise ConfigError."""
    if spec_type is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{name} must be true or false, got {value!r}')
    if spec_type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f'{name} must be an integer, got {value!r}')
        return value
    if spec_type is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{name} must be a number, got {value!r}')
        if not math.isfinite(float(value)):
            raise ConfigError(f'{name} must be finite, got {value!r}')
        return float(value)
    if spec_type is str:
        if value is None:
            return ''
        if not isinstance(value, str):
            raise ConfigError(f'{name} must be a string, got {value!r}')
        return value
    return value


def validate(cfg: Any, prefix: str = '') -> None:
    """
    Check every leaf against its type, range and choices.

    :raises ConfigError: naming the first offending dotted key, its value and what is allowed.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = prefix + f.name
        if dataclasses.is_dataclass(value):
            validate(value, name + '.')
            continue
        expected = _leaf_type(f)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(cfg, f.name, value)
        if type(value) is not expected:
            raise ConfigError(f'{name} must be of type {expected.__name__}, got {value!r}')
        rng, choices = f.metadata.get('range'), f.metadata.get('choices')
        if rng is not None and not (rng[0] <= value <= rng[1]):
            raise ConfigError(f'{name} = {value!r} is out of range [{rng[0]}, {rng[1]}]')
        if choices is not None and value not in choices:
            raise ConfigError(f'{name} = {value!r} is not one of {list(choices)}')


def _unknown_key(name: str, candidates: Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    return ConfigError(f'unknown config key {name!r}{hint}')


def _merge(cfg: Any, data: Dict[str, Any], prefix: str = '') -> None:
    """Apply a nested dict onto a config in place, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f'{prefix.rstrip(".") or "config"} must be a mapping, got {data!r}')
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        name = prefix + str(key)
        if key not in fields:
            raise _unknown_key(name, [prefix + k for k in fields])
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, name + '.')
        else:
            setattr(cfg, key, _coerce(name, value, _leaf_type(fields[key])))


def from_dict(data: Dict[str, Any]) -> Config:
    """Build a validated Config from a nested dict (missing keys keep their defaults)."""
    cfg = Config()
    _merge(cfg, data or {})
    validate(cfg)
    return cfg


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """
    Set one leaf by its dotted name, e.g. ``train.lr``.

    :raises ConfigError: for unknown keys (with a suggestion) and bad values.
    """
    names = {s.name for s in field_specs(cfg)}
    if dotted not in names:
        raise _unknown_key(dotted, names)
    *path, leaf = dotted.split('.')
    nested: Dict[str, Any] = {leaf: value}
    for key in reversed(path):
        nested = {key: nested}
    _merge(cfg, nested)


def parse_override(text: str) -> Tuple[str, Any]:
    """Split ``a.b=value``; the value is parsed as YAML (``1e-4``, ``true``, ``kitti``)."""
    if '=' not in text:
        raise ConfigError(f'override {text!r} must look like section.key=value')
    key, raw = text.split('=', 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ''
    except yaml.YAMLError as e:
        raise ConfigError(f'override {text!r}: cannot parse the value: {e}') from e
    return key.strip(), value


def _read_yaml(path: Path, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """Read a config YAML, resolving its optional ``base`` (relative to the file) first."""
    path = Path(path).expanduser().resolve()
    if path in seen:
        raise ConfigError(f'config files include each other in a loop: {path}')
    if not path.is_file():
        raise ConfigError(f'config file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'config file {path} is not valid YAML: {e}') from e
    if not isinstance(data, dict):
        raise ConfigError(f'config file {path} must hold a mapping of sections')
    base = data.pop('base', None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / base, seen + (path,))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: Dict[str, Any], src: Dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


def load_config(path: Optional[Union[str, Path]] = None,
                overrides: Iterable[str] = ()) -> Config:
    """
    Build the resolved configuration: defaults, then the YAML file, then ``a.b=value`` overrides.

    :param path: a YAML file (may extend another via ``base: other.yaml``), or None.
    :param overrides: strings ``section.key=value``.
    :raises ConfigError: naming the file or key at fault.
    """
    cfg = Config()
    if path is not None:
        _merge(cfg, _read_yaml(Path(path)))
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def dump_yaml(cfg: Any) -> str:
    """YAML text of a config; ``load_config`` of it gives an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Any, path: Union[str, Path], overwrite: bool = False) -> Path:
    """
    Write a config as YAML.

    :param overwrite: refuse to replace an existing file unless True.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f'{path} exists; pass overwrite=True (or choose another path)')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml(cfg))
    return path


def describe(cfg: Optional[Config] = None) -> str:
    """Human-readable list of every field: name, value, range/choices and help."""
    lines = []
    for s in field_specs(cfg):
        allowed = ''
        if s.bounds is not None:
            allowed = f' [{s.bounds[0]}, {s.bounds[1]}]'
        elif s.choices is not None:
            allowed = ' {' + ', '.join(map(str, s.choices)) + '}'
        lines.append(f'{s.name} = {s.default!r}{allowed}\n    {s.description}')
    return '\n'.join(lines)


def add_config_arguments(parser: Any) -> None:
    """Add ``--config FILE`` and repeatable ``--set a.b=v`` to an argparse parser."""
    parser.add_argument('--config', default=None, help='YAML config file (see config/)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE', help='override one field, e.g. --set train.lr=3e-4')


def config_from_args(args: Any) -> Config:
    """Resolve the config from the argparse results of ``add_config_arguments``."""
    return load_config(args.config, args.overrides)


def main(argv: Optional[List[str]] = None) -> int:
    """``trianflow-config``: print the resolved configuration or the field reference."""
    import argparse
    parser = argparse.ArgumentParser(prog='trianflow-config', description=main.__doc__)
    add_config_arguments(parser)
    parser.add_argument('--fields', action='store_true', help='list every field with its help')
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        parser.exit(2, f'trianflow-config: error: {e}\n')
    print(describe(cfg) if args.fields else dump_yaml(cfg), end='' if not args.fields else '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
