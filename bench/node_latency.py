"""
End-to-end latency and throughput of the VO node over real ROS 2 topics, with the baseline.

One invocation measures, on the same frames:

- the node (``python -m trianflow_ros.ros.vo_node``, its own process, ``--device``) for each
  configuration of ``--configs`` at each input rate of ``--rates``: ``default`` = the node's
  defaults (today the classical pipeline: DIS flow, no depth network, 832x256) and ``learned``
  = ``checkpoint:=default`` (the shipped ``models/default.pth``, 64x192 networks);
- the 30-line baseline (``bench/baseline_vo.py``, in this process, no ROS) at the frames'
  native resolution and resized to 832x256 (like for like with the classical pipeline).

Frames: by default the real KITTI 06 frames (``image_0``, 51 grey frames 1226x370, published as
mono8 like a grey camera driver) from ``--data`` (default ``../shared/data``); ``--synthetic``
renders forward-driving frames instead (rgb8, ``--height x --width``, default 256x832).

One node per configuration (named ``vo_node_<config>``); it is warmed up first (``--warm``
frames in lock step: weights, ONNX session, first-call costs), then before each rate its
``~/reset`` service makes the next frame the new origin, so every rate starts from the same
state on the same frames. Images + CameraInfo are published RELIABLE, keep last 10 (a camera
driver), stamped with the wall clock at publishing. Per run: latency = ``publish()`` of the
image -> receipt of the ``nav_msgs/Odometry`` with the same stamp (conversion, resize, the
odometry, publishing, two DDS hops); processed / lost from the node's ``~/status`` (the node
keeps only the newest frame while busy: the rest are skipped); fps = processed frames / (the
first counted publish -> the last status received); per-stage times = the median of the
``time_*_ms`` values of ``~/status`` (the node's own timing of ``VisualOdometry.step``) over the
tracked (not LOST) frames, which also give the VO step alone per configuration (median total of
the tracked frames of every rate). The first ``--warmup`` frame(s) of each run are published
but not counted (after the reset the first frame only initialises).

Printed: a table, the targets of issue 15 (reported, never asserted) and, as the last line, one
JSON object with every figure.

Examples::

    scripts/with_env.sh python bench/node_latency.py                 # KITTI 06, both configs
    scripts/with_env.sh python bench/node_latency.py --quick         # smoke test (~10-20 s)
    scripts/with_env.sh python bench/node_latency.py --configs default --rates 10
    scripts/with_env.sh python bench/node_latency.py --synthetic --frames 40
    scripts/with_env.sh python bench/node_latency.py --device cuda --rates 10,30
"""

import argparse
from dataclasses import dataclass
import datetime
import json
import os
from pathlib import Path
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline_vo import baseline_vo  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_DATA = REPO.parent / 'shared' / 'data'
KITTI = Path('kitti_odometry_seq06')
#: node parameters of each configuration (on top of device and frame_skip).
CONFIGS: Dict[str, Dict[str, object]] = {'default': {}, 'learned': {'checkpoint': 'default'}}
#: the like-for-like size of the baseline (width, height): the classical working resolution.
LIKE_SIZE = (832, 256)
#: the stages of ``VisualOdometry.step`` shown in the table (``~/status`` time_<stage>_ms).
TABLE_STAGES = ('flow', 'depth', 'select', 'solver', 'scale', 'total')
#: targets of issue 15 item 3 (reported, never asserted).
TARGET_RATIO = 2.0
TARGET_FPS, TARGET_RATE, TARGET_P95 = 5.0, 10.0, 400.0


def cpu_name() -> str:
    """Return the CPU model name (Linux), else the platform's processor string."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def percentile(values: List[float], q: float) -> Optional[float]:
    """Return the q-th percentile of values, or None when empty."""
    return float(np.percentile(values, q)) if values else None


def load_average() -> Optional[List[float]]:
    """Return the 1, 5, 15 minute load averages (None where unavailable)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


@dataclass
class Frames:
    """
    The frames every run uses.

    :ivar images: the images as published, (H, W) uint8 (mono8) or (H, W, 3) uint8 (rgb8).
    :ivar encoding: 'mono8' or 'rgb8'.
    :ivar K: (3, 3) intrinsics at the native size.
    :ivar label: what they are, for the output.
    """

    images: List[np.ndarray]
    encoding: str
    K: np.ndarray
    label: str

    @property
    def hw(self):
        """Return (height, width)."""
        return self.images[0].shape[:2]


def load_frames(args) -> Frames:
    """Return the benchmark frames (KITTI 06 image_0, or rendered with ``--synthetic``)."""
    if args.synthetic:
        from trianflow_ros.data.synthetic import make_sequence
        n = args.frames or 40
        seq = make_sequence('forward', n, args.height, args.width, seed=0)
        return Frames(list(seq.images_uint8()), 'rgb8', seq.K.double().numpy(),
                      f'synthetic forward, {n} frames {args.height}x{args.width} (rgb8)')
    from trianflow_ros.data.kitti_odometry import KittiOdometrySequence
    seq = KittiOdometrySequence(args.data / KITTI, '06', camera=0)
    n = min(args.frames or len(seq), len(seq))
    images = [seq.load_image(i)[:, :, 0].copy() for i in range(n)]   # grey, repeated in RGB
    h, w = images[0].shape
    return Frames(images, 'mono8', seq.K.copy(),
                  f'KITTI 06 image_0 frames 0-{n - 1} ({w}x{h} mono8)')


def run_baseline(frames: Frames) -> Dict[str, Dict]:
    """Run the 30-line baseline at the native size and at 832x256; return its figures."""
    import cv2
    h, w = frames.hw
    out = {}
    for name, size in (('native', (w, h)), ('832x256', LIKE_SIZE)):
        K = frames.K.copy()
        K[0] *= size[0] / w
        K[1] *= size[1] / h
        images = [im if size == (w, h) else cv2.resize(im, size, interpolation=cv2.INTER_AREA)
                  for im in frames.images]
        res = baseline_vo(images, K)
        out[name] = {'res': f'{size[0]}x{size[1]}', 'frames': len(images), 'lost': res.lost,
                     'seconds': res.seconds, 'fps': len(images) / res.seconds,
                     'ms_per_frame': 1000.0 * res.seconds / len(images)}
    return out


class Bench:
    """The bench's ROS side: the camera publishers, the odometry / status subscriptions."""

    def __init__(self, domain: int, frames: Frames):
        """Create the bench node in its own context and spin it in a thread."""
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import Header

        from trianflow_ros.ros.conversions import make_camera_info, numpy_to_image

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = Node('node_latency_bench', context=self.context)
        camera_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.node.create_publisher(Image, '/bench/image', camera_qos)
        self.pub_info = self.node.create_publisher(CameraInfo, '/bench/camera_info', camera_qos)
        self.reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.lock = threading.Lock()
        self.odom_at: Dict[int, float] = {}        # stamp (ms) -> receipt (perf_counter)
        self.status: Dict[int, Dict] = {}          # stamp (ms) -> state, receipt, values
        self.diagnostics: Dict[str, Dict[str, str]] = {}   # node name -> last values
        self.odom_sub = self.node.create_subscription(Odometry, '/odom', self._on_odom,
                                                      self.reliable)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      self.reliable)
        self.status_sub = None
        header = Header(frame_id='camera_optical_frame')
        h, w = frames.hw
        self.messages = [(numpy_to_image(im, frames.encoding, header),
                          make_camera_info(frames.K, h, w, header)) for im in frames.images]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()
        self._last_stamp_ms = 0

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.01)
            except Exception:  # noqa: B902 - the context is going down
                return

    @staticmethod
    def _ms(sec: int, nanosec: int) -> int:
        return int(sec) * 1000 + int(nanosec) // 1000000

    def _on_odom(self, msg) -> None:
        t = time.perf_counter()
        with self.lock:
            self.odom_at.setdefault(self._ms(msg.header.stamp.sec, msg.header.stamp.nanosec), t)

    def _on_status(self, msg) -> None:
        t = time.perf_counter()
        values = {kv.key: kv.value for kv in msg.values}
        if 'stamp' not in values:
            return
        sec, _, frac = values['stamp'].partition('.')
        key = int(sec) * 1000 + int(round(float('0.' + (frac or '0')) * 1000))
        with self.lock:
            self.status[key] = {'state': values.get('state', ''), 't': t, 'values': values}

    def _on_diagnostics(self, msg) -> None:
        with self.lock:
            for s in msg.status:
                self.diagnostics[s.name.split(':')[0]] = {kv.key: kv.value for kv in s.values}

    def watch(self, node_name: str) -> None:
        """Subscribe to ``/<node_name>/status`` (the per-frame results of that node)."""
        from diagnostic_msgs.msg import DiagnosticStatus
        if self.status_sub is not None:
            self.node.destroy_subscription(self.status_sub)
        self.status_sub = self.node.create_subscription(
            DiagnosticStatus, f'/{node_name}/status', self._on_status, self.reliable)

    def next_stamp_ms(self) -> int:
        """Return a wall-clock stamp (whole ms) later than every previous one."""
        stamp = max(time.time_ns() // 1000000, self._last_stamp_ms + 1)
        self._last_stamp_ms = stamp
        return stamp

    def publish(self, index: int) -> Tuple[int, float]:
        """Publish frame ``index`` (image + camera_info) stamped now; return (stamp, time)."""
        image, info = self.messages[index]
        stamp = self.next_stamp_ms()
        for msg in (image, info):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1000)
            msg.header.stamp.nanosec *= 1000000
        t = time.perf_counter()
        self.pub_image.publish(image)
        self.pub_info.publish(info)
        return stamp, t

    def wait_for(self, condition, timeout: float, what: str, proc) -> None:
        """Wait until ``condition()`` holds; raise when the node exits or at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if proc.poll() is not None:
                raise RuntimeError(f'the node exited ({proc.returncode}) while waiting for '
                                   f'{what}')
            if time.monotonic() > deadline:
                raise RuntimeError(f'timed out after {timeout:.0f} s waiting for {what}')
            time.sleep(0.01)

    def done(self, stamp: int) -> bool:
        """Return whether the status and the odometry (unless LOST) of ``stamp`` arrived."""
        with self.lock:
            return stamp in self.status and (stamp in self.odom_at
                                             or self.status[stamp]['state'] == 'LOST')

    def call_trigger(self, service: str, timeout: float = 20.0) -> str:
        """Call a std_srvs/Trigger service; return its message."""
        from std_srvs.srv import Trigger
        client = self.node.create_client(Trigger, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise RuntimeError(f'service {service} not available')
            future = client.call_async(Trigger.Request())
            deadline = time.monotonic() + timeout
            while not future.done():
                if time.monotonic() > deadline:
                    raise RuntimeError(f'service {service} did not answer')
                time.sleep(0.01)
            result = future.result()
            if not result.success:
                raise RuntimeError(f'{service}: {result.message}')
            return result.message
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self._stop.set()
        self._spinner.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def start_node(config: str, args, env: Dict[str, str], work: Path):
    """Start the node of one configuration; return (process, name, log path)."""
    from trianflow_ros.ros import demo
    params = {'device': args.device, 'frame_skip': 1}
    params.update(CONFIGS[config])
    params.update(demo.parse_params(args.param))
    name = f'vo_node_{config}'
    demo.write_params_file(work / f'{config}.yaml', params)
    log_path = work / f'{name}.log'
    cmd = [sys.executable, '-m', 'trianflow_ros.ros.vo_node', '--ros-args',
           '-r', f'__node:={name}', '-r', 'image:=/bench/image',
           '-r', 'camera_info:=/bench/camera_info', '--params-file', str(work / f'{config}.yaml')]
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, name, log_path


def measure_run(bench: Bench, proc, rate: float, args) -> Dict:
    """Publish every frame at ``rate`` Hz; return the figures of the run."""
    n = len(bench.messages)
    published: Dict[int, float] = {}
    order: List[int] = []
    t0 = time.perf_counter()
    for i in range(n):
        target = t0 + i / rate
        while time.perf_counter() < target:
            time.sleep(min(0.002, max(0.0, target - time.perf_counter())))
        stamp, t = bench.publish(i)
        published[stamp] = t
        order.append(stamp)
    input_s = time.perf_counter() - t0
    # the node always processes the newest frame: wait for the last one (or for silence)
    last_change, seen = time.monotonic(), -1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and not bench.done(order[-1]):
        if proc.poll() is not None:
            raise RuntimeError(f'the node exited ({proc.returncode}) during the run')
        with bench.lock:
            count = len(bench.status)
        if count != seen:
            seen, last_change = count, time.monotonic()
        if time.monotonic() - last_change > args.idle:
            break
        time.sleep(0.01)
    with bench.lock:
        status = {s: bench.status[s] for s in order if s in bench.status}
        odom = {s: bench.odom_at[s] for s in order if s in bench.odom_at}
    counted = order[args.warmup:]
    processed = [s for s in counted if s in status]
    lost = [s for s in processed if status[s]['state'] == 'LOST']
    lat = [1000.0 * (odom[s] - published[s]) for s in counted if s in odom]
    span = (max(status[s]['t'] for s in processed) - published[counted[0]]) if processed else 0
    # stage times of the tracked frames (a LOST frame stops early: no solver / scale)
    tracked = [s for s in processed if status[s]['state'] != 'LOST']
    stages: Dict[str, float] = {}
    keys = sorted({k for s in tracked for k in status[s]['values']
                   if k.startswith('time_') and k.endswith('_ms')})
    for key in keys:
        values = [float(status[s]['values'][key]) for s in tracked
                  if key in status[s]['values']]
        stages[key[len('time_'):-len('_ms')]] = percentile(values, 50)
    totals = [float(status[s]['values']['time_total_ms']) for s in tracked
              if 'time_total_ms' in status[s]['values']]
    node_lat = [float(status[s]['values']['latency_ms']) for s in processed
                if status[s]['values'].get('latency_ms', 'n/a') != 'n/a']
    return {'rate_hz': rate, 'frames': len(counted), 'processed': len(processed),
            'skipped': len(counted) - len(processed), 'lost': len(lost),
            'with_odometry': len(lat), 'input_s': input_s,
            'fps': len(processed) / span if span > 0 else None,
            'latency_ms_mean': float(np.mean(lat)) if lat else None,
            'latency_ms_median': percentile(lat, 50), 'latency_ms_p95': percentile(lat, 95),
            'latency_ms_max': max(lat) if lat else None,
            'node_latency_ms_median': percentile(node_lat, 50), 'stage_ms': stages,
            'tracked': len(tracked), 'states': sorted({status[s]['state'] for s in processed}),
            '_totals': totals}


def run_config(bench: Bench, config: str, args, env: Dict[str, str], work: Path) -> Dict:
    """Start one configuration's node, warm it up, measure every rate; return its figures."""
    from trianflow_ros.ros.process import stop_process
    t_start = time.monotonic()
    proc, name, log_path = start_node(config, args, env, work)
    try:
        bench.watch(name)

        def ready():
            with bench.lock:
                up = name in bench.diagnostics
            return (up and bench.pub_image.get_subscription_count() >= 1
                    and bench.status_sub.get_publisher_count() >= 1
                    and bench.odom_sub.get_publisher_count() >= 1)
        bench.wait_for(ready, args.timeout, f'{name} to come up', proc)
        startup_s = time.monotonic() - t_start
        time.sleep(0.5)             # let the remaining endpoint matching finish
        t_warm = time.monotonic()
        for i in range(min(args.warm, len(bench.messages))):
            stamp, _ = bench.publish(i)
            bench.wait_for(lambda s=stamp: bench.done(s), args.timeout,
                           f'warm-up frame {i} of {name}', proc)
        warm_s = time.monotonic() - t_warm
        with bench.lock:
            info = dict(bench.diagnostics.get(name, {}))
        runs = {}
        for rate in args.rates:
            bench.call_trigger(f'/{name}/reset')
            time.sleep(0.2)
            print(f'{config}: {len(bench.messages)} frames at {rate:g} Hz ...', flush=True)
            runs[f'{rate:g}'] = measure_run(bench, proc, rate, args)
    except RuntimeError as e:
        raise RuntimeError(f'{config}: {e}; node log {log_path}') from e
    finally:
        stop_process(proc)
    # the VO step alone: the median total of the tracked frames of every rate
    totals = [t for r in runs.values() for t in r.pop('_totals')]
    keep = ('flow', 'depth', 'weights', 'weights_source', 'device', 'network_input',
            'net_backend')
    classical = info.get('flow') == 'dis' and info.get('depth') == 'none'
    label = config + (' (= classical)' if classical else
                      ''.join(f' ({k}:={v})' for k, v in CONFIGS[config].items()))
    return {'label': label, 'params': {**CONFIGS[config]}, 'classical': classical,
            'node': {k: info[k] for k in keep if k in info}, 'startup_s': startup_s,
            'warm_s': warm_s, 'vo_total_ms_median': percentile(totals, 50),
            'vo_tracked_frames': len(totals), 'rates': runs}


def targets(result: Dict) -> Dict:
    """Return the issue-15 targets against the figures (reported, never asserted)."""
    out = {}
    base = result['baseline'].get('832x256', {}).get('fps')
    classical = next((c for c in result['runs'].values() if c['classical']
                      and c['node'].get('network_input', '').startswith('832x256')), None)
    if classical is not None and base:
        # the fastest run without LOST frames (a LOST frame stops early and is cheap), if any
        runs = [r for r in classical['rates'].values() if not r['lost']] or list(
            classical['rates'].values())
        fast = max(runs, key=lambda r: r['fps'] or 0.0)
        total = classical['vo_total_ms_median']
        node_ratio = (fast['fps'] or 0.0) / base
        out['classical_vs_baseline_832'] = {
            'target': f'>= {TARGET_RATIO:g}x', 'baseline_fps': base,
            'node_fps': fast['fps'], 'node_rate_hz': fast['rate_hz'],
            'node_lost': fast['lost'], 'node_ratio': node_ratio,
            'vo_fps': 1000.0 / total if total else None,
            'vo_ratio': (1000.0 / total / base) if total else None,
            'met': node_ratio >= TARGET_RATIO}
    for config, c in result['runs'].items():
        r = c['rates'].get(f'{TARGET_RATE:g}')
        if r is None:
            continue
        out[f'{config}_at_{TARGET_RATE:g}hz'] = {
            'target': f'fps >= {TARGET_FPS:g}, p95 < {TARGET_P95:g} ms', 'fps': r['fps'],
            'p95_ms': r['latency_ms_p95'], 'lost': r['lost'], 'processed': r['processed'],
            'met': bool(r['fps'] is not None and r['fps'] >= TARGET_FPS
                        and r['latency_ms_p95'] is not None
                        and r['latency_ms_p95'] < TARGET_P95)}
    return out


def _f(x, d=1) -> str:
    return 'n/a' if x is None else f'{x:.{d}f}'


def table(result: Dict) -> str:
    """Return the markdown table of a result."""
    lines = ['| config | working res | input Hz | frames | processed | skipped | lost | fps | '
             'latency median ms | p95 ms | ' + ' | '.join(f'{s} ms' for s in TABLE_STAGES)
             + ' |', '|' + '---|' * (10 + len(TABLE_STAGES))]
    for c in result['runs'].values():
        res = c['node'].get('network_input', '?').split(' ')[0]
        for r in c['rates'].values():
            stages = ' | '.join(_f(r['stage_ms'].get(s), 0) for s in TABLE_STAGES)
            lines.append(f"| {c['label']} | {res} | {r['rate_hz']:g} | {r['frames']} | "
                         f"{r['processed']} | {r['skipped']} | {r['lost']} | "
                         f"{_f(r['fps'], 2)} | {_f(r['latency_ms_median'], 0)} | "
                         f"{_f(r['latency_ms_p95'], 0)} | {stages} |")
    for name, b in result['baseline'].items():
        what = 'native' if name == 'native' else 'resized'
        lines.append(f"| 30-line baseline (no ROS) | {b['res']} {what} | - | {b['frames']} | "
                     f"{b['frames']} | 0 | {b['lost']} | {_f(b['fps'], 2)} | n/a | n/a | "
                     + ' | '.join(['n/a'] * (len(TABLE_STAGES) - 1))
                     + f" | {_f(b['ms_per_frame'], 0)} |")
    return '\n'.join(lines)


def target_lines(t: Dict) -> List[str]:
    """Return one line per target."""
    lines = []
    c = t.get('classical_vs_baseline_832')
    if c:
        lines.append(f'target classical 832x256 >= {TARGET_RATIO:g}x the baseline at 832x256 '
                     f"({_f(c['baseline_fps'], 2)} fps): node {_f(c['node_fps'], 2)} fps at "
                     f"{c['node_rate_hz']:g} Hz ({c['node_lost']} LOST) = "
                     f"{_f(c['node_ratio'], 2)}x "
                     f"({'MET' if c['met'] else 'NOT MET'}); the VO step alone "
                     f"(1000 / median total ms, tracked frames) {_f(c['vo_fps'], 2)} fps = "
                     f"{_f(c['vo_ratio'], 2)}x")
    for key, v in t.items():
        if key.endswith('hz'):
            lines.append(f"target {key}: {v['target']}: fps {_f(v['fps'], 2)}, p95 "
                         f"{_f(v['p95_ms'], 0)} ms, {v['lost']} of {v['processed']} LOST "
                         f"({'MET' if v['met'] else 'NOT MET'})")
    return lines


def parse_rates(text: str) -> List[float]:
    """Parse '5,10,30' into rates (Hz, each > 0)."""
    rates = [float(x) for x in text.split(',') if x.strip()]
    if not rates or min(rates) <= 0:
        raise ValueError
    return rates


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help='the shared data folder (default ../shared/data)')
    parser.add_argument('--synthetic', action='store_true',
                        help='rendered forward-driving frames instead of KITTI 06')
    parser.add_argument('--frames', type=int, default=None,
                        help='frames per run (default: all 51 KITTI frames; synthetic 40)')
    parser.add_argument('--height', type=int, default=256, help='synthetic height (256)')
    parser.add_argument('--width', type=int, default=832, help='synthetic width (832)')
    parser.add_argument('--configs', default=None,
                        help=f'node configurations, of {",".join(CONFIGS)} (default: all)')
    parser.add_argument('--rates', default=None, help='input rates, Hz (default 5,10,30)')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: 8 frames, config default, 10 Hz (unless given)')
    parser.add_argument('--device', default='auto', help='node device: auto, cpu, cuda')
    parser.add_argument('--warm', type=int, default=3,
                        help='lock-step warm-up frames per node before the runs (default 3)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='frames of each run published but not counted (default 1)')
    parser.add_argument('--idle', type=float, default=10.0,
                        help='stop waiting for a run after N s without output (default 10)')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='limit of each wait (node start, warm-up frame, run), s')
    parser.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter (every configuration)')
    args = parser.parse_args(argv)
    configs = (args.configs or ('default' if args.quick else ','.join(CONFIGS))).split(',')
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.exit(2, f'node_latency: unknown config(s) {unknown}; choose from '
                    f'{list(CONFIGS)}\n')
    try:
        args.rates = parse_rates(args.rates or ('10' if args.quick else '5,10,30'))
    except ValueError:
        parser.exit(2, 'node_latency: --rates expects positive numbers, e.g. 5,10,30\n')
    if args.quick and args.frames is None:
        args.frames = 8
        args.warm = min(args.warm, 2)
    if args.frames is not None and args.frames < args.warmup + 2:
        parser.exit(2, f'node_latency: --frames must be at least --warmup + 2 = '
                    f'{args.warmup + 2}\n')
    if not args.synthetic and not (args.data / KITTI).is_dir():
        parser.exit(2, f'node_latency: KITTI 06 not found at {args.data / KITTI}; pass --data '
                    'DIR (the shared data folder) or --synthetic\n')

    from trianflow_ros.ros import demo
    try:
        demo.parse_params(args.param)
    except demo.DemoError as e:
        parser.exit(2, f'node_latency: {e}\n')
    t_start, load_before = time.monotonic(), load_average()
    started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    try:
        frames = load_frames(args)
    except (OSError, ValueError) as e:
        parser.exit(2, f'node_latency: cannot read the frames: {e}\n')
    print(f'frames: {frames.label}; baseline ...', flush=True)
    result: Dict = {'baseline': run_baseline(frames), 'runs': {}}
    domain = demo.pick_domain_id(args.domain_id)
    env = demo.ros_environment(domain)
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'ROS_LOCALHOST_ONLY')})
    work = Path(tempfile.mkdtemp(prefix='node_latency_'))
    bench = Bench(domain, frames)
    try:
        for config in configs:
            result['runs'][config] = run_config(bench, config, args, env, work)
    except RuntimeError as e:
        print(f'node_latency: error: {e}', file=sys.stderr)
        return 1                                    # the node logs stay in `work`
    finally:
        bench.close()
    shutil.rmtree(work, ignore_errors=True)
    result['targets'] = targets(result)
    node_device = next(iter(result['runs'].values()))['node'].get('device', '?')
    result['meta'] = {
        'frames': frames.label, 'count': len(frames.images), 'warmup': args.warmup,
        'warm': args.warm, 'rates': args.rates, 'configs': configs, 'quick': args.quick,
        'node_device': node_device, 'cpu': f'{cpu_name()} ({os.cpu_count()} cores)',
        'nodes': 'one node per configuration, ~/reset before each rate',
        'started': started, 'wall_s': time.monotonic() - t_start,
        'load_before': load_before, 'load_after': load_average(), 'domain_id': domain,
        'params': args.param}
    m = result['meta']
    print(f"frames: {m['frames']}; node device {m['node_device']}; {m['cpu']}; "
          f"{m['nodes']}; {m['warm']} warm-up frames per node, first {m['warmup']} of each "
          f"run not counted; load {m['load_before']} -> {m['load_after']}; "
          f"{m['wall_s']:.0f} s")
    print(table(result))
    for line in target_lines(result['targets']):
        print(line)
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
