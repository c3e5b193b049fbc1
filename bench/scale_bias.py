#!/usr/bin/env python3
"""
Where the scale drift comes from: the map's depth bias against the pair's, pair by pair.

Issue 12 item 2 ("scale consistent over many frames"). Every pair of the classical VO fits its
scale to the keyframe's map points: ``log s = sum w log(target / z) / sum w`` over the fit's
points (``geometry.scale.method`` ``log``; ``z`` the depth triangulated with the unit
translation, ``target`` the map depth). On a synthetic drive the true depth ``Z`` of every
point and the true translation ``|t|`` of the pair are known, so the change of the odometry's
unit over the pair splits into two biases:

- ``delta = log(s / |t|) - log(lambda_kf)``: the pair's change of the unit, where
  ``lambda_kf = s' / |t'|`` is the unit of the pair that made the keyframe (the drift is the
  mean of ``delta``: -0.0004 per pair is -4 % per 100 pairs);
- ``M = sum w log(target / (lambda_kf Z)) / sum w``: the map's depths against the keyframe's
  unit (negative: the map is too shallow, the scale shrinks);
- ``P = sum w log(z |t| / Z) / sum w``: the pair's triangulation (positive: too deep, the
  scale shrinks);
- ``delta = M - P`` exactly (``Z`` cancels): ``identity_error`` checks it.

``M`` is also given per age of the map points (keyframes they have been fused over; same
unit: as if every pair's points were of that age). The VO runs at the rendered size
(``vo.resolution native``), no depth output, with the oracle flow plus Gaussian noise
(``--noise`` px on each direction's flow; 0 = exact) or DIS (``--flow dis``).

    scripts/with_env.sh python bench/scale_bias.py [--kind forward] [--frames 120]
        [--flow oracle|dis] [--noise 0.3] [--set KEY=VALUE]

Last line: one JSON object (means per pair; ``*_pct_per_100`` = 1e4 x the mean).
"""

import argparse
import json
from pathlib import Path
import sys
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.baseline_vo import evaluate  # noqa: E402
from bench.scale_drift import drift_per_100, SEED, SIZE  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from trianflow_ros.config import load_config  # noqa: E402
from trianflow_ros.data.synthetic import KINDS, make_sequence, SyntheticSequence  # noqa: E402
from trianflow_ros.vo import OracleFlowProvider, VisualOdometry  # noqa: E402

#: (lowest, highest) ages of the map points of each row of the age table.
AGE_GROUPS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 10**9))


class NoisyOracleFlow(OracleFlowProvider):
    """The exact flow of a synthetic sequence plus seeded Gaussian noise (px, both ways)."""

    def __init__(self, seq: SyntheticSequence, noise_px: float):
        super().__init__(seq)
        self.noise_px = noise_px
        self._calls = 0

    def __call__(self, img_prev: torch.Tensor, img_cur: torch.Tensor):
        """Return the exact forward and backward flows, each plus its own noise draw."""
        flow_12, flow_21 = super().__call__(img_prev, img_cur)
        if self.noise_px <= 0:
            return flow_12, flow_21
        gen = torch.Generator().manual_seed(1000 + self._calls)
        self._calls += 1
        return (flow_12 + self.noise_px * torch.randn(flow_12.shape, generator=gen),
                flow_21 + self.noise_px * torch.randn(flow_21.shape, generator=gen))


def decompose(records, depths: torch.Tensor, poses: np.ndarray) -> Dict:
    """
    Split every recorded pair's change of the unit into the map's and the pair's bias.

    :param records: ``strategies.ScaleFitRecord`` list of one run.
    :param depths: (N, 1, H, W) true depth of every frame (pixels = the records' ``u1``).
    :param poses: (N, 4, 4) true ``T_world_cam``.
    :return: per pair arrays ``delta``, ``M``, ``P`` (pairs whose keyframe unit is known)
        and ``ages``: (age, weight, map log error) of every used point.
    """
    unit = {}
    for r in records:
        t = np.linalg.norm((np.linalg.inv(poses[r.keyframe]) @ poses[r.frame])[:3, 3])
        if t > 1e-6:
            unit[r.frame] = (r.scale / t, t)
    h, w = depths.shape[-2:]
    delta, bias_map, bias_pair, ages = [], [], [], []
    for r in records:
        if r.keyframe not in unit or r.frame not in unit:
            continue
        lam, t = unit[r.keyframe][0], unit[r.frame][1]
        px = r.u1.round().long()
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        px = torch.stack((px[:, 0].clamp(0, w - 1), px[:, 1].clamp(0, h - 1)), -1)
        Z = depths[r.keyframe, 0, px[:, 1], px[:, 0]].double()
        use = r.used & inside & (Z > 0) & (r.target > 0) & (r.depth > 0)
        if not bool(use.any()):
            continue
        wt = r.weights[use]
        e_map = torch.log(r.target[use] / (lam * Z[use]))
        e_pair = torch.log(r.depth[use] * t / Z[use])
        delta.append(np.log(r.scale / t) - np.log(lam))
        bias_map.append(float((wt * e_map).sum() / wt.sum()))
        bias_pair.append(float((wt * e_pair).sum() / wt.sum()))
        ages.append(torch.stack((r.age[use].double(), wt, e_map), -1))
    return {'delta': np.asarray(delta), 'M': np.asarray(bias_map), 'P': np.asarray(bias_pair),
            'ages': torch.cat(ages).numpy() if ages else np.zeros((0, 3))}


def run(kind: str, frames: int, flow: str, noise: float, overrides: List[str]) -> Dict:
    """Render the drive, run the odometry with the recorder on; return the figures."""
    seq = make_sequence(kind, frames, *SIZE, seed=SEED)
    poses = seq.poses.double().numpy()
    gt = np.linalg.inv(poses[0]) @ poses
    cfg = load_config(None, ['vo.device=cpu', 'vo.resolution=native', 'vo.flow_provider=dis',
                             *overrides])
    provider = NoisyOracleFlow(seq, noise) if flow == 'oracle' else None
    with VisualOdometry(cfg, provider, None) if provider is not None \
            else VisualOdometry(cfg) as vo:
        vo.output_depth = False
        vo.scale_fits = []
        K = seq.K.double().numpy()
        results = [vo.step(i / 10.0, im, K) for i, im in enumerate(seq.images_uint8())]
        records = vo.scale_fits
    est = np.stack([r.T_world_cam for r in results])
    parts = decompose(records, seq.depths, poses)
    out = {'kind': kind, 'frames': frames, 'flow': flow,
           'noise_px': noise if flow == 'oracle' else None, 'pairs': int(len(parts['delta'])),
           'ate': evaluate(est, gt)['ate'], 'drift_pct_per_100': drift_per_100(est, gt)}
    for name in ('delta', 'M', 'P'):
        out[f'{name}_pct_per_100'] = float(1e4 * parts[name].mean()) if len(parts[name]) \
            else float('nan')
    out['identity_error'] = float(np.abs(parts['delta'] - (parts['M'] - parts['P'])).max()) \
        if len(parts['delta']) else float('nan')
    table, a = [], parts['ages']
    total = float(a[:, 1].sum()) if len(a) else 0.0
    for lo, hi in AGE_GROUPS:
        sel = (a[:, 0] >= lo) & (a[:, 0] <= hi)
        if not sel.any():
            continue
        table.append({'ages': f'{lo}-{hi}' if hi < 10**9 else f'{lo}+',
                      'points': int(sel.sum()), 'weight_share': float(a[sel, 1].sum() / total),
                      'M_pct_per_100': float(1e4 * np.average(a[sel, 2], weights=a[sel, 1])),
                      'M_unweighted_pct_per_100': float(1e4 * a[sel, 2].mean())})
    out['by_age'] = table
    return out


def main(argv: Optional[List[str]] = None) -> int:
    """Run one drive; print the tables and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--kind', default='forward')
    parser.add_argument('--frames', type=int, default=120)
    parser.add_argument('--flow', choices=('oracle', 'dis'), default='oracle')
    parser.add_argument('--noise', type=float, default=0.3,
                        help='Gaussian flow noise (px) of the oracle flow')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        help='config override KEY=VALUE of the odometry (repeatable)')
    args = parser.parse_args(argv)
    if args.frames < 4:
        print('scale_bias: --frames must be at least 4', file=sys.stderr)
        return 2
    if args.kind not in KINDS:
        print(f'scale_bias: unknown kind {args.kind!r}; choose from {", ".join(KINDS)}',
              file=sys.stderr)
        return 2
    if args.noise < 0:
        print('scale_bias: --noise must be >= 0 (px)', file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = run(args.kind, args.frames, args.flow, args.noise, args.overrides)
    out['meta'] = {'seed': SEED, 'size': f'{SIZE[1]}x{SIZE[0]}', 'overrides': args.overrides}
    print('| kind | flow | pairs | ATE m | drift %/100 frames | delta %/100 pairs | '
          'M (map) | P (pair) |')
    print('|---|---|---|---|---|---|---|---|')
    flow = out['flow'] + (f' + {args.noise} px' if out['flow'] == 'oracle' else '')
    print(f'| {out["kind"]} | {flow} | {out["pairs"]} | {out["ate"]:.3f} | '
          f'{out["drift_pct_per_100"]:+.2f} | {out["delta_pct_per_100"]:+.2f} | '
          f'{out["M_pct_per_100"]:+.2f} | {out["P_pct_per_100"]:+.2f} |')
    print('\n| map point age | points | weight share | M (weighted) | M (unweighted) |')
    print('|---|---|---|---|---|')
    for row in out['by_age']:
        print(f'| {row["ages"]} | {row["points"]} | {row["weight_share"]:.3f} | '
              f'{row["M_pct_per_100"]:+.2f} | {row["M_unweighted_pct_per_100"]:+.2f} |')
    print(json.dumps(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
