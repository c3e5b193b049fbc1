"""
The ``vo_node`` process: ``--help``, the ready line, spinning, a start-up error's exit, shutdown.

:func:`run` is ``vo_node``'s ``main`` (:func:`trianflow_ros.ros.vo_node.main`): exit status 0,
or 1 with one logged line that names the fix when the node cannot start.
"""

import ctypes
import faulthandler
import os
import sys
import threading
from typing import Callable, Dict, Optional, Sequence

import rclpy
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                              ParameterException)
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from trianflow_ros.config import Config
from trianflow_ros.ros.node_params import node_param_specs
from trianflow_ros.ros.params import describe
from trianflow_ros.vo.factory import StartupError

#: Seconds the shutdown (worker, executor, node, context) may take before the process exits.
SHUTDOWN_TIMEOUT = 10.0


def usage(doc: str) -> str:
    """Return the ``vo_node --help`` text: the command line and every node parameter."""
    lines = ['usage: vo_node [--ros-args -p NAME:=VALUE ... --params-file FILE '
             '-r image:=TOPIC -r camera_info:=TOPIC]', '',
             (doc or '').strip().split('\n\n')[0].strip('`'), '',
             'node parameters (ros2 param describe /vo_node NAME):']
    for spec in node_param_specs():
        lines.append(f'  {spec.name} (default {spec.default!r}): {describe(spec)}')
    lines += ['', 'and the shared-config fields vo.*, geometry.*, data.img_height, '
              'data.img_width, flow_net.fb_* (trianflow-config --fields)']
    return '\n'.join(lines)


def ready_message(p, info: Dict[str, str], cfg: Config, classical: bool = False) -> str:
    """Return the line logged when the node is ready: pipeline, weights, sizes, QoS, TF."""
    h, w = cfg.data.img_height, cfg.data.img_width
    from trianflow_ros.vo.odometry import resolution_mode   # torch: not for --help
    mode = resolution_mode(cfg, classical)
    size = {'native': 'input size', 'aspect': f'input size scaled to ~{w}x{h} pixels, '
            'aspect kept', 'auto': f"{w}x{h} or the input's aspect ratio at about as many "
            'pixels (auto)'}.get(mode, f'{w}x{h}')
    tf_out = ('none' if not p['publish_tf'] else
              f"{p['base_frame']} -> {p['odom_frame']} (inverted)" if p['invert_tf'] else
              f"{p['odom_frame']} -> {p['base_frame']}")
    return (f"visual odometry ready: flow={info['flow']} depth={info['depth']} "
            f"weights={info['weights']} ({info['weights_source']}) "
            f"device={info['device']} working resolution={size} "
            f"channels={'bgr' if cfg.data.bgr else 'rgb'} "
            f"image_qos={p['image_qos']} pairing={info['pairing']} "
            f"tf={info['tf']} publishes tf: {tf_out}; extrinsics lookup: "
            f"{info['tf_listener']}")


def exit_now(rc: int, error: str) -> None:
    """
    Log why the node cannot start and end the process at once with status ``rc``.

    The half-built node is not destroyed: destroying an rclpy node a few milliseconds after its
    creation crashed the process (SIGSEGV in ``destroy_node``, about 1 start in 40 with six
    nodes starting at once here) or hung its exit, so the exit status was lost.
    """
    rclpy.logging.get_logger('vo_node').error(error)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        ctypes.CDLL(None).fflush(None)      # the C logger's buffers too
    except (OSError, AttributeError):
        pass
    os._exit(rc)


def run(make_node: Callable, doc: str, args: Optional[Sequence[str]] = None) -> int:
    """
    Run a node until SIGINT; exit status 0, or 1 when it cannot start.

    :param make_node: builds the node (raises StartupError or a parameter exception).
    :param doc: the node module's docstring (its first paragraph is in ``--help``).
    :param args: the command line (default ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if args is None else args)
    own = argv[:argv.index('--ros-args')] if '--ros-args' in argv else argv
    if '-h' in own or '--help' in own:
        print(usage(doc))
        return 0
    # a crash in native code (rclpy / DDS teardown, OpenCV, torch) prints every thread's
    # Python stack to stderr (the node's log) before the process dies: once in CI the node
    # ended with SIGSEGV at its stop, after all its work, and left no trace of where
    faulthandler.enable(all_threads=True)
    rclpy.init(args=args)
    node = None
    executor = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError as e:
        exit_now(1, str(e))
    except (InvalidParameterValueException, InvalidParameterTypeException,
            ParameterException) as e:
        exit_now(1, f'invalid parameter: {e}. Fix: give a value of the declared type within '
                    'its range (ros2 param describe /vo_node <name>)')
    except Exception:
        if rclpy.ok():
            raise
        # SIGINT shut the context down while the executor was building its wait set: rclpy
        # then raises RCLError ("the given context is not valid") instead of
        # ExternalShutdownException (seen 1 stop in ~40 under load). A normal stop.
    finally:
        # rclpy's destroy_node was seen to hang (1 exit in 60, six nodes stopping at once):
        # bounded; the stop was asked for and everything is published, so the process then
        # dumps its stacks and ends with status 0 instead of hanging
        watchdog = threading.Timer(SHUTDOWN_TIMEOUT, _shutdown_hung)
        watchdog.daemon = True
        watchdog.start()
        # backstop that needs no GIL (a hang holding it would stop the timer): status 1
        faulthandler.dump_traceback_later(2 * SHUTDOWN_TIMEOUT, exit=True)
        if node is not None:
            node.shutdown()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        watchdog.cancel()
        faulthandler.cancel_dump_traceback_later()
    return 0


def _shutdown_hung() -> None:
    """End a process whose rclpy shutdown hangs (see ``run``), after printing its stacks."""
    sys.stderr.write(f'vo_node: rclpy shutdown did not finish in {SHUTDOWN_TIMEOUT:.0f} s; '
                     'exiting (stacks follow)\n')
    faulthandler.dump_traceback(all_threads=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
