"""
The node's own ROS parameters (not mapped onto the shared config): specs and checks.

Every parameter is a :class:`ParamSpec` (default, description, range or choices, mutability);
``ros2 param describe /vo_node <name>`` shows the description with its range (see
:func:`~trianflow_ros.ros.params.describe`). Checks that span several parameters (the frame
names) are in :func:`check_frames`. :data:`REMOVED` names parameters of earlier versions that
are no longer read, with what replaced them (the node warns when one is given).
"""

from dataclasses import dataclass
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from trianflow_ros.vo.covariance import UNKNOWN_TWIST_SIGMA

#: Parameters of earlier versions that are no longer read -> what replaced them.
REMOVED = {
    'sync_slop': 'replaced by camera_info_max_age: an image without the camera_info of its '
                 'stamp uses the newest one within that age',
}


@dataclass
class ParamSpec:
    """One ROS parameter of the node."""

    name: str
    default: Any
    description: str
    bounds: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[Any, ...]] = None
    read_only: bool = False
    config_key: Optional[str] = None     #: dotted config name when mapped onto the config

    @property
    def value_type(self) -> type:
        """Return the Python type of the value (bool, int, float, str or list)."""
        return type(self.default)


def _frames() -> List[ParamSpec]:
    P = ParamSpec
    return [
        P('odom_frame', 'odom', 'odometry frame: Odometry header.frame_id and TF parent '
          '(REP-105); not empty, not base_frame. Beside wheel odometry use a frame of its own '
          '(e.g. vo_odom) with invert_tf'),
        P('base_frame', 'base_link', 'robot body frame: Odometry child_frame_id and TF child; '
          'not empty, not odom_frame'),
        P('camera_frame', '', 'optical frame of the camera (REP-103) used for the base -> '
          "camera lookup and the depth header; '' = the image's header.frame_id (when both "
          'are empty, odometry is still published but depth and points are not)'),
        P('publish_tf', True, 'broadcast the odometry on /tf: odom_frame -> base_frame, or '
          'the inverse with invert_tf; false = no TF (e.g. when a robot_localization filter '
          'publishes odom -> base_link from this odometry)'),
        P('invert_tf', False, 'broadcast base_frame -> odom_frame (the inverse) instead of '
          'odom_frame -> base_frame, so that base_frame keeps the single parent another node '
          '(wheel odometry, a filter) gives it; set odom_frame to a frame of its own (vo_odom). '
          'The odom topic is unchanged'),
        P('use_tf_extrinsics', True, 'look base_frame -> camera frame up in TF (tf2_ros, or '
          "the node's own /tf_static + /tf listener) before using base_to_camera; a lookup "
          'that fails is repeated with every frame until it succeeds', read_only=True),
        P('tf_timeout', 1.0, 'seconds the first base -> camera lookup waits for TF (later '
          'ones do not wait)', bounds=(0.0, 60.0), read_only=True),
        P('base_to_camera', [0.0, 0.0, 0.0, -math.pi / 2, 0.0, -math.pi / 2],
          'base -> camera optical frame [x, y, z, roll, pitch, yaw] (m, rad) used until TF has '
          'the transform; default: the REP-103 optical rotation, no offset', read_only=True),
        P('publish_camera_tf', False,
          'publish base_to_camera on /tf_static while it is used (no TF transform found). Off '
          'by default: the robot description (robot_state_publisher) owns the camera mount, '
          'and a second publisher of it fights the robot', read_only=True),
    ]


def _outputs() -> List[ParamSpec]:
    P = ParamSpec
    return [
        P('publish_when_lost', True, 'while tracking is LOST, publish odom with the last pose, '
          'a zero twist and covariances of 1e6 on the diagonal (like rtabmap '
          'publish_null_when_lost), so that a filter sees the loss; false = publish nothing '
          '(the state is on ~/status and /diagnostics). TF, path and depth are never '
          'published for LOST frames'),
        P('twist_unknown_sigma', list(UNKNOWN_TWIST_SIGMA), 'standard deviations [linear '
          '(odometry units/s), angular (rad/s)] of the zero twist published when it cannot be '
          'measured: the first frame after start or reset, and after a time jump'),
        P('max_frame_interval', 10.0, 'image stamps further apart than this (s) are a time '
          'jump: warned, the twist of that frame is unknown (twist_unknown_sigma)',
          bounds=(0.001, 86400.0)),
        P('publish_depth', True, 'publish depth (32FC1, odometry scale) and '
          'depth/camera_info when a depth exists'),
        P('depth_resolution', 'camera', "size of the published depth: camera (the image's "
          'size and K, upsampled from the working resolution without blending known and '
          'unknown pixels) or network (the working resolution, vo.resolution: about '
          'data.img_height x data.img_width pixels; cheaper)', choices=('camera', 'network')),
        P('publish_points', False, 'publish the depth (working resolution) as a PointCloud2 '
          'on points'),
        P('points_stride', 4, 'use every Nth depth pixel (both directions) for points',
          bounds=(1, 64)),
        P('path_max_length', 1024, 'poses kept in the published path (oldest dropped; the '
          'publish cost grows with it: about 2.7 ms at 1024, 27 ms at 10000 poses)',
          bounds=(1, 1000000)),
        P('path_publish_period', 1.0, 'publish the path at most once per this many seconds '
          '(the last change always goes out); 0 = with every frame', bounds=(0.0, 3600.0)),
        P('diagnostics_period', 1.0, 'seconds between /diagnostics messages',
          bounds=(0.05, 60.0), read_only=True),
    ]


def _inputs() -> List[ParamSpec]:
    P = ParamSpec
    return [
        P('frame_skip', 1, 'process every Nth image (1 = all); skipped ones are counted',
          bounds=(1, 1000)),
        P('image_qos', 'reliable', 'QoS of the image and camera_info subscriptions: reliable '
          '(default; measured here, 832x256 images from a reliable camera reached a '
          'best-effort subscriber only 15-60 % of the time, a reliable one 100 %; the node '
          'still keeps only the newest frame) or sensor_data (best effort: needed for '
          'best-effort publishers)', choices=('reliable', 'sensor_data'), read_only=True),
        P('queue_size', 10, 'depth of the image subscription and most images waiting for '
          'their camera_info (camera_info keeps at least 200)', bounds=(1, 1000),
          read_only=True),
        P('use_compressed', False, 'subscribe to image/compressed (sensor_msgs/'
          'CompressedImage, JPEG/PNG) instead of image', read_only=True),
        P('camera_info_wait', 0.5, 'seconds an image waits for the camera_info of its stamp '
          'before the newest one within camera_info_max_age is used (a newer info ends the '
          'wait at once: the one of its stamp was lost); it does not wait when only '
          'camera_matrix could be used', bounds=(0.0, 10.0)),
        P('camera_info_timeout', 2.0, 'seconds an image waits for camera_info while none has '
          'arrived since start (DDS discovery can deliver the first infos after the first '
          'images; those images then get the first info); then it is dropped with a warning. '
          'Not used when camera_matrix is set', bounds=(0.0, 3600.0)),
        P('camera_info_max_age', 5.0, 'largest stamp difference (s) between an image and a '
          'camera_info used for it when the one of its stamp is missing; beyond it '
          'camera_matrix is used (or the image is dropped)', bounds=(0.0, 3600.0)),
        P('camera_matrix', [0.0] * 9, 'row-major K (9 numbers) at the image size, used when no '
          'camera_info within camera_info_max_age exists; all zeros = unset'),
    ]


def node_param_specs() -> List[ParamSpec]:
    """Return the node's own parameters (not from the shared config)."""
    P = ParamSpec
    return [
        P('config_file', '', 'YAML file of the shared configuration tree (a path, or a name '
          "in the package's config folder such as kitti.yaml), loaded before the ROS "
          'parameters override single fields', read_only=True),
        P('checkpoint', '', "network weights (.pth). '' = the classical pipeline (DIS flow, "
          'no depth network: it beats the shipped small weights on the real sequences of '
          "bench/vo_real.py); 'default' = models/default.pth of the package (share or source "
          'tree; an error when missing). A checkpoint that stores its training config sets '
          'the network variant, input size and channel order (data.img_height / '
          'data.img_width given as parameters still win); original ones (kitti_odo.pth) '
          'need config_file:=odo.yaml', read_only=True),
        P('fallback_to_classical', False, 'when the weights cannot be used (a missing or empty '
          'file, a directory, a corrupt checkpoint): false = log an error and exit (never '
          'silently run something else), true = log the error and run the classical '
          'pipeline', read_only=True),
        P('device', 'auto', 'torch device of the networks: auto (cuda when available, else '
          'cpu), cpu, cuda, cuda:N', read_only=True),
    ] + _frames() + _outputs() + _inputs()


def check_frame_name(name: str, value: str, allow_empty: bool = False) -> Optional[str]:
    """Return why a frame id is not usable in TF (None when it is)."""
    if not value:
        return None if allow_empty else (
            f'{name} is empty: TF and nav_msgs need a frame id. Fix: {name}:=<frame>, e.g. '
            f"{'odom' if name == 'odom_frame' else 'base_link'}")
    if value.startswith('/'):
        return f"{name} = {value!r} starts with '/', which tf2 rejects. Fix: {value.lstrip('/')}"
    if any(c.isspace() for c in value):
        return f'{name} = {value!r} contains white space'
    return None


def check_frames(values: Mapping[str, Any]) -> List[str]:
    """Return why the frame parameters (together) are not usable (empty when they are)."""
    reasons = [r for r in (check_frame_name('odom_frame', values.get('odom_frame', 'odom')),
                           check_frame_name('base_frame', values.get('base_frame', 'base_link')),
                           check_frame_name('camera_frame', values.get('camera_frame', ''),
                                            allow_empty=True)) if r]
    odom, base = values.get('odom_frame'), values.get('base_frame')
    if odom and odom == base:
        reasons.append(f"odom_frame and base_frame are both '{odom}': the odometry would be a "
                       'transform of a frame to itself. Fix: odom_frame:=odom '
                       'base_frame:=base_link (or vo_odom beside wheel odometry)')
    return reasons


def removed_given(overrides: Dict[str, Any]) -> List[str]:
    """Return a warning for every removed parameter a user still sets."""
    return [f'parameter {name} is no longer used: {why}' for name, why in REMOVED.items()
            if name in overrides]
