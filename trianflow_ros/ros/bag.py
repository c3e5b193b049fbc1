"""
``trianflow-bag``: write a KITTI, KITTI raw, TUM RGB-D or synthetic sequence as a rosbag2.

No ROS installation is needed: the bag is written with ``rosbags`` and the ROS 2 Kilted
typestore, so the result plays with ``ros2 bag play`` (Jazzy and later; mcap or sqlite3) and
with ``trianflow-play`` (this package, for machines without ``ros2 bag``).

Examples::

    trianflow-bag kitti ../shared/data/kitti_odometry_seq06 --sequence 06 -o bags/kitti06
    trianflow-bag kitti ROOT --sequence 06 --camera 2 --stride 3 --storage sqlite3 -o b06s3
    trianflow-bag kitti-raw RAW/2011_09_26/2011_09_26_drive_0002_sync -o bags/raw0002
    trianflow-bag tum ../shared/data/tum_rgbd_pairs/rgbd_dataset_freiburg1_xyz -o bags/fr1
    trianflow-bag synthetic --kind forward --frames 60 -o bags/synthetic

Topics (header stamps = the frame times: KITTI ``times.txt``, KITTI raw ``timestamps.txt``,
TUM the file stamps, synthetic ``--start + i / --rate``; the bag's receive times are equal):

- ``/camera/image_raw`` (sensor_msgs/Image): ``rgb8``, or ``mono8`` for grey cameras
  (KITTI ``image_0``/``image_1``), the dataset's pixels unchanged, frame ``--camera-frame``.
- ``/camera/camera_info`` (sensor_msgs/CameraInfo): K of the dataset at the image size,
  P = [K | 0] (a monocular camera), R = I, ``plumb_bob`` with zeros, or the TUM fr1/fr2
  distortion coefficients (the TUM images are not undistorted).
- ``/tf_static`` (tf2_msgs/TFMessage, offered TRANSIENT_LOCAL so that ``ros2 bag play``
  latches it): ``base_link`` -> camera optical frame, the REP-103 rotation (z forward,
  x right, y down), zero translation.
- Where ground truth exists: ``/ground_truth/odom`` (nav_msgs/Odometry, ``world`` ->
  ``ground_truth/base_link``) and the same transform on ``/tf``. ``world`` is ``base_link`` of
  the first frame written: ``T_world_base(i) = T_bc inv(T_cam(0)) T_cam(i) inv(T_bc)`` with
  ``T_bc`` the base -> optical rotation, so it compares directly with the VO's
  ``odom`` -> ``base_link``.

The last printed line is one JSON object (the summary). Exit status 2 on a user error.
"""

import argparse
from dataclasses import dataclass
from decimal import Decimal
import json
from pathlib import Path
import re
import shutil
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores

from trianflow_ros.geometry.lie import matrix_to_quaternion, se3_inverse

PROG = 'trianflow-bag'
TYPESTORE_NAME = Stores.ROS2_KILTED

IMAGE_TOPIC = '/camera/image_raw'
CAMERA_INFO_TOPIC = '/camera/camera_info'
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
GT_ODOM_TOPIC = '/ground_truth/odom'

BASE_FRAME = 'base_link'
CAMERA_FRAME = 'camera_optical_frame'
WORLD_FRAME = 'world'
GT_BASE_FRAME = 'ground_truth/base_link'

#: Rotation of the REP-103 camera optical frame in base_link (columns: optical x, y, z).
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0],
                           [-1.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0]])
#: ``T_base_optical`` (4, 4) with zero translation.
T_BASE_OPTICAL = np.eye(4)
T_BASE_OPTICAL[:3, :3] = R_BASE_OPTICAL

#: TUM RGB-D colour camera distortion (plumb_bob k1 k2 p1 p2 k3), TUM documentation; fr3
#: images are already undistorted.
TUM_DISTORTION = {'fr1': (0.2624, -0.9531, -0.0054, 0.0026, 1.1633),
                  'fr2': (0.2312, -0.7849, -0.0033, -0.0001, 0.9172),
                  'fr3': (0.0, 0.0, 0.0, 0.0, 0.0)}

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}

_INFINITE = QosTime(9223372036, 854775807)   # what rosbag2 records for "no deadline"


class BagError(Exception):
    """A user error with a message that names the input and the fix (exit status 2)."""


def make_qos(depth: int = 10, transient_local: bool = False) -> Qos:
    """
    Return the offered QoS profile written into the bag metadata for one topic.

    :param depth: history depth (keep last).
    :param transient_local: TRANSIENT_LOCAL durability (latched, as ``/tf_static``).
    """
    return Qos(QosHistory.KEEP_LAST, int(depth), QosReliability.RELIABLE,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               _INFINITE, _INFINITE, QosLiveliness.AUTOMATIC, _INFINITE, False)


def seconds_to_ns(t: float) -> int:
    """
    Return integer nanoseconds of a time in seconds, exact for the decimal text of ``t``.

    ``1305031102.175304`` gives ``1305031102175304000`` (``round(t * 1e9)`` would be off by
    up to ~100 ns at this magnitude).
    """
    return int((Decimal(repr(float(t))) * 10 ** 9).to_integral_value())


def split_ns(ns: int) -> Tuple[int, int]:
    """Return (sec, nanosec) of integer nanoseconds (builtin_interfaces/Time)."""
    return int(ns // 10 ** 9), int(ns % 10 ** 9)


@dataclass
class BagFrame:
    """
    One frame to write.

    :ivar stamp_ns: header stamp, integer nanoseconds.
    :ivar image: (H, W) uint8 (mono8) or (H, W, 3) uint8 RGB (rgb8).
    :ivar K: (3, 3) intrinsics of ``image``.
    :ivar T_world_cam: (4, 4) ground-truth camera (optical) pose, or None.
    """

    stamp_ns: int
    image: np.ndarray
    K: np.ndarray
    T_world_cam: Optional[np.ndarray] = None


@dataclass
class Source:
    """
    A sequence to write.

    :ivar name: label for messages.
    :ivar count: number of frames that ``frames()`` yields.
    :ivar frames: callable returning an iterator of :class:`BagFrame`.
    :ivar distortion: plumb_bob coefficients (5,).
    :ivar has_gt: ground truth poses come with the frames.
    """

    name: str
    count: int
    frames: Callable[[], Iterator[BagFrame]]
    distortion: Tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    has_gt: bool = False


def _select(n: int, stride: int, max_frames: Optional[int]) -> List[int]:
    if stride < 1:
        raise BagError(f'--stride must be >= 1, got {stride}')
    if max_frames is not None and max_frames < 1:
        raise BagError(f'--max-frames must be >= 1, got {max_frames}')
    idx = list(range(0, n, stride))
    return idx[:max_frames] if max_frames is not None else idx


def read_image(path: Path) -> np.ndarray:
    """
    Read an image file unchanged as mono8 (H, W) or RGB (H, W, 3) uint8.

    :param path: the image file.
    :raise BagError: unreadable or not 8-bit.
    """
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BagError(f'cannot read image {path} (missing, corrupt or not an image)')
    if img.dtype != np.uint8:
        raise BagError(f'image {path}: expected 8-bit pixels, got {img.dtype}')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def kitti_source(root: str, sequence: str, camera: int = 0, stride: int = 1,
                 max_frames: Optional[int] = None) -> Source:
    """
    Return a KITTI odometry sequence (stamps from ``times.txt``, GT from ``poses/XX.txt``).

    :param root: folder holding ``dataset/sequences`` (or ``sequences``).
    :param sequence: sequence number, e.g. '06'.
    :param camera: 0 (grey, mono8) or 2 (colour, rgb8); 1 and 3 are the right cameras.
    :param stride: every N-th frame.
    :param max_frames: at most N frames.
    """
    from trianflow_ros.data.kitti_odometry import KittiOdometrySequence
    seq = KittiOdometrySequence(root, sequence, camera=camera)
    idx = _select(len(seq), stride, max_frames)
    gt = seq.camera_poses

    def frames() -> Iterator[BagFrame]:
        for i in idx:
            yield BagFrame(seconds_to_ns(seq.times[i]), read_image(seq.image_path(i)),
                           seq.K.copy(), None if gt is None else gt[i])

    return Source(f'KITTI odometry {seq.name} image_{camera}', len(idx), frames,
                  has_gt=gt is not None)


def kitti_raw_source(drive: str, camera: int = 2, stride: int = 1,
                     max_frames: Optional[int] = None) -> Source:
    """
    Return a KITTI raw drive (``<date>/<date>_drive_NNNN_sync``); no ground truth (OXTS unread).

    Intrinsics: ``P_rect_0<camera>`` of ``<date>/calib_cam_to_cam.txt``; stamps:
    ``image_0<camera>/timestamps.txt`` (Unix time).

    :param drive: the drive folder.
    :param camera: 0-3 (0, 1 grey; 2, 3 colour).
    :param stride: every N-th frame.
    :param max_frames: at most N frames.
    """
    from trianflow_ros.data.kitti_raw import read_cam_to_cam, read_raw_timestamps
    d = Path(drive)
    cam = f'{int(camera):02d}'
    image_dir = d / f'image_{cam}' / 'data'
    if not image_dir.is_dir():
        raise BagError(f'KITTI raw drive: folder not found: {image_dir} (give the '
                       '<date>_drive_NNNN_sync folder and --camera 0..3)')
    calib_path = d.parent / 'calib_cam_to_cam.txt'
    if not calib_path.is_file():
        raise BagError(f'KITTI raw calibration not found: {calib_path} (the drive folder must '
                       'sit in its date folder, as the KITTI zips extract)')
    calib = read_cam_to_cam(calib_path)
    label = f'P_rect_{cam}'
    if label not in calib or calib[label].size != 12:
        raise BagError(f'{calib_path}: no line "{label}: 12 numbers"')
    K = calib[label].reshape(3, 4)[:, :3].copy()
    files = sorted(p for p in image_dir.iterdir()
                   if p.suffix.lower() in ('.png', '.jpg') and p.stem.isdigit())
    if not files:
        raise BagError(f'no images in {image_dir}')
    stamps = read_raw_timestamps(image_dir.parent / 'timestamps.txt')
    numbers = [int(p.stem) for p in files]
    if max(numbers) >= stamps.size:
        raise BagError(f'{image_dir.parent / "timestamps.txt"}: {stamps.size} lines, frame '
                       f'{max(numbers)} needs at least {max(numbers) + 1}')
    idx = _select(len(files), stride, max_frames)

    def frames() -> Iterator[BagFrame]:
        for i in idx:
            yield BagFrame(seconds_to_ns(stamps[numbers[i]]), read_image(files[i]), K.copy())

    return Source(f'KITTI raw {d.name} image_{cam}', len(idx), frames)


def tum_source(path: str, stride: int = 1, max_frames: Optional[int] = None) -> Source:
    """
    Return a TUM RGB-D sequence folder (RGB frames with their own stamps; GT if present).

    :param path: the sequence folder (with rgb.txt).
    :param stride: every N-th frame.
    :param max_frames: at most N frames.
    """
    from trianflow_ros.data.tum import TumRgbdSequence
    seq = TumRgbdSequence(path, use_depth=False)
    if len(seq) == 0:
        raise BagError(f'{path}: no RGB frames listed in rgb.txt (inside the ground truth)')
    idx = _select(len(seq), stride, max_frames)
    m = re.search(r'(?:freiburg|fr)([123])', seq.name.lower())
    dist = TUM_DISTORTION[f'fr{m.group(1)}'] if m else TUM_DISTORTION['fr3']

    def frames() -> Iterator[BagFrame]:
        for i in idx:
            yield BagFrame(seconds_to_ns(seq.stamps[i]), read_image(seq.rgb_paths[i]),
                           seq.K.copy(), None if seq.poses is None else seq.poses[i])

    return Source(f'TUM {seq.name}', len(idx), frames, distortion=dist,
                  has_gt=seq.poses is not None)


def synthetic_source(kind: str = 'forward', frames: int = 60, height: int = 256,
                     width: int = 832, seed: int = 0, stride: int = 1, rate: float = 10.0,
                     start: float = 1000.0) -> Source:
    """
    Return a sequence rendered by the synthetic generator (exact ground truth).

    :param kind: trajectory kind ('forward' driving, 'handheld', 'pure_rotation', ...).
    :param frames: number of frames.
    :param height: image height.
    :param width: image width.
    :param seed: the only source of randomness.
    :param stride: frame i is frame ``i * stride`` of the underlying trajectory.
    :param rate: frame rate of the stamps (Hz).
    :param start: stamp of the first frame (s); 0 is avoided (tf2 reads it as 'latest').
    """
    from trianflow_ros.data.synthetic import make_sequence
    if rate <= 0:
        raise BagError(f'--rate must be > 0, got {rate}')
    if frames < 1:
        raise BagError(f'--frames must be >= 1, got {frames}')
    try:
        seq = make_sequence(kind, frames, height, width, seed=seed, stride=stride)
    except ValueError as e:
        raise BagError(str(e)) from e
    images = seq.images_uint8()
    K = seq.K.double().numpy()
    poses = seq.poses.double().numpy()
    start_ns = seconds_to_ns(start)
    period_ns = seconds_to_ns(1.0 / rate)

    def gen() -> Iterator[BagFrame]:
        for i in range(frames):
            yield BagFrame(start_ns + i * period_ns, np.ascontiguousarray(images[i]), K.copy(),
                           poses[i])

    return Source(f'synthetic {kind} {height}x{width} seed {seed}', frames, gen, has_gt=True)


class MessageFactory:
    """Build rosbags messages of the Kilted typestore and serialise them to CDR."""

    def __init__(self, camera_frame: str = CAMERA_FRAME, base_frame: str = BASE_FRAME,
                 world_frame: str = WORLD_FRAME, gt_base_frame: str = GT_BASE_FRAME):
        """
        Create the factory.

        :param camera_frame: frame_id of the images (the camera optical frame).
        :param base_frame: parent of the camera in ``/tf_static``.
        :param world_frame: parent of the ground truth.
        :param gt_base_frame: child of the ground truth.
        """
        self.ts = get_typestore(TYPESTORE_NAME)
        self.t = self.ts.types
        self.camera_frame = camera_frame
        self.base_frame = base_frame
        self.world_frame = world_frame
        self.gt_base_frame = gt_base_frame

    def serialize(self, msg, msgtype: str) -> bytes:
        """Return the CDR bytes of a message."""
        return bytes(self.ts.serialize_cdr(msg, msgtype))

    def header(self, stamp_ns: int, frame_id: str):
        """Return a std_msgs/Header."""
        sec, nsec = split_ns(stamp_ns)
        return self.t['std_msgs/msg/Header'](
            stamp=self.t['builtin_interfaces/msg/Time'](sec=sec, nanosec=nsec),
            frame_id=frame_id)

    def image(self, stamp_ns: int, image: np.ndarray):
        """Return a sensor_msgs/Image (mono8 for (H, W), rgb8 for (H, W, 3) uint8)."""
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise BagError(f'image must be uint8 (H, W) or (H, W, 3), got {image.dtype} '
                           f'{image.shape}')
        h, w = image.shape[:2]
        channels = 1 if image.ndim == 2 else image.shape[2]
        encoding = {1: 'mono8', 3: 'rgb8'}[channels]
        return self.t['sensor_msgs/msg/Image'](
            header=self.header(stamp_ns, self.camera_frame), height=h, width=w,
            encoding=encoding, is_bigendian=0, step=w * channels,
            data=np.ascontiguousarray(image).reshape(-1))

    def camera_info(self, stamp_ns: int, K: np.ndarray, height: int, width: int,
                    distortion: Sequence[float]):
        """Return a sensor_msgs/CameraInfo (plumb_bob, R = I, P = [K | 0])."""
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = self.t['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.t['sensor_msgs/msg/CameraInfo'](
            header=self.header(stamp_ns, self.camera_frame), height=int(height),
            width=int(width), distortion_model='plumb_bob',
            d=np.asarray(distortion, dtype=np.float64), k=np.asarray(K, np.float64).reshape(9),
            r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0, roi=roi)

    def _pose_parts(self, T: np.ndarray):
        q = matrix_to_quaternion(T[:3, :3])
        t = np.asarray(T[:3, 3], dtype=np.float64)
        return t, q

    def transform(self, stamp_ns: int, parent: str, child: str, T: np.ndarray):
        """Return a geometry_msgs/TransformStamped of ``T_parent_child``."""
        t, q = self._pose_parts(T)
        tr = self.t['geometry_msgs/msg/Transform'](
            translation=self.t['geometry_msgs/msg/Vector3'](x=t[0], y=t[1], z=t[2]),
            rotation=self.t['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))
        return self.t['geometry_msgs/msg/TransformStamped'](
            header=self.header(stamp_ns, parent), child_frame_id=child, transform=tr)

    def tf_message(self, transforms: List):
        """Return a tf2_msgs/TFMessage."""
        return self.t['tf2_msgs/msg/TFMessage'](transforms=transforms)

    def odometry(self, stamp_ns: int, T: np.ndarray):
        """Return a nav_msgs/Odometry of ``T_world_gtbase`` (zero twist and covariances)."""
        t, q = self._pose_parts(T)
        pose = self.t['geometry_msgs/msg/Pose'](
            position=self.t['geometry_msgs/msg/Point'](x=t[0], y=t[1], z=t[2]),
            orientation=self.t['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))
        zero3 = self.t['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0)
        return self.t['nav_msgs/msg/Odometry'](
            header=self.header(stamp_ns, self.world_frame), child_frame_id=self.gt_base_frame,
            pose=self.t['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                                covariance=np.zeros(36)),
            twist=self.t['geometry_msgs/msg/TwistWithCovariance'](
                twist=self.t['geometry_msgs/msg/Twist'](linear=zero3, angular=zero3),
                covariance=np.zeros(36)))


def base_pose_from_camera(T_world_cam0: np.ndarray, T_world_cam: np.ndarray) -> np.ndarray:
    """
    Return ``T_world_base`` of a camera pose, ``world`` = base_link of the first frame.

    :param T_world_cam0: (4, 4) ground-truth camera pose of the first frame written.
    :param T_world_cam: (4, 4) camera pose of this frame.
    """
    return T_BASE_OPTICAL @ np.linalg.inv(T_world_cam0) @ T_world_cam @ se3_inverse(
        T_BASE_OPTICAL)


def prepare_output(out: Path, overwrite: bool) -> None:
    """
    Make sure ``out`` can be written: absent, or (with ``overwrite``) a rosbag2 folder removed.

    :raise BagError: it exists without ``overwrite``, or it is not a bag folder.
    """
    if not out.exists():
        return
    if not overwrite:
        raise BagError(f'{out} already exists; pass --overwrite to replace it or choose '
                       'another -o')
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        bag_like = all(n == 'metadata.yaml' or n.endswith(('.mcap', '.db3', '.db3-shm',
                                                           '.db3-wal', '.zstd'))
                       for n in names)
        if not bag_like:
            raise BagError(f'{out} exists and is not a rosbag2 folder (it holds '
                           f'{sorted(names)[:5]}); refusing to delete it')
        shutil.rmtree(out)
    else:
        raise BagError(f'{out} exists and is a file, not a rosbag2 folder')


def write_bag(source: Source, out, storage: str = 'mcap', overwrite: bool = False,
              ground_truth: str = 'both', camera_frame: str = CAMERA_FRAME,
              base_frame: str = BASE_FRAME, version: int = 8,
              progress: Optional[Callable[[int], None]] = None) -> Dict:
    """
    Write a sequence as a rosbag2 folder (see the module docstring for the topics).

    :param source: the frames (:func:`kitti_source`, :func:`tum_source`, ...).
    :param out: the bag folder to create.
    :param storage: 'mcap' or 'sqlite3'.
    :param overwrite: replace an existing bag folder.
    :param ground_truth: 'both' (Odometry and /tf), 'odom', 'tf' or 'none'.
    :param camera_frame: frame_id of the images and camera_info.
    :param base_frame: parent frame of the camera in ``/tf_static``.
    :param version: rosbag2 metadata version (8: Jazzy and later; 9: Kilted).
    :param progress: called with the number of frames written so far.
    :return: summary dict: out, storage, frames, topics (name -> count), first/last stamp.
    """
    if storage not in STORAGES:
        raise BagError(f'--storage must be one of {sorted(STORAGES)}, got {storage!r}')
    if ground_truth not in ('both', 'odom', 'tf', 'none'):
        raise BagError(f'ground_truth must be both, odom, tf or none, got {ground_truth!r}')
    out = Path(out)
    prepare_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    f = MessageFactory(camera_frame=camera_frame, base_frame=base_frame)
    ts = f.ts
    writer = Writer(out, version=version, storage_plugin=STORAGES[storage])
    counts: Dict[str, int] = {}
    stamps: List[int] = []
    try:
        writer.open()
        conns = {}

        def add(topic: str, msgtype: str, qos: Qos):
            conns[topic] = (writer.add_connection(topic, msgtype, typestore=ts,
                                                  offered_qos_profiles=[qos]), msgtype)
            counts[topic] = 0

        add(IMAGE_TOPIC, 'sensor_msgs/msg/Image', make_qos(10))
        add(CAMERA_INFO_TOPIC, 'sensor_msgs/msg/CameraInfo', make_qos(10))
        add(TF_STATIC_TOPIC, 'tf2_msgs/msg/TFMessage', make_qos(1, transient_local=True))
        if source.has_gt and ground_truth in ('both', 'odom'):
            add(GT_ODOM_TOPIC, 'nav_msgs/msg/Odometry', make_qos(10))
        if source.has_gt and ground_truth in ('both', 'tf'):
            add(TF_TOPIC, 'tf2_msgs/msg/TFMessage', make_qos(100))

        def put(topic: str, stamp_ns: int, msg) -> None:
            conn, msgtype = conns[topic]
            writer.write(conn, stamp_ns, f.serialize(msg, msgtype))
            counts[topic] += 1

        T0 = None
        for n, fr in enumerate(source.frames()):
            if stamps and fr.stamp_ns <= stamps[-1]:
                raise BagError(f'{source.name}: stamps must increase, frame {n} has '
                               f'{fr.stamp_ns} ns after {stamps[-1]} ns')
            if n == 0:
                static = f.transform(fr.stamp_ns, base_frame, camera_frame, T_BASE_OPTICAL)
                put(TF_STATIC_TOPIC, fr.stamp_ns, f.tf_message([static]))
            h, w = fr.image.shape[:2]
            put(IMAGE_TOPIC, fr.stamp_ns, f.image(fr.stamp_ns, fr.image))
            put(CAMERA_INFO_TOPIC, fr.stamp_ns,
                f.camera_info(fr.stamp_ns, fr.K, h, w, source.distortion))
            if fr.T_world_cam is not None and source.has_gt:
                if T0 is None:
                    T0 = np.asarray(fr.T_world_cam, dtype=np.float64)
                T = base_pose_from_camera(T0, fr.T_world_cam)
                if GT_ODOM_TOPIC in conns:
                    put(GT_ODOM_TOPIC, fr.stamp_ns, f.odometry(fr.stamp_ns, T))
                if TF_TOPIC in conns:
                    put(TF_TOPIC, fr.stamp_ns, f.tf_message([f.transform(
                        fr.stamp_ns, f.world_frame, f.gt_base_frame, T)]))
            stamps.append(fr.stamp_ns)
            if progress is not None:
                progress(n + 1)
        writer.close()
    except BaseException:
        try:
            writer.close()
        except Exception:  # noqa: B902 - best effort before removing a partial bag
            pass
        shutil.rmtree(out, ignore_errors=True)
        raise
    if not stamps:
        shutil.rmtree(out, ignore_errors=True)
        raise BagError(f'{source.name}: no frames to write')
    return {'out': str(out), 'storage': storage, 'source': source.name, 'frames': len(stamps),
            'topics': counts, 'first_stamp': stamps[0] / 1e9, 'last_stamp': stamps[-1] / 1e9}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``trianflow-bag``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('-o', '--out', required=True, help='rosbag2 folder to create')
    common.add_argument('--overwrite', action='store_true',
                        help='replace an existing bag folder')
    common.add_argument('--storage', choices=sorted(STORAGES), default='mcap',
                        help='storage plugin (default mcap)')
    common.add_argument('--max-frames', type=int, default=None, help='write at most N frames')
    common.add_argument('--stride', type=int, default=1, help='write every N-th frame')
    common.add_argument('--ground-truth', choices=('both', 'odom', 'tf', 'none'),
                        default='both', help='ground truth as Odometry and/or /tf (default '
                                             'both, where the dataset has it)')
    common.add_argument('--camera-frame', default=CAMERA_FRAME,
                        help=f'frame_id of the images (default {CAMERA_FRAME})')
    common.add_argument('--base-frame', default=BASE_FRAME,
                        help=f'parent of the camera in /tf_static (default {BASE_FRAME})')
    common.add_argument('--bag-version', type=int, choices=(8, 9), default=8,
                        help='rosbag2 metadata version: 8 (Jazzy, Kilted; default) or 9 '
                             '(Kilted and later)')
    sub = parser.add_subparsers(dest='command', required=True)
    k = sub.add_parser('kitti', parents=[common], help='a KITTI odometry sequence')
    k.add_argument('root', help='folder holding dataset/sequences (or sequences)')
    k.add_argument('--sequence', required=True, help='sequence number, e.g. 06')
    k.add_argument('--camera', type=int, choices=(0, 1, 2, 3), default=None,
                   help='0 = image_0 (grey, mono8), 2 = image_2 (colour, rgb8); default 2 '
                        'if present, else 0')
    r = sub.add_parser('kitti-raw', parents=[common], help='a KITTI raw drive folder')
    r.add_argument('drive', help='.../2011_09_26/2011_09_26_drive_0002_sync')
    r.add_argument('--camera', type=int, choices=(0, 1, 2, 3), default=2,
                   help='camera number (default 2, left colour)')
    t = sub.add_parser('tum', parents=[common], help='a TUM RGB-D sequence folder')
    t.add_argument('path', help='the sequence folder (with rgb.txt)')
    s = sub.add_parser('synthetic', parents=[common],
                       help='a rendered synthetic sequence (exact ground truth)')
    s.add_argument('--kind', default='forward', help='trajectory kind (default forward)')
    s.add_argument('--frames', type=int, default=60, help='number of frames (default 60)')
    s.add_argument('--height', type=int, default=256, help='image height (default 256)')
    s.add_argument('--width', type=int, default=832, help='image width (default 832)')
    s.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    s.add_argument('--rate', type=float, default=10.0, help='frame rate of the stamps (Hz)')
    s.add_argument('--start', type=float, default=1000.0,
                   help='stamp of the first frame in seconds (default 1000)')
    return parser


def source_from_args(args) -> Source:
    """Open the source named by parsed arguments."""
    if args.command == 'kitti':
        camera = args.camera
        if camera is None:
            base = Path(args.root)
            name = f'{int(args.sequence):02d}' if str(args.sequence).isdigit() else ''
            has2 = any((d / 'sequences' / name / 'image_2').is_dir()
                       for d in (base, base / 'dataset'))
            camera = 2 if has2 else 0
        return kitti_source(args.root, args.sequence, camera, args.stride, args.max_frames)
    if args.command == 'kitti-raw':
        return kitti_raw_source(args.drive, args.camera, args.stride, args.max_frames)
    if args.command == 'tum':
        return tum_source(args.path, args.stride, args.max_frames)
    frames = args.frames if args.max_frames is None else min(args.frames, args.max_frames)
    return synthetic_source(args.kind, frames, args.height, args.width, args.seed,
                            args.stride, args.rate, args.start)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``trianflow-bag``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from trianflow_ros.data.sample import DatasetError
    try:
        if Path(args.out).exists() and not args.overwrite:
            raise BagError(f'{args.out} already exists; pass --overwrite to replace it or '
                           'choose another -o')
        source = source_from_args(args)
        summary = write_bag(source, args.out, storage=args.storage, overwrite=args.overwrite,
                            ground_truth=args.ground_truth, camera_frame=args.camera_frame,
                            base_frame=args.base_frame, version=args.bag_version)
    except (BagError, DatasetError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f'{PROG}: error: {e}\n')
    topics = ', '.join(f'{k} {v}' for k, v in summary['topics'].items())
    print(f'{summary["source"]}: {summary["frames"]} frames -> {summary["out"]} '
          f'({summary["storage"]}; {topics})')
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
