"""
End-to-end latency and throughput of the VO node over real ROS 2 topics.

Renders ``--frames`` synthetic frames (forward driving, ``--height x --width``, default the
network resolution 256x832), starts the node (``python -m trianflow_ros.ros.vo_node``, default
parameters: the default weights in ``models/`` when they exist, else the classical pipeline;
``--device``) and publishes the frames as sensor_msgs/Image + CameraInfo (RELIABLE, keep last
10, like a camera driver) at ``--rate`` Hz. Per frame it measures the latency from the
``publish()`` call of the image to the receipt of the odometry with the same stamp, and counts
the frames the node processed (its ``~/status``; LOST frames publish no odometry) and skipped
(the node keeps only the newest frame while busy).

Printed: a table (mean / median / p95 latency in ms, processed frames/s, skipped, lost), the
device, and as the last line one JSON object. The first ``--warmup`` frames are not counted.

Examples::

    scripts/with_env.sh python bench/node_latency.py                       # CPU, 2 Hz
    scripts/with_env.sh python bench/node_latency.py --rate 10 --frames 40
    scripts/with_env.sh python bench/node_latency.py --device cuda --rate 30 --frames 120
"""

import argparse
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    """Return the CPU model name (Linux), else the platform's processor string."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def device_name(device: str) -> str:
    """Return a description of the torch device the node will use."""
    import torch
    use_cuda = device.startswith('cuda') or (device == 'auto' and torch.cuda.is_available())
    if use_cuda and torch.cuda.is_available():
        index = int(device.split(':')[1]) if ':' in device else 0
        return f'CUDA {torch.cuda.get_device_name(index)}'
    return f'CPU {cpu_name()} ({os.cpu_count()} cores)'


def percentile(values: List[float], q: float) -> Optional[float]:
    """Return the q-th percentile of values, or None when empty."""
    return float(np.percentile(values, q)) if values else None


def run(args) -> Dict:
    """Run the benchmark; return the summary."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from nav_msgs.msg import Odometry
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from trianflow_ros.ros import demo
    from trianflow_ros.ros.bag import synthetic_source
    from trianflow_ros.ros.conversions import make_camera_info, numpy_to_image
    from trianflow_ros.ros.process import stop_process

    domain = demo.pick_domain_id(args.domain_id)
    env = demo.ros_environment(domain)
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'ROS_LOCALHOST_ONLY')})
    print(f'rendering {args.frames} frames {args.height}x{args.width} ...', flush=True)
    source = synthetic_source('forward', args.frames, args.height, args.width, 0, 1, args.rate)
    frames = list(source.frames())
    params = demo.parse_params(args.param)
    params.setdefault('device', args.device)
    params.setdefault('frame_skip', 1)
    work = Path(tempfile.mkdtemp(prefix='node_latency_'))
    demo.write_params_file(work / 'params.yaml', params)
    cmd = [sys.executable, '-m', 'trianflow_ros.ros.vo_node', '--ros-args',
           '-r', 'image:=/bench/image', '-r', 'camera_info:=/bench/camera_info',
           '--params-file', str(work / 'params.yaml')]
    log = open(work / 'node.log', 'w')
    node_proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node('node_latency_bench', context=context)
    camera_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub_image = node.create_publisher(Image, '/bench/image', camera_qos)
    pub_info = node.create_publisher(CameraInfo, '/bench/camera_info', camera_qos)
    lock = threading.Lock()
    odom_at: Dict[int, float] = {}
    status: Dict[int, str] = {}

    def on_odom(msg):
        t = time.perf_counter()
        with lock:
            odom_at.setdefault(msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec, t)

    def on_status(msg):
        t = time.perf_counter()
        values = {kv.key: kv.value for kv in msg.values}
        if 'stamp' in values:
            with lock:
                status[int(round(float(values['stamp']) * 1e6))] = (values.get('state', ''), t)

    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    odom_sub = node.create_subscription(Odometry, '/odom', on_odom, reliable)
    node.create_subscription(DiagnosticStatus, '/vo_node/status', on_status, reliable)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.01)
            except Exception:  # noqa: B902 - the context is going down
                return

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    messages = []
    for f in frames:
        sec, nsec = divmod(f.stamp_ns, 10 ** 9)
        header = Header(frame_id='camera_optical_frame')
        header.stamp.sec, header.stamp.nanosec = int(sec), int(nsec)
        messages.append((f.stamp_ns, numpy_to_image(f.image, 'rgb8', header),
                         make_camera_info(f.K, f.image.shape[0], f.image.shape[1], header)))
    published: Dict[int, float] = {}
    try:
        deadline = time.monotonic() + args.timeout
        while pub_image.get_subscription_count() < 1 or odom_sub.get_publisher_count() < 1:
            if node_proc.poll() is not None:
                raise RuntimeError(f'the node exited ({node_proc.returncode}); see '
                                   f'{work / "node.log"}')
            if time.monotonic() > deadline:
                raise RuntimeError('the node did not come up')
            time.sleep(0.05)
        time.sleep(1.0)             # let the node's matching finish (camera_info too)
        print(f'publishing at {args.rate} Hz ...', flush=True)
        t0 = time.perf_counter()
        for i, (stamp, image, info) in enumerate(messages):
            target = t0 + i / args.rate
            while time.perf_counter() < target:
                time.sleep(min(0.002, max(0.0, target - time.perf_counter())))
            published[stamp] = time.perf_counter()
            pub_image.publish(image)
            pub_info.publish(info)
        # wait for the outputs of the last frames (idle time ends the wait)
        last_change, seen = time.monotonic(), -1
        while time.monotonic() < deadline:
            with lock:
                n = len(status)
            if n != seen:
                seen, last_change = n, time.monotonic()
            if n >= len(messages) or time.monotonic() - last_change > args.idle:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        spinner.join(timeout=5)
        stop_process(node_proc)
        log.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    counted = [s for s, _, _ in messages[args.warmup:]]
    lat = [1000.0 * (odom_at[s] - published[s]) for s in counted if s in odom_at]
    processed = [s for s in counted if int(round(s / 1000)) in status]
    lost = [s for s in processed if status[int(round(s / 1000))][0] == 'LOST']
    done_times = sorted(status[int(round(s / 1000))][1] for s in processed)
    span = (done_times[-1] - published[counted[0]]) if done_times else 0.0
    weights = 'models/default.pth' if (REPO / 'models' / 'default.pth').is_file() and \
        'checkpoint' not in params else params.get('checkpoint') or 'classical (DIS flow)'
    return {'frames': len(counted), 'processed': len(processed),
            'skipped': len(counted) - len(processed), 'lost': len(lost),
            'with_odometry': len(lat), 'rate_hz': args.rate,
            'fps': len(processed) / span if span > 0 else None,
            'latency_ms_mean': float(np.mean(lat)) if lat else None,
            'latency_ms_median': percentile(lat, 50), 'latency_ms_p95': percentile(lat, 95),
            'resolution': [args.height, args.width], 'device': device_name(args.device),
            'weights': weights, 'warmup': args.warmup, 'domain_id': domain}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--frames', type=int, default=30, help='frames published (default 30)')
    parser.add_argument('--rate', type=float, default=2.0, help='publish rate, Hz (default 2)')
    parser.add_argument('--height', type=int, default=256, help='image height (default 256)')
    parser.add_argument('--width', type=int, default=832, help='image width (default 832)')
    parser.add_argument('--device', default='auto', help='node device: auto, cpu, cuda')
    parser.add_argument('--warmup', type=int, default=3, help='frames not counted (default 3)')
    parser.add_argument('--idle', type=float, default=10.0,
                        help='stop waiting after N s without output (default 10)')
    parser.add_argument('--timeout', type=float, default=400.0, help='overall limit, s')
    parser.add_argument('--domain-id', type=int, default=None, help='ROS_DOMAIN_ID')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='extra node parameter')
    args = parser.parse_args(argv)
    if args.frames <= args.warmup:
        parser.error('--frames must exceed --warmup')
    r = run(args)

    def f(x, d=1):
        return 'n/a' if x is None else f'{x:.{d}f}'

    print(f'device: {r["device"]}; weights: {r["weights"]}; {r["resolution"][0]}x'
          f'{r["resolution"][1]}; {r["frames"]} frames at {r["rate_hz"]} Hz '
          f'(+{r["warmup"]} warm-up)')
    print('| rate Hz | processed | skipped | lost | fps | latency mean ms | median ms | '
          'p95 ms |')
    print('|---|---|---|---|---|---|---|---|')
    print(f'| {r["rate_hz"]:g} | {r["processed"]} | {r["skipped"]} | {r["lost"]} | '
          f'{f(r["fps"], 2)} | {f(r["latency_ms_mean"])} | {f(r["latency_ms_median"])} | '
          f'{f(r["latency_ms_p95"])} |')
    print(json.dumps(r))
    return 0


if __name__ == '__main__':
    sys.exit(main())
