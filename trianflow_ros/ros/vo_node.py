"""
``vo_node``: monocular visual odometry as a ROS 2 node over ``VisualOdometry.step``.

Topics (relative names; remap them):

===========================  =============================  ======================================
name                         type                           what
===========================  =============================  ======================================
image (sub)                  sensor_msgs/Image              rgb8, bgr8, rgba8, bgra8, mono8,
                                                            mono16 (16UC1), rgb16, bgr16
image/compressed (sub)       sensor_msgs/CompressedImage    instead of image (use_compressed)
camera_info (sub)            sensor_msgs/CameraInfo         K and D of the images (pairing below)
odom                         nav_msgs/Odometry              odom_frame -> base_frame, covariances
path                         nav_msgs/Path                  the trajectory since the last reset
                                                            (bounded: path_max_length, _period)
depth                        sensor_msgs/Image 32FC1        metres of the odometry scale, at the
                                                            camera's resolution (depth_resolution)
depth/camera_info            sensor_msgs/CameraInfo         K and D of depth
points                       sensor_msgs/PointCloud2        depth back-projected (publish_points)
/tf                          tf2_msgs/TFMessage             odom_frame -> base_frame, or the
                                                            inverse (publish_tf, invert_tf)
/tf_static                   tf2_msgs/TFMessage             only with publish_camera_tf
~/status                     diagnostic_msgs/               per processed frame: state, inliers
                             DiagnosticStatus
/diagnostics                 diagnostic_msgs/               periodic: state, frame accounting,
                             DiagnosticArray                latency, per-stage times
===========================  =============================  ======================================

Services: ``~/reset``, ``~/pause``, ``~/resume`` (std_srvs/Trigger).

Pairing (:mod:`~trianflow_ros.ros.pairing`): an image is processed with the camera_info of its
stamp when it exists, otherwise the newest one within ``camera_info_max_age``, otherwise
``camera_matrix``; an image waits up to ``camera_info_wait`` for the info of its stamp. Lens
distortion (``D``, plumb_bob / rational_polynomial / equidistant) is passed to the odometry,
which undistorts the matches; an unsupported model is warned about (throttled) and the frame
is processed as a pinhole image (the diagnostics say so).

Frames (REP-105 / REP-103): the odometry of the core is the motion of the camera optical frame
in the optical frame of the first image, ``T_cam0_cami``; the node publishes the base
(:mod:`~trianflow_ros.ros.odometry_output`). ``T_base_cam`` comes from TF (tf2_ros, or the
node's own /tf_static + /tf listener), looked up again with every frame until found, and the
``base_to_camera`` parameter meanwhile. The node never publishes the robot's static
transforms unless ``publish_camera_tf`` asks.

Weights: :mod:`~trianflow_ros.ros.weights`.

Real time: the subscription callbacks only pair and store the newest frame in a one-slot buffer;
a worker thread runs the odometry. A frame that arrives while the slot is full replaces the one
waiting there (counted as skipped_busy), so nothing queues without bound. ``/diagnostics``
accounts for every image (:mod:`~trianflow_ros.ros.node_stats`).

Tracking loss: LOST frames publish odometry with covariances of 1e6 (``publish_when_lost``,
default true) or nothing; never TF, path or depth. ``~/status`` and ``/diagnostics`` say LOST
(ERROR) with the reason; tracking resumes (RECOVERED) against the last good frame, without a
jump in the odometry frame.
"""

import ctypes
import faulthandler
import os
import sys
import threading
import time
import traceback
from typing import Dict, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
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

from trianflow_ros.config import ConfigError
from trianflow_ros.geometry.distortion import Distortion
from trianflow_ros.ros import conversions as conv
from trianflow_ros.ros.camera_distortion import DistortionTracker
from trianflow_ros.ros.depth_output import depth_output
from trianflow_ros.ros.node_diagnostics import frame_status, summary_status
from trianflow_ros.ros.node_stats import FrameStats
from trianflow_ros.ros.odometry_output import OdometryOutput
from trianflow_ros.ros.pairing import (FramePairer, INFO_CACHE_SIZE, InfoCache,
                                       MessageFiltersInfoCache, stamp_to_ns)
from trianflow_ros.ros.params import camera_matrix_or_none, describe, NodeParameters
from trianflow_ros.ros.path_keeper import PathKeeper
from trianflow_ros.ros.tf import ExtrinsicsProvider, make_broadcasters, odometry_transform
from trianflow_ros.ros.throttle import LogThrottle
from trianflow_ros.ros.weights import (build_odometry, default_weights,  # noqa: F401
                                       resolve_weights, StartupError)
from trianflow_ros.vo.types import FrameResult, TrackingState

try:  # a ROS install has message_filters; the PyPI wheels do not
    import message_filters
except ImportError:  # pragma: no cover - depends on the machine
    message_filters = None

#: Seconds between repeated warnings of one kind and shape (:class:`LogThrottle`).
WARN_PERIOD = 5.0
#: Seconds the shutdown (worker, executor, node, context) may take before the process exits.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds between checks for images whose wait for camera_info is over.
PAIRING_POLL = 0.02


class VONode(Node):
    """The visual-odometry node (see the module docstring)."""

    def __init__(self, **kwargs):
        """
        Declare the parameters, build the odometry, create topics, services and the worker.

        :param kwargs: passed to rclpy's Node (context, parameter_overrides, ...).
        :raises StartupError: unusable weights or parameters.
        """
        super().__init__('vo_node', **kwargs)
        self._setup()

    def _setup(self) -> None:
        log = self.get_logger()
        try:
            self.params = NodeParameters(self)
            cfg = self.params.config()
        except ConfigError as e:
            raise StartupError(str(e)) from e
        p = self.params
        for note in p.notes:
            log.warning(note)
        self.vo, self.info = build_odometry(cfg, p['checkpoint'], p['device'],
                                            p['fallback_to_classical'], log,
                                            p['vo.flow_provider'], p['vo.depth_provider'],
                                            p.explicit_config_keys())
        cfg = self.vo.cfg
        p.adopt(cfg)            # later parameter changes start from the sizes actually used
        p.declare_deferred(cfg)  # data.img_height / img_width read back the size in use
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stats = FrameStats()
        self._throttle = LogThrottle(WARN_PERIOD)
        self._slot = None
        self._busy = False
        self._stop = False
        self._paused = False
        self._reset_requested = False
        self._pending_cfg: Dict[str, object] = {}
        self._last_stamp: Optional[int] = None
        self._stride_counter = 0
        self._last: Optional[FrameResult] = None
        self._state_name = 'WAITING'
        self._work_hw = None
        self._extrinsics_source: Dict[str, str] = {}
        self._distortion = DistortionTracker()
        self._odom = OdometryOutput(p['max_frame_interval'], p['twist_unknown_sigma'])
        self._path = PathKeeper(p['path_max_length'], p['path_publish_period'])

        self.pub_odom = self.create_publisher(Odometry, 'odom', 10)
        self.pub_path = self.create_publisher(PathMsg, 'path', 10)
        self.pub_depth = self.create_publisher(Image, 'depth', 10)
        self.pub_depth_info = self.create_publisher(CameraInfo, 'depth/camera_info', 10)
        self.pub_points = self.create_publisher(PointCloud2, 'points', 5)
        self.pub_status = self.create_publisher(DiagnosticStatus, '~/status', 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.tf_broadcaster, self.static_broadcaster, self.info['tf'] = make_broadcasters(
            self, static=p['publish_camera_tf'])
        self.extrinsics = ExtrinsicsProvider(self, p['use_tf_extrinsics'], p['tf_timeout'],
                                             p['base_to_camera'])
        self.info['tf_listener'] = self.extrinsics.implementation

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
        self.create_timer(PAIRING_POLL, self._pairer.poll, callback_group=self._sub_group)
        self.create_timer(0.25, self._flush_path, callback_group=self._srv_group)
        self._worker = threading.Thread(target=self._work, name='vo_worker', daemon=True)
        self._worker.start()
        h, w = cfg.data.img_height, cfg.data.img_width
        size = 'input size' if cfg.vo.resolution == 'native' else f'{w}x{h}'
        tf_out = ('none' if not p['publish_tf'] else
                  f"{p['base_frame']} -> {p['odom_frame']} (inverted)" if p['invert_tf'] else
                  f"{p['odom_frame']} -> {p['base_frame']}")
        log.info(f"visual odometry ready: flow={self.info['flow']} depth={self.info['depth']} "
                 f"weights={self.info['weights']} ({self.info['weights_source']}) "
                 f"device={self.info['device']} working resolution={size} "
                 f"channels={'bgr' if cfg.data.bgr else 'rgb'} "
                 f"image_qos={p['image_qos']} pairing={self.info['pairing']} "
                 f"tf={self.info['tf']} publishes tf: {tf_out}; extrinsics lookup: "
                 f"{self.info['tf_listener']}")

    # ----------------------------------------------------------------------------------------
    # subscriptions and pairing
    # ----------------------------------------------------------------------------------------
    def _create_subscriptions(self) -> None:
        p = self.params
        depth = p['queue_size']
        reliability = (ReliabilityPolicy.BEST_EFFORT if p['image_qos'] == 'sensor_data'
                       else ReliabilityPolicy.RELIABLE)
        qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=reliability,
                         durability=DurabilityPolicy.VOLATILE)
        info_qos = QoSProfile(depth=max(depth, INFO_CACHE_SIZE), history=HistoryPolicy.KEEP_LAST,
                              reliability=reliability, durability=DurabilityPolicy.VOLATILE)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        if p['use_compressed']:
            try:
                image_topic = self.resolve_topic_name('image') + '/compressed'
            except Exception:
                image_topic = 'image/compressed'
            image_type = CompressedImage
        else:
            image_topic, image_type = 'image', Image
        self.image_topic, self.info_topic = image_topic, 'camera_info'
        group = self._sub_group
        if message_filters is not None:
            self.info['pairing'] = f'message_filters.Cache({INFO_CACHE_SIZE})'
            self._mf_info = message_filters.Subscriber(
                self, CameraInfo, self.info_topic, qos_profile=info_qos, callback_group=group)
            infos = MessageFiltersInfoCache(message_filters, self._mf_info, INFO_CACHE_SIZE)
            infos.cache.registerCallback(self._on_info)
        else:
            self.info['pairing'] = f'own InfoCache({INFO_CACHE_SIZE})'
            infos = InfoCache(INFO_CACHE_SIZE)
            self.create_subscription(CameraInfo, self.info_topic, self._on_info, info_qos,
                                     callback_group=group, event_callbacks=events)
        self._pairer = FramePairer(
            self._on_paired, self._on_unpaired, wait=p['camera_info_wait'],
            first_wait=p['camera_info_timeout'], max_age=p['camera_info_max_age'],
            infos=infos, max_held=depth,
            matrix_available=lambda: camera_matrix_or_none(self.params['camera_matrix'])
            is not None)
        self.create_subscription(image_type, image_topic, self._on_image, qos,
                                 callback_group=group, event_callbacks=events)

    def _warn(self, key: str, text: str, period: Optional[float] = None, once: bool = False,
              level: str = 'warning') -> None:
        """Log a message, throttled per kind and message shape (:class:`LogThrottle`)."""
        text = self._throttle.admit(key, text, period, once)
        if text is None:
            return
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
        self._guard(self._pairer.add_info, msg)

    def _handle_image(self, msg) -> None:
        with self._lock:
            self._stats.received += 1
        self._pairer.add_image(msg, stamp_to_ns(msg.header.stamp))

    def _on_unpaired(self, image, text: str) -> None:
        with self._lock:
            self._stats.rejected['no_camera_info'] += 1
        stamp = stamp_to_ns(image.header.stamp) * 1e-9
        self._warn('no_info', f'image at {stamp:.3f} s dropped: {text} on {self.info_topic} and '
                   'camera_matrix is not set. Fix: publish sensor_msgs/CameraInfo with the '
                   'stamps of the images (remap camera_info:=<your topic>), raise '
                   'camera_info_max_age, or set camera_matrix (9 numbers, row-major K at the '
                   'image size)')

    def _on_paired(self, image, info, source: str) -> None:
        if source == 'matrix':
            K = camera_matrix_or_none(self.params['camera_matrix'])
            self._warn('use_matrix', f'no camera_info within camera_info_max_age on '
                       f'{self.info_topic}: using the camera_matrix parameter', level='info',
                       period=60.0)
            self._guard(self._submit, image, K)
        else:
            self._guard(self._submit, image, info)

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
            else:
                self._last_stamp = stamp
        if last is not None and stamp <= last:
            kind = 'duplicate' if stamp == last else 'out-of-order'
            self._warn(f'stamp_{kind}', f'{kind} image stamp {stamp / 1e9:.3f} s (last '
                       f'{last / 1e9:.3f} s): frame dropped. Stamps must increase; after a '
                       'time jump (bag loop) call ~/reset')
            return
        if last is not None and (stamp - last) * 1e-9 > self.params['max_frame_interval']:
            self._warn('time_jump', f'image stamp jumped forward by {(stamp - last) * 1e-9:.1f} '
                       f's (from {last / 1e9:.3f} to {stamp / 1e9:.3f} s, more than '
                       f"max_frame_interval={self.params['max_frame_interval']} s): the "
                       "frame's twist is reported unknown. If the clock jumped (bag loop, "
                       'simulation restart), call ~/reset')
        with self._cond:
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
        p = self.params
        with self._lock:
            for q in params:
                if q.name not in p.specs:
                    continue
                p.values[q.name] = q.value
                if p.specs[q.name].config_key:
                    self._pending_cfg[q.name] = q.value
            self._odom.max_frame_interval = float(p['max_frame_interval'])
            self._odom.twist_sigma = tuple(float(v) for v in p['twist_unknown_sigma'])
        self._path.configure(p['path_max_length'], p['path_publish_period'])
        self._pairer.configure(p['camera_info_wait'], p['camera_info_timeout'],
                               p['camera_info_max_age'])

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
                    self.vo.reset()
                    self._odom.reset()
                    self._path.reset()
                    self._work_hw = None
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

    def _reject(self, reason: str, key: str, text: str) -> None:
        with self._lock:
            self._stats.rejected[reason] += 1
        self._warn(key, text)

    def _distortion_of(self, info: CameraInfo) -> Optional[Distortion]:
        """Return the Distortion of a camera_info (None: pinhole); say what is used."""
        dist, changed, problem = self._distortion.update(info.distortion_model, info.d)
        if changed and not problem:
            self.get_logger().info(f'camera_info distortion: {self._distortion.used}')
        if problem:
            self._warn('distortion', problem)
        return dist

    def _camera_frame(self, image) -> str:
        camera_frame = self.params['camera_frame'] or image.header.frame_id
        if not camera_frame:
            self._warn('frame_id', "the image's header.frame_id is empty and camera_frame is "
                       'not set: odometry is published (base -> camera from base_to_camera), '
                       'depth and points are not. Fix: camera_frame:=<camera optical frame>, '
                       'or set frame_id in the camera driver')
        return camera_frame

    def _extrinsics(self, camera_frame: str) -> np.ndarray:
        p = self.params
        T_bc, source, problem = self.extrinsics.lookup(p['base_frame'], camera_frame)
        if problem:
            self._warn('extrinsics', problem, period=60.0)
        before = self._extrinsics_source.get(camera_frame)
        if source != before:
            self._extrinsics_source[camera_frame] = source
            text = (f"base '{p['base_frame']}' -> camera '{camera_frame}' from {source}")
            if before == 'parameters':
                text += (': switched from base_to_camera; the published base pose changes '
                         'where the two differ (publish the mount before starting the node '
                         'to avoid this)')
            self.get_logger().info(text)
            if source == 'parameters' and self.static_broadcaster is not None and camera_frame:
                hdr = Header(stamp=self.get_clock().now().to_msg(), frame_id=p['base_frame'])
                self.static_broadcaster.sendTransform(
                    conv.transform_msg(T_bc, hdr, camera_frame))
        return T_bc

    def _process(self, image, source, arrival: float) -> None:
        """Convert, run the odometry and publish one frame."""
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
        distortion = None
        try:
            if isinstance(source, CameraInfo):
                K = conv.camera_info_to_K(source)
                K = conv.fit_K_to_image(K, conv.camera_info_size(source), hw)
                distortion = self._distortion_of(source)
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
        camera_frame = self._camera_frame(image)
        T_bc = self._extrinsics(camera_frame)
        t0 = time.perf_counter()
        # no dense depth map when nothing publishes it (same poses, less work)
        self.vo.output_depth = bool(self.params['publish_depth'] or self.params['publish_points'])
        result = self.vo.step(stamp_to_ns(image.header.stamp) * 1e-9, rgb, K,
                              distortion=distortion)
        self._work_hw = work_hw
        self._publish(result, image.header, camera_frame, T_bc, hw, K, distortion,
                      1000.0 * (time.perf_counter() - t0), 1000.0 * (time.monotonic() - arrival))

    # ----------------------------------------------------------------------------------------
    # publishing
    # ----------------------------------------------------------------------------------------
    def _publish(self, r: FrameResult, image_header: Header, camera_frame: str,
                 T_bc: np.ndarray, image_hw, K_image, distortion, processing_ms: float,
                 node_ms: float) -> None:
        p = self.params
        stamp_ns = stamp_to_ns(image_header.stamp)
        sample = self._odom.sample(r, T_bc, stamp_ns, p['publish_when_lost'])
        odom_header = Header(stamp=image_header.stamp, frame_id=p['odom_frame'])
        if sample is not None:
            self.pub_odom.publish(conv.odometry_msg(
                sample.T_odom_base, sample.pose_covariance, odom_header, p['base_frame'],
                sample.linear, sample.angular, sample.twist_covariance))
        if r.state == TrackingState.LOST:
            what = ('odometry with covariance 1e6 is published' if p['publish_when_lost']
                    else 'no odometry is published')
            self._warn('lost', f'tracking LOST at {stamp_ns / 1e9:.3f} s: {r.message}; {what} '
                       'until it recovers')
        else:
            if p['publish_tf']:
                self.tf_broadcaster.sendTransform(odometry_transform(
                    sample.T_odom_base, odom_header, p['odom_frame'], p['base_frame'],
                    p['invert_tf']))
            self._path.add(conv.pose_stamped_msg(sample.T_odom_base, odom_header), odom_header)
            self._flush_path()
            if r.depth is not None and camera_frame and (p['publish_depth']
                                                         or p['publish_points']):
                self._publish_depth(r, image_header, camera_frame, image_hw, K_image,
                                    distortion)
        latency = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        with self._lock:
            plausible = self._stats.frame_done(latency, processing_ms, node_ms,
                                               r.state == TrackingState.LOST)
            self._stats.time_jumps += int(bool(sample is not None and sample.time_jump))
            self._last = r
            changed = self._state_name != r.state.name
            self._state_name = r.state.name
        if not plausible:
            self._warn('clock', f'image stamps are {latency / 1000.0:.1f} s from the node '
                       'clock: latency_ms is not reported (n/a). With a bag, play it with '
                       '--clock and set use_sim_time:=true', once=True, level='info')
        self.pub_status.publish(
            frame_status(self.get_name(), r, latency if plausible else None))
        if changed:
            self._publish_diagnostics()

    def _publish_depth(self, r: FrameResult, image_header: Header, camera_frame: str,
                       image_hw, K_image, distortion) -> None:
        p = self.params
        header = Header(stamp=image_header.stamp, frame_id=camera_frame)
        if p['publish_depth']:
            depth, K = depth_output(r.depth, r.K, image_hw, K_image, p['depth_resolution'])
            self.pub_depth.publish(conv.depth_to_image(depth, header))
            self.pub_depth_info.publish(conv.make_camera_info(
                K, depth.shape[0], depth.shape[1], header, distortion))
        if p['publish_points']:
            pts = conv.depth_to_points(r.depth, r.K, p['points_stride'])
            self.pub_points.publish(conv.pointcloud2_msg(pts, header))

    def _flush_path(self) -> None:
        msg = self._path.take(PathMsg)
        if msg is not None:
            self.pub_path.publish(msg)

    def accounting(self) -> Dict[str, object]:
        """Return the frame accounting and timing values (see :mod:`.node_stats`)."""
        waiting = self._pairer.pending()
        with self._lock:
            pending = int(self._slot is not None) + int(self._busy) + waiting
            return self._stats.values(pending)

    def _publish_diagnostics(self) -> None:
        values = self.accounting()
        with self._lock:
            last, state, paused = self._last, self._state_name, self._paused
        values.update(state=state, paused=paused, distortion=self._distortion.used,
                      image_qos=self.params['image_qos'])
        values.update({f'paired_{k}': v for k, v in self._pairer.counts.items()})
        values['extrinsics'] = ', '.join(f'{k or "?"}: {v}'
                                         for k, v in self._extrinsics_source.items()) or '-'
        values.update(self.info)
        msg = DiagnosticArray(status=[summary_status(self.get_name(), values, last, paused,
                                                     self.image_topic)])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def shutdown(self) -> None:
        """Stop the worker thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout=5.0)


def usage() -> str:
    """Return the ``vo_node --help`` text: the command line and every node parameter."""
    from trianflow_ros.ros.node_params import node_param_specs
    lines = ['usage: vo_node [--ros-args -p NAME:=VALUE ... --params-file FILE '
             '-r image:=TOPIC -r camera_info:=TOPIC]', '',
             (__doc__ or '').strip().split('\n\n')[0].strip('`'), '',
             'node parameters (ros2 param describe /vo_node NAME):']
    for spec in node_param_specs():
        lines.append(f'  {spec.name} (default {spec.default!r}): {describe(spec)}')
    lines += ['', 'and the shared-config fields vo.*, geometry.*, data.img_height, '
              'data.img_width, flow_net.fb_* (trianflow-config --fields)']
    return '\n'.join(lines)


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


def main(args=None) -> int:
    """Run the node until SIGINT; exit status 0, or 1 when it cannot start."""
    argv = list(sys.argv[1:] if args is None else args)
    own = argv[:argv.index('--ros-args')] if '--ros-args' in argv else argv
    if '-h' in own or '--help' in own:
        print(usage())
        return 0
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
        exit_now(1, str(e))
    except (InvalidParameterValueException, InvalidParameterTypeException,
            ParameterException) as e:
        exit_now(1, f'invalid parameter: {e}. Fix: give a value of the declared type within '
                    'its range (ros2 param describe /vo_node <name>)')
    finally:
        # rclpy's destroy_node was seen to hang (1 exit in 60, six nodes stopping at once):
        # bounded, the process then dumps its stacks and exits (status 1) instead of hanging
        faulthandler.dump_traceback_later(SHUTDOWN_TIMEOUT, exit=True)
        if node is not None:
            node.shutdown()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        faulthandler.cancel_dump_traceback_later()
    return rc


if __name__ == '__main__':
    sys.exit(main())
