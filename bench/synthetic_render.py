"""
Time the synthetic sequence generator: rendering N frames and computing one pair's ground truth.

Usage: ``python bench/synthetic_render.py [--kind forward] [--frames 64] [--height 256]
[--width 832]`` (``--kind``: any of ``KINDS``, e.g. highway or handheld30). The last printed
line is one JSON object with the figures.
"""

import argparse
import json
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trianflow_ros.data.synthetic import KINDS, make_sequence  # noqa: E402


def main() -> None:
    """Parse arguments, render, print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--kind', default='forward', choices=KINDS, help='trajectory kind')
    parser.add_argument('--frames', type=int, default=64, help='number of frames')
    parser.add_argument('--height', type=int, default=256, help='image height')
    parser.add_argument('--width', type=int, default=832, help='image width')
    parser.add_argument('--seed', type=int, default=0, help='seed')
    parser.add_argument('--aa', type=int, default=3, help='edge anti-aliasing grid (1 = off)')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads while rendering (0 = keep torch default)')
    args = parser.parse_args()

    start, cpu = time.perf_counter(), time.process_time()
    seq = make_sequence(args.kind, num_frames=args.frames, height=args.height,
                        width=args.width, seed=args.seed, aa=args.aa,
                        threads=args.threads or None)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu
    start = time.perf_counter()
    pair = seq.pair(0, 1)
    pair_seconds = time.perf_counter() - start
    depth = seq.depths
    print(f'rendered {args.frames} {args.kind} frames of {args.height}x{args.width} in '
          f'{seconds:.2f} s ({1000 * seconds / args.frames:.1f} ms/frame, '
          f'{cpu_seconds:.2f} s CPU; {seq.threads} torch thread(s) while rendering)')
    print(f'pair(0, 1) ground truth: {pair_seconds:.2f} s; valid fraction '
          f'{float(pair.valid_ij.float().mean()):.3f}; depth {float(depth.min()):.2f}-'
          f'{float(depth.max()):.1f} m; scene rectangles {len(seq.scene)}')
    print(json.dumps({
        'kind': args.kind, 'frames': args.frames, 'height': args.height, 'width': args.width,
        'aa': args.aa, 'render_threads': seq.threads,
        'seconds_total': round(seconds, 3), 'ms_per_frame': round(1000 * seconds / args.frames, 1),
        'cpu_seconds': round(cpu_seconds, 3), 'pair_seconds': round(pair_seconds, 3),
        'depth_max_m': round(float(depth.max()), 2),
        'valid_fraction_01': round(float(pair.valid_ij.float().mean()), 4),
    }))


if __name__ == '__main__':
    main()
