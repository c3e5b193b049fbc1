#!/usr/bin/env python3
"""
Proof that ``trianflow-train`` learns, on this CPU, in minutes.

Everything runs through the real trainer (:class:`trianflow_ros.train.trainer.Trainer`: the
step-indexed sampler, Adam, checkpoints, validation) and the real model
(``trianflow_ros.model.build_model``); only the image size, the step counts and the learning
rates are small-run settings given on the command line (the paper's are 256x832, 200k steps,
lr 1e-4).

1. Synthetic sequences with exact ground truth (``SyntheticPairDataset``, kinds 'forward' and
   'handheld'; training seeds 0-3, held-out seeds 100-101, never seen in training):

   a. flow stage from scratch; flow EPE (px, mean over held-out pairs of the mean over the
      ground-truth valid pixels) of the untrained vs the trained flow net, and their ratio;
   b. depth stage from the trained flow net (``--init-flow``, flow frozen); depth AbsRel after
      per-image median scaling of ``depth_net.predict_depth(image1)`` against the ground-truth
      depth of the held-out frames (all pixels, 1e-3..100 m), untrained vs trained, and the
      AbsRel of a constant depth map (the level of a net that learned no structure). The
      depth stage uses ``loss.tri_min_parallax_px`` (default 1 px; ``--tri-min-parallax-px 0``
      is the original's filter, under which this stage learns a constant depth); with
      ``--init-flow`` it starts from a stored flow checkpoint instead of training one.

2. Real KITTI frames: odometry sequence 06, frames 0-50 of the left grey camera
   (``../shared/data/kitti_odometry_seq06``). A flow stage from scratch on the pairs of frames
   0-40, evaluated on the held-out pairs of frames 40-50, before and after:

   - photometric error: the flow loss's photometric term (0.15 L1 + 0.85 SSIM, L1 in [0, 1]
     intensity units) of image 2 warped by the flow, on the pixels whose target lies inside
     image 2 (no occlusion mask, so the untrained net is not favoured);
   - epipolar error: median over pixels of the Sampson distance (px, at the network size) of
     the flow correspondences ``(x, x + flow(x))`` to the GROUND-TRUTH epipolar geometry
     ``F = K^-T [t]x R K^-1`` of the pair (from ``poses/06.txt``), mean over pairs;
   - the same divided by the median flow magnitude of the pair (scale-free). A near-zero flow
     satisfies the epipolar constraint of a forward-moving camera almost exactly (every pixel
     lies on its own epipolar line through the focus of expansion), so the absolute figure
     alone favours an untrained net that predicts no motion; the relative one does not.

   The same figures of OpenCV's DIS flow (medium preset) on the held-out pairs are printed as
   the reference of a good classical flow.

Run from the repository root (2 threads; meant to take < 15 minutes on an idle 2-core CPU;
on the shared, loaded VM each part took ~13 minutes, see docs/BENCHMARKS.md)::

    .venv/bin/python bench/learning.py            # the numbers in docs/BENCHMARKS.md
    .venv/bin/python bench/learning.py --quick    # smoke test, < 1 minute

Prints a table, then ONE JSON line with every figure.
"""

import argparse
import json
from pathlib import Path
import platform
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trianflow_ros.config import Config, load_config  # noqa: E402
from trianflow_ros.data.kitti_odometry import KittiOdometryDataset  # noqa: E402
from trianflow_ros.data.sample import collate_samples  # noqa: E402
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset  # noqa: E402
from trianflow_ros.eval.depth_metrics import DepthEvaluator  # noqa: E402
from trianflow_ros.geometry.camera import pixel_grid  # noqa: E402
from trianflow_ros.geometry.epipolar import fundamental_from_essential  # noqa: E402
from trianflow_ros.geometry.epipolar import sampson_distance  # noqa: E402
from trianflow_ros.geometry.se3 import skew  # noqa: E402
from trianflow_ros.losses.photometric import flow_photometric_loss  # noqa: E402
from trianflow_ros.model import build_model  # noqa: E402
from trianflow_ros.train.trainer import Trainer  # noqa: E402
from trianflow_ros.vo.providers import DISFlowProvider, load_networks  # noqa: E402

DEFAULT_KITTI = REPO_ROOT.parent / 'shared' / 'data' / 'kitti_odometry_seq06'
KINDS = ('forward', 'handheld')
TRAIN_SEEDS = (0, 1, 2, 3)
HELD_OUT_SEEDS = (100, 101)
#: Frames 0..KITTI_SPLIT are trained on, pairs starting at KITTI_SPLIT and later are held out.
KITTI_SPLIT = 40


def bench_config(mode: str, args: argparse.Namespace, steps: int, lr: float) -> Config:
    """Return the configuration of one bench stage (defaults + small-run settings)."""
    return load_config(None, [
        'data.dataset=synthetic', f'data.img_height={args.height}',
        f'data.img_width={args.width}', 'data.bgr=false', f'train.mode={mode}',
        f'train.batch_size={args.batch}', f'train.lr={lr}', f'train.num_iterations={steps}',
        f'train.seed={args.seed}', 'train.num_workers=0',
        f'train.log_interval={max(1, steps // 10)}',
        f'train.val_interval={steps}', f'train.save_interval={steps}',
        f'flow_net.cost_volume_norm={str(args.cost_volume_norm).lower()}',
        f'loss.tri_min_parallax_px={args.tri_min_parallax_px}'])


def train_stage(cfg: Config, out: Path, train_set, val_set, **kwargs) -> Trainer:
    """Train one stage with the project's trainer; return the trainer (model inside)."""
    trainer = Trainer(cfg, out, device='cpu', quiet=True, train_dataset=train_set,
                      val_dataset=val_set, val_samples=8, log=lambda msg: None, **kwargs)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    first = np.mean([v for _, v in result.losses[:10]])
    last = np.mean([v for _, v in result.losses[-10:]])
    print(f'  {cfg.train.mode:>5} stage: {result.step} steps in {result.seconds:.0f} s '
          f'({result.steps_per_second:.2f} steps/s), total loss {first:.4f} -> {last:.4f}',
          flush=True)
    return trainer


def _loader(dataset, batch: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate_samples)


@torch.no_grad()
def flow_epe(flow_net: torch.nn.Module, dataset, batch: int) -> float:
    """Mean over pairs of the mean EPE (px) over the ground-truth valid pixels."""
    flow_net.eval()
    per_pair: List[float] = []
    for b in _loader(dataset, batch):
        pred = flow_net(b['image1'], b['image2'])[0]
        epe = (pred - b['flow_12']).norm(dim=1)                           # (B, H, W)
        valid = b['valid_12'][:, 0] > 0.5
        for k in range(epe.shape[0]):
            if valid[k].any():
                per_pair.append(float(epe[k][valid[k]].mean()))
    return float(np.mean(per_pair))


@torch.no_grad()
def depth_abs_rel(depth_net: Optional[torch.nn.Module], dataset, batch: int) -> float:
    """
    Mean AbsRel after per-image median scaling of the predicted depth of image 1.

    ``depth_net=None`` scores a constant depth map: the level of a net that has learned no
    structure (a constant is median-scaled to the median of the ground truth).
    """
    if depth_net is not None:
        depth_net.eval()
    evaluator = DepthEvaluator(min_depth=1e-3, max_depth=100.0, crop=None)
    for b in _loader(dataset, batch):
        pred = (torch.ones_like(b['depth1']) if depth_net is None
                else depth_net.predict_depth(b['image1']))
        for k in range(pred.shape[0]):
            evaluator.add(b['depth1'][k, 0].numpy(), pred[k, 0].numpy())
    return float(evaluator.summary().means['abs_rel'])


def gt_fundamental(T_21: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """F of ground-truth poses: x2^T F x1 = 0 with E = [t]x R, F = K^-T E K^-1, (B, 3, 3)."""
    R, t = T_21[:, :3, :3].double(), T_21[:, :3, 3].double()
    E = skew(t) @ R
    return fundamental_from_essential(E, K.double(), K.double())


@torch.no_grad()
def kitti_errors(flow_net: torch.nn.Module, dataset, batch: int, w_ssim: float
                 ) -> Dict[str, float]:
    """Photometric loss and GT-epipolar Sampson error of the flow (see the module doc)."""
    flow_net.eval()
    photo: List[float] = []
    epi: List[float] = []
    rel: List[float] = []
    for b in _loader(dataset, batch):
        img1, img2 = b['image1'], b['image2']
        flow = flow_net(img1, img2)[0]
        n, _, h, w = flow.shape
        grid = pixel_grid(n, h, w, dtype=flow.dtype)                      # (B, 2, H, W)
        target = grid + flow
        inside = ((target[:, 0] >= 0) & (target[:, 0] <= w - 1) & (target[:, 1] >= 0)
                  & (target[:, 1] <= h - 1)).unsqueeze(1).float()
        pixel, structure = flow_photometric_loss(img1, img2, flow, inside, w_ssim)
        photo.extend((pixel.value + structure.value).tolist())
        F = gt_fundamental(b['T_21'], b['K'])
        x1 = grid.reshape(n, 2, -1).transpose(1, 2).double()
        x2 = target.reshape(n, 2, -1).transpose(1, 2).double()
        d = sampson_distance(F, x1, x2)                                   # (B, H*W)
        med = d.median(dim=1).values
        motion = flow.norm(dim=1).reshape(n, -1).median(dim=1).values.double()
        epi.extend(med.tolist())
        rel.extend((med / motion.clamp(min=1e-3)).tolist())
    return {'photo': float(np.mean(photo)), 'epipolar': float(np.mean(epi)),
            'epipolar_rel': float(np.mean(rel))}


class DISFlowNet(torch.nn.Module):
    """OpenCV DIS flow (medium) behind the flow net's call shape: a reference for KITTI."""

    def __init__(self):
        """Create the DIS provider."""
        super().__init__()
        self.dis = DISFlowProvider('medium')

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> List[torch.Tensor]:
        """Return [flow 1 -> 2 of each pair], (B, 2, H, W)."""
        return [torch.cat([self.dis(img1[k:k + 1], img2[k:k + 1])[0]
                           for k in range(img1.shape[0])])]


def synthetic_sets(args: argparse.Namespace):
    """Training and held-out synthetic pair sets (rendered on first use)."""
    common = {'height': args.height, 'width': args.width, 'kinds': KINDS}
    train = SyntheticPairDataset(seeds=TRAIN_SEEDS, num_frames=args.train_frames, **common)
    held = SyntheticPairDataset(seeds=HELD_OUT_SEEDS, num_frames=args.held_frames, **common)
    return train, held


def kitti_sets(args: argparse.Namespace):
    """Training pairs (frames 0-40) and held-out pairs (40-50) of KITTI seq 06."""
    data = KittiOdometryDataset(args.kitti, split=['06'], camera=0, height=args.height,
                                width=args.kitti_width)
    first = [i for i, (_, a, _) in enumerate(data.items) if a < KITTI_SPLIT]
    rest = [i for i, (_, a, _) in enumerate(data.items) if a >= KITTI_SPLIT]
    return data, Subset(data, first), Subset(data, rest)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the bench; see the module doc."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='smoke test (few steps)')
    parser.add_argument('--height', type=int, default=64)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--kitti-width', type=int, default=192,
                        help='KITTI network width (its frames are 3.3:1)')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--flow-steps', type=int, default=600)
    parser.add_argument('--depth-steps', type=int, default=300)
    parser.add_argument('--kitti-steps', type=int, default=300)
    parser.add_argument('--flow-lr', type=float, default=1e-3)
    parser.add_argument('--depth-lr', type=float, default=2e-4)
    parser.add_argument('--train-frames', type=int, default=12,
                        help='frames per synthetic training sequence')
    parser.add_argument('--held-frames', type=int, default=6,
                        help='frames per held-out synthetic sequence')
    parser.add_argument('--no-cost-volume-norm', dest='cost_volume_norm', action='store_false',
                        help='train the original network (no feature normalisation before '
                             'the cost volume; learns far more slowly)')
    parser.add_argument('--tri-min-parallax-px', type=float,
                        default=Config().loss.tri_min_parallax_px,
                        help='parallax floor of the triangulated points (0: the original '
                        'filter, under which the depth net collapses to a constant depth)')
    parser.add_argument('--init-flow', type=Path, default=None,
                        help='skip the synthetic flow stage: start the depth stage from this '
                        'flow checkpoint (e.g. OUT/syn_flow/last.pth of an earlier run)')
    parser.add_argument('--parts', default='synthetic,kitti',
                        help='comma-separated parts to run: synthetic, kitti')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--kitti', type=Path, default=DEFAULT_KITTI)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', type=Path, default=None,
                        help='folder for the runs (default: a temporary folder)')
    args = parser.parse_args(argv)
    if args.quick:
        args.flow_steps, args.depth_steps, args.kitti_steps = 3, 2, 2
        args.train_frames, args.held_frames, args.batch = 3, 2, 2
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix='trianflow_learning_')
        args.out = Path(tmp.name)
    figures: Dict[str, float] = {}
    parts = {p.strip() for p in args.parts.split(',') if p.strip()}
    if not parts or parts - {'synthetic', 'kitti'}:
        parser.error(f'--parts must name synthetic and/or kitti, got {args.parts!r}')
    if 'synthetic' in parts:
        synthetic_part(args, figures)
    if 'kitti' in parts:
        kitti_part(args, figures)
    figures['seconds'] = time.perf_counter() - t_start
    print_report(args, figures)
    if tmp is not None:
        tmp.cleanup()
    return 0


def synthetic_part(args: argparse.Namespace, figures: Dict[str, float]) -> None:
    """Part 1: flow then depth stage on synthetic sequences (figures added in place)."""
    t_start = time.perf_counter()
    print(f'synthetic {args.height}x{args.width}, batch {args.batch}', flush=True)
    train, held = synthetic_sets(args)
    cfg_flow = bench_config('flow', args, args.flow_steps, args.flow_lr)
    torch.manual_seed(args.seed)
    untrained = build_model(cfg_flow)
    figures['flow_epe_untrained'] = flow_epe(untrained.flow_net, held, args.batch)
    figures['depth_absrel_untrained'] = depth_abs_rel(untrained.depth_net, held, args.batch)
    figures['depth_absrel_constant'] = depth_abs_rel(None, held, args.batch)
    init_flow = args.init_flow
    if init_flow is None:
        flow_trainer = train_stage(cfg_flow, args.out / 'syn_flow', train, held)
        trained_flow = flow_trainer.model.flow_net
        init_flow = args.out / 'syn_flow' / 'last.pth'
    else:
        print(f'  flow stage: taken from {init_flow}', flush=True)
        trained_flow, _ = load_networks(init_flow, depth=False)
    figures['flow_epe_trained'] = flow_epe(trained_flow, held, args.batch)
    figures['epe_factor'] = figures['flow_epe_untrained'] / figures['flow_epe_trained']

    cfg_depth = bench_config('depth', args, args.depth_steps, args.depth_lr)
    depth_trainer = train_stage(cfg_depth, args.out / 'syn_depth', train, held,
                                init_flow=init_flow)
    figures['depth_absrel_trained'] = depth_abs_rel(depth_trainer.model.depth_net, held,
                                                    args.batch)
    figures['synthetic_seconds'] = time.perf_counter() - t_start


def kitti_part(args: argparse.Namespace, figures: Dict[str, float]) -> None:
    """Part 2: flow stage on KITTI seq 06 (figures added in place)."""
    print(f'KITTI seq 06 {args.height}x{args.kitti_width}, batch {args.batch}', flush=True)
    t_kitti = time.perf_counter()
    _, kitti_train, kitti_held = kitti_sets(args)
    cfg_kitti = bench_config('flow', args, args.kitti_steps, args.flow_lr)
    cfg_kitti.data.dataset = 'kitti_odo'
    cfg_kitti.data.img_width = args.kitti_width
    torch.manual_seed(args.seed)
    before = kitti_errors(build_model(cfg_kitti).flow_net, kitti_held, args.batch,
                          cfg_kitti.loss.w_ssim)
    kitti_trainer = train_stage(cfg_kitti, args.out / 'kitti_flow', kitti_train, kitti_held)
    after = kitti_errors(kitti_trainer.model.flow_net, kitti_held, args.batch,
                         cfg_kitti.loss.w_ssim)
    dis = kitti_errors(DISFlowNet(), kitti_held, args.batch, cfg_kitti.loss.w_ssim)
    figures.update({'kitti_photo_before': before['photo'], 'kitti_photo_after': after['photo'],
                    'kitti_epipolar_before': before['epipolar'],
                    'kitti_epipolar_after': after['epipolar'],
                    'kitti_epipolar_rel_before': before['epipolar_rel'],
                    'kitti_epipolar_rel_after': after['epipolar_rel'],
                    'kitti_photo_dis': dis['photo'], 'kitti_epipolar_dis': dis['epipolar'],
                    'kitti_epipolar_rel_dis': dis['epipolar_rel'],
                    'kitti_seconds': time.perf_counter() - t_kitti})


def print_report(args: argparse.Namespace, figures: Dict[str, float]) -> None:
    """Print the table and the JSON line."""
    rows = [('synthetic flow EPE (px, held-out)', 'flow_epe_untrained', 'flow_epe_trained'),
            ('synthetic depth AbsRel (median-scaled)', 'depth_absrel_untrained',
             'depth_absrel_trained'),
            ('  (a constant depth map scores)', 'depth_absrel_constant',
             'depth_absrel_constant'),
            ('KITTI 06 photometric (L1+SSIM)', 'kitti_photo_before', 'kitti_photo_after'),
            ('KITTI 06 epipolar Sampson (px, GT F)', 'kitti_epipolar_before',
             'kitti_epipolar_after'),
            ('KITTI 06 Sampson / flow magnitude', 'kitti_epipolar_rel_before',
             'kitti_epipolar_rel_after')]
    print(f'\n| {"figure":<40} | {"untrained":>10} | {"trained":>10} |')
    print(f'|{"-" * 42}|{"-" * 12}|{"-" * 12}|')
    for name, a, b in rows:
        if a in figures:
            print(f'| {name:<40} | {figures[a]:>10.4f} | {figures[b]:>10.4f} |')
    if 'kitti_photo_dis' in figures:
        print(f'KITTI 06 reference, OpenCV DIS flow: photometric {figures["kitti_photo_dis"]:.4f}'
              f', Sampson {figures["kitti_epipolar_dis"]:.4f} px, Sampson / flow magnitude '
              f'{figures["kitti_epipolar_rel_dis"]:.4f}')
    if 'epe_factor' in figures:
        print(f'\nEPE factor {figures["epe_factor"]:.2f}x')
    print(f'total {figures["seconds"]:.0f} s '
          f'({platform.processor() or platform.machine()}, {args.threads} threads)')
    settings = {'height': args.height, 'width': args.width, 'kitti_width': args.kitti_width,
                'batch': args.batch,
                'flow_steps': args.flow_steps, 'depth_steps': args.depth_steps,
                'kitti_steps': args.kitti_steps, 'flow_lr': args.flow_lr,
                'depth_lr': args.depth_lr, 'cost_volume_norm': args.cost_volume_norm,
                'tri_min_parallax_px': args.tri_min_parallax_px,
                'init_flow': None if args.init_flow is None else str(args.init_flow),
                'quick': args.quick, 'parts': args.parts}
    print(json.dumps({**{k: round(v, 5) for k, v in figures.items()}, **settings}))


if __name__ == '__main__':
    raise SystemExit(main())
