"""
Correspondences of a VO pair from a sparse front end: Shi-Tomasi corners + pyramidal KLT.

The dense front end (:mod:`~trianflow_ros.vo.matches`) computes DIS flow both ways over every
pixel and then keeps a few thousand matches; this one (``vo.flow_provider: klt``) follows only
the points it needs, as mature VO front ends do (VINS-Mono, ORB-SLAM-style tracking):

- corners of the keyframe (:func:`detect_corners`): the smallest eigenvalue of the grey
  structure tensor (Shi-Tomasi, ``cv2.cornerMinEigenVal``), local maxima within
  ``vo.klt_min_distance``, at least ``vo.klt_quality`` x the image's strongest and
  ``vo.min_texture``; the image is cut into ``vo.grid_rows x vo.grid_cols`` cells and each
  keeps its share of the strongest (spread like the dense sampling; a cell short of corners
  is filled with random textured pixels, ``vo.klt_fill``); corners within
  ``vo.klt_min_distance`` of a map point are skipped (the map point is tracked anyway). They
  are detected once per keyframe (the odometry caches them);
- the points tracked (:func:`track_matches`): the keyframe's map points first (so that
  ``Matches.track_index`` indexes them, as in the dense front end), then fresh corners, up to
  ``vo.klt_points`` in all;
- (pyramidal) Lucas-Kanade keyframe -> current (``vo.klt_track_window``, ``vo.klt_levels``),
  started (``vo.klt_prior``) where a one-way DIS flow (``vo.klt_prior_preset``, ~4 ms at
  832x256) puts each point ('dis', the default: LK then only refines, as the dense front end's
  :func:`~trianflow_ros.vo.matches.klt_refine`) or where the last motion puts the map points
  ('motion', no dense flow at all; the odometry predicts, :func:`predict_pixels`);
- a blind backward Lucas-Kanade from the current image (started where the forward start puts
  it, not at the answer); a match is kept when the round trip returns within
  max(``vo.klt_max_fb_px``, ``vo.klt_fb_ratio`` x displacement) px (the rule of
  :func:`~trianflow_ros.vo.matches.klt_refine`: a fixed small bound removes the near,
  fast-moving points that fix the scale) and lands inside the image;
- undistortion into pinhole pixels, then the patch check (:func:`patch_zncc`) of the final
  matches.

LOST rule: ``Matches.num_consistent`` is the number of points whose round trip passed (the
dense front end counts pixels instead) and ``consistent_ratio`` its share of the points
attempted; the odometry compares the count with ``vo.min_matches`` (and the share with
``vo.min_valid_ratio``). LK converges to *some* minimum near its start for an unrelated image
too, and its round trip may come back, so the ZNCC share (``vo.min_zncc_ratio``) is what tells
such an image apart, as for the dense front end.
"""

import dataclasses
import math
from typing import Optional, Tuple

import cv2
import numpy as np
import torch

from trianflow_ros.config import Config
from trianflow_ros.vo.matches import Matches, undistort_matches, zncc_check

#: LK stops after this many iterations or a step below this many pixels.
_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)


@dataclasses.dataclass(frozen=True)
class CornerResponse:
    """
    What :func:`detect_corners` computes from the image alone (before the points to avoid).

    ``peak_y, peak_x, peak_score``: the local maxima of the Shi-Tomasi response above the
    texture threshold (away from the border); ``fill_y, fill_x``: the other textured pixels in
    a seeded random order (``vo.klt_fill``; empty otherwise); ``shape``: (H, W). It needs no
    VO state, so the odometry computes it for a frame while the geometry of that frame runs
    (on the other core) and selects the corners once the frame is the keyframe.
    """

    peak_y: np.ndarray
    peak_x: np.ndarray
    peak_score: np.ndarray
    fill_y: np.ndarray
    fill_x: np.ndarray
    shape: Tuple[int, int]


def corner_response(grey: np.ndarray, cfg: Config) -> CornerResponse:
    """
    Return the :class:`CornerResponse` of a (H, W) uint8 grey image.

    :param cfg: ``vo.klt_quality``, ``vo.klt_min_distance``, ``vo.min_texture``, ``vo.klt_fill``.
    """
    h, w = grey.shape
    v = cfg.vo
    empty = np.zeros(0, np.int64)
    if h < 8 or w < 8:
        return CornerResponse(empty, empty, np.zeros(0, np.float32), empty, empty, (h, w))
    eig = cv2.cornerMinEigenVal(grey.astype(np.float32) * (1.0 / 255.0), 3, 3)
    peak = cv2.dilate(eig, _disc(v.klt_min_distance))
    threshold = max(v.klt_quality * float(eig.max()), v.min_texture, 1e-12)
    border = 4                                  # LK and the 7x7 patch check need a margin
    textured = eig >= threshold
    textured[:border], textured[-border:] = False, False
    textured[:, :border], textured[:, -border:] = False, False
    peaks = textured & (eig >= peak)
    ys, xs = np.nonzero(peaks)
    fy = fx = empty
    if v.klt_fill:
        fy, fx = np.nonzero(textured & ~peaks)
        order = np.random.default_rng(0).permutation(fx.size)
        fy, fx = fy[order], fx[order]
    return CornerResponse(ys, xs, eig[ys, xs], fy, fx, (h, w))


def select_corners(resp: CornerResponse, cfg: Config, count: int,
                   avoid: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Return the corners of :func:`detect_corners` from a :class:`CornerResponse`.

    :param cfg: ``vo.klt_min_distance``, ``vo.klt_fill``, ``vo.grid_rows`` / ``vo.grid_cols``.
    """
    h, w = resp.shape
    v = cfg.vo
    if count <= 0 or h < 8 or w < 8:
        return np.zeros((0, 2))
    ys, xs, score = resp.peak_y, resp.peak_x, resp.peak_score
    fy, fx = resp.fill_y, resp.fill_x
    if avoid is not None and len(avoid):
        occupied = np.zeros((h, w), np.uint8)
        px = np.round(np.asarray(avoid, dtype=np.float64)).astype(np.int64)
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        occupied[px[inside, 1], px[inside, 0]] = 1
        free = cv2.dilate(occupied, _disc(v.klt_min_distance)) == 0
        keep = free[ys, xs]
        ys, xs, score = ys[keep], xs[keep], score[keep]
        fy, fx = _first_free(fy, fx, free, 2 * count if v.klt_fill else 0)
    if v.klt_fill and fx.size:
        # then textured pixels drawn at random (seeded), ranked after the peaks of their cell:
        # a cell with few corners (a checkerboard, a road) still gets its share
        fy, fx = fy[:2 * count], fx[:2 * count]
        ys, xs = np.r_[ys, fy], np.r_[xs, fx]
        score = np.r_[score, -1.0 - np.arange(fx.size, dtype=score.dtype)]
    if xs.size == 0:
        return np.zeros((0, 2))
    rows, cols = v.grid_rows, v.grid_cols
    cell = (ys * rows // h) * cols + (xs * cols // w)
    order = np.lexsort((-score, cell))                # by cell, strongest first
    cell = cell[order]
    start = np.searchsorted(cell, np.arange(rows * cols))
    rank = np.arange(cell.size) - start[cell]
    keep = order[rank < math.ceil(count / (rows * cols))]
    keep = keep[np.argsort(-score[keep], kind='stable')][:count]
    return np.stack((xs[keep], ys[keep]), -1).astype(np.float64)


def _first_free(fy: np.ndarray, fx: np.ndarray, free: np.ndarray, need: int):
    """
    Return the first ``need`` fill pixels (in their order) where ``free``, and no more.

    ``fy[free[fy, fx]][:need]`` without looking up all of them (~90 000 on a KITTI frame at
    832x256, of which 6000 are used): chunks of growing size until enough are found.
    """
    out_y, out_x, got, start, step = [], [], 0, 0, 2 * need
    while got < need and start < fy.size:
        cy, cx = fy[start:start + step], fx[start:start + step]
        keep = free[cy, cx]
        out_y.append(cy[keep])
        out_x.append(cx[keep])
        got += int(np.count_nonzero(keep))
        start += step
        step *= 2
    if not out_y:
        return fy[:0], fx[:0]
    return np.concatenate(out_y)[:need], np.concatenate(out_x)[:need]


def detect_corners(grey: np.ndarray, cfg: Config, count: int,
                   avoid: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Return Shi-Tomasi corners spread over the image (see the module docstring).

    :func:`select_corners` of :func:`corner_response`.

    :param grey: (H, W) uint8 grey image.
    :param cfg: ``vo.klt_quality``, ``vo.klt_min_distance``, ``vo.min_texture``,
        ``vo.grid_rows`` / ``vo.grid_cols`` are used.
    :param count: most corners returned (each grid cell gets ceil(count / cells)).
    :param avoid: (M, 2) pixels (e.g. the map points); corners within
        ``vo.klt_min_distance`` of them are skipped.
    :return: (K, 2) float64 pixel coordinates (x, y), K <= count: per cell the strongest
        corners, then (``vo.klt_fill``) random textured pixels; the corners first.
    """
    return select_corners(corner_response(grey, cfg), cfg, count, avoid)


def _disc(radius_px: float) -> np.ndarray:
    """Return the elliptic structuring element of a radius (at least 1 pixel)."""
    radius = max(int(round(radius_px)), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def predict_pixels(u: torch.Tensor, depth: torch.Tensor, K1: torch.Tensor, K2: torch.Tensor,
                   T_21: np.ndarray, dist=None) -> np.ndarray:
    """
    Return where points of the keyframe are expected in the current image (LK's start).

    :param u: (1, M, 2) pinhole pixels of the keyframe's map points.
    :param depth: (1, M) their depths (odometry units).
    :param K1: (1, 3, 3) keyframe intrinsics; ``K2`` the current frame's.
    :param T_21: (4, 4) predicted pose keyframe -> current (e.g. by constant velocity).
    :param dist: the lens distortion of the raw pixels (None: pinhole).
    :return: (M, 2) float64 raw pixels; NaN where the point is not in front of the camera.
    """
    from trianflow_ros.geometry.camera import backproject_pixels, project
    from trianflow_ros.geometry.distortion import distort_pixels
    from trianflow_ros.geometry.se3 import transform_points
    T = torch.as_tensor(T_21, dtype=torch.float64, device=u.device)[None]
    X = transform_points(T, backproject_pixels(u.double(), depth.double(), K1.double()))
    u2, z2 = project(X, K2.double())
    x2 = distort_pixels(u2, K2.double(), dist) if dist is not None else u2
    x2 = torch.where((z2 > 1e-6)[..., None], x2, torch.full_like(x2, float('nan')))
    return x2[0].cpu().numpy()


def cell_median(x: np.ndarray, x_known: np.ndarray, values: np.ndarray,
                hw: Tuple[int, int], cell: int = 16) -> np.ndarray:
    """
    Return, for each pixel, the median of the values of the known points in its grid cell.

    The median of a cell is its lower median (one of its values, no average); that of all
    points (the empty cells) is numpy's.

    :param x: (K, 2) pixels.
    :param x_known: (M, 2) pixels with values.
    :param values: (M, C) their values (rows with a NaN are ignored).
    :param hw: image (height, width).
    :param cell: cell size (px); an empty cell takes the median of all known points.
    :return: (K, C) float64; NaN when no value is known at all.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(x_known), -1)
    fin = np.isfinite(values).all(1)
    if not fin.any():
        return np.full((x.shape[0], values.shape[1]), np.nan)
    v, xk = values[fin], np.asarray(x_known)[fin]
    rows, cols = -(-hw[0] // cell), -(-hw[1] // cell)

    def index(p: np.ndarray) -> np.ndarray:
        r = np.clip((p[:, 1] // cell).astype(np.int64), 0, rows - 1)
        c = np.clip((p[:, 0] // cell).astype(np.int64), 0, cols - 1)
        return r * cols + c
    table = np.tile(np.median(v, 0), (rows * cols, 1))
    ki = index(xk)
    counts = np.bincount(ki, minlength=rows * cols)
    has = counts > 0
    middle = (np.cumsum(counts) - counts)[has] + (counts[has] - 1) // 2   # lower median
    for c in range(v.shape[1]):
        table[has, c] = v[np.lexsort((v[:, c], ki)), c][middle]
    return table[index(np.asarray(x))] if len(x) else np.zeros((0, v.shape[1]))


def predict_corners(corners: np.ndarray, x_map: torch.Tensor, depth_map: torch.Tensor,
                    K: torch.Tensor, T_21: np.ndarray, hw: Tuple[int, int], undistort=None,
                    dist=None, cell: int = 16) -> Optional[np.ndarray]:
    """
    Predict where corners of the keyframe are in the current image, from the map points.

    Each corner gets the median inverse depth of the map points in its ``cell`` px cell
    (:func:`cell_median`) and is moved by the predicted pose (:func:`predict_pixels`).

    :param corners: (K, 2) raw pixels of the keyframe's corners.
    :param x_map: (1, M, 2) raw pixels of its map points; ``depth_map`` (1, M) their depths.
    :param K: (1, 3, 3) intrinsics (keyframe and current frame).
    :param T_21: (4, 4) predicted pose keyframe -> current.
    :param hw: image (height, width).
    :param undistort: raw -> pinhole pixels (None: pinhole); ``dist`` the distortion.
    :return: (K, 2) float64 raw pixels (NaN where not predicted), or None without corners.
    """
    if corners.shape[0] == 0:
        return None
    inv = cell_median(corners, x_map[0].detach().cpu().numpy(),
                      1.0 / depth_map[0].detach().double().cpu().numpy()[:, None],
                      hw, cell)[:, 0]
    x = torch.from_numpy(corners)[None].to(x_map.device, torch.float64)
    u = undistort(x) if undistort is not None else x
    depth = torch.from_numpy(1.0 / np.maximum(inv, 1e-9))[None].to(u.device)
    return predict_pixels(u, depth, K, K, T_21, dist)


def guess_by_cells(x: np.ndarray, x_known: np.ndarray, g_known: np.ndarray,
                   hw: Tuple[int, int], cell: int = 16) -> np.ndarray:
    """
    Start positions for points without depth: the median displacement of known points nearby.

    :param x: (K, 2) pixels to guess for.
    :param x_known: (M, 2) pixels with a predicted position ``g_known`` (M, 2; NaN = none).
    :param hw: image (height, width).
    :param cell: the displacement is the median over cells of this size (px) (see
        :func:`cell_median`); none known: no displacement.
    :return: (K, 2) float64 guesses.
    """
    d = cell_median(x, x_known, g_known - x_known, hw, cell)
    return x + np.where(np.isfinite(d), d, 0.0)


def lk_bound(cfg: Config, shift: np.ndarray) -> np.ndarray:
    """
    Return the round-trip bound (px) of LK matches with displacements ``shift`` (N,).

    max(``vo.klt_max_fb_px``, ``vo.klt_fb_ratio`` x displacement): the rule of the dense front
    end's KLT refinement (a fixed small bound removes the near, fast-moving points).
    """
    return np.maximum(cfg.vo.klt_max_fb_px, cfg.vo.klt_fb_ratio * shift)


def lk_track(grey1: np.ndarray, grey2: np.ndarray, p1: np.ndarray, cfg: Config,
             guess: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Track points from image 1 into image 2 by pyramidal LK with a backward check.

    :param grey1: (H, W) uint8 image 1.
    :param grey2: (H, W) uint8 image 2.
    :param p1: (N, 2) float pixels in image 1.
    :param cfg: ``vo.klt_track_window``, ``vo.klt_levels`` and the bound of :func:`lk_bound`.
    :param guess: (N, 2) start positions in image 2 (None or NaN rows: p1).
    :return: p2 (N, 2) float64, ok (N,) bool (tracked both ways, round trip within the
        bound, inside image 2), and the round-trip error (N,) float64 (inf where not tracked).
    """
    n = int(p1.shape[0])
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0, bool), np.zeros(0)
    window = (cfg.vo.klt_track_window,) * 2
    levels = cfg.vo.klt_levels
    a = np.ascontiguousarray(p1, dtype=np.float32).reshape(-1, 1, 2)
    start = a.copy()
    if guess is not None:
        g = np.asarray(guess, dtype=np.float32).reshape(-1, 1, 2)
        use = np.isfinite(g).all(2)[:, 0]
        start[use] = g[use]
    b, st, _ = cv2.calcOpticalFlowPyrLK(grey1, grey2, a, start, winSize=window,
                                        maxLevel=levels, criteria=_CRITERIA,
                                        flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
    # the backward track starts where the forward one's start puts it (not at the answer
    # p1: started there, LK stays near it for a wrong forward match too, on a repeated
    # texture or a zooming patch, and such matches passed the check)
    back_start = np.ascontiguousarray(b - (start - a), dtype=np.float32)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(grey2, grey1, b, back_start, winSize=window,
                                            maxLevel=levels, criteria=_CRITERIA,
                                            flags=cv2.OPTFLOW_USE_INITIAL_FLOW)
    p2 = b[:, 0].astype(np.float64)
    fb = np.linalg.norm(back[:, 0] - a[:, 0], axis=1).astype(np.float64)
    shift = np.linalg.norm(p2 - a[:, 0], axis=1)
    h, w = grey2.shape
    ok = ((st[:, 0] == 1) & (st2[:, 0] == 1) & np.isfinite(p2).all(1) & np.isfinite(fb)
          & (p2[:, 0] >= 0) & (p2[:, 0] <= w - 1) & (p2[:, 1] >= 0) & (p2[:, 1] <= h - 1))
    ok &= fb < lk_bound(cfg, np.where(np.isfinite(shift), shift, 0.0))
    return p2, ok, np.where(ok, fb, np.inf)


def track_matches(img1: torch.Tensor, img2: torch.Tensor, grey1: np.ndarray,
                  grey2: np.ndarray, corners: np.ndarray, cfg: Config, undistort=None,
                  tracked: Optional[torch.Tensor] = None,
                  guess: Optional[np.ndarray] = None,
                  prior_flow: Optional[np.ndarray] = None,
                  corner_guess: Optional[np.ndarray] = None) -> Matches:
    """
    Build the matches of a pair by KLT tracking (see the module docstring).

    :param img1: (1, 3, H, W) keyframe image in [0, 1] (the patch check reads it).
    :param img2: (1, 3, H, W) current image.
    :param grey1: (H, W) uint8 grey keyframe (``providers.to_grey_uint8(img1)``).
    :param grey2: (H, W) uint8 grey current image.
    :param corners: (K, 2) fresh corners of the keyframe (:func:`detect_corners`).
    :param cfg: the configuration (``vo.klt_*``, ``vo.min_zncc_ratio``, ``vo.zncc_threshold``).
    :param undistort: raw -> pinhole pixels, (1, N, 2) float64 -> same (None: pinhole).
    :param tracked: (1, M, 2) raw pixels of the keyframe's map points, tracked first.
    :param guess: (M, 2) predicted raw pixels of the map points in the current image
        (:func:`predict_pixels`; NaN = unknown), or None (LK starts at the keyframe pixel);
        the corners start at the median displacement of the map points near them
        (:func:`guess_by_cells`) unless ``corner_guess`` gives theirs.
    :param corner_guess: (K, 2) predicted raw pixels of ``corners`` (NaN = unknown).
    :param prior_flow: (H, W, 2) a coarse flow keyframe -> current (``vo.klt_prior`` 'dis');
        when given every point starts at its pixel moved by it (instead of ``guess``).
    :return: :class:`Matches` on img1's device; ``track_index`` lists the map points kept.
    """
    dev = img1.device
    budget = cfg.vo.klt_points
    pts = np.zeros((0, 2))
    if tracked is not None and tracked.shape[1] > 0:
        pts = tracked[0].detach().double().cpu().numpy()[:budget]
    num_map = pts.shape[0]
    fresh = corners[:max(budget - num_map, 0)]
    p1 = np.concatenate((pts, fresh), 0)
    start = None
    if prior_flow is not None and p1.shape[0] > 0:
        h, w = prior_flow.shape[:2]
        col = np.clip(np.round(p1[:, 0]).astype(np.int64), 0, w - 1)
        row = np.clip(np.round(p1[:, 1]).astype(np.int64), 0, h - 1)
        start = p1 + prior_flow[row, col].astype(np.float64)
    elif guess is not None and num_map > 0:
        g = guess[:num_map]
        gc = guess_by_cells(fresh, pts, g, grey1.shape)
        if corner_guess is not None:
            cg = corner_guess[:fresh.shape[0]]
            gc = np.where(np.isfinite(cg).all(1, keepdims=True), cg, gc)
        start = np.concatenate((g, gc), 0)
    p2, ok, _ = lk_track(grey1, grey2, p1, cfg, start)
    attempted = max(int(p1.shape[0]), 1)
    good = int(ok.sum())
    index = torch.from_numpy(np.nonzero(ok[:num_map])[0]).to(dev, torch.int64)
    x1 = torch.from_numpy(p1[ok])[None].to(dev, torch.float64)
    x2 = torch.from_numpy(p2[ok])[None].to(dev, torch.float64)
    x1, x2, u1, u2, index = undistort_matches(x1, x2, index, undistort)
    zncc_ratio, checked = zncc_check(img1, img2, x1, x2, cfg)
    return Matches(x1=x1, x2=x2, u1=u1, u2=u2, num_consistent=good,
                   consistent_ratio=good / attempted, track_index=index,
                   zncc_ratio=zncc_ratio, num_zncc_checked=checked)
