#!/usr/bin/env python3
"""
SA4Depth-style LM pose refinement: VO with / without it, and the small-scale generalisation test.

1. Visual odometry (``trianflow_ros.vo``) with and without the inference refinement
   (``geometry.refine.enabled``: :class:`~trianflow_ros.vo.odometry.VisualOdometry` refines
   each pair with :class:`trianflow_ros.vo.refinement.PoseRefiner`; image features: blurred
   grey + gradients, no weights):

   - synthetic 'forward' (driving) and 'handheld' sequences, seed 0, 96x320, with DIS flow and
     the oracle (exact, metric) depth, and classical (DIS flow, no depth: scale propagated by
     triangulation; the refinement then uses the propagated depth);
   - KITTI odometry seq 06 frames 0-50 (``../shared/data/kitti_odometry_seq06``, grey
     ``image_0`` at 256x832), classical DIS (as ``bench/vo_kitti.py``); the refinement's
     finest level there is ``--kitti-finest-level`` (default 2: 64x208; the 256x832 and
     128x416 levels made it worse, see docs/BENCHMARKS.md).

   ATE = RMSE of positions after Sim(3) alignment; RPE over consecutive frames (translation
   after the Sim(3) scale, rotation deg); ms per frame (``total`` and the ``refine`` stage).

2. Generalisation (TrianFlow's finding, at a very small scale): on the same synthetic training
   set (forward, seeds 0-3, 64x192, pairs at stride 1) train for a small fixed number of Adam
   steps (``--steps``, default 300, ``--flow-steps`` for the flow system; batch 4, one CPU
   thread, a minimal loop over ``model(batch, mode)`` / ``model.total_loss``; lr ``--lr`` 1e-3
   for both PoseNets, ``--flow-lr`` 1e-3 for the flow):

   - PoseNet (``PoseNetModel``, the odo_posenet loss weights);
   - PoseNet + refinement (``RefinedPoseNetModel``: the same, the pose LM-refined on learned
     features before the losses); tested with the PoseNet alone (as SA4Depth) and with the
     refinement at test time;
   - the flow/triangulation system: the flow stage (``TrianFlowModel``, mode 'flow', with
     ``flow_net.cost_volume_norm`` true unless ``--no-cost-volume-norm``: the original
     PWC-Net's ~1e-4 cost volume is ignored from scratch for thousands of steps), run in
     ``VisualOdometry`` with the trained FlowNet object (E + triangulation, classical scale:
     the first translation has norm ``vo.initial_scale``, so its |t| ratio is 1/3 by
     construction and is not reported); DIS flow (no training) is listed for reference.

   Tested on held-out sequences (seeds 100, 101; 13 frames) at stride 1 and stride 3 (3x faster
   motion, never seen in training): ATE (Sim3), RPE, the mean per-pair rotation error (deg)
   and the translation-norm ratio (median |t_est| / |t_gt| of the pairs, divided by the same
   ratio at stride 1: 1 = the speed generalises, 1/3 = the net still predicts stride-1 motion);
   lost / held: VO frames LOST or held as standstill (T = I).

Run from the repository root (one intra-op thread; ~1-1.4 s per training step and system on
the shared 2-core VM, i.e. ~30 minutes for 500 steps of each, plus ~10 minutes for part 1)::

    .venv/bin/python bench/refine.py                    # both parts
    .venv/bin/python bench/refine.py --skip-vo --steps 500  # part 2 in docs/BENCHMARKS.md
    .venv/bin/python bench/refine.py --quick    # smoke test

The last printed line is one JSON object.
"""

import argparse
import json
from pathlib import Path
import platform
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trianflow_ros.config import Config, load_config  # noqa: E402
from trianflow_ros.data.kitti_odometry import KittiOdometrySequence  # noqa: E402
from trianflow_ros.data.sample import collate_samples  # noqa: E402
from trianflow_ros.data.synthetic import make_sequence  # noqa: E402
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset  # noqa: E402
from trianflow_ros.eval.alignment import align_poses  # noqa: E402
from trianflow_ros.eval.odometry_metrics import ate_rmse, rpe_rmse  # noqa: E402
from trianflow_ros.model.posenet_model import PoseNetModel  # noqa: E402
from trianflow_ros.model.refined_posenet import RefinedPoseNetModel  # noqa: E402
from trianflow_ros.model.trianflow import TrianFlowModel  # noqa: E402
from trianflow_ros.vo import (DISFlowProvider, NetworkFlowProvider,  # noqa: E402
                              OracleDepthProvider, TrackingState, VisualOdometry)

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data'


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------

def rot_deg(R: np.ndarray) -> float:
    """Return the rotation angle of a (3, 3) rotation in degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def trajectory_errors(est: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    """ATE (Sim3), RPE (after the Sim3 scale) and per-pair rotation error / norm ratio."""
    gt = np.linalg.inv(gt[0]) @ gt
    est = np.linalg.inv(est[0]) @ est
    try:
        aligned, _ = align_poses(est, gt, 'sim3')
    except ValueError:          # every estimated position equal (e.g. all frames LOST)
        aligned = est.copy()
        aligned[:, :3, 3] = gt[:, :3, 3].mean(0)
    rpe_t, rpe_r = rpe_rmse(gt, aligned, 1)
    rel_e = [np.linalg.inv(est[i]) @ est[i + 1] for i in range(len(est) - 1)]
    rel_g = [np.linalg.inv(gt[i]) @ gt[i + 1] for i in range(len(gt) - 1)]
    rot = [rot_deg(e[:3, :3].T @ g[:3, :3]) for e, g in zip(rel_e, rel_g)]
    ratio = float(np.median([np.linalg.norm(e[:3, 3]) / max(np.linalg.norm(g[:3, 3]), 1e-9)
                             for e, g in zip(rel_e, rel_g)]))
    return {'ate': ate_rmse(gt[:, :3, 3], aligned[:, :3, 3]), 'rpe_t': rpe_t, 'rpe_r': rpe_r,
            'pair_rot_deg': float(np.mean(rot)), 'norm_ratio': ratio,
            'length': float(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum())}


# --------------------------------------------------------------------------------------------
# 1. VO with / without the inference refinement
# --------------------------------------------------------------------------------------------

def vo_config(h: int, w: int, refine: bool, **refine_kw) -> Config:
    """VO config at h x w on the CPU, refinement switched by ``refine``."""
    cfg = Config()
    cfg.data.img_height, cfg.data.img_width = h, w
    cfg.vo.device = 'cpu'
    cfg.geometry.refine.enabled = refine
    for k, v in refine_kw.items():
        setattr(cfg.geometry.refine, k, v)
    return cfg


def run_vo(cfg: Config, frames, flow, depth, gt: np.ndarray) -> Dict[str, float]:
    """Run the odometry (refining when configured) over (stamp, image, K) frames."""
    vo = VisualOdometry(cfg, flow, depth)        # refines when geometry.refine.enabled
    results = [vo.step(stamp, image, K) for stamp, image, K in frames]
    est = np.stack([r.T_world_cam for r in results])
    out = trajectory_errors(est, gt)
    tracked = [r for r in results[1:] if r.state != TrackingState.LOST]
    out['lost'] = sum(r.state == TrackingState.LOST for r in results)
    out['frames'] = len(results)
    out['ms_total'] = float(np.mean([r.timings['total'] for r in tracked])) if tracked else 0.0
    out['ms_refine'] = float(np.mean([r.timings.get('refine', 0.0) for r in tracked])) \
        if tracked else 0.0
    out['refined'] = sum('refined (' in r.message for r in results)
    out['rejected'] = sum('refinement:' in r.message for r in results)
    return out


def vo_experiments(args) -> Dict[str, Dict[str, float]]:
    """Part 1: synthetic forward / handheld (oracle depth, classical) and KITTI 06."""
    rows = {}
    n = 6 if args.quick else args.frames
    h, w = 96, 320
    for kind in ('forward', 'handheld'):
        seq = make_sequence(kind, n, h, w, seed=0)
        frames = [(float(i), im, seq.K.numpy()) for i, im in enumerate(seq.images_uint8())]
        gt = seq.poses.numpy()
        for depth_name in ('oracle', 'classical'):
            for refine in (False, True):
                depth = OracleDepthProvider(seq) if depth_name == 'oracle' else None
                cfg = vo_config(h, w, refine)
                name = f'synthetic {kind}, {depth_name} depth, refine {"on" if refine else "off"}'
                rows[name] = run_vo(cfg, frames, DISFlowProvider('medium'), depth, gt)
                print(f'{name}: {fmt_row(rows[name])}', flush=True)
    root = Path(args.data) / 'kitti_odometry_seq06'
    if root.is_dir():
        seq = KittiOdometrySequence(root, '06', camera=0)
        count = 6 if args.quick else len(seq)
        frames = [seq.frame(i) for i in range(count)]
        gt = seq.poses[:count]
        for refine in (False, True):
            cfg = vo_config(256, 832, refine, finest_level=args.kitti_finest_level)
            name = f'KITTI 06, classical, refine {"on" if refine else "off"}'
            rows[name] = run_vo(cfg, frames, DISFlowProvider('medium'), None, gt)
            print(f'{name}: {fmt_row(rows[name])}', flush=True)
    else:
        print(f'KITTI seq 06 not found at {root}: skipped', flush=True)
    return rows


def fmt_row(r: Dict[str, float]) -> str:
    """One-line summary of a result row."""
    return ' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                    for k, v in r.items())


# --------------------------------------------------------------------------------------------
# 2. generalisation: PoseNet, PoseNet + refinement, flow/triangulation
# --------------------------------------------------------------------------------------------

def train_config(mode: str, h: int, w: int, refine: bool = False,
                 cost_volume_norm: bool = True) -> Config:
    """
    Return the model config of one system (odo_posenet loss weights for the PoseNets).

    :param cost_volume_norm: ``flow_net.cost_volume_norm`` (used by the flow system: without
        it the from-scratch PWC-Net ignores its ~1e-4 cost volume for thousands of steps).
    """
    cfg = load_config(None, [f'flow_net.cost_volume_norm={str(cost_volume_norm).lower()}'])
    cfg.train.mode = mode
    cfg.data.img_height, cfg.data.img_width = h, w
    cfg.data.bgr = False
    if mode == 'posenet':
        cfg.loss.w_geo, cfg.loss.w_pt_depth, cfg.loss.w_pj_depth = 0.0, 0.0, 0.1
        cfg.loss.w_flow_error, cfg.loss.w_depth_smooth = 0.5, 1e-4
        cfg.geometry.refine.train = refine
        cfg.geometry.refine.iterations = 3
    return cfg


def train(model: torch.nn.Module, mode: str, dataset, steps: int, batch: int, lr: float,
          seed: int = 0) -> Dict[str, float]:
    """Run Adam on the trainable parameters for ``steps`` seeded random batches."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.Adam(model.parameters_to_train(mode), lr=lr)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randperm(len(dataset), generator=gen)[:batch].tolist()
        b = collate_samples([dataset[i] for i in idx])
        out = model(b, mode)
        total = model.total_loss(out.losses)
        if torch.isfinite(total):
            total.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(total.detach()))
    model.eval()
    k = max(1, min(5, len(losses) // 2))
    return {'steps': steps, 'lr': lr, 'loss_first': float(np.mean(losses[:k])),
            'loss_last': float(np.mean(losses[-k:])), 'seconds': time.perf_counter() - t0}


@torch.no_grad()
def posenet_trajectory(model, seq, refine: bool = False) -> np.ndarray:
    """Chain the (optionally test-time refined) PoseNet poses of consecutive frames."""
    poses = [np.eye(4)]
    K = seq.K[None].float()
    for i in range(len(seq) - 1):
        a, b = seq.images[i:i + 1].float(), seq.images[i + 1:i + 2].float()
        T = model.pose_net(a, b)
        if refine:
            T = model.refine(a, b, model.depth_net.predict_depth(a), T, K).T_ba
        poses.append(poses[-1] @ np.linalg.inv(T[0].double().numpy()))
    return np.stack(poses)


def vo_trajectory(flow, seq) -> (np.ndarray, Dict[str, int]):
    """Run the classical-scale VO with a flow provider; return poses, lost / held counts."""
    cfg = vo_config(seq.height, seq.width, False)
    cfg.vo.num_matches = 2000
    vo = VisualOdometry(cfg, flow, None)
    res = [vo.step(float(i), im, seq.K.numpy()) for i, im in enumerate(seq.images_uint8())]
    return np.stack([r.T_world_cam for r in res]), {
        'lost': sum(r.state == TrackingState.LOST for r in res),
        'held': sum(r.method == 'hold' for r in res)}     # standstill: T = I


def generalization(args) -> Dict[str, Dict]:
    """Part 2 (see the module docstring)."""
    h, w = 64, 192
    steps = 2 if args.quick else args.steps
    flow_steps = 2 if args.quick else (args.steps if args.flow_steps is None else args.flow_steps)
    n_train = 6 if args.quick else 12
    train_set = SyntheticPairDataset(kinds=('forward',), seeds=(0, 1, 2, 3), num_frames=n_train,
                                     height=h, width=w, stride=1)
    test_seqs = {stride: [make_sequence('forward', 5 if args.quick else 13, h, w, seed=s,
                                        stride=stride) for s in (100, 101)]
                 for stride in (1, 3)}
    systems = {}
    torch.manual_seed(0)
    pn = PoseNetModel(train_config('posenet', h, w))
    systems['PoseNet'] = {'train': train(pn, 'posenet', train_set, steps, 4, args.lr)}
    print('trained PoseNet', systems['PoseNet']['train'], flush=True)
    torch.manual_seed(0)
    pr = RefinedPoseNetModel(train_config('posenet', h, w, refine=True))
    systems['PoseNet+refine'] = {'train': train(pr, 'posenet', train_set, steps, 4, args.lr)}
    print('trained PoseNet+refine', systems['PoseNet+refine']['train'], flush=True)
    torch.manual_seed(0)
    fl = TrianFlowModel(train_config('flow', h, w, cost_volume_norm=args.cost_volume_norm))
    systems['flow/triangulation'] = {'train': train(fl, 'flow', train_set, flow_steps, 4,
                                                    args.flow_lr)}
    print('trained flow', systems['flow/triangulation']['train'], flush=True)
    # the VO runs this trained FlowNet object, so it keeps the training's cost_volume_norm
    assert fl.flow_net.pwc_model.cost_volume_norm == args.cost_volume_norm
    systems['PoseNet+refine (test-time refine)'] = {}
    systems['DIS/triangulation (no training)'] = {}

    evaluators = {
        'PoseNet': lambda s: (posenet_trajectory(pn, s), {}),
        'PoseNet+refine': lambda s: (posenet_trajectory(pr, s), {}),
        'PoseNet+refine (test-time refine)': lambda s: (posenet_trajectory(pr, s, True), {}),
        'flow/triangulation': lambda s: vo_trajectory(
            NetworkFlowProvider(fl.flow_net, device='cpu', bgr=False), s),
        'DIS/triangulation (no training)': lambda s: vo_trajectory(DISFlowProvider('medium'), s),
    }
    for name, fn in evaluators.items():
        for stride, seqs in test_seqs.items():
            per = []
            for s in seqs:
                est, counts = fn(s)
                e = trajectory_errors(est, s.poses.numpy())
                e['lost'] = counts.get('lost', 0)
                e['held'] = counts.get('held', 0)
                per.append(e)
            systems[name][f'stride{stride}'] = {k: float(np.mean([p[k] for p in per]))
                                                for k in per[0]}
        s1, s3 = systems[name]['stride1'], systems[name]['stride3']
        s3['norm_ratio_vs_stride1'] = s3['norm_ratio'] / max(s1['norm_ratio'], 1e-12)
        print(name, {k: v for k, v in systems[name].items() if k != 'train'}, flush=True)
    return systems


# --------------------------------------------------------------------------------------------

def print_tables(vo_rows: Dict, gen: Optional[Dict]) -> None:
    """Markdown tables of both parts."""
    print('\n| run | frames | lost | ATE (Sim3) | RPE t | RPE deg | refined / rejected | '
          'total ms | refine ms |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, r in vo_rows.items():
        print(f"| {name} | {r['frames']} | {r['lost']} | {r['ate']:.4f} | {r['rpe_t']:.4f} | "
              f"{r['rpe_r']:.3f} | {r['refined']} / {r['rejected']} | {r['ms_total']:.0f} | "
              f"{r['ms_refine']:.0f} |")
    if not gen:
        return
    print('\n| system | stride | ATE (Sim3) m | RPE t m | RPE deg | pair rot err deg | '
          '|t| ratio vs stride 1 | lost / held |')
    print('|---|---|---|---|---|---|---|---|')
    for name, r in gen.items():
        for stride in (1, 3):
            e = r[f'stride{stride}']
            ratio = f"{e['norm_ratio_vs_stride1']:.2f}" if stride == 3 else '1'
            if 'triangulation' in name:     # classical scale: 1st |t| = vo.initial_scale
                ratio = 'n/a'
            print(f"| {name} | {stride} | {e['ate']:.3f} | {e['rpe_t']:.3f} | "
                  f"{e['rpe_r']:.3f} | {e['pair_rot_deg']:.3f} | {ratio} | {e['lost']:.1f} / "
                  f"{e['held']:.1f} |")


def main(argv: Optional[List[str]] = None) -> int:
    """Run both experiments; print the tables and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--quick', action='store_true', help='smoke test (few frames/steps)')
    parser.add_argument('--frames', type=int, default=20, help='synthetic VO frames')
    parser.add_argument('--steps', type=int, default=300,
                        help='training steps of each PoseNet system (and of the flow system '
                             'unless --flow-steps)')
    parser.add_argument('--flow-steps', type=int, default=None,
                        help='training steps of the flow system (default: --steps)')
    parser.add_argument('--lr', type=float, default=1e-3,
                        help='Adam learning rate of both PoseNet systems')
    parser.add_argument('--flow-lr', type=float, default=1e-3,
                        help='Adam learning rate of the flow system')
    parser.add_argument('--no-cost-volume-norm', dest='cost_volume_norm', action='store_false',
                        help='train the flow system with the original PWC-Net cost volume '
                             '(flow_net.cost_volume_norm false)')
    parser.add_argument('--kitti-finest-level', type=int, default=2,
                        help='geometry.refine.finest_level on KITTI (2 = 64x208, 0 = 256x832)')
    parser.add_argument('--skip-vo', action='store_true', help='only the generalisation test')
    parser.add_argument('--skip-train', action='store_true', help='only the VO part')
    parser.add_argument('--data', default=str(DEFAULT_DATA), help='the shared data folder')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    vo_rows = {} if args.skip_vo else vo_experiments(args)
    gen = None if args.skip_train else generalization(args)
    print_tables(vo_rows, gen)
    summary = {'vo': vo_rows, 'generalization': gen, 'quick': args.quick,
               'steps': None if args.skip_train else (2 if args.quick else args.steps),
               'flow_steps': None if args.skip_train else (
                   2 if args.quick else args.flow_steps or args.steps),
               'lr': args.lr, 'flow_lr': args.flow_lr, 'cost_volume_norm': args.cost_volume_norm,
               'seconds': time.perf_counter() - t0, 'machine': platform.processor() or
               platform.machine(), 'torch': torch.__version__}
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
