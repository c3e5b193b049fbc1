#!/usr/bin/env bash
# Train the shipped default weights (models/default.pth) with the project's trainer.
#
#   scripts/train_default_weights.sh [RUN_DIR]      (default RUN_DIR: runs/default_weights)
#
# Stage 1 (flow) and stage 2 (depth, flow frozen) of TrianFlow, small variant (width 0.5),
# 64 x 192, BGR, config/default_weights.yaml. Training data: synthetic sequences rendered by
# trianflow_ros.data.synthetic (kinds forward + handheld, seeds 0-7, 12 frames each) and the
# 51 real frames of KITTI odometry sequence 06 (image_0) in ../shared/data/kitti_odometry_seq06
# when present. Held-out evaluation data (never trained on): synthetic seeds 100, 101, 2000.
# Steps: FLOW_STEPS (default 800, lr FLOW_LR 1e-3) and DEPTH_STEPS (default 600, lr DEPTH_LR
# 2e-4); the flow net normalises its features before the cost volume (flow_net.cost_volume_norm,
# see docs/BENCHMARKS.md: the original network does not learn in a CPU budget). Stop a stage early with
# Ctrl-C / kill and continue with the latest checkpoint (constant learning rate).
# The final checkpoint is written with scripts/train_default_weights.sh's export step:
# optimizer state stripped, the resolved config (with the variant) kept.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${1:-$ROOT/runs/default_weights}"
# Environment: STAGE, FLOW_STEPS, DEPTH_STEPS, DEVICE (cpu | cuda | auto), EXPORT (the output /
# evaluated file, default models/default.pth), EVAL_FRAMES (default 30), OMP_NUM_THREADS.
STAGE="${STAGE:-all}"            # all (flow, depth, export) | flow | depth | export | eval
export FLOW_STEPS="${FLOW_STEPS:-800}" DEPTH_STEPS="${DEPTH_STEPS:-600}"
export FLOW_LR="${FLOW_LR:-1e-3}" DEPTH_LR="${DEPTH_LR:-2e-4}"
export RUN ROOT STAGE
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/scripts/with_env.sh" "${PYTHON:-$ROOT/.venv/bin/python}" - <<'PY'
import os
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from trianflow_ros.config import load_config
from trianflow_ros.data.kitti_odometry import KittiOdometryDataset
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset
from trianflow_ros.model import build_model
from trianflow_ros.nets import DepthNet, FlowNet
from trianflow_ros.train.trainer import Trainer

root, run, stage = Path(os.environ['ROOT']), Path(os.environ['RUN']), os.environ['STAGE']
kitti = root.parent / 'shared' / 'data' / 'kitti_odometry_seq06'
torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


def model_factory(cfg):
    """build_model with the nets of the configured variant (flow_net/depth_net.width_mult)."""
    model = build_model(cfg)
    model.flow_net = FlowNet.from_config(cfg)
    model.depth_net = DepthNet.from_config(cfg)
    return model


GROUND_TRUTH = ('depth1', 'depth2', 'flow_12', 'flow_21', 'valid_12', 'valid_21')


def self_supervised(sample):
    """Drop the synthetic ground truth (not used by the losses; KITTI samples lack it)."""
    return {k: v for k, v in sample.items() if k not in GROUND_TRUTH}


def datasets(cfg):
    hw = dict(height=cfg.data.img_height, width=cfg.data.img_width, bgr=cfg.data.bgr)
    parts = [SyntheticPairDataset(kinds=('forward', 'handheld'), seeds=range(8),
                                  num_frames=12, transform=self_supervised, **hw)]
    if kitti.is_dir():
        parts.append(KittiOdometryDataset(kitti, split=['06'], camera=0, **hw))
    val = SyntheticPairDataset(kinds=('forward', 'handheld'), seeds=(1000,), num_frames=4, **hw)
    return ConcatDataset(parts), val


def train(mode, steps, lr, **init):
    cfg = load_config(root / 'config' / 'default_weights.yaml',
                      [f'train.mode={mode}', f'train.num_iterations={steps}', f'train.lr={lr}'])
    out = run / mode
    resume = out / 'last.pth'
    train_set, val_set = datasets(cfg)
    trainer = Trainer(cfg, out, device=os.environ.get('DEVICE', 'cpu'), quiet=True,
                      train_dataset=train_set,
                      val_dataset=val_set, val_samples=6, model_factory=model_factory,
                      resume=resume if resume.is_file() else None,
                      **({} if resume.is_file() else init))
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    print(f'{mode}: step {result.step}, {result.seconds:.0f} s, {result.val_metrics}',
          flush=True)


if stage in ('all', 'flow'):
    train('flow', int(os.environ['FLOW_STEPS']), float(os.environ['FLOW_LR']))
if stage in ('all', 'depth'):
    train('depth', int(os.environ['DEPTH_STEPS']), float(os.environ['DEPTH_LR']),
          init_flow=run / 'flow' / 'last.pth')
if stage in ('all', 'export'):
    ckpt = torch.load(run / 'depth' / 'last.pth', map_location='cpu', weights_only=True)
    keep = {k: v for k, v in ckpt['model_state_dict'].items()
            if k.startswith(('flow_net.', 'depth_net.'))}
    cfg = load_config(root / 'config' / 'default_weights.yaml')
    shipped = {'format': ckpt['format'], 'model_state_dict': keep, 'config': ckpt['config'],
               'step': ckpt['step']}
    for key in ('stage', 'mode'):
        if key in ckpt:
            shipped[key] = ckpt[key]
    out = Path(os.environ.get('EXPORT', root / 'models' / 'default.pth'))
    torch.save(shipped, out)
    print(f'wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(keep)} tensors, '
          f'step {ckpt["step"]})')
if stage == 'eval':
    # Held-out evaluation of the numbers in models/README.md (synthetic seeds never trained on).
    import json
    import time

    import numpy as np

    from trianflow_ros.data.synthetic import make_sequence
    from trianflow_ros.eval.depth_metrics import DepthEvaluator
    from trianflow_ros.eval.odometry_metrics import evaluate_odometry
    from trianflow_ros.eval.trajectory_io import Trajectory
    from trianflow_ros.vo.odometry import VisualOdometry
    from trianflow_ros.vo.providers import DISFlowProvider, load_networks

    weights = Path(os.environ.get('EXPORT', root / 'models' / 'default.pth'))
    frames = int(os.environ.get('EVAL_FRAMES', 30))
    cfg = load_config(root / 'config' / 'default_weights.yaml')
    h, w = cfg.data.img_height, cfg.data.img_width
    flow_net, depth_net = load_networks(weights)
    torch.manual_seed(0)
    untrained_flow, untrained_depth = FlowNet.from_config(cfg).eval(), DepthNet.from_config(cfg).eval()
    dis = DISFlowProvider(cfg.vo.dis_preset)
    seqs = [('forward', 100), ('handheld', 101), ('forward', 2000), ('handheld', 2000)]
    seqs = [make_sequence(k, num_frames=frames, height=h, width=w, seed=s) for k, s in seqs]
    res = {'weights': str(weights), 'size_mib': weights.stat().st_size / 2**20,
           'resolution': [h, w], 'threads': torch.get_num_threads()}
    epe = {'trained': [], 'untrained': [], 'dis': []}
    depth_eval = {'trained': DepthEvaluator(min_depth=1e-3, max_depth=100.0, crop=None),
                  'untrained': DepthEvaluator(min_depth=1e-3, max_depth=100.0, crop=None)}
    with torch.no_grad():
        for seq in seqs:
            for i in range(0, frames - 1, 3):
                pair = seq.pair(i, i + 1)
                a, b = pair.image_i[None].float(), pair.image_j[None].float()
                valid = pair.valid_ij[0] > 0.5
                gt = pair.flow_ij.float()
                for name, net in (('trained', flow_net), ('untrained', untrained_flow)):
                    f = net(a.flip(1), b.flip(1))[0][0]
                    epe[name].append(float((f - gt).norm(dim=0)[valid].mean()))
                f = dis(a, b)[0][0]
                epe['dis'].append(float((f - gt).norm(dim=0)[valid].mean()))
                for name, net in (('trained', depth_net), ('untrained', untrained_depth)):
                    d = net.predict_depth(a.flip(1))[0, 0]
                    depth_eval[name].add(pair.depth_i[0].float().numpy(), d.numpy())
        res['flow_epe'] = {k: float(np.mean(v)) for k, v in epe.items()}
        res['depth_abs_rel'] = {k: float(e.summary().means['abs_rel'])
                                for k, e in depth_eval.items()}
        x = seqs[0].images[:2].float()
        t0 = time.perf_counter()
        for _ in range(5):
            flow_net.forward_backward(x[:1].flip(1), x[1:].flip(1))
        res['ms_flow_fwd_bwd'] = (time.perf_counter() - t0) / 5 * 1e3
        t0 = time.perf_counter()
        for _ in range(5):
            depth_net.predict_depth(x[:1])
        res['ms_depth'] = (time.perf_counter() - t0) / 5 * 1e3
    for k, v in res.items():
        print(k, v, flush=True)
    variants = {'classical (DIS, no depth)': ('dis', 'none'),
                'learned flow + learned depth': ('net', 'net'),
                'learned flow, no depth': ('net', 'none'),
                'DIS + learned depth': ('dis', 'net')}
    res['vo'] = {}
    for label, (fl, dp) in variants.items():
        rows = []
        for seq in seqs:
            c = load_config(root / 'config' / 'default_weights.yaml',
                            [f'vo.flow_provider={fl}', f'vo.depth_provider={dp}',
                             f'vo.checkpoint={weights}', 'vo.device=cpu'])
            vo = VisualOdometry(c, device='cpu')
            poses, lost, t0 = [], 0, time.perf_counter()
            for i in range(frames):
                r = vo.step(i / 10.0, seq.images[i].float(), seq.K.double().numpy())
                poses.append(r.T_world_cam)
                lost += int(r.state.name == 'LOST')
            ms = (time.perf_counter() - t0) / frames * 1e3
            row = {'seq': f'{seq.kind}/{seq.seed}', 'lost': lost, 'ms_per_frame': ms}
            try:
                m = evaluate_odometry(Trajectory(seq.poses.numpy()),
                                      Trajectory(np.stack(poses)))
                row.update(ate_sim3=m.ate_sim3, rpe_trans=m.rpe_trans, rpe_rot=m.rpe_rot,
                           length_m=m.length_m)
            except ValueError as e:             # no motion estimated at all
                row.update(ate_sim3=None, error=str(e))
            rows.append(row)
        res['vo'][label] = rows
    for label, rows in res['vo'].items():
        print(label)
        for r in rows:
            print('   ', {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    print(json.dumps(res))
PY
