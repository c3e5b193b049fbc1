"""
Correspondences of a VO pair from dense flow: validity, spatially spread sampling, undistortion.

``select_matches`` turns the forward and backward flow of (keyframe, current) into matches:

- valid = visible x forward-backward consistent (``flow_valid_mask``) x photometrically
  consistent; score = TrianFlow's M_s = valid / (0.1 + D_fb);
- the image is cut into ``vo.grid_rows x vo.grid_cols`` cells and each cell draws its share of
  ``vo.num_matches`` without replacement from its best ``vo.top_ratio`` pixels (the paper's
  top-share sampling, spatially spread like DF-VO's local best-N);
- the keyframe's map points (:class:`~trianflow_ros.vo.state.MapPoints`) are followed along
  the flow first, so the structure that holds the scale is matched in every frame;
- every match is refined by Lucas-Kanade (:func:`klt_refine`, ``vo.klt_window``): dense flow
  is biased short at large displacements, which made the propagated scale drift;
- the raw pixels are undistorted (lens distortion, :mod:`~trianflow_ros.geometry.distortion`)
  into the pinhole pixels every geometry function expects.

It also counts the pixels whose match is consistent to :data:`GOOD_FB_PX`, and checks the
final matches photometrically (:func:`patch_zncc`): an unrelated or corrupted image gets
smooth, partly consistent flow from DIS, and Lucas-Kanade converges to *some* nearby minimum
both ways, but the patches of such matches do not correlate (measured: a median ZNCC of
0.2-0.4 between unrelated KITTI, TUM and VAMR frames against 0.95-0.99 for real pairs at
stride 1-6), so the share of correlated matches tells a real match from none.
"""

from dataclasses import dataclass
import math
from typing import Optional, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from trianflow_ros.config import Config
from trianflow_ros.geometry.checks import all_finite
from trianflow_ros.geometry.flow_masks import (fb_consistency_from_residual,
                                               occlusion_mask, sample_correspondences,
                                               score_map)
from trianflow_ros.geometry.warp import sample_at, strided_warp

#: Forward-backward difference (px) of a "consistent" match (the count behind LOST).
GOOD_FB_PX = 0.5
#: Half size of the patches of :func:`patch_zncc` (7x7).
ZNCC_RADIUS = 3
#: At most this many matches of a pair get the patch check (:func:`zncc_check`).
ZNCC_CHECK_POINTS = 1000
#: Grey-level standard deviation (in [0, 1]) below which a patch is too flat to correlate.
ZNCC_MIN_STD = 2.0 / 255.0


@dataclass(frozen=True)
class Matches:
    """
    Matches of one pair (B = 1).

    :ivar x1: (1, N, 2) raw pixels in the keyframe (where its maps are read).
    :ivar x2: (1, N, 2) raw pixels in the current image.
    :ivar u1: (1, N, 2) pinhole (undistorted) pixels of x1, float64 (the geometry's input).
    :ivar u2: (1, N, 2) pinhole pixels of x2, float64.
    :ivar num_consistent: pixels of the keyframe whose match is consistent to GOOD_FB_PX.
    :ivar consistent_ratio: that count over the number of pixels.
    :ivar track_index: (T,) int64: the first T matches are the keyframe's map points with
        these indices (the rest are fresh samples).
    :ivar zncc_ratio: share of the textured matches whose patches correlate
        (``vo.zncc_threshold``); 1.0 when not checked.
    :ivar num_zncc_checked: how many matches were textured enough to check.
    """

    x1: torch.Tensor
    x2: torch.Tensor
    u1: torch.Tensor
    u2: torch.Tensor
    num_consistent: int
    consistent_ratio: float
    track_index: torch.Tensor
    zncc_ratio: float = 1.0
    num_zncc_checked: int = 0

    @property
    def num_tracked(self) -> int:
        """Return T, the number of leading matches that are keyframe map points."""
        return int(self.track_index.numel())

    @property
    def count(self) -> int:
        """Return N."""
        return int(self.x1.shape[1])


def match_validity(img1: torch.Tensor, img2: torch.Tensor, flow_12: torch.Tensor,
                   flow_21: torch.Tensor, cfg: Config, stride: int = 1
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Return the valid mask and the score of the pixels of image 1.

    :param img1: (1, 3, H, W) image 1 in [0, 1].
    :param img2: (1, 3, H, W) image 2.
    :param flow_12: (1, 2, H, W); non-finite = no match.
    :param flow_21: (1, 2, H, W).
    :param cfg: ``flow_net.fb_alpha/fb_beta`` and ``vo.photometric_threshold`` are used.
    :param stride: 1: every pixel; s > 1: only the pixels (s i, s j), the values those of
        ``stride=1`` there (the visibility still splats every pixel of ``flow_21``).
    :return: valid (1, 1, H', W') bool and the score M_s (1, 1, H', W') (0 where invalid),
        H' = ceil(H / s), W' = ceil(W / s).
    """
    if stride < 1:
        raise ValueError(f'stride must be >= 1, got {stride}')
    finite = all_finite(flow_12) and all_finite(flow_21)
    f12, f21 = flow_12, flow_21
    if not finite:
        fin1 = torch.isfinite(flow_12).all(1, keepdim=True)[..., ::stride, ::stride]
        fin2 = torch.isfinite(flow_21).all(1, keepdim=True)
        f12 = torch.nan_to_num(flow_12, nan=0.0, posinf=0.0, neginf=0.0)
        f21 = torch.nan_to_num(flow_21, nan=0.0, posinf=0.0, neginf=0.0)
    visible = occlusion_mask(f21)[..., ::stride, ::stride]
    f12 = f12[..., ::stride, ::stride]
    img1 = img1[..., ::stride, ::stride]
    # everything read at x + flow_12(x) on one sampling grid (the channels are independent:
    # the same values as one warp each): flow_21 for the F-B residual (fb_residual), the
    # finite mask of flow_21 (all ones when finite: then it is the share of the bilinear
    # footprint inside image 2, which removes matches at and beyond its border), image 2 for
    # the photometric check
    thr = cfg.vo.photometric_threshold
    inside = (f21.new_ones(1, 1, 1, 1).expand(f21.shape[0], 1, *f21.shape[2:]) if finite
              else fin2.to(f21.dtype))
    parts = [f21, inside] + ([img2.to(f21.dtype)] if thr > 0 else [])
    warped = strided_warp(parts, f12, stride)
    residual = (warped[:, :2] + f12).abs()
    # flow_valid_mask and fb_difference, sharing the one F-B residual
    valid = (visible * fb_consistency_from_residual(
        f12, residual, alpha=cfg.flow_net.fb_alpha, beta=cfg.flow_net.fb_beta)) > 0.5
    valid = valid & (warped[:, 2:3] > 0.999)
    if not finite:
        valid = valid & fin1
    if thr > 0:
        image_2 = warped[:, 3:3 + img2.shape[1]]
        valid = valid & ((image_2 - img1).abs().mean(1, keepdim=True) < thr)
    score = score_map(valid.float(), residual.mean(dim=1, keepdim=True))
    return valid, torch.where(valid, score, torch.zeros_like(score))


def _draw(score: torch.Tensor, flow_12: torch.Tensor, cfg: Config,
          generator: Optional[torch.Generator] = None, stride: int = 1
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Draw spatially spread, flow-consistent matches (see the module docstring).

    :param score: (1, 1, H, W) the score M_s of image 1's pixels (0 = invalid).
    :param flow_12: (1, 2, H, W).
    :param cfg: the configuration.
    :param generator: torch.Generator on the flow's device.
    :param stride: the maps hold the pixels (s i, s j) of the image (their flow in full-size
        pixels): the matches are returned in full-size pixels.
    :return: raw x1, x2 of shape (1, N, 2) (only real matches; N may be 0).
    """
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
    if stride > 1:
        x1, x2 = x1 * stride, x1 * stride + (x2 - x1)
    return x1[None], x2[None]


def klt_refine(img1: torch.Tensor, img2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
               window: int, *, max_fb_px: Union[float, np.ndarray] = 0.25,
               max_shift_px: float = 2.0
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Refine matches of a dense flow by Lucas-Kanade on the images (OpenCV pyramidal KLT).

    Dense flow is regularised: DIS underestimates large displacements (measured on synthetic
    frames at 256x832: 3-30 % short beyond 32 px), and a VO that triangulates points first
    seen far (small flow) and later near (large flow) then drifts in scale. A local LK step
    started at the flow's match has no such bias. The refined match must come back to x1
    within ``max_fb_px`` by LK from image 2 and may move at most ``max_shift_px`` from the
    flow's match.

    :param img1: (1, 3, H, W) image 1 in [0, 1].
    :param img2: (1, 3, H, W) image 2.
    :param x1: (1, N, 2) pixels in image 1.
    :param x2: (1, N, 2) their matches in image 2 (the flow's).
    :param window: LK window size (px, odd).
    :param max_fb_px: forward-backward bound of a kept match: a number, or one per match
        (N,) (``select_matches`` lets it grow with the displacement, ``vo.klt_fb_ratio``).
    :param max_shift_px: largest change of x2.
    :return: refined x2 (1, N, 2) (x1's dtype and device) and the kept mask (N,) bool.
    """
    from trianflow_ros.vo.providers import to_grey_uint8   # providers import cv2 anyway
    n = int(x1.shape[1])
    if n == 0:
        return x2, torch.zeros(0, dtype=torch.bool, device=x1.device)
    g1, g2 = to_grey_uint8(img1), to_grey_uint8(img2)
    p1 = x1[0].detach().cpu().numpy().astype(np.float32).reshape(-1, 1, 2)
    p2 = x2[0].detach().cpu().numpy().astype(np.float32).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 0.01)
    size = (int(window), int(window))
    q2, st, _ = cv2.calcOpticalFlowPyrLK(g1, g2, p1, p2.copy(), winSize=size, maxLevel=0,
                                         flags=cv2.OPTFLOW_USE_INITIAL_FLOW, criteria=crit)
    q1, st2, _ = cv2.calcOpticalFlowPyrLK(g2, g1, q2.copy(), p1.copy(), winSize=size,
                                          maxLevel=0, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                          criteria=crit)
    ok = ((st[:, 0] == 1) & (st2[:, 0] == 1)
          & (np.linalg.norm(q1 - p1, axis=2)[:, 0] < max_fb_px)
          & (np.linalg.norm(q2 - p2, axis=2)[:, 0] < max_shift_px)
          & np.isfinite(q2).all(axis=2)[:, 0])
    h, w = g2.shape
    ok = ok & (q2[:, 0, 0] >= 0) & (q2[:, 0, 0] <= w - 1) & (q2[:, 0, 1] >= 0) \
        & (q2[:, 0, 1] <= h - 1)
    refined = torch.from_numpy(np.ascontiguousarray(q2[:, 0])).to(x1.device, x1.dtype)[None]
    return refined, torch.from_numpy(ok).to(x1.device)


def patch_zncc(img1: torch.Tensor, img2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
               radius: int = ZNCC_RADIUS) -> Tuple[np.ndarray, np.ndarray]:
    """
    Zero-normalised cross-correlation of the grey patches around matched pixels.

    Patches are read with bilinear interpolation at sub-pixel positions (one ``cv2.remap``
    for all matches); ZNCC is invariant to gain and offset, so exposure changes do not count.

    :param img1: (1, 3, H, W) image 1 in [0, 1].
    :param img2: (1, 3, H, W) image 2.
    :param x1: (1, N, 2) pixels in image 1.
    :param x2: (1, N, 2) their matches in image 2.
    :param radius: patches are (2 radius + 1)^2.
    :return: zncc (N,) float32 in [-1, 1] and textured (N,) bool: image 1's patch has a
        grey-level std of at least :data:`ZNCC_MIN_STD` (a flat patch's ZNCC is noise).
    """
    from trianflow_ros.vo.providers import to_grey_uint8
    n = int(x1.shape[1])
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    r = np.arange(-radius, radius + 1, dtype=np.float32)
    off_u, off_v = (o.reshape(1, -1) for o in np.meshgrid(r, r))              # (1, P) each

    def patches(image: torch.Tensor, x: torch.Tensor) -> np.ndarray:
        grey = to_grey_uint8(image).astype(np.float32) / 255.0
        xy = x[0].detach().cpu().numpy().astype(np.float32)                   # (N, 2)
        # the sample maps built contiguous (N, P), not sliced out of an (N, P, 2) array
        return cv2.remap(grey, xy[:, :1] + off_u, xy[:, 1:] + off_v, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    a, b = patches(img1, x1), patches(img2, x2)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    va, vb = (a * a).sum(1), (b * b).sum(1)
    zncc = (a * b).sum(1) / np.sqrt(np.maximum(va * vb, 1e-20))
    textured = np.sqrt(va / a.shape[1]) >= ZNCC_MIN_STD
    return zncc.astype(np.float32), textured


def undistort_matches(x1: torch.Tensor, x2: torch.Tensor, index: torch.Tensor, undistort
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                 torch.Tensor]:
    """
    Undistort raw matches into pinhole pixels; drop those the lens model cannot invert.

    :param x1: (1, N, 2) raw pixels in image 1; ``x2`` their matches.
    :param index: (T,) the map-point indices of the first T matches (kept in step).
    :param undistort: raw -> pinhole pixels (None: pinhole images, u = x).
    :return: x1, x2, u1, u2 (1, M, 2) and the index of the kept map points.
    """
    if undistort is None or x1.shape[1] == 0:
        return x1, x2, x1, x2, index
    u1, u2 = undistort(x1), undistort(x2)
    ok = (torch.isfinite(u1).all(-1) & torch.isfinite(u2).all(-1))[0]
    if not bool(ok.all()):
        index = index[ok[:index.numel()]]
        x1, x2, u1, u2 = x1[:, ok], x2[:, ok], u1[:, ok], u2[:, ok]
    return x1, x2, u1, u2, index


def zncc_check(img1: torch.Tensor, img2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
               cfg: Config) -> Tuple[float, int]:
    """
    Return the share of correlated patches among the textured matches, and how many were seen.

    At most :data:`ZNCC_CHECK_POINTS` matches, evenly spaced in the list (every cell and the
    map points), are checked: the share is a proportion (standard error <= 1.6 % at 1000),
    and real and unrelated pairs lie far apart (0.95-0.99 against 0.2-0.4 median ZNCC).
    ``vo.min_zncc_ratio`` 0 turns the check off: (1.0, 0).

    :param img1: (1, 3, H, W) image 1; ``img2`` image 2.
    :param x1: (1, N, 2) raw pixels in image 1; ``x2`` their matches.
    :param cfg: ``vo.min_zncc_ratio`` and ``vo.zncc_threshold``.
    """
    n = int(x1.shape[1])
    if cfg.vo.min_zncc_ratio <= 0 or n == 0:
        return 1.0, 0
    if n > ZNCC_CHECK_POINTS:
        pick = torch.linspace(0, n - 1, ZNCC_CHECK_POINTS, device=x1.device).round().long()
        x1, x2 = x1[:, pick], x2[:, pick]
    zncc, textured = patch_zncc(img1, img2, x1, x2)
    checked = int(textured.sum())
    if not checked:
        return 1.0, 0
    return float((zncc[textured] >= cfg.vo.zncc_threshold).mean()), checked


def texture_map(image: torch.Tensor, window: int) -> torch.Tensor:
    """
    Smallest eigenvalue of the grey structure tensor over a window (Shi-Tomasi), per pixel.

    Lucas-Kanade can only follow a patch whose gradients span two directions; the value is
    that of ``cv2.cornerMinEigenVal`` on the grey image in [0, 1] with a Sobel aperture of 3
    (a gradient of one grey level per pixel gives about 1e-5).

    :param image: (1, 3, H, W) RGB in [0, 1].
    :param window: the averaging window (px; the KLT window).
    :return: (1, 1, H, W) float32 on the image's device.
    """
    from trianflow_ros.vo.providers import to_grey_uint8
    grey = to_grey_uint8(image).astype(np.float32) / 255.0
    block = max(3, int(window) | 1)
    eig = cv2.cornerMinEigenVal(grey, block, 3)
    return torch.from_numpy(eig)[None, None].to(image.device)


def track_points(x: torch.Tensor, flow_12: torch.Tensor, valid_1: Optional[torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Follow points of image 1 into image 2 along the flow.

    :param x: (1, M, 2) raw pixels in image 1.
    :param flow_12: (1, 2, H, W) flow of image 1 into image 2.
    :param valid_1: (1, 1, H, W) bool, pixels of image 1 with a trusted match (None: all).
    :return: x2 (1, M, 2) (x's dtype) and the kept mask (M,) bool: the nearest pixel is
        valid, the flow is finite and x2 lies inside image 2.
    """
    _, _, h, w = flow_12.shape
    if x.shape[1] == 0:
        return x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device)
    f = sample_at(torch.nan_to_num(flow_12).to(x.dtype), x, 'zeros')[0]          # (M, 2)
    x2 = x[0] + f
    col = x[0, :, 0].round().long().clamp(0, w - 1)
    row = x[0, :, 1].round().long().clamp(0, h - 1)
    ok = torch.isfinite(x2).all(-1)
    if valid_1 is not None:
        ok = ok & valid_1[0, 0][row, col]
    ok = ok & (x2[:, 0] >= 0) & (x2[:, 0] <= w - 1) & (x2[:, 1] >= 0) & (x2[:, 1] <= h - 1)
    return x2[None], ok


#: Candidates (top-share pixels) per requested match below which a stride is not used.
CANDIDATES_PER_MATCH = 3


def proposal_stride(cfg: Config, hw: Tuple[int, int]) -> int:
    """
    Return the stride of the pixels that propose KLT-refined matches.

    With the KLT refinement the dense maps only propose candidates, each refined at full
    resolution, so every ``vo.select_stride``-th pixel (both axes) proposes, as long as the top
    share of them still holds :data:`CANDIDATES_PER_MATCH` candidates per requested match
    (832x256, 5000 matches, top 30 %: 16 000 candidates at stride 2); otherwise the largest
    smaller stride that does, down to every pixel (a 64x192 network input: always 1; at
    stride 2 there it kept ~870 of 5000 matches, most of them the weak ones of each cell).

    :param cfg: ``vo.select_stride``, ``vo.top_ratio``, ``vo.num_matches``.
    :param hw: (H, W) of the flow.
    """
    h, w = hw
    for s in range(max(int(cfg.vo.select_stride), 1), 1, -1):
        candidates = cfg.vo.top_ratio * math.ceil(h / s) * math.ceil(w / s)
        if candidates >= CANDIDATES_PER_MATCH * cfg.vo.num_matches:
            return s
    return 1


def select_matches(img1: torch.Tensor, img2: torch.Tensor, flow_12: torch.Tensor,
                   flow_21: torch.Tensor, cfg: Config, undistort=None,
                   generator: Optional[torch.Generator] = None,
                   tracked: Optional[torch.Tensor] = None, klt_window: Optional[int] = None
                   ) -> Matches:
    """
    Select the matches of a pair, refine and undistort them (see the module docstring).

    :param img1: (1, 3, H, W) keyframe image.
    :param img2: (1, 3, H, W) current image.
    :param flow_12: (1, 2, H, W) keyframe -> current flow.
    :param flow_21: (1, 2, H, W) current -> keyframe flow.
    :param cfg: the configuration (``vo.klt_window``: 0 = no KLT refinement).
    :param undistort: raw -> pinhole pixels, (1, N, 2) float64 -> same (None: pinhole images).
    :param generator: torch.Generator on the flow's device.
    :param tracked: (1, M, 2) raw pixels of the keyframe's map points, followed first.
    :param klt_window: the KLT window (None: ``vo.klt_window``; 0: no refinement).
    :return: :class:`Matches`; matches that cannot be refined or undistorted are dropped.
    """
    klt = cfg.vo.klt_window if klt_window is None else int(klt_window)
    stride = proposal_stride(cfg, tuple(flow_12.shape[-2:])) if klt > 0 else 1
    valid_1, score = match_validity(img1, img2, flow_12, flow_21, cfg, stride)
    draw_score = score
    if klt > 0 and cfg.vo.min_texture > 0:
        # textured pixels first (KLT can follow them); the others only where a cell has too
        # few textured ones (a weak preference, never a gate: low-texture images still match)
        textured = texture_map(img1, klt)[..., ::stride, ::stride] >= cfg.vo.min_texture
        draw_score = score * torch.where(textured, 10.0, 1.0)
    x1, x2 = _draw(draw_score, flow_12[..., ::stride, ::stride], cfg, generator, stride)
    num_good = int((score > 1.0 / (0.1 + GOOD_FB_PX)).sum())
    ratio = num_good / max(score.numel(), 1)
    x1, x2 = x1.double(), x2.double()
    index = torch.zeros(0, dtype=torch.int64, device=x1.device)
    if tracked is not None and tracked.shape[1] > 0:
        # map points are checked by the KLT forward-backward test below, not by the dense
        # flow's (a point on a textured corner survives where the smooth flow disagrees)
        t2, ok = track_points(tracked.double().to(x1.device), flow_12,
                              None if klt > 0 else valid_1)
        index = torch.nonzero(ok).flatten()
        x1 = torch.cat((tracked.double().to(x1.device)[:, ok], x1), 1)
        x2 = torch.cat((t2[:, ok], x2), 1)
    if klt > 0:
        fb = cfg.vo.klt_max_fb_px
        if cfg.vo.klt_fb_ratio > 0:
            # LK's round trip error grows with the displacement (the patch deforms): a fixed
            # bound removed the near, fast-moving points first (see klt_refine)
            shift = (x2 - x1)[0].norm(dim=-1).cpu().numpy()
            fb = np.maximum(fb, cfg.vo.klt_fb_ratio * shift)
        refined, ok = klt_refine(img1, img2, x1, x2, klt, max_fb_px=fb)
        if int(ok.sum()) >= 2 * cfg.vo.min_matches:
            index = index[ok[:index.numel()]]
            x1, x2 = x1[:, ok], refined[:, ok]
        else:
            # too few matches can be refined (little texture, a coarse image): keep the
            # flow's match where KLT failed rather than lose the frame
            x2 = torch.where(ok[None, :, None], refined, x2)
    x1, x2, u1, u2, index = undistort_matches(x1, x2, index, undistort)
    zncc_ratio, checked = zncc_check(img1, img2, x1, x2, cfg)
    return Matches(x1=x1, x2=x2, u1=u1, u2=u2, num_consistent=num_good,
                   consistent_ratio=ratio, track_index=index, zncc_ratio=zncc_ratio,
                   num_zncc_checked=checked)
