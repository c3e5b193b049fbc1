#!/usr/bin/env python3
"""
Time the learned networks on the CPU with every inference backend of the VO.

Networks, as the VO calls them (``trianflow_ros.vo.backends``):

* ``flow``: the PWC flow net both ways (``FlowNet.forward_backward``, full-resolution
  ``flow_12`` and ``flow_21``), one call per frame pair;
* ``depth``: the depth net (``DepthNet.predict_depth``), one call per frame.

Sizes: ``default`` = the shipped weights ``models/default.pth`` at their stored input size
(64x192, half-width networks); ``paper`` = the paper's networks (full width) at 256x832 with
random weights (seed 0; speed does not depend on the values).

Backends: ``eager`` (``torch.no_grad``, what the providers ran before), ``inference_mode``,
``channels_last``, ``compile`` (``torch.compile``, inductor; its first call, the compilation,
is timed separately and it is recompiled for each thread count), ``onnx`` (exported once per
size with ``torch.onnx.export``, run by ONNX Runtime's CPU execution provider with
``intra_op_num_threads`` = the torch thread count, idle threads not spinning, as the VO uses
it; export time reported separately), ``onnx_spin`` (the same with ONNX Runtime's default
spinning idle threads, for comparison; not offered to the VO). Each backend's output is
compared with eager torch on the same random input (largest absolute difference: px of flow,
depth unit).

Times: ms per call, median (and min) over ``--repeats`` calls after ``--warmup`` calls, for each
thread count of ``--threads``; the load average is printed with every configuration. The last
printed line is one JSON object.

Run from the repository root::

    scripts/with_env.sh python bench/nets_cpu.py                  # ~10-15 min on 2 cores
    scripts/with_env.sh python bench/nets_cpu.py --quick          # seconds: smoke run
"""

import argparse
import datetime
import json
import os
from pathlib import Path
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from trianflow_ros.config import Config  # noqa: E402
from trianflow_ros.nets.depth_net import DepthNet  # noqa: E402
from trianflow_ros.nets.flow_net import FlowNet  # noqa: E402
from trianflow_ros.vo import backends as B  # noqa: E402
from trianflow_ros.vo.providers import load_networks  # noqa: E402

SIZES = ('default', 'paper')
BACKEND_NAMES = ('eager', 'inference_mode', 'channels_last', 'compile', 'onnx', 'onnx_spin')


def load_average() -> float:
    """Return the 1-minute load average (0 where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return 0.0


def build_nets(size: str, quick: bool = False):
    """
    Return (flow module, depth module, (H, W), description) for a size name.

    :param size: 'default' (the shipped weights at their input size) or 'paper' (full width,
        random weights, 256x832).
    :param quick: use 64x192 for 'paper' too (smoke runs).
    """
    if size == 'default':
        flow_net, depth_net = load_networks('default')
        cfg = flow_net.stored_config
        hw = (cfg.data.img_height, cfg.data.img_width)
        desc = (f'models/default.pth, width {cfg.flow_net.width_mult}/'
                f'{cfg.depth_net.width_mult}, {hw[0]}x{hw[1]}')
    else:
        torch.manual_seed(0)
        cfg = Config()
        flow_net, depth_net = FlowNet.from_config(cfg), DepthNet.from_config(cfg)
        hw = (64, 192) if quick else (256, 832)
        desc = f'paper nets (width 1, random weights), {hw[0]}x{hw[1]}'
    return (B.FlowPairModule(flow_net).eval(), B.DepthModule(depth_net).eval(), hw, desc)


def time_calls(runner, inputs, warmup: int, repeats: int) -> Dict[str, float]:
    """Return median / min ms per call of ``runner(*inputs)`` after ``warmup`` calls."""
    for _ in range(warmup):
        runner(*inputs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(*inputs)
        times.append((time.perf_counter() - t0) * 1e3)
    return {'ms': round(statistics.median(times), 2), 'ms_min': round(min(times), 2)}


def bench_module(module, inputs, threads: List[int], backends: List[str], warmup: int,
                 repeats: int, log) -> List[Dict]:
    """Time one module with each backend and thread count; return one row per pair."""
    rows = []
    ref = B.EagerRunner(module)(*inputs)
    onnx_model: Optional[bytes] = None
    export_s = None
    if 'onnx' in backends or 'onnx_spin' in backends:
        if B.onnxruntime_version() is None:
            log('  onnx: onnxruntime is not installed: skipped')
        else:
            t0 = time.perf_counter()
            try:
                onnx_model, exporter = B.export_onnx(module, inputs)
                export_s = round(time.perf_counter() - t0, 1)
                log(f'  onnx: exported with the {exporter} exporter in {export_s} s, '
                    f'{len(onnx_model) / 2**20:.1f} MiB')
            except RuntimeError as e:
                log(f'  onnx: export failed: {e}')
    for n in threads:
        torch.set_num_threads(n)
        for name in backends:
            row = {'backend': name, 'threads': n, 'load_before': load_average()}
            first_s = None
            try:
                if name in ('eager', 'inference_mode'):
                    runner = B.EagerRunner(module, inference_mode=name == 'inference_mode')
                elif name == 'channels_last':
                    runner = B.ChannelsLastRunner(module)
                elif name == 'compile':
                    torch._dynamo.reset()
                    runner = B.CompileRunner(module)
                    t0 = time.perf_counter()
                    runner(*inputs)
                    first_s = round(time.perf_counter() - t0, 1)
                    row['compile_s'] = first_s
                elif name in ('onnx', 'onnx_spin'):
                    if onnx_model is None:
                        continue
                    runner = B.OnnxRunner(onnx_model, threads=n, spinning=name == 'onnx_spin')
                    row['export_s'] = export_s
                else:
                    raise ValueError(f'unknown backend {name}')
                out = runner(*inputs)
                row['max_abs_diff'] = float(f'{B.max_abs_diff(out, ref):.3g}')
                row.update(time_calls(runner, inputs, warmup, repeats))
            except Exception as e:  # noqa: B902 - a backend that fails is reported, not fatal
                row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
            row['load_after'] = load_average()
            rows.append(row)
            extra = f', compile {first_s} s' if first_s is not None else ''
            log(f'  {name:15s} {n} thr: ' + (
                f'{row["ms"]:9.2f} ms (min {row["ms_min"]:.2f}), max |diff| '
                f'{row["max_abs_diff"]:.2g}{extra}, load {row["load_before"]}'
                if 'ms' in row else row.get('error', '')))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default=','.join(SIZES), help='default,paper')
    parser.add_argument('--threads', default='1,2', help='torch / ORT thread counts')
    parser.add_argument('--backends', default=','.join(BACKEND_NAMES),
                        help='any of ' + ','.join(BACKEND_NAMES))
    parser.add_argument('--nets', default='flow,depth')
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--quick', action='store_true',
                        help='smoke run: 64x192 for every size, 2 repeats, no compile')
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(',') if s]
    backends = [b for b in args.backends.split(',') if b]
    nets = [n for n in args.nets.split(',') if n]
    threads = [int(t) for t in args.threads.split(',') if t]
    if args.quick:
        args.repeats, args.warmup = 2, 1
        backends = [b for b in backends if b != 'compile']
    for s in sizes:
        if s not in SIZES:
            parser.error(f'unknown size {s!r} (choose from {SIZES})')
    for b in backends:
        if b not in BACKEND_NAMES:
            parser.error(f'unknown backend {b!r} (choose from {BACKEND_NAMES})')

    def log(text: str) -> None:
        print(text, flush=True)

    start = datetime.datetime.now(datetime.timezone.utc)
    log(f'{start:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, torch {torch.__version__}, onnxruntime '
        f'{B.onnxruntime_version()}, load {load_average()}')
    result = {'date': start.isoformat(timespec='seconds'), 'torch': torch.__version__,
              'onnxruntime': B.onnxruntime_version(), 'cpus': os.cpu_count(),
              'repeats': args.repeats, 'warmup': args.warmup, 'rows': []}
    fastest = {}
    for size in sizes:
        flow, depth, (h, w), desc = build_nets(size, args.quick)
        g = torch.Generator().manual_seed(0)
        images = [torch.rand(1, 3, h, w, generator=g) for _ in range(2)]
        for net in nets:
            module, inputs = (flow, images) if net == 'flow' else (depth, images[:1])
            log(f'{net} net, {desc}:')
            rows = bench_module(module, inputs, threads, backends, args.warmup, args.repeats,
                                log)
            for row in rows:
                row.update({'size': size, 'net': net, 'hw': [h, w]})
            result['rows'].extend(rows)
            for n in threads:
                ok = [r for r in rows if r['threads'] == n and 'ms' in r
                      and r['backend'] in B.BACKENDS and r['max_abs_diff'] <= B.TOLERANCE]
                if ok:
                    best = min(ok, key=lambda r: r['ms'])
                    fastest[f'{size}_{net}_{n}thr'] = best['backend']
    result['fastest_vo_backend'] = fastest     # of vo.net_backend's, within 1e-4 of eager
    result['load_end'] = load_average()
    log('')
    log('| net | size | threads | ' + ' | '.join(backends) + ' |')
    log('|---|---|---|' + '---|' * len(backends))
    for size in sizes:
        for net in nets:
            for n in threads:
                cells = []
                for b in backends:
                    r = next((r for r in result['rows'] if r['size'] == size
                              and r['net'] == net and r['threads'] == n
                              and r['backend'] == b), None)
                    cells.append('-' if r is None or 'ms' not in r else f'{r["ms"]:.1f}')
                log(f'| {net} | {size} | {n} | ' + ' | '.join(cells) + ' |')
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
