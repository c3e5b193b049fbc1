#!/usr/bin/env python3
"""
The GPU figures of ``bench/cuda_all.sh``, one part per call; the last printed line is JSON.

Parts (``python bench/cuda_parts.py PART [--device cuda] [--smoke]``):

``nets``
    The paper's networks (full width, **random weights**, seed 0; speed does not depend on the
    values) at 256x832, batch 1, as the VO calls them: the flow net both ways
    (``FlowNet.forward_backward``, full-resolution flows) and the depth net
    (``predict_depth``). fp32 (cuDNN benchmark on, torch's default TF32 settings, recorded),
    then ``torch.autocast`` fp16 and bf16 ("AMP"), each with its largest difference from fp32
    (flow px, depth). ms per call: median over the repeats after a warm-up,
    ``torch.cuda.synchronize`` around every call.
``vo``
    ``trianflow_ros.vo.VisualOdometry`` at 256x832 with the paper networks (**random
    weights**) as the flow and depth providers (eager backend: ONNX Runtime is CPU-only),
    frames/s over the sequence after a warm-up on its first frames:
    ``kitti``: KITTI 06 frames 0-50 of ``../shared/data/kitti_odometry_seq06`` (random flow:
    most frames are LOST, which skips the pose solver, so this rate is optimistic);
    ``oracle``: a synthetic forward sequence where the paper networks run (their full cost)
    but the VO gets the exact flow and depth of the renderer, so every frame is tracked and
    does the whole geometry: the rate a trained network of the same size would give.
``train``
    ``trianflow-train``'s training step (``Trainer``; Adam, AMP as ``train.amp``) at 256x832,
    batch 8, on synthetic pairs, stages ``flow`` and ``depth_pose`` (joint): iterations/s over
    the measured steps after warm-up steps (synchronised), and the peak of
    ``torch.cuda.max_memory_allocated`` over the run.

``--smoke``: tiny sizes and counts (64x192, a few frames / steps; the CPU check of the
script, no figures). Run from the repository root.
"""

import argparse
import json
from pathlib import Path
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
for _p in (REPO_ROOT, REPO_ROOT / 'bench'):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from trianflow_ros.config import Config  # noqa: E402
from trianflow_ros.nets.depth_net import DepthNet  # noqa: E402
from trianflow_ros.nets.flow_net import FlowNet  # noqa: E402
from trianflow_ros.vo.backends import DepthModule, FlowPairModule, max_abs_diff  # noqa: E402
from trianflow_ros.vo.providers import DepthProvider, FlowProvider  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / 'shared' / 'data'


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Dict:
    """Return median / min ms of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {'ms': round(statistics.median(times), 3), 'ms_min': round(min(times), 3)}


def paper_nets(device: torch.device):
    """Return the paper's flow and depth nets (width 1, random weights, seed 0) on device."""
    torch.manual_seed(0)
    cfg = Config()
    return (FlowNet.from_config(cfg).to(device).eval(),
            DepthNet.from_config(cfg).to(device).eval())


# --------------------------------------------------------------------------------------------
def part_nets(device: torch.device, smoke: bool) -> Dict:
    """Flow (both ways) and depth net, fp32 / fp16 / bf16 autocast, ms per call."""
    h, w = (64, 192) if smoke else (256, 832)
    warmup, repeats = (1, 2) if smoke else (10, 50)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    flow_net, depth_net = paper_nets(device)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(1, 3, h, w, generator=g).to(device) for _ in range(2))
    modules = {'flow': (FlowPairModule(flow_net), (a, b)), 'depth': (DepthModule(depth_net), (a,))}
    # autocast fp16 on the CPU is not what a GPU does; the smoke run checks bf16 only there
    dtypes = {'fp32': None, 'bf16': torch.bfloat16}
    if device.type == 'cuda':
        dtypes = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
    out: Dict = {'hw': [h, w], 'weights': 'random (paper architecture, width 1)',
                 'batch': 1}
    if device.type == 'cuda':
        out['cudnn_allow_tf32'] = torch.backends.cudnn.allow_tf32
        out['matmul_allow_tf32'] = torch.backends.cuda.matmul.allow_tf32
    for name, (module, inputs) in modules.items():
        with torch.no_grad():
            ref = module(*inputs)
        for tag, dtype in dtypes.items():
            def call(module=module, inputs=inputs, dtype=dtype):
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                     enabled=dtype is not None):
                    return module(*inputs)
            try:
                row = timed(call, device, warmup, repeats)
                row['max_abs_diff_vs_fp32'] = float(f'{max_abs_diff(call(), ref):.3g}')
            except Exception as e:  # noqa: B902 - one failing precision is recorded, not fatal
                row = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'}
            out[f'{name}_{tag}'] = row
            print(f'{name} {tag}: {row}', flush=True)
    return out


# --------------------------------------------------------------------------------------------
class _CostedFlow(FlowProvider):
    """Run a network flow provider for its cost, return the oracle's flow (see ``vo``)."""

    learned = True

    def __init__(self, net, oracle):
        self.net, self.oracle = net, oracle

    def __call__(self, img_prev, img_cur):
        self.net(img_prev, img_cur)
        return self.oracle(img_prev, img_cur)


class _CostedDepth(DepthProvider):
    """Run a network depth provider for its cost, return the oracle's depth."""

    def __init__(self, net, oracle):
        self.net, self.oracle = net, oracle
        self.scale_kind = oracle.scale_kind

    def __call__(self, image):
        self.net(image)
        return self.oracle(image)


def _run_vo(vo, frames: List, K, device: torch.device, warmup: int) -> Dict:
    from trianflow_ros.vo.types import TrackingState
    for stamp, image in frames[:warmup]:
        vo.step(stamp, image, K)
    vo.reset()
    sync(device)
    states, stage_ms = [], {}
    t0 = time.perf_counter()
    for stamp, image in frames:
        result = vo.step(stamp, image, K)
        states.append(result.state)
        for k, v in result.timings.items():
            stage_ms.setdefault(k, []).append(v)
    sync(device)
    seconds = time.perf_counter() - t0
    return {'frames': len(frames), 'fps': round(len(frames) / seconds, 2),
            'lost': sum(s == TrackingState.LOST for s in states),
            'stage_ms_mean': {k: round(float(np.mean(v)), 2) for k, v in stage_ms.items()}}


def part_vo(device: torch.device, smoke: bool, data: Path) -> Dict:
    """VO frames/s with the paper networks (random weights) on KITTI 06 and a synthetic run."""
    from trianflow_ros.data.synthetic import make_sequence
    from trianflow_ros.vo import (NetworkDepthProvider, NetworkFlowProvider,
                                  OracleDepthProvider, OracleFlowProvider, VisualOdometry)
    h, w = (64, 192) if smoke else (256, 832)
    frames_n, warmup = (3, 1) if smoke else (51, 5)
    cfg = Config()
    cfg.data.img_height, cfg.data.img_width = h, w
    cfg.vo.net_backend = 'eager'
    flow_net, depth_net = paper_nets(device)
    out: Dict = {'hw': [h, w], 'weights': 'random (paper architecture, width 1)',
                 'backend': 'eager'}

    def providers():
        return (NetworkFlowProvider(flow_net, device=device, bgr=True, backend='eager'),
                NetworkDepthProvider(depth_net, device=device, bgr=True, backend='eager'))

    try:
        import pose_solver
        seq = pose_solver.load_sequence(data, frames_n)
        frames = [(i / 10.0, np.repeat(img[:, :, None], 3, axis=2))
                  for i, img in enumerate(seq.images)]
        flow, depth = providers()
        vo = VisualOdometry(cfg, flow=flow, depth=depth, device=device)
        out['kitti'] = _run_vo(vo, frames, seq.K, device, warmup)
        print(f'kitti: {out["kitti"]}', flush=True)
    except Exception as e:  # noqa: B902 - recorded per sub-part
        out['kitti'] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'}
    try:
        syn = make_sequence('forward', 3 if smoke else 30, h, w, seed=2000)
        frames = [(i / 10.0, img) for i, img in enumerate(syn.images_uint8())]
        flow, depth = providers()
        vo = VisualOdometry(cfg, flow=_CostedFlow(flow, OracleFlowProvider(syn)),
                            depth=_CostedDepth(depth, OracleDepthProvider(syn)), device=device)
        out['oracle'] = _run_vo(vo, frames, syn.K.numpy().astype(np.float64), device, warmup)
        print(f'oracle: {out["oracle"]}', flush=True)
    except Exception as e:  # noqa: B902 - recorded per sub-part
        out['oracle'] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'}
    return out


# --------------------------------------------------------------------------------------------
def part_train(device: torch.device, smoke: bool, stages: List[str]) -> Dict:
    """Training iterations/s and peak memory at 256x832, batch 8, per stage."""
    from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset
    from trianflow_ros.train.trainer import Trainer
    h, w = (64, 192) if smoke else (256, 832)
    batch, warmup, steps = (2, 1, 1) if smoke else (8, 5, 30)
    out: Dict = {'hw': [h, w], 'batch': batch, 'warmup_steps': warmup, 'steps': steps,
                 'data': 'synthetic forward + handheld pairs'}
    for stage in stages:
        cfg = Config()
        cfg.data.dataset = 'synthetic'
        cfg.data.img_height, cfg.data.img_width = h, w
        cfg.train.mode = stage
        cfg.train.batch_size = batch
        cfg.train.num_workers = 0 if smoke else 4
        cfg.train.num_iterations = 10**6
        dataset = SyntheticPairDataset(kinds=('forward', 'handheld'), seeds=(0,),
                                       num_frames=3 if smoke else 9, height=h, width=w,
                                       bgr=cfg.data.bgr)
        for i in range(len(dataset)):          # render before the loader forks its workers
            dataset[i]
        row: Dict = {}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(cfg, tmp, device=str(device), quiet=True, tensorboard=False,
                                  train_dataset=dataset, val_dataset=dataset,
                                  log=lambda msg: None)
                trainer.model.train()
                row['amp'] = trainer.use_amp
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats(device)
                loader = iter(trainer._loader(warmup + steps))
                for _ in range(warmup):
                    trainer._train_step(next(loader))
                sync(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    trainer._train_step(next(loader))
                sync(device)
                seconds = time.perf_counter() - t0
                row['it_per_s'] = round(steps / seconds, 3)
                row['ms_per_it'] = round(1e3 * seconds / steps, 1)
                if device.type == 'cuda':
                    row['peak_memory_gib'] = round(
                        torch.cuda.max_memory_allocated(device) / 2**30, 3)
                trainer.close()
        except Exception as e:  # noqa: B902 - recorded per stage
            row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'
        out[stage] = row
        print(f'train {stage}: {row}', flush=True)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('part', choices=('nets', 'vo', 'train'))
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--smoke', action='store_true', help='tiny sizes (a check, no figures)')
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA)
    parser.add_argument('--stages', default='flow,depth_pose', help='training stages')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.smoke and device.type == 'cpu':
        torch.set_num_threads(1)      # two torch threads crawl on a shared 2-core CPU
    if device.type == 'cuda' and not torch.cuda.is_available():
        print(json.dumps({'error': 'CUDA is not available'}))
        return 2
    t0 = time.perf_counter()
    if args.part == 'nets':
        result = part_nets(device, args.smoke)
    elif args.part == 'vo':
        result = part_vo(device, args.smoke, args.data)
    else:
        result = part_train(device, args.smoke, [s for s in args.stages.split(',') if s])
    result.update({'device': str(device), 'smoke': args.smoke,
                   'seconds': round(time.perf_counter() - t0, 1),
                   'torch_threads': torch.get_num_threads()})
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
