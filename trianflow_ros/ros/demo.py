"""
The demo (``make demo``): the VO node on a rendered sequence through real ROS 2 topics.

What it does, with nothing from outside the repository and no network:

1. renders the embedded default sequence with the synthetic generator (a street, forward
   driving, ``--frames`` frames of ``--height x --width``, seed 2000 (held out from the
   default weights' training seeds), exact ground truth);
2. writes it to a rosbag2 (``trianflow-bag synthetic``) in a temporary folder;
3. starts the node (``python -m trianflow_ros.ros.vo_node``, default parameters: the classical
   pipeline, DIS flow and scale by triangulation, the node's default by bench/vo_real.py)
   and a recorder (odom and depth), then replays the bag with ``trianflow-play
   --wait-for-subscribers 1 --sync-topic /vo_node/status`` (lock-step: one image, then wait
   until the node reports it, so no frame is dropped however slow this CPU is);
4. stops everything with SIGINT and writes into ``--out`` (default ``results/demo``):
   ``poses_tum.txt`` and ``poses_kitti.txt`` (camera optical poses ``T_world_cam`` recovered
   from odom -> base_link with the node's default base -> camera rotation),
   ``trajectory.png`` (against the ground truth after Sim(3) alignment), ``depth/NNNNNN.png``
   for a few frames (16 bits, depth * 256, 0 = unknown, odometry scale) with
   ``depth_preview.png`` (image | colour-mapped depth), ``metrics.json`` (``ate`` after
   Sim(3) in m, ``rpe_trans`` m, ``rpe_rot`` deg, ``fps`` end to end, ``frames`` that produced
   odometry, and details) and ``node.log``.

A previous result is never overwritten unless ``--overwrite`` (``make demo`` passes it: its
results are regenerated on every run). DDS stays on this machine
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` unless set) and the run gets its own
``ROS_DOMAIN_ID``: ``--domain-id``, else ``$ROS_DOMAIN_ID``, else 120 + PID % 100.
The last printed line is one JSON object (the metrics).
"""

import argparse
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np

from trianflow_ros.eval.odometry_metrics import evaluate_odometry
from trianflow_ros.eval.plots import plot_trajectories
from trianflow_ros.eval.trajectory_io import Trajectory, write_kitti, write_tum
from trianflow_ros.ros.bag import (BagError, CAMERA_INFO_TOPIC, IMAGE_TOPIC, synthetic_source,
                                   write_bag)
from trianflow_ros.ros.process import stop_process
import yaml

PROG = 'trianflow-demo'
REPO = Path(__file__).resolve().parents[2]
NODE_MODULE = 'trianflow_ros.ros.vo_node'
NODE_NAME = 'vo_node'
#: Files and folders of a demo result; an existing one makes the demo refuse (--overwrite).
RESULT_NAMES = ('poses_tum.txt', 'poses_kitti.txt', 'trajectory.png', 'metrics.json',
                'depth', 'depth_preview.png', 'node.log', 'player.log')


class DemoError(Exception):
    """The demo cannot run or did not produce odometry; the message says why (exit 1/2)."""


def pick_domain_id(explicit: Optional[int] = None) -> int:
    """Return the ROS domain id: explicit, else $ROS_DOMAIN_ID, else 120 + PID % 100."""
    if explicit is not None:
        return int(explicit)
    env = os.environ.get('ROS_DOMAIN_ID', '').strip()
    if env.isdigit():
        return int(env)
    return 120 + os.getpid() % 100


def ros_environment(domain_id: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Return the environment of the demo's processes (localhost DDS, own domain id)."""
    env = dict(os.environ if base is None else base)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    env['ROS_LOCALHOST_ONLY'] = '1'
    profile = REPO / 'test' / 'fastdds_fast_discovery.xml'
    if profile.is_file():
        env.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(profile))
    env['PYTHONPATH'] = str(REPO) + (os.pathsep + env['PYTHONPATH']
                                     if env.get('PYTHONPATH') else '')
    env['PYTHONUNBUFFERED'] = '1'
    return env


def write_params_file(path: Path, params: Dict[str, object]) -> Path:
    """Write a ``--params-file`` YAML for every node (``/**``); dotted names nest."""
    tree: Dict[str, object] = {}
    for name, value in params.items():
        node = tree
        parts = name.split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': tree}}, sort_keys=True))
    return path


def _wait(busy: Callable[[], bool], node: subprocess.Popen, deadline: float, phase: str,
          workdir: Path, late: Callable[[], str],
          report: Optional[Callable[[], None]] = None) -> None:
    """
    Poll every 0.1 s while ``busy()``; ``report()`` every 10 s.

    :raises DemoError: the node process exits (its log's tail, ``phase`` names when) or the
        deadline passes (the message ``late()``).
    """
    last_report = time.monotonic()
    while busy():
        if node.poll() is not None:
            raise DemoError(f'the node exited with status {node.returncode} {phase}:\n'
                            f'{_tail(workdir / "node.log")}')
        if time.monotonic() > deadline:
            raise DemoError(late())
        if report is not None and time.monotonic() - last_report > 10.0:
            last_report = time.monotonic()
            report()
        time.sleep(0.1)


def _tail(path: Path, n: int = 25) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-n:])
    except OSError:
        return ''


def run_pipeline(bag: Path, num_frames: int, workdir: Path, env: Optional[Dict] = None,
                 node_params: Optional[Dict[str, object]] = None, timeout: float = 240.0,
                 sync_timeout: float = 30.0, node_module: str = NODE_MODULE,
                 log: Callable[[str], None] = lambda s: None) -> Dict:
    """
    Replay ``bag`` into the node and record its odometry and depth (player -> node -> recorder).

    :param bag: rosbag2 folder with ``/camera/image_raw`` and ``/camera/camera_info``.
    :param num_frames: images in the bag.
    :param workdir: folder for ``node.log``, ``player.log`` and the params file.
    :param env: environment of the processes (``ROS_DOMAIN_ID`` must be set in it).
    :param node_params: node parameters (dotted names allowed); defaults when None.
    :param timeout: seconds for the whole replay.
    :param sync_timeout: seconds the player waits for the node to report one frame.
    :param node_module: the node's module (run with ``python -m``).
    :param log: progress printer.
    :return: dict: trajectory (camera optical :class:`Trajectory` or None), odom_base (base
        Trajectory or None), depths (stamp ns -> (H, W) float32), frames (odometry messages),
        fps, wall_s, player (its JSON summary), node_rc, player_rc.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from trianflow_ros.ros.recorder import TrajectoryRecorder

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = ros_environment(int(env['ROS_DOMAIN_ID']) if env and 'ROS_DOMAIN_ID' in env
                          else pick_domain_id(), env)
    cmd = [sys.executable, '-m', node_module, '--ros-args',
           '-r', f'image:={IMAGE_TOPIC}', '-r', f'camera_info:={CAMERA_INFO_TOPIC}']
    if node_params:
        params_file = write_params_file(workdir / 'node_params.yaml', node_params)
        cmd += ['--params-file', str(params_file)]
    node_log = open(workdir / 'node.log', 'w')
    player_log = open(workdir / 'player.log', 'w')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(env['ROS_DOMAIN_ID']))
    executor = SingleThreadedExecutor(context=context)
    recorder = TrajectoryRecorder('/odom', '/depth', keep_depth=True,
                                  node_name='trianflow_demo_recorder', context=context)
    executor.add_node(recorder)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: _spin(executor, stop), daemon=True)
    spinner.start()
    node = player = None
    t_start = time.monotonic()
    result: Dict = {}
    try:
        log(f'starting the node: {" ".join(cmd[2:])}')
        node = subprocess.Popen(cmd, env=env, stdout=node_log, stderr=subprocess.STDOUT)
        deadline = t_start + timeout
        _wait(lambda: recorder.odom_sub.get_publisher_count() < 1, node, deadline,
              'at start-up', workdir,
              lambda: f'the node did not come up within {timeout:.0f} s:\n'
                      f'{_tail(workdir / "node.log")}')
        log(f'node up after {time.monotonic() - t_start:.1f} s; playing {num_frames} frames')
        pcmd = [sys.executable, '-m', 'trianflow_ros.ros.player', str(bag),
                '--wait-for-subscribers', '1', '--wait-topics', IMAGE_TOPIC, CAMERA_INFO_TOPIC,
                '--wait-timeout', str(max(10.0, deadline - time.monotonic())),
                '--sync-topic', f'/{NODE_NAME}/status', '--sync-timeout', str(sync_timeout),
                '--linger', '1']
        t_play = time.monotonic()
        player = subprocess.Popen(pcmd, env=env, stdout=subprocess.PIPE, stderr=player_log,
                                  text=True)
        _wait(lambda: player.poll() is None, node, deadline, 'during the replay', workdir,
              lambda: f'the replay did not finish within {timeout:.0f} s '
                      f'({len(recorder.odom)} of {num_frames} frames)',
              lambda: log(f'  {len(recorder.odom)} / {num_frames} frames'))
        out, _ = player.communicate()
        player_log.write(out)
        lines = out.strip().splitlines()
        try:
            result['player'] = json.loads(lines[-1]) if lines else {}
        except ValueError:
            result['player'] = {'output': lines[-1]}
        if player.returncode != 0:
            raise DemoError(f'the player failed (status {player.returncode}):\n'
                            f'{_tail(workdir / "player.log")}')
        # the last outputs may still be on their way
        settle = time.monotonic() + 3.0
        n_seen = -1
        while time.monotonic() < settle and len(recorder.odom) < num_frames:
            if len(recorder.odom) != n_seen:
                n_seen = len(recorder.odom)
                settle = min(time.monotonic() + 3.0, deadline)
            time.sleep(0.05)
        wall = time.monotonic() - t_play
    finally:
        result['player_rc'] = stop_process(player)
        result['node_rc'] = stop_process(node)
        stop.set()
        spinner.join(timeout=5.0)
        node_log.close()
        player_log.close()
    with recorder.lock:
        odom = list(recorder.odom)
        depths = dict(recorder.depths)
    executor.shutdown()
    recorder.destroy_node()
    rclpy.try_shutdown(context=context)
    times = [t for _, _, t in odom]
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    fps = (len(times) - 1) / span if span > 0 else None
    result.update(trajectory=recorder.trajectory('camera'), odom_base=recorder.trajectory('base'),
                  depths=depths, frames=len({s for s, _, _ in odom}), fps=fps,
                  wall_s=wall)
    return result


def _spin(executor, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: B902 - the context is going down
            if stop.is_set():
                return
            raise


def colour_depth(depth: np.ndarray) -> np.ndarray:
    """Return an (H, W, 3) uint8 BGR colour map of a depth map (inverse depth, 0 = black)."""
    valid = np.isfinite(depth) & (depth > 0)
    inv = np.zeros_like(depth, dtype=np.float32)
    inv[valid] = 1.0 / depth[valid]
    if valid.any():
        lo, hi = np.percentile(inv[valid], [2, 98])
        norm = np.clip((inv - lo) / max(hi - lo, 1e-9), 0, 1)
    else:
        norm = inv
    out = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
    out[~valid] = 0
    return out


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an earlier result unless ``overwrite``; with it, remove the earlier result files."""
    existing = [out / n for n in RESULT_NAMES if (out / n).exists()]
    if existing and not overwrite:
        names = ', '.join(p.name for p in existing)
        raise DemoError(f'{out} already holds a demo result ({names}); pass --overwrite '
                        '(make demo does) or choose another --out')
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the demo."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--frames', type=int, default=60, help='frames to render (default 60)')
    parser.add_argument('--height', type=int, default=256, help='image height (default 256)')
    parser.add_argument('--width', type=int, default=832, help='image width (default 832)')
    parser.add_argument('--kind', default='forward', help='synthetic trajectory (default '
                                                          'forward driving)')
    parser.add_argument('--seed', type=int, default=2000,
                        help="scene seed (default 2000, held out from the weights' training "
                             'seeds)')
    parser.add_argument('--rate', type=float, default=10.0, help='frame rate of the stamps (Hz)')
    parser.add_argument('--out', default='results/demo', help='result folder (default '
                                                              'results/demo)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an earlier result in --out (make demo passes it)')
    parser.add_argument('--depth-frames', type=int, default=4,
                        help='depth maps written (evenly spaced; default 4)')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='seconds for the replay (default 300)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default $ROS_DOMAIN_ID, else 120 + PID %% 100)')
    parser.add_argument('--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='node parameter (YAML value), e.g. --param device:=cpu')
    parser.add_argument('--keep-bag', default=None, metavar='DIR',
                        help='also keep the rendered bag in DIR (for ros2 bag play)')
    return parser


def parse_params(items: List[str]) -> Dict[str, object]:
    """Parse 'name:=value' node parameters (values as YAML)."""
    out = {}
    for item in items:
        name, sep, value = item.partition(':=')
        if not sep or not name:
            raise DemoError(f'--param expects NAME:=VALUE, got {item!r}')
        out[name] = yaml.safe_load(value) if value else ''
    return out


def run_demo(args, log: Callable[[str], None] = print) -> Dict:
    """Run the demo for parsed arguments; return the metrics."""
    out = Path(args.out)
    check_out(out, args.overwrite)
    if args.frames < 2:
        raise DemoError(f'--frames must be >= 2, got {args.frames}')
    domain = pick_domain_id(args.domain_id)
    env = ros_environment(domain)
    params = parse_params(args.param)
    t0 = time.monotonic()
    log(f'[demo] rendering {args.frames} frames of a synthetic {args.kind} sequence '
        f'({args.height}x{args.width}, seed {args.seed})')
    source = synthetic_source(args.kind, args.frames, args.height, args.width, args.seed,
                              1, args.rate)
    frames = list(source.frames())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='trianflow_demo_') as tmp:
        bag = Path(tmp) / 'bag'
        write_bag(source, bag)
        if args.keep_bag:
            write_bag(source, args.keep_bag, overwrite=True)
        t_render = time.monotonic() - t0
        log(f'[demo] bag written in {t_render:.1f} s; ROS_DOMAIN_ID={domain}')
        res = run_pipeline(bag, len(frames), Path(tmp), env, params, args.timeout,
                           log=lambda s: log('[demo] ' + s))
        for name in ('node.log', 'player.log'):
            shutil.copy(Path(tmp) / name, out / name)
    traj: Optional[Trajectory] = res['trajectory']
    if traj is None or len(traj) < 2:
        raise DemoError(f'the node produced {0 if traj is None else len(traj)} odometry '
                        f'messages for {len(frames)} frames; see {out / "node.log"}:\n'
                        f'{_tail(out / "node.log")}')
    stamps = np.array([f.stamp_ns for f in frames], dtype=np.float64) * 1e-9
    T0 = np.linalg.inv(frames[0].T_world_cam)
    gt = Trajectory(np.stack([T0 @ f.T_world_cam for f in frames]), stamps, 'ground truth')
    write_tum(out / 'poses_tum.txt', traj, overwrite=True)
    write_kitti(out / 'poses_kitti.txt', traj, overwrite=True)
    metrics: Dict = {'ate': None, 'rpe_trans': None, 'rpe_rot': None,
                     'fps': None if res['fps'] is None else round(res['fps'], 3),
                     'frames': int(res['frames']), 'frames_published': len(frames),
                     'align': 'sim3'}
    title = (f'vo_node via ROS 2 on synthetic {args.kind} {args.height}x{args.width}, '
             f'{len(traj)}/{len(frames)} frames')
    try:
        ev = evaluate_odometry(gt, traj, align='sim3')
        metrics.update(ate=ev.ate_sim3, rpe_trans=ev.rpe_trans, rpe_rot=ev.rpe_rot,
                       ate_se3=ev.ate_se3, scale=ev.scale, length_m=ev.length_m)
        plot_trajectories(out / 'trajectory.png', gt, {'vo_node (Sim(3) aligned)':
                                                       ev.aligned_est}, title=title)
    except ValueError as e:
        metrics['error'] = str(e)
        plot_trajectories(out / 'trajectory.png', gt, {'vo_node': traj},
                          title=title + f' (not aligned: {e})')
    # a few depth maps, evenly spaced over the frames that have one
    from trianflow_ros.ros.recorder import save_depth_png
    index = {f.stamp_ns: i for i, f in enumerate(frames)}
    have = sorted(s for s in res['depths'] if s in index)
    picks = [have[int(round(k))] for k in np.linspace(0, len(have) - 1,
                                                      min(args.depth_frames, len(have)))] \
        if have else []
    rows = []
    for s in dict.fromkeys(picks):
        depth = res['depths'][s]
        save_depth_png(out / 'depth', index[s], depth, npy=False)
        image = cv2.cvtColor(frames[index[s]].image, cv2.COLOR_RGB2BGR)
        image = cv2.resize(image, (depth.shape[1], depth.shape[0]), interpolation=cv2.INTER_AREA)
        rows.append(np.concatenate([image, colour_depth(depth)], axis=1))
    if rows:
        cv2.imwrite(str(out / 'depth_preview.png'), np.concatenate(rows, axis=0))
    metrics.update(depth_maps=len(rows), wall_s=round(time.monotonic() - t0, 1),
                   replay_s=round(res['wall_s'], 1), resolution=[args.height, args.width],
                   weights=('classical (DIS flow)' if 'checkpoint' not in params
                            else str(params['checkpoint'])),
                   domain_id=domain, node_rc=res['node_rc'], out=str(out))
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
    return metrics


def _fmt(x, unit: str = '', digits: int = 3) -> str:
    return 'n/a' if x is None else f'{x:.{digits}f}{unit}'


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the demo; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        m = run_demo(args)
    except (DemoError, BagError) as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted', file=sys.stderr)
        return 130
    out = Path(m['out'])
    print()
    print('TrianFlow VO demo: player -> vo_node -> recorder over ROS 2 (DDS on localhost)')
    print(f'  sequence : synthetic {args.kind}, {m["frames_published"]} frames '
          f'{args.height}x{args.width}, weights: {m["weights"]}')
    print(f'  odometry : {m["frames"]} of {m["frames_published"]} frames, '
          f'{_fmt(m["fps"], " frames/s", 2)} end to end')
    print(f'  accuracy : ATE (Sim3) {_fmt(m["ate"], " m")}, RPE {_fmt(m["rpe_trans"], " m")} / '
          f'{_fmt(m["rpe_rot"], " deg")}')
    print(f'  results  : {out}/poses_tum.txt, poses_kitti.txt, trajectory.png, '
          f'depth/ ({m["depth_maps"]} maps), depth_preview.png, metrics.json')
    print(f'  wall time: {m["wall_s"]:.0f} s')
    print(json.dumps(m))
    return 0


if __name__ == '__main__':
    sys.exit(main())
