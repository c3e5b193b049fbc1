#!/usr/bin/env python3
"""
How well can the TUM fr1 pair's ground truth be met at all? Metric-depth PnP on the same pair.

``bench/vo_real.py`` scores the TUM fr1_xyz pair (3.7 cm, 2.2 deg apart, 0.1 s) by the
rotation and translation-direction errors of the two-view estimate against the motion-capture
ground truth. This script measures what the images and the registered Kinect depth of the
same pair give when the scale and the depth are *known*, i.e. what no monocular method can
beat by more than chance:

- matches: Shi-Tomasi corners of frame 1 (``cv2.goodFeaturesToTrack``) tracked into frame 2 by
  pyramidal Lucas-Kanade, kept where the backward track returns within ``--fb`` px and the
  depth of frame 1 is valid;
- ``pnp``: the corners lifted with the registered depth (TUM: depth = value / 5000, pixel-aligned
  with the RGB image), ``cv2.solvePnPRansac`` (EPnP, 1 px, seeded) + ``cv2.solvePnPRefineLM``
  on its inliers; ``essential``: ``cv2.findEssentialMat`` (RANSAC, 0.999, 0.5 px) +
  ``cv2.recoverPose`` on the same matches (no depth);
- each with the raw pixels (no lens model) and with the TUM fr1 distortion
  (``cv2.undistortPoints``, the coefficients of the TUM documentation), reporting the
  medians over ``--seeds`` runs on seeded random 90 % subsets of the matches (OpenCV's
  RANSACs draw from a fixed generator; every run's errors are kept): the
  rotation error (deg), the direction error of t (deg), |t| (PnP, m) and the median
  reprojection error of the PnP inliers (px): the lower one says which camera model the
  images and the depth agree with.

Only OpenCV is used (no code of the project's solvers), so the floor is independent of them.
Last line: one JSON object. Run from the repository root::

    .venv/bin/python bench/tum_pair_floor.py [--data ../shared/data]
"""

import argparse
import json
from pathlib import Path
import sys
from typing import Dict, List, Optional

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trianflow_ros.data.tum import TumRgbdSequence  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data'
SEQUENCE = Path('tum_rgbd_pairs') / 'rgbd_dataset_freiburg1_xyz'


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def _errors(R: np.ndarray, t: np.ndarray, T_21: np.ndarray) -> Dict[str, float]:
    """Rotation and direction errors (deg) of (R, t) = T_21 estimate against the truth."""
    cos = float(t @ T_21[:3, 3] / max(np.linalg.norm(t) * np.linalg.norm(T_21[:3, 3]), 1e-12))
    return {'rot_err_deg': _angle_deg(R.T @ T_21[:3, :3]),
            'dir_err_deg': float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))}


def _medians(runs: List[Dict[str, float]]) -> Dict:
    """Median of every figure over the seeded runs, plus the errors of every run."""
    out = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    for key in ('rot_err_deg', 'dir_err_deg'):
        out[key.replace('_deg', '_by_seed')] = [round(r[key], 2) for r in runs]
    return out


def track(grey1: np.ndarray, grey2: np.ndarray, corners: int, fb_px: float):
    """Return corners of grey1 (N, 2) and their Lucas-Kanade tracks in grey2 (N, 2)."""
    p1 = cv2.goodFeaturesToTrack(grey1, corners, 0.005, 5)
    lk = {'winSize': (21, 21), 'maxLevel': 3}
    p2, st, _ = cv2.calcOpticalFlowPyrLK(grey1, grey2, p1, None, **lk)
    pb, st2, _ = cv2.calcOpticalFlowPyrLK(grey2, grey1, p2, None, **lk)
    ok = (st[:, 0] == 1) & (st2[:, 0] == 1) & (np.linalg.norm(pb - p1, axis=2)[:, 0] < fb_px)
    return p1[ok, 0].astype(np.float64), p2[ok, 0].astype(np.float64)


def floor(data: Path, corners: int = 3000, fb_px: float = 0.3, seed: int = 0,
          seeds: int = 8) -> Dict:
    """Run the measurement (see the module docstring); return the figures."""
    seq = TumRgbdSequence(data / SEQUENCE, use_depth=True)
    if len(seq) < 2 or seq.poses is None:
        raise ValueError(f'{data / SEQUENCE}: needs 2 RGB-D frames with ground truth')
    _, im1, K = seq.frame(0)
    _, im2, _ = seq.frame(1)
    z1 = seq.depth(0).astype(np.float64)
    T_21 = np.linalg.inv(seq.poses[1]) @ seq.poses[0]
    grey1 = cv2.cvtColor(im1, cv2.COLOR_RGB2GRAY)
    grey2 = cv2.cvtColor(im2, cv2.COLOR_RGB2GRAY)
    x1, x2 = track(grey1, grey2, corners, fb_px)
    h, w = z1.shape
    z = z1[np.clip(np.round(x1[:, 1]).astype(int), 0, h - 1),
           np.clip(np.round(x1[:, 0]).astype(int), 0, w - 1)]
    keep = np.isfinite(z) & (z > 0)
    x1, x2, z = x1[keep], x2[keep], z[keep]
    K = np.asarray(K, dtype=np.float64)
    D = np.asarray(seq.distortion.coeffs if seq.distortion is not None else np.zeros(5),
                   dtype=np.float64)
    out = {'matches': int(len(x1)), 'gt_rot_deg': _angle_deg(T_21[:3, :3]),
           'gt_trans_m': float(np.linalg.norm(T_21[:3, 3])), 'distortion': D.tolist()}
    for name, dist in (('raw', np.zeros(5)), ('undistorted', D)):
        n1 = cv2.undistortPoints(x1[:, None], K, dist)[:, 0]
        n2 = cv2.undistortPoints(x2[:, None], K, dist)[:, 0]
        X = np.c_[n1 * z[:, None], z]
        pnp, ess = [], []
        for s in range(seed, seed + seeds):
            # OpenCV's RANSACs draw from a fixed generator: each run takes its own random 90 %
            # of the matches (a bootstrap of the same pair)
            i = np.sort(np.random.default_rng(s).choice(len(X), int(0.9 * len(X)), replace=False))
            ok, rv, tv, inl = cv2.solvePnPRansac(X[i], x2[i], K, dist, reprojectionError=1.0,
                                                 iterationsCount=1000, flags=cv2.SOLVEPNP_EPNP)
            if not ok or inl is None:
                raise RuntimeError(f'PnP failed on the pair ({name}, seed {s})')
            inl = i[inl[:, 0]]
            rv, tv = cv2.solvePnPRefineLM(X[inl], x2[inl], K, dist, rv, tv)
            reproj = np.linalg.norm(cv2.projectPoints(X[inl], rv, tv, K, dist)[0][:, 0]
                                    - x2[inl], axis=1)
            pnp.append(dict(_errors(cv2.Rodrigues(rv)[0], tv[:, 0], T_21),
                            trans_m=float(np.linalg.norm(tv)),
                            median_reproj_px=float(np.median(reproj))))
            E, mask = cv2.findEssentialMat(n1[i], n2[i], np.eye(3), cv2.RANSAC, 0.999,
                                           0.5 / float(K[0, 0]))
            _, R, t, _ = cv2.recoverPose(E[:3], n1[i], n2[i], np.eye(3), mask=mask)
            ess.append(_errors(R, t[:, 0], T_21))
        out[name] = {'pnp': _medians(pnp), 'essential': _medians(ess)}
    return out


def _seeds(fig: Dict) -> str:
    return ', '.join(f'{v:.1f}' for v in fig['dir_err_by_seed'])


def main(argv: Optional[List[str]] = None) -> int:
    """Print the table and one JSON line; exit 2 when the data are missing."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--corners', type=int, default=3000)
    parser.add_argument('--fb', type=float, default=0.3,
                        help='forward-backward bound of the tracks, px')
    parser.add_argument('--seed', type=int, default=0, help='first subset seed')
    parser.add_argument('--seeds', type=int, default=8, help='subsets (medians)')
    args = parser.parse_args(argv)
    if not (args.data / SEQUENCE / 'groundtruth.txt').is_file():
        print(f'tum_pair_floor: no TUM fr1 pair with ground truth under {args.data} '
              f'(expected {SEQUENCE}/groundtruth.txt); pass --data', file=sys.stderr)
        return 2
    res = floor(args.data, args.corners, args.fb, args.seed, args.seeds)
    print(f'TUM fr1 pair: {res["matches"]} matches with depth; truth {res["gt_rot_deg"]:.2f} deg, '
          f'{res["gt_trans_m"]:.4f} m')
    print(f'medians of {args.seeds} random 90 % subsets of the matches')
    print('| pixels | method | rot err deg | dir err deg (per seed) | extra |')
    print('|---|---|---|---|---|')
    for name in ('raw', 'undistorted'):
        p, e = res[name]['pnp'], res[name]['essential']
        print(f'| {name} | PnP on the depth | {p["rot_err_deg"]:.2f} | {p["dir_err_deg"]:.2f} '
              f'({_seeds(p)}) | '
              f'|t| {p["trans_m"]:.4f} m, median reprojection {p["median_reproj_px"]:.3f} px |')
        print(f'| {name} | essential (no depth) | {e["rot_err_deg"]:.2f} | '
              f'{e["dir_err_deg"]:.2f} ({_seeds(e)}) | |')
    print(json.dumps(res))
    return 0


if __name__ == '__main__':
    sys.exit(main())
