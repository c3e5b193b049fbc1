"""
``vo_node``: monocular visual odometry as a ROS 2 node over ``VisualOdometry.step``.

Topics (relative names; remap them):

===========================  =============================  ======================================
name                         type                           what
===========================  =============================  ======================================
image (sub)                  sensor_msgs/Image              rgb8, bgr8, rgba8, bgra8, mono8,
                                                            mono16 (16UC1), rgb16, bgr16
image/compressed (sub)       sensor_msgs/CompressedImage    instead of image (use_compressed)
camera_info (sub)            sensor_msgs/CameraInfo         intrinsics, paired with image by stamp
odom                         nav_msgs/Odometry              odom_frame -> base_frame, covariance
path                         nav_msgs/Path                  the trajectory (since the last reset)
depth                        sensor_msgs/Image 32FC1        metres of the odometry scale, at the
                                                            working (network) resolution
depth/camera_info            sensor_msgs/CameraInfo         K of depth
points                       sensor_msgs/PointCloud2        depth back-projected (publish_points)
/tf                          tf2_msgs/TFMessage             odom_frame -> base_frame (publish_tf)
/tf_static                   tf2_msgs/TFMessage             base -> camera when from parameters
~/status                     diagnostic_msgs/               per processed frame: state, inliers
                             DiagnosticStatus
/diagnostics                 diagnostic_msgs/               periodic: state, frame accounting,
                             DiagnosticArray                latency, per-stage times
===========================  =============================  ======================================

Services: ``~/reset``, ``~/pause``, ``~/resume`` (std_srvs/Trigger).

Frames (REP-105 / REP-103): the odometry of the core is the motion of the camera optical frame
in the optical frame of the first image, ``T_cam0_cami``. The node publishes the base:
``T_odom_base = T_base_cam @ T_cam0_cami @ inv(T_base_cam)`` (odom = the base pose of the first
frame after start or reset), the covariance is transformed with the same conjugation, and the
twist (in base_frame) is the base motion since the previous published frame over the stamp
difference. ``T_base_cam`` comes from TF (tf2_ros, when importable) or ``base_to_camera``.

Weights: ``checkpoint`` parameter > ``vo.checkpoint`` of ``config_file`` > ``models/default.pth``
(package share, then source tree) when it exists > classical (DIS flow, no depth network);
``checkpoint:=default`` names ``models/default.pth`` explicitly (an error when it is missing).
Weights that were asked for but cannot be loaded stop the node at start-up with an error (exit
status 1) unless ``fallback_to_classical`` is true. A checkpoint of this package stores the
configuration it was trained with: the network variant, the input size ``data.img_height`` /
``data.img_width``, ``data.bgr`` and the depth range are taken from it (logged at start-up,
:func:`~trianflow_ros.vo.providers.network_config`), over ``config_file`` and the defaults;
only the ROS parameters ``data.img_height`` / ``data.img_width``, when given (command line,
parameter file, launch), keep the user's input size. The original checkpoints (no stored
configuration) use the parameters as they are: ``kitti_odo.pth`` needs
``config_file:=odo.yaml`` (256x832, BGR).

Real time: the subscription callbacks only pair and store the newest frame in a one-slot buffer;
a worker thread runs the odometry. A frame that arrives while the slot is full replaces the one
waiting there (counted as skipped_busy), so nothing queues without bound. ``/diagnostics``
accounts for every image: received = processed + skipped (busy, frame_skip, paused) + rejected
+ pending.

Tracking loss: LOST frames publish no odom, TF, path or depth (nothing misleading); ``~/status``
and ``/diagnostics`` say LOST (ERROR) with the reason; tracking resumes (RECOVERED) against the
last good frame, without a jump in the odometry frame.
"""

import copy
from pathlib import Path
import sys
import threading
import time
import traceback
from typing import Dict, Iterable, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry, Path as PathMsg
import numpy as np
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                              ParameterException)
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
import torch

from trianflow_ros.config import Config, ConfigError
from trianflow_ros.nets.checkpoint import CheckpointError
from trianflow_ros.ros import conversions as conv
from trianflow_ros.ros.params import AUTO, camera_matrix_or_none, NodeParameters
from trianflow_ros.ros.sync import stamp_to_ns, StampSynchronizer
from trianflow_ros.ros.tf import ExtrinsicsProvider, make_broadcasters
from trianflow_ros.vo.odometry import VisualOdometry
from trianflow_ros.vo.providers import (DEFAULT_CHECKPOINT, find_default_checkpoint,
                                        network_config, resolve_checkpoint)
from trianflow_ros.vo.types import FrameResult, TrackingState

try:  # a ROS install has message_filters; the PyPI wheels do not
    import message_filters
except ImportError:  # pragma: no cover - depends on the machine
    message_filters = None

PACKAGE = 'trianflow_ros'
#: Weights used when the checkpoint parameter is empty (package share, then source tree).
DEFAULT_WEIGHTS = DEFAULT_CHECKPOINT
#: Seconds between repeated warnings of one kind.
WARN_PERIOD = 5.0
#: Smallest queue of camera_info messages (DDS history and stamp synchroniser). Infos are a few
#: hundred bytes and overtake their multi-megabyte images when the transport lags; with the
#: image queue's depth (10) they were evicted before their images arrived, and those images
#: were dropped as 'unmatched' (or, for the last ones, stayed pending).
INFO_QUEUE_MIN = 100
#: Reasons a frame is rejected (keys of the diagnostics' rejected_* values).
REJECT_REASONS = ('encoding', 'malformed', 'size', 'stamp', 'camera_info', 'no_camera_info',
                  'unsynchronised', 'error')
_LEVEL = {TrackingState.INITIALIZING: DiagnosticStatus.OK,
          TrackingState.TRACKING: DiagnosticStatus.OK,
          TrackingState.RECOVERED: DiagnosticStatus.WARN,
          TrackingState.LOST: DiagnosticStatus.ERROR}


class StartupError(RuntimeError):
    """The node cannot start (bad weights, parameters); the message names the fix."""


def default_weights() -> Optional[Path]:
    """Return ``models/default.pth`` of the installed package or the source tree, if present."""
    return find_default_checkpoint()


def resolve_weights(param: str, cfg: Config) -> Tuple[str, str]:
    """
    Return (checkpoint path or '', where it came from) by the rule of the module docstring.

    :raises StartupError: an explicitly named file does not exist.
    """
    for value, source in ((param, 'checkpoint parameter'), (cfg.vo.checkpoint, 'config_file')):
        if value == 'default':
            try:
                return str(resolve_checkpoint(value)), f'{source} (default)'
            except CheckpointError as e:
                raise StartupError(f"{e} Or: checkpoint:='' for the classical pipeline") from e
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise StartupError(f"weights file '{value}' ({source}) does not exist. Fix: "
                                   "pass an existing .pth to checkpoint:=..., or checkpoint:='' "
                                   'for the classical pipeline')
            return str(path), source
    found = default_weights()
    if found is not None:
        return str(found), 'models/default.pth'
    return '', 'none (classical)'


def build_odometry(cfg: Config, checkpoint: str, device: str, fallback: bool, logger,
                   flow: str = AUTO, depth: str = AUTO, explicit: Iterable[str] = ()
                   ) -> Tuple[VisualOdometry, Dict[str, str]]:
    """
    Build the VisualOdometry of the node.

    With learned networks the network-defined settings of the checkpoint are adopted
    (``network_config``; the rule of the module docstring) and logged; ``vo.cfg`` is the
    configuration actually used.

    :param cfg: the resolved config.
    :param checkpoint: the ``checkpoint`` parameter.
    :param device: the ``device`` parameter.
    :param fallback: ``fallback_to_classical``.
    :param logger: where warnings go.
    :param flow: ``vo.flow_provider`` parameter ('auto', 'dis', 'net').
    :param depth: ``vo.depth_provider`` parameter ('auto', 'none', 'net').
    :param explicit: dotted config names set explicitly by ROS parameters (only
        ``data.img_height`` / ``data.img_width`` then keep their value over the checkpoint's).
    :return: the odometry and a description (flow, depth, weights, device, network input)
        for diagnostics.
    :raises StartupError: weights requested but unusable (and no fallback).
    """
    cfg = copy.deepcopy(cfg)
    weights, source = resolve_weights(checkpoint, cfg)
    if flow == AUTO:
        flow = 'net' if weights else 'dis'
    if depth == AUTO:
        depth = 'net' if weights else 'none'
    if (flow == 'net' or depth == 'net') and not weights:
        raise StartupError(f'vo.flow_provider={flow}, vo.depth_provider={depth} need weights, '
                           'but none are set and models/default.pth does not exist. Fix: set '
                           'checkpoint:=/path/to/weights.pth, or vo.flow_provider:=dis '
                           'vo.depth_provider:=none')
    if device.startswith('cuda') and not torch.cuda.is_available():
        logger.warning(f"device '{device}' requested but CUDA is not available: running on "
                       'the CPU')
        device = 'cpu'
    cfg.vo.flow_provider, cfg.vo.depth_provider = flow, depth
    cfg.vo.checkpoint = weights if (flow == 'net' or depth == 'net') else ''
    cfg.vo.device = device
    try:
        net_cfg = cfg
        if cfg.vo.checkpoint:
            net_cfg, notes = network_config(cfg.vo.checkpoint, cfg, explicit)
            for note in notes:
                logger.info(note)
        vo = VisualOdometry(net_cfg, device=device)
    except Exception as e:  # CheckpointError, OSError, RuntimeError of torch.load
        if not fallback:
            raise StartupError(
                f"cannot load the weights '{weights}' ({source}): {e}. Fix: pass a valid "
                "checkpoint (checkpoint:=...), checkpoint:='' with vo.flow_provider:=dis "
                'vo.depth_provider:=none for the classical pipeline, or '
                'fallback_to_classical:=true') from e
        logger.error(f"cannot load the weights '{weights}' ({source}): {e}; "
                     'fallback_to_classical is true: running the classical pipeline')
        cfg.vo.flow_provider, cfg.vo.depth_provider, cfg.vo.checkpoint = 'dis', 'none', ''
        flow, depth, weights, source = 'dis', 'none', '', 'fallback (classical)'
        vo = VisualOdometry(cfg, device=device)
    used = vo.cfg.data
    order = 'bgr' if used.bgr else 'rgb'
    return vo, {'flow': flow, 'depth': depth, 'weights': weights or '(none)',
                'weights_source': source, 'device': str(vo.device),
                'network_input': f'{used.img_width}x{used.img_height} {order}'}


class _Stats:
    """Frame accounting and timing of the node (guarded by the node's lock)."""

    def __init__(self):
        self.received = 0
        self.processed = 0
        self.lost = 0
        self.skipped = {'busy': 0, 'stride': 0, 'paused': 0}
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.latency_ms = 0.0
        self.latency_sum_ms = 0.0
        self.latency_max_ms = 0.0
        self.processing_ms = 0.0
        self.node_ms = 0.0
        self.node_sum_ms = 0.0
        self.last: Optional[FrameResult] = None
        self.start = time.monotonic()


class VONode(Node):
    """The visual-odometry node (see the module docstring)."""

    def __init__(self, **kwargs):
        """
        Declare the parameters, build the odometry, create topics, services and the worker.

        :param kwargs: passed to rclpy's Node (context, parameter_overrides, ...).
        :raises StartupError: unusable weights or parameters.
        """
        super().__init__('vo_node', **kwargs)
        log = self.get_logger()
        try:
            self.params = NodeParameters(self)
            cfg = self.params.config()
        except ConfigError as e:
            raise StartupError(str(e)) from e
        p = self.params
        self.vo, self.info = build_odometry(cfg, p['checkpoint'], p['device'],
                                            p['fallback_to_classical'], log,
                                            p['vo.flow_provider'], p['vo.depth_provider'],
                                            p.explicit_config_keys())
        cfg = self.vo.cfg
        p.adopt(cfg)     # later parameter changes start from the sizes actually used
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stats = _Stats()
        self._slot = None
        self._busy = False
        self._stop = False
        self._paused = False
        self._reset_requested = False
        self._pending_cfg: Dict[str, object] = {}
        self._last_stamp: Optional[int] = None
        self._stride_counter = 0
        self._info_seen = False
        self._first_image: Optional[float] = None
        self._warned: Dict[str, float] = {}
        self._T_bc: Optional[np.ndarray] = None
        self._T_bc_frame: Optional[str] = None
        self._prev: Optional[Tuple[int, np.ndarray]] = None   # (stamp ns, T_world_cam)
        self._work_hw: Optional[Tuple[int, int]] = None
        self._path = PathMsg()
        self._state_name = 'WAITING'

        # publishers
        self.pub_odom = self.create_publisher(Odometry, 'odom', 10)
        self.pub_path = self.create_publisher(PathMsg, 'path', 10)
        self.pub_depth = self.create_publisher(Image, 'depth', 10)
        self.pub_depth_info = self.create_publisher(CameraInfo, 'depth/camera_info', 10)
        self.pub_points = self.create_publisher(PointCloud2, 'points', 5)
        self.pub_status = self.create_publisher(DiagnosticStatus, '~/status', 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.tf_broadcaster, self.static_broadcaster, self.info['tf'] = make_broadcasters(self)
        self.extrinsics = ExtrinsicsProvider(self, p['use_tf_extrinsics'], p['tf_timeout'],
                                             p['base_to_camera'])

        # subscriptions (one mutually exclusive group: pairing state is touched by one thread)
        self._sub_group = MutuallyExclusiveCallbackGroup()
        self._srv_group = ReentrantCallbackGroup()
        self._create_subscriptions()

        self.create_service(Trigger, '~/reset', self._on_reset, callback_group=self._srv_group)
        self.create_service(Trigger, '~/pause', self._on_pause, callback_group=self._srv_group)
        self.create_service(Trigger, '~/resume', self._on_resume,
                            callback_group=self._srv_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self.create_timer(p['diagnostics_period'], self._publish_diagnostics,
                          callback_group=self._srv_group)
        self._worker = threading.Thread(target=self._work, name='vo_worker', daemon=True)
        self._worker.start()
        h, w = cfg.data.img_height, cfg.data.img_width
        size = 'input size' if cfg.vo.resolution == 'native' else f'{w}x{h}'
        log.info(f"visual odometry ready: flow={self.info['flow']} depth={self.info['depth']} "
                 f"weights={self.info['weights']} ({self.info['weights_source']}) "
                 f"device={self.info['device']} working resolution={size} "
                 f"channels={'bgr' if cfg.data.bgr else 'rgb'} "
                 f"image_qos={p['image_qos']} sync={self.info['sync']} tf={self.info['tf']}")

    # ----------------------------------------------------------------------------------------
    # subscriptions and pairing
    # ----------------------------------------------------------------------------------------
    def _create_subscriptions(self) -> None:
        p = self.params
        depth = p['queue_size']
        if p['image_qos'] == 'sensor_data':   # rclpy's qos_profile_sensor_data, own depth
            qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)
        else:
            qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        if p['use_compressed']:
            try:
                image_topic = self.resolve_topic_name('image') + '/compressed'
            except Exception:
                image_topic = 'image/compressed'
            image_type = CompressedImage
        else:
            image_topic, image_type = 'image', Image
        self.image_topic = image_topic
        self.info_topic = 'camera_info'
        group = self._sub_group
        if message_filters is not None:
            self.info['sync'] = 'message_filters'
            kw = {'qos_profile': qos, 'callback_group': group}
            try:
                self._mf_image = message_filters.Subscriber(self, image_type, image_topic,
                                                            event_callbacks=events, **kw)
            except TypeError:
                self._mf_image = message_filters.Subscriber(self, image_type, image_topic, **kw)
            self._mf_info = message_filters.Subscriber(self, CameraInfo, self.info_topic, **kw)
            if p['sync_slop'] > 0:
                self._mf_sync = message_filters.ApproximateTimeSynchronizer(
                    [self._mf_image, self._mf_info], p['queue_size'], p['sync_slop'])
            else:
                self._mf_sync = message_filters.TimeSynchronizer(
                    [self._mf_image, self._mf_info], p['queue_size'])
            self._mf_sync.registerCallback(self._on_pair)
            self._mf_image.registerCallback(self._on_image)
            self._mf_info.registerCallback(self._on_info)
            self._sync = None
        else:
            self.info['sync'] = 'own StampSynchronizer'
            info_depth = max(depth, INFO_QUEUE_MIN)
            self._sync = StampSynchronizer(self._on_pair, (depth, info_depth), p['sync_slop'],
                                           on_drop=self._on_sync_drop)
            self.create_subscription(image_type, image_topic, self._on_image, qos,
                                     callback_group=group, event_callbacks=events)
            info_qos = QoSProfile(depth=info_depth, history=HistoryPolicy.KEEP_LAST,
                                  reliability=qos.reliability, durability=qos.durability)
            self.create_subscription(CameraInfo, self.info_topic, self._on_info, info_qos,
                                     callback_group=group, event_callbacks=events)

    def _warn(self, key: str, text: str, period: float = WARN_PERIOD, once: bool = False,
              level: str = 'warning') -> None:
        """Log a warning at most once per ``period`` seconds per key (or once)."""
        now = time.monotonic()
        last = self._warned.get(key)
        if last is not None and (once or now - last < period):
            return
        self._warned[key] = now
        log = self.get_logger()
        # one call site per severity: rclpy refuses a call site that changes its severity
        if level == 'info':
            log.info(text)
        elif level == 'error':
            log.error(text)
        else:
            log.warning(text)

    def _on_incompatible_qos(self, event) -> None:
        other = 'sensor_data' if self.params['image_qos'] == 'reliable' else 'reliable'
        self._warn('qos', f'a publisher on {self.image_topic} / {self.info_topic} offers a QoS '
                   f"incompatible with this node's image_qos={self.params['image_qos']} (policy "
                   f'{getattr(event, "last_policy_kind", "?")}): its messages never arrive. '
                   f'Fix: restart with image_qos:={other}, or make the camera publish '
                   'reliable', period=30.0)

    def _stamp_warning(self, stamp: int, last: int) -> None:
        kind = 'duplicate' if stamp == last else 'out-of-order'
        self._warn(f'stamp_{kind}', f'{kind} image stamp {stamp / 1e9:.3f} s (last '
                   f'{last / 1e9:.3f} s): frame dropped. Stamps must increase; after a time '
                   'jump (bag loop) call ~/reset')

    def _on_sync_drop(self, index: int, msg, reason: str) -> None:
        if index != 0:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        with self._lock:
            key = {'flushed': 'no_camera_info', 'stale': 'stamp'}.get(reason, 'unsynchronised')
            self._stats.rejected[key] += 1
            last = self._last_stamp
        if reason == 'stale':
            self._stamp_warning(stamp, stamp if last is None else last)
        elif reason != 'flushed':
            self._warn('sync', f'image at {stamp_to_ns(msg.header.stamp) / 1e9:.3f} s dropped: '
                       f'no camera_info with its stamp ({reason}); camera_info must carry the '
                       'stamp of its image (or set sync_slop)')

    def _guard(self, fn, *args) -> None:
        """Run a subscription callback; an exception is logged, never ends the executor."""
        try:
            fn(*args)
        except Exception as e:
            with self._lock:
                self._stats.rejected['error'] += 1
            self._warn('callback', f'callback {fn.__name__} failed: {type(e).__name__}: {e}\n'
                       f'{traceback.format_exc(limit=4)}', level='error')

    def _on_image(self, msg) -> None:
        self._guard(self._handle_image, msg)

    def _on_info(self, msg: CameraInfo) -> None:
        self._guard(self._handle_info, msg)

    def _on_pair(self, image, info: CameraInfo) -> None:
        self._guard(self._submit, image, info)

    def _handle_image(self, msg) -> None:
        now = time.monotonic()
        with self._lock:
            self._stats.received += 1
            if self._first_image is None:
                self._first_image = now
            waited = now - self._first_image
            info_seen = self._info_seen
        if not info_seen and waited >= self.params['camera_info_timeout']:
            K = camera_matrix_or_none(self.params['camera_matrix'])
            if self._sync is not None:
                self._sync.flush(0)
            if K is None:
                with self._lock:
                    self._stats.rejected['no_camera_info'] += 1
                self._warn('no_info', f'no camera_info received on {self.info_topic} within '
                           f"camera_info_timeout={self.params['camera_info_timeout']} s: images "
                           'are dropped. Fix: publish sensor_msgs/CameraInfo with the stamps of '
                           'the images (remap camera_info:=<your topic>), or set the '
                           'camera_matrix parameter (9 numbers, row-major K at the image size)',
                           period=30.0)
                return
            self._warn('use_matrix', f'no camera_info on {self.info_topic}: using the '
                       'camera_matrix parameter', once=True, level='info')
            self._submit(msg, K)
            return
        if self._sync is not None:
            self._sync.add(0, msg)

    def _handle_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._info_seen = True
        if self._sync is not None:
            self._sync.add(1, msg)

    def _submit(self, image, source) -> None:
        """Store a frame in the one-slot buffer (stamp, stride and pause checks first)."""
        stamp = stamp_to_ns(image.header.stamp)
        with self._cond:
            if self._paused:
                self._stats.skipped['paused'] += 1
                return
            last = self._last_stamp
            if last is not None and stamp <= last:
                self._stats.rejected['stamp'] += 1
                self._stamp_warning(stamp, last)
                return
            self._last_stamp = stamp
            self._stride_counter += 1
            if (self._stride_counter - 1) % self.params['frame_skip']:
                self._stats.skipped['stride'] += 1
                return
            if self._slot is not None:
                self._stats.skipped['busy'] += 1
            self._slot = (image, source, time.monotonic())
            self._cond.notify()

    # ----------------------------------------------------------------------------------------
    # services and parameters
    # ----------------------------------------------------------------------------------------
    def _on_reset(self, request, response):
        with self._cond:
            self._reset_requested = True
            self._last_stamp = None
        if self._sync is not None:
            self._sync.reset()
        response.success = True
        response.message = 'odometry reset: the next frame is the new origin'
        self.get_logger().info(response.message)
        return response

    def _set_paused(self, paused: bool, response, changed: str, unchanged: str):
        """Set the pause flag; answer the Trigger with ``changed`` or ``unchanged``."""
        with self._cond:
            was = self._paused
            self._paused = paused
        response.success = True
        response.message = changed if was != paused else unchanged
        return response

    def _on_pause(self, request, response):
        return self._set_paused(True, response, 'paused: frames are counted, not used',
                                'already paused')

    def _on_resume(self, request, response):
        return self._set_paused(False, response, 'resumed', 'was not paused')

    def _on_set_parameters(self, params) -> SetParametersResult:
        reason = self.params.check(params)
        if reason is None:
            changed = {q.name: q.value for q in params if q.name in self.params.specs}
            try:
                self.params.config({k: v for k, v in changed.items()
                                    if self.params.specs[k].config_key}, base=self.vo.cfg)
            except ConfigError as e:
                reason = str(e)
        if reason is not None:
            self.get_logger().warning(f'parameter change rejected: {reason}')
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params) -> None:
        with self._lock:
            for q in params:
                if q.name not in self.params.specs:
                    continue
                self.params.values[q.name] = q.value
                if self.params.specs[q.name].config_key:
                    self._pending_cfg[q.name] = q.value

    # ----------------------------------------------------------------------------------------
    # worker
    # ----------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait(0.5)
                if self._stop:
                    return
                item, self._slot = self._slot, None
                self._busy = True
                reset, self._reset_requested = self._reset_requested, False
                pending, self._pending_cfg = self._pending_cfg, {}
            try:
                if reset:
                    self._do_reset()
                if pending:
                    self.vo.cfg = self.params.config(pending, base=self.vo.cfg)
                    self.get_logger().info(f'odometry settings changed: {pending}')
                self._process(*item)
            except Exception as e:  # keep running whatever one frame does
                with self._lock:
                    self._stats.rejected['error'] += 1
                self._warn('error', f'frame failed: {type(e).__name__}: {e}\n'
                           f'{traceback.format_exc(limit=4)}', level='error')
            finally:
                with self._lock:
                    self._busy = False

    def _do_reset(self) -> None:
        self.vo.reset()
        self._prev = None
        self._work_hw = None
        self._path = PathMsg()

    def _reject(self, reason: str, key: str, text: str) -> None:
        with self._lock:
            self._stats.rejected[reason] += 1
        self._warn(key, text)

    def _process(self, image, source, arrival: float) -> None:
        """Convert, run the odometry and publish one frame."""
        p = self.params
        try:
            if isinstance(image, CompressedImage):
                rgb = conv.compressed_to_rgb8(image)
            else:
                rgb = conv.image_to_rgb8(image)
        except conv.UnsupportedEncodingError as e:
            return self._reject('encoding', 'encoding', f'frame dropped: {e}')
        except ValueError as e:
            return self._reject('malformed', 'malformed', f'frame dropped: {e}')
        hw = rgb.shape[:2]
        try:
            if isinstance(source, CameraInfo):
                K = conv.camera_info_to_K(source)
                K = conv.fit_K_to_image(K, conv.camera_info_size(source), hw)
            else:
                K = np.asarray(source, dtype=np.float64)
        except conv.ImageSizeError as e:
            return self._reject('size', 'size', f'frame dropped: {e}')
        except ValueError as e:
            return self._reject('camera_info', 'camera_info', f'frame dropped: {e}')
        work_hw = self.vo.working_size(hw)
        if self._work_hw is not None and work_hw != self._work_hw:
            return self._reject('size', 'work_size', f'frame dropped: its working size '
                                f"{work_hw} differs from the previous frames' {self._work_hw} "
                                "(vo.resolution='native'); call ~/reset after changing the "
                                'image size')
        camera_frame = p['camera_frame'] or image.header.frame_id
        if self._T_bc is None or camera_frame != self._T_bc_frame:
            self._T_bc, source_name = self.extrinsics.lookup(p['base_frame'], camera_frame)
            self._T_bc_frame = camera_frame
            if source_name == 'parameters' and p['publish_camera_tf'] and camera_frame:
                hdr = Header(stamp=image.header.stamp, frame_id=p['base_frame'])
                self.static_broadcaster.sendTransform(
                    conv.transform_msg(self._T_bc, hdr, camera_frame))
            self.get_logger().info(f"base '{p['base_frame']}' -> camera '{camera_frame}' "
                                   f'from {source_name}')
        t_sec = stamp_to_ns(image.header.stamp) * 1e-9
        t0 = time.perf_counter()
        result = self.vo.step(t_sec, rgb, K)
        self._work_hw = work_hw
        self._publish(result, image.header, camera_frame, 1000.0 * (time.perf_counter() - t0),
                      1000.0 * (time.monotonic() - arrival))

    # ----------------------------------------------------------------------------------------
    # publishing
    # ----------------------------------------------------------------------------------------
    def _publish(self, r: FrameResult, image_header: Header, camera_frame: str,
                 processing_ms: float, node_ms: float) -> None:
        p = self.params
        stamp_ns = stamp_to_ns(image_header.stamp)
        latency = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        if r.state == TrackingState.LOST:
            self._warn('lost', f'tracking LOST at {stamp_ns / 1e9:.3f} s: {r.message}; no '
                       'odometry is published until it recovers')
        else:
            T_bc = self._T_bc
            T_ob = conv.conjugate_pose(T_bc, r.T_world_cam)
            cov_ob = conv.conjugate_covariance(r.covariance, T_bc, r.T_world_cam)
            lin, ang, twist_cov = np.zeros(3), np.zeros(3), None
            if self._prev is not None and r.state != TrackingState.INITIALIZING:
                dt = (stamp_ns - self._prev[0]) * 1e-9
                motion = conv.conjugate_pose(T_bc, r.T_prev_cur)
                lin, ang = conv.twist_from_motion(motion, dt)
                if dt > 0:
                    twist_cov = conv.conjugate_covariance(r.relative_covariance, T_bc,
                                                          r.T_prev_cur) / (dt * dt)
            self._prev = (stamp_ns, r.T_world_cam)
            odom_header = Header(stamp=image_header.stamp, frame_id=p['odom_frame'])
            self.pub_odom.publish(conv.odometry_msg(T_ob, cov_ob, odom_header, p['base_frame'],
                                                    lin, ang, twist_cov))
            if p['publish_tf']:
                self.tf_broadcaster.sendTransform(
                    conv.transform_msg(T_ob, odom_header, p['base_frame']))
            self._path.header = odom_header
            self._path.poses.append(conv.pose_stamped_msg(T_ob, odom_header))
            excess = len(self._path.poses) - p['path_max_length']
            if excess > 0:
                del self._path.poses[:excess]
            self.pub_path.publish(self._path)
            if r.depth is not None and (p['publish_depth'] or p['publish_points']):
                depth_header = Header(stamp=image_header.stamp,
                                      frame_id=camera_frame or image_header.frame_id)
                if p['publish_depth']:
                    self.pub_depth.publish(conv.depth_to_image(r.depth, depth_header))
                    self.pub_depth_info.publish(conv.make_camera_info(
                        r.K, r.depth.shape[0], r.depth.shape[1], depth_header))
                if p['publish_points']:
                    pts = conv.depth_to_points(r.depth, r.K, p['points_stride'])
                    self.pub_points.publish(conv.pointcloud2_msg(pts, depth_header))
        with self._lock:
            s = self._stats
            s.processed += 1
            s.lost += int(r.state == TrackingState.LOST)
            s.latency_ms = latency
            s.latency_sum_ms += latency
            s.latency_max_ms = max(s.latency_max_ms, latency)
            s.processing_ms = processing_ms
            s.node_ms = node_ms
            s.node_sum_ms += node_ms
            s.last = r
            changed = self._state_name != r.state.name
            self._state_name = r.state.name
        self.pub_status.publish(self._frame_status(r, latency))
        if changed:
            self._publish_diagnostics()

    def _frame_status(self, r: FrameResult, latency_ms: float) -> DiagnosticStatus:
        values = {'state': r.state.name, 'stamp': f'{r.stamp:.9f}', 'method': r.method,
                  'num_matches': r.num_matches, 'num_inliers': r.num_inliers,
                  'scale_source': r.scale_source, 'latency_ms': f'{latency_ms:.1f}'}
        values.update({f'time_{k}_ms': f'{v:.1f}' for k, v in r.timings.items()})
        return DiagnosticStatus(level=_LEVEL[r.state], name=f'{self.get_name()}: frame',
                                message=r.message or r.state.name, hardware_id=PACKAGE,
                                values=[KeyValue(key=k, value=str(v))
                                        for k, v in values.items()])

    def accounting(self) -> Dict[str, int]:
        """
        Count the frames.

        :return: received and processed, skipped_*, rejected_*, pending (their sum).
        """
        with self._lock:
            s = self._stats
            pending = int(self._slot is not None) + int(self._busy)
            out = {'received': s.received, 'processed': s.processed, 'pending': pending}
            out.update({f'skipped_{k}': v for k, v in s.skipped.items()})
            out.update({f'rejected_{k}': v for k, v in s.rejected.items()})
        if self._sync is not None:
            out['pending'] += self._sync.pending(0)
        return out

    def _publish_diagnostics(self) -> None:
        acc = self.accounting()
        with self._lock:
            s = self._stats
            r = s.last
            state = self._state_name
            paused = self._paused
            values = dict(acc)
            values['rejected'] = sum(v for k, v in acc.items() if k.startswith('rejected_'))
            values['skipped'] = sum(v for k, v in acc.items() if k.startswith('skipped_'))
            values['lost'] = s.lost
            values['latency_ms'] = f'{s.latency_ms:.1f}'
            values['latency_mean_ms'] = (f'{s.latency_sum_ms / s.processed:.1f}'
                                         if s.processed else '0.0')
            values['latency_max_ms'] = f'{s.latency_max_ms:.1f}'
            values['processing_ms'] = f'{s.processing_ms:.1f}'
            values['in_node_ms'] = f'{s.node_ms:.1f}'
            values['in_node_mean_ms'] = (f'{s.node_sum_ms / s.processed:.1f}'
                                         if s.processed else '0.0')
            elapsed = max(time.monotonic() - s.start, 1e-9)
            values['processed_per_s'] = f'{s.processed / elapsed:.2f}'
        values['state'] = state
        values['paused'] = paused
        if r is not None:
            values.update({'num_matches': r.num_matches, 'num_inliers': r.num_inliers,
                           'method': r.method, 'scale': f'{r.scale:.4f}',
                           'scale_source': r.scale_source, 'message': r.message})
            values.update({f'time_{k}_ms': f'{v:.1f}' for k, v in r.timings.items()})
        values.update(self.info)
        values['image_qos'] = self.params['image_qos']
        if paused:
            level, message = DiagnosticStatus.WARN, 'paused'
        elif r is None:
            level, message = DiagnosticStatus.WARN, f'waiting for images on {self.image_topic}'
        else:
            level = _LEVEL[r.state]
            message = r.state.name + (f': {r.message}' if r.message else '')
        status = DiagnosticStatus(level=level, name=f'{self.get_name()}: visual odometry',
                                  message=message, hardware_id=PACKAGE,
                                  values=[KeyValue(key=k, value=str(v))
                                          for k, v in values.items()])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def shutdown(self) -> None:
        """Stop the worker thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout=5.0)


def main(args=None) -> int:
    """Run the node until SIGINT; exit status 0, or 1 when it cannot start."""
    rclpy.init(args=args)
    node = None
    executor = None
    rc = 0
    try:
        node = VONode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError as e:
        rclpy.logging.get_logger('vo_node').error(str(e))
        rc = 1
    except (InvalidParameterValueException, InvalidParameterTypeException,
            ParameterException) as e:
        rclpy.logging.get_logger('vo_node').error(
            f'invalid parameter: {e}. Fix: give a value of the declared type within its range '
            '(ros2 param describe /vo_node <name>)')
        rc = 1
    finally:
        if node is not None:
            node.shutdown()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return rc


if __name__ == '__main__':
    sys.exit(main())
