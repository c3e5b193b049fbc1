"""
Does the triangulation loss tell a good depth map from a constant one? A parallax-floor sweep.

The depth stage of TrianFlow is supervised only by the structure triangulated from the flow
(Sec. 3.4). That supervision is useful only if, with the flow net's (noisy) correspondences, the
true depth scores a clearly lower triangulation loss ``L_d`` than an uninformative prediction.
This script measures it on synthetic pairs with ground-truth depth (by default held-out ones):

1. the flow net of a checkpoint (default: the shipped ``models/default.pth``) predicts the flow
   in both directions; :func:`trianflow_ros.model.trianflow.solve_two_view` solves F, the pose
   and the triangulation exactly as in training;
2. ``L_d`` (both views, scale-aligned as in training) is evaluated for three depth maps: the
   ground truth, a constant, and the ground truth with 30 % log-normal noise;
3. this is repeated for several values of ``loss.tri_min_parallax_px`` (0 = the original's
   filter, only ``geometry.triangulation.min_angle_deg``).

Figures: per parallax floor, the share of pairs whose geometry succeeds, the mean number of
triangulated points, the mean ``L_d`` of each depth map over the successful pairs, and the
ratio constant / ground truth (the "signal": 1 means the loss cannot tell them apart and the
depth net has nothing to learn from). The same sweep with the ground-truth flow is printed as
the noise-free reference. The last line is one JSON object.

    .venv/bin/python bench/depth_signal.py [--checkpoint default] [--seeds 100,101] \
        [--parallax 0,0.25,0.5,1,2]
"""

import argparse
import json
import math
from pathlib import Path
import sys
import time
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trianflow_ros.config import Config  # noqa: E402
from trianflow_ros.data.sample import collate_samples  # noqa: E402
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset  # noqa: E402
from trianflow_ros.losses.depth import align_and_triangulation_loss  # noqa: E402
from trianflow_ros.model.trianflow import solve_two_view, TrianFlowModel  # noqa: E402
from trianflow_ros.vo.providers import load_networks  # noqa: E402

HELD_OUT_SEEDS = (100, 101)
KINDS = ('forward', 'handheld')
NOISE = 0.3      # log-normal sigma of the noisy ground truth
CONSTANT = 5.0   # m; any constant gives the same aligned loss


def triangulation_losses(geo, depth1: torch.Tensor, depth2: torch.Tensor) -> torch.Tensor:
    """L_d of both views per pair, aligned as in training (``'lsq'``), shape (B,)."""
    a1 = align_and_triangulation_loss(depth1, geo.x1, geo.z1, geo.tri_ok)
    a2 = align_and_triangulation_loss(depth2, geo.x2, geo.z2, geo.tri_ok)
    return a1.loss.value + a2.loss.value


def sweep(cfg: Config, batches: List[Dict[str, torch.Tensor]], flows: List[tuple],
          parallax: List[float], seed: int) -> Dict[str, Dict[str, float]]:
    """Run the measurement for every parallax floor; return figures keyed by the floor."""
    out: Dict[str, Dict[str, float]] = {}
    model = TrianFlowModel(cfg)
    for px in parallax:
        cfg.loss.tri_min_parallax_px = px
        sums = {'gt': 0.0, 'constant': 0.0, 'noisy': 0.0}
        ok_pairs = pairs = points = 0
        g = torch.Generator().manual_seed(seed)
        for b, (f12, f21) in zip(batches, flows):
            geo = solve_two_view(f12, f21, model.valid_mask(f12, f21), b['K'], cfg, g)
            d1, d2 = b['depth1'], b['depth2']
            noise = torch.Generator().manual_seed(seed + 1)
            maps = {'gt': (d1, d2),
                    'constant': (torch.full_like(d1, CONSTANT), torch.full_like(d2, CONSTANT)),
                    'noisy': tuple(d * torch.exp(NOISE * torch.randn(d.shape, generator=noise))
                                   for d in (d1, d2))}
            for name, (m1, m2) in maps.items():
                sums[name] += float(triangulation_losses(geo, m1, m2)[geo.ok].sum())
            ok_pairs += int(geo.ok.sum())
            pairs += len(geo.ok)
            points += int(geo.tri_ok.sum())
        n = max(ok_pairs, 1)
        fig = {'ok_share': ok_pairs / max(pairs, 1), 'points_per_pair': points / n}
        fig.update({f'loss_{k}': v / n for k, v in sums.items()})
        fig['signal'] = fig['loss_constant'] / max(fig['loss_gt'], 1e-12)
        out[f'{px:g}'] = fig
    return out


def print_table(title: str, figures: Dict[str, Dict[str, float]]) -> None:
    """Print one sweep."""
    print(f'\n{title}')
    print(f'{"parallax px":>11} {"pairs ok":>8} {"points":>7} {"L_d gt":>8} {"L_d const":>9} '
          f'{"L_d noisy":>9} {"const/gt":>8}')
    for px, f in figures.items():
        print(f'{px:>11} {f["ok_share"]:>8.2f} {f["points_per_pair"]:>7.0f} '
              f'{f["loss_gt"]:>8.4f} {f["loss_constant"]:>9.4f} {f["loss_noisy"]:>9.4f} '
              f'{f["signal"]:>8.2f}')


def main(argv: Optional[List[str]] = None) -> int:
    """Run the sweep; see the module doc."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', default='default',
                        help="flow net: a checkpoint of this package or 'default'")
    parser.add_argument('--parallax', default='0,0.25,0.5,1,2',
                        help='comma-separated loss.tri_min_parallax_px values')
    parser.add_argument('--seeds', default=','.join(map(str, HELD_OUT_SEEDS)),
                        help='synthetic sequence seeds (default: the held-out ones of '
                        'bench/learning.py; its training seeds are 0,1,2,3)')
    parser.add_argument('--frames', type=int, default=8, help='frames per sequence')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    flow_net, _ = load_networks(args.checkpoint, depth=False)
    cfg = flow_net.stored_config or Config()
    h, w = cfg.data.img_height, cfg.data.img_width
    seeds = tuple(int(v) for v in args.seeds.split(','))
    data = SyntheticPairDataset(seeds=seeds, num_frames=args.frames, height=h, width=w,
                                kinds=KINDS, bgr=cfg.data.bgr)
    batches = list(DataLoader(data, batch_size=8, collate_fn=collate_samples))
    with torch.no_grad():
        net = [tuple(f[0] for f in flow_net.forward_backward(b['image1'], b['image2']))
               for b in batches]
    gt = [(b['flow_12'], b['flow_21']) for b in batches]
    parallax = [float(v) for v in args.parallax.split(',')]
    focal = float(batches[0]['K'][0, 0, 0])
    min_angle = cfg.geometry.triangulation.min_angle_deg
    print(f'flow net of {args.checkpoint} at {w}x{h}; {len(data)} synthetic pairs '
          f'(seeds {seeds}, {"/".join(KINDS)}); focal {focal:.1f} px; '
          f'min_angle_deg {min_angle} = {math.radians(min_angle) * focal:.3f} px of parallax')
    learned = sweep(cfg, batches, net, parallax, args.seed)
    print_table('learned flow (what training sees)', learned)
    reference = sweep(cfg, batches, gt, parallax, args.seed)
    print_table('ground-truth flow (noise-free reference)', reference)
    figures = {'checkpoint': str(args.checkpoint), 'height': h, 'width': w, 'pairs': len(data),
               'seeds': list(seeds),
               'learned': learned, 'ground_truth_flow': reference,
               'seconds': time.perf_counter() - t0}
    print(json.dumps(figures))
    return 0


if __name__ == '__main__':
    sys.exit(main())
