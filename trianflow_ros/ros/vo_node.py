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

Weights: :mod:`~trianflow_ros.vo.factory` (``checkpoint`` > ``vo.checkpoint`` of ``config_file``
> classical; ``fallback_to_classical``).

Real time (:mod:`~trianflow_ros.ros.frame_queue`): the subscription callbacks only pair and
store the newest frame in a one-slot buffer; a worker thread runs the odometry. A frame that
arrives while the slot is full replaces the one waiting there (counted as skipped_busy).
``/diagnostics`` accounts for every image (:mod:`~trianflow_ros.ros.node_stats`).

Tracking loss (:mod:`~trianflow_ros.ros.frame_publisher`): LOST frames publish odometry with
covariances of 1e6 (``publish_when_lost``, default true) or nothing; never TF, path or depth.
``~/status`` and ``/diagnostics`` say LOST (ERROR) with the reason; tracking resumes
(RECOVERED) against the last good frame, without a jump in the odometry frame.
"""

import sys
import time
import traceback
import types
from typing import Dict, Optional

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo

from trianflow_ros.config import ConfigError
from trianflow_ros.ros import node_main
from trianflow_ros.ros.frame_publisher import FramePublisher
from trianflow_ros.ros.frame_queue import create_services, FrameQueue
from trianflow_ros.ros.node_diagnostics import summary_status
from trianflow_ros.ros.node_inputs import (create_inputs, FrameConverter, FrameRejected,
                                           qos_warning)
from trianflow_ros.ros.node_main import exit_now  # noqa: F401 - the node's process API
from trianflow_ros.ros.node_stats import FrameStats
from trianflow_ros.ros.pairing import stamp_to_ns
from trianflow_ros.ros.param_updates import ParameterUpdates
from trianflow_ros.ros.params import camera_matrix_or_none, NodeParameters
from trianflow_ros.ros.throttle import ThrottledLog
from trianflow_ros.vo.factory import (build_odometry, default_weights,  # noqa: F401
                                      resolve_weights, StartupError)
from trianflow_ros.vo.types import FrameResult, TrackingState

try:  # a ROS install has message_filters; the PyPI wheels do not
    import message_filters
except ImportError:  # pragma: no cover - depends on the machine
    message_filters = None

#: Seconds between repeated warnings of one kind and shape (:mod:`~trianflow_ros.ros.throttle`).
WARN_PERIOD = 5.0
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
        self._stats = FrameStats()
        self._arriving = 0                  # images between their count and the pairer
        self._warn = ThrottledLog(log, WARN_PERIOD)
        self._queue = FrameQueue(self._stats, self._warn, self._run)
        self._lock = self._queue.lock
        self._last: Optional[FrameResult] = None
        self._state_name = 'WAITING'
        self._converter = FrameConverter(log.info, self._warn)
        self._out = FramePublisher(self, self._warn)
        self._sub_group = MutuallyExclusiveCallbackGroup()
        self._srv_group = ReentrantCallbackGroup()
        inputs = create_inputs(self, message_filters, self._sub_group, self._on_image,
                               self._on_info, self._on_incompatible_qos, self._on_paired,
                               self._on_unpaired)
        self.image_topic, self.info_topic = inputs.image_topic, inputs.info_topic
        self._pairer, self._mf_info = inputs.pairer, inputs.mf_info
        create_services(self, self._queue, self._srv_group)
        updates = ParameterUpdates(p, lambda: self.vo.cfg, self._queue, self._out,
                                   self._pairer, log)
        self.add_on_set_parameters_callback(updates.check)
        self.add_post_set_parameters_callback(updates.apply)
        self.create_timer(p['diagnostics_period'], self._publish_diagnostics,
                          callback_group=self._srv_group)
        self.create_timer(PAIRING_POLL, self._pairer.poll, callback_group=self._sub_group)
        self.create_timer(0.25, self._out.flush_path, callback_group=self._srv_group)
        self._queue.start()
        log.info(node_main.ready_message(p, self.info, cfg, self.vo.classical))

    # subscriptions (callback group _sub_group) ------------------------------------------------
    def _on_incompatible_qos(self, event) -> None:
        self._warn('qos', qos_warning(self.params['image_qos'], self.image_topic,
                                      self.info_topic, event), period=30.0)

    def _guard(self, fn, *args) -> None:
        """Run a subscription callback; an exception is logged, never ends the executor."""
        try:
            fn(*args)
        except Exception as e:
            self._reject('error', 'callback', f'callback {fn.__name__} failed: '
                         f'{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}', 'error')

    def _on_image(self, msg) -> None:
        self._guard(self._handle_image, msg)

    def _on_info(self, msg: CameraInfo) -> None:
        self._guard(self._pairer.add_info, msg)

    def _handle_image(self, msg) -> None:
        with self._lock:            # pending from here until the pairer has it (accounting)
            self._stats.received += 1
            self._arriving += 1
        try:
            self._pairer.add_image(msg, stamp_to_ns(msg.header.stamp))
        finally:
            with self._lock:
                self._arriving -= 1

    def _on_unpaired(self, image, text: str) -> None:
        stamp = stamp_to_ns(image.header.stamp) * 1e-9
        self._reject('no_camera_info', 'no_info', f'image at {stamp:.3f} s dropped: {text} on '
                     f'{self.info_topic} and camera_matrix is not set. Fix: publish '
                     'sensor_msgs/CameraInfo with the stamps of the images (remap '
                     'camera_info:=<your topic>), raise camera_info_max_age, or set '
                     'camera_matrix (9 numbers, row-major K at the image size)')

    def _on_paired(self, image, info, source: str) -> None:
        if source == 'matrix':
            info = camera_matrix_or_none(self.params['camera_matrix'])
            self._warn('use_matrix', f'no camera_info within camera_info_max_age on '
                       f'{self.info_topic}: using the camera_matrix parameter', level='info',
                       period=60.0)
        self._guard(self._queue.submit, image, info, self.params['frame_skip'],
                    self.params['max_frame_interval'])

    # the worker thread (frame_queue) -----------------------------------------------------------
    def _run(self, item, reset: bool, pending) -> None:
        if reset:
            self.vo.reset()
            self._out.reset()
        if pending:
            self.vo.cfg = self.params.config(pending, base=self.vo.cfg)
            self.get_logger().info(f'odometry settings changed: {pending}')
        self._process(*item)

    def _reject(self, reason: str, key: str, text: str, level: str = 'warning') -> None:
        with self._lock:
            self._stats.rejected[reason] += 1
        self._warn(key, text, level=level)

    def _process(self, image, source, arrival: float) -> None:
        """Convert, run the odometry and publish one frame."""
        try:
            rgb, K, distortion = self._converter.convert(image, source)
        except FrameRejected as e:
            return self._reject(e.reason, e.key, e.text)
        hw = rgb.shape[:2]
        camera_frame = self._out.camera_frame(image)
        T_bc = self._out.base_to_camera(camera_frame)
        t0 = time.perf_counter()
        # no dense depth map when nothing publishes it (same poses, less work)
        self.vo.output_depth = bool(self.params['publish_depth'] or self.params['publish_points'])
        stamp_ns = stamp_to_ns(image.header.stamp)
        r = self.vo.step(stamp_ns * 1e-9, rgb, K, distortion=distortion)
        processing_ms = 1000.0 * (time.perf_counter() - t0)
        node_ms = 1000.0 * (time.monotonic() - arrival)
        sample = self._out.publish(r, types.SimpleNamespace(
            header=image.header, camera_frame=camera_frame, T_bc=T_bc, hw=hw, K=K,
            distortion=distortion))
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
        self._out.publish_status(r, latency if plausible else None)
        if changed:
            self._publish_diagnostics()

    # diagnostics ---------------------------------------------------------------------------
    def accounting(self) -> Dict[str, object]:
        """Return the frame accounting and timing values (see :mod:`.node_stats`)."""
        with self._lock:            # one snapshot: every image is counted in exactly one place
            return self._stats.values(self._queue.pending() + self._pairer.pending()
                                      + self._arriving)

    def _publish_diagnostics(self) -> None:
        values = self.accounting()
        with self._lock:
            last, state, paused = self._last, self._state_name, self._queue.paused
        values.update(state=state, paused=paused, distortion=self._converter.distortion.used,
                      image_qos=self.params['image_qos'])
        values.update({f'paired_{k}': v for k, v in self._pairer.counts.items()})
        values['extrinsics'] = ', '.join(f'{k or "?"}: {v}'
                                         for k, v in self._out.extrinsics_source.items()) or '-'
        values.update(self.info)
        self._out.publish_diagnostics(summary_status(self.get_name(), values, last, paused,
                                                     self.image_topic))

    def shutdown(self) -> None:
        """Stop the worker thread, then (when it has ended) the odometry's own workers."""
        if self._queue.shutdown():
            self.vo.close()


def usage() -> str:
    """Return the ``vo_node --help`` text: the command line and every node parameter."""
    return node_main.usage(__doc__)


def main(args=None) -> int:
    """Run the node until SIGINT; exit status 0, or 1 when it cannot start."""
    return node_main.run(VONode, __doc__, args)


if __name__ == '__main__':
    sys.exit(main())
