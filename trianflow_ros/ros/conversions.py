"""
Message <-> numpy conversions of the node (own code; cv_bridge is not needed).

Images (sensor_msgs/Image):

==================  ==========  ========  ================================================
encoding            dtype       channels  as odometry input (:func:`image_to_rgb8`)
==================  ==========  ========  ================================================
rgb8, bgr8          uint8       3         channel order fixed to RGB
rgba8, bgra8        uint8       4         alpha dropped
mono8 (8UC1)        uint8       1         grey replicated to 3 channels
mono16 (16UC1)      uint16      1         value / 257 (full 16-bit range -> 0..255)
rgb16, bgr16        uint16      3         value / 257, RGB order
rgba16, bgra16      uint16      4         value / 257, alpha dropped
32FC1               float32     1         not an image input (the depth output encoding)
==================  ==========  ========  ================================================

Rows may be padded (``step`` > width * pixel size) and 16/32-bit data may be big-endian
(``is_bigendian``); both are honoured. CompressedImage payloads are decoded with
``cv2.imdecode`` (JPEG, PNG, 8 or 16 bit, grey or colour).

Poses: ``T_ab`` (4, 4) maps points of frame b into frame a (the project's convention); the
covariances are 6x6 in nav_msgs order [x, y, z, roll, pitch, yaw] with the position
perturbation additive and the rotation perturbation about the parent frame's axes
(``R' = Exp(dphi) R``), like :attr:`~trianflow_ros.vo.types.FrameResult.covariance`.
"""

import math
from typing import Optional, Tuple

import cv2
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from trianflow_ros.geometry.lie import (hat, matrix_to_quaternion, nearest_rotation,
                                        quaternion_to_matrix, se3_inverse)
# re-exported: the ROS layer's frame parameters are [x, y, z, roll, pitch, yaw]
from trianflow_ros.geometry.lie import transform_from_xyz_rpy  # noqa: F401

#: encoding -> (numpy dtype, channels, channel order of the colour channels or None).
ENCODINGS = {
    'rgb8': (np.uint8, 3, 'rgb'), 'bgr8': (np.uint8, 3, 'bgr'),
    'rgba8': (np.uint8, 4, 'rgb'), 'bgra8': (np.uint8, 4, 'bgr'),
    'mono8': (np.uint8, 1, None), '8UC1': (np.uint8, 1, None),
    'mono16': (np.uint16, 1, None), '16UC1': (np.uint16, 1, None),
    'rgb16': (np.uint16, 3, 'rgb'), 'bgr16': (np.uint16, 3, 'bgr'),
    'rgba16': (np.uint16, 4, 'rgb'), 'bgra16': (np.uint16, 4, 'bgr'),
    '32FC1': (np.float32, 1, None),
}
#: Encodings accepted as odometry input (everything but the float depth encoding).
INPUT_ENCODINGS = tuple(e for e in ENCODINGS if e != '32FC1')
#: 2^16 - 1 over 2^8 - 1: maps the full 16-bit range onto 0..255.
_U16_TO_U8 = 257.0


class UnsupportedEncodingError(ValueError):
    """An image encoding the node cannot convert; the message lists the supported ones."""


class ImageSizeError(ValueError):
    """The image size does not fit the camera_info (different aspect ratio)."""


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

def image_to_numpy(msg: Image) -> np.ndarray:
    """
    Return the pixels of an Image as a numpy array in the message's own layout.

    :param msg: sensor_msgs/Image with an encoding of :data:`ENCODINGS`.
    :return: (H, W) for one channel, else (H, W, C); dtype of the encoding, native byte
        order, a copy (independent of the message buffer).
    :raises UnsupportedEncodingError: unknown encoding.
    :raises ValueError: ``data`` shorter than ``step * height`` or ``step`` too small.
    """
    if msg.encoding not in ENCODINGS:
        raise UnsupportedEncodingError(
            f"image encoding '{msg.encoding}' is not supported; use one of "
            f'{", ".join(INPUT_ENCODINGS)} (or 32FC1 for depth)')
    dtype, channels, _ = ENCODINGS[msg.encoding]
    dt = np.dtype(dtype).newbyteorder('>' if msg.is_bigendian else '<')
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ValueError(f'image is {w}x{h} ({msg.encoding}): it has no pixels. Fix: check the '
                         'camera driver (an empty frame, e.g. a failed capture or a wrong '
                         'resolution setting)')
    row_bytes = w * channels * dt.itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ValueError(f'image step {step} is smaller than width * pixel size {row_bytes} '
                         f'({w} x {msg.encoding})')
    buf = _array(msg.data)
    if buf.size < step * h:
        raise ValueError(f'image data has {buf.size} bytes, expected step * height = '
                         f'{step * h} ({w}x{h} {msg.encoding})')
    rows = buf[:step * h].reshape(h, step)[:, :row_bytes]
    arr = np.ascontiguousarray(rows).view(dt).reshape((h, w, channels) if channels > 1
                                                      else (h, w))
    return arr.astype(np.dtype(dtype), copy=True)


def _array(data) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def to_rgb8(pixels: np.ndarray, order: Optional[str]) -> np.ndarray:
    """
    Convert decoded pixels to the odometry input: (H, W, 3) uint8 RGB.

    :param pixels: (H, W) or (H, W, C) uint8 / uint16 array, C in (1, 3, 4).
    :param order: 'rgb' or 'bgr' colour order of the channels; None for grey.
    :return: (H, W, 3) uint8 RGB, contiguous.
    """
    if pixels.dtype == np.uint16:
        pixels = np.round(pixels.astype(np.float32) / _U16_TO_U8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise UnsupportedEncodingError(f'pixels of dtype {pixels.dtype} are not an image input')
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    rgb = pixels[:, :, :3]
    if order == 'bgr':
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def image_to_rgb8(msg: Image) -> np.ndarray:
    """
    Convert an Image to the odometry input (see the module table).

    :param msg: sensor_msgs/Image.
    :return: (H, W, 3) uint8 RGB.
    :raises UnsupportedEncodingError: encodings outside :data:`INPUT_ENCODINGS`, naming the
        encoding and the supported list.
    """
    if msg.encoding not in INPUT_ENCODINGS:
        raise UnsupportedEncodingError(
            f"image encoding '{msg.encoding}' is not supported as odometry input; use one of "
            f'{", ".join(INPUT_ENCODINGS)}')
    return to_rgb8(image_to_numpy(msg), ENCODINGS[msg.encoding][2])


def numpy_to_image(array: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """
    Build an Image from a numpy array (little-endian, unpadded rows).

    :param array: (H, W) or (H, W, C) with the dtype and channels of ``encoding``.
    :param encoding: one of :data:`ENCODINGS`.
    :param header: copied into the message (default: empty).
    :raises ValueError: dtype or channel count does not match the encoding.
    """
    if encoding not in ENCODINGS:
        raise UnsupportedEncodingError(f"encoding '{encoding}' is not supported; use one of "
                                       f'{", ".join(ENCODINGS)}')
    dtype, channels, _ = ENCODINGS[encoding]
    arr = np.asarray(array)
    c = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if arr.dtype != np.dtype(dtype) or c != channels:
        raise ValueError(f'{encoding} needs a {np.dtype(dtype).name} array with {channels} '
                         f'channel(s), got {arr.dtype.name} of shape {arr.shape}')
    arr = np.ascontiguousarray(arr.astype(np.dtype(dtype).newbyteorder('<'), copy=False))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * arr.itemsize)
    msg.data = arr.tobytes()
    return msg


def compressed_to_rgb8(msg: CompressedImage) -> np.ndarray:
    """
    Decode a CompressedImage (JPEG / PNG, 8 or 16 bit, grey or colour) to RGB uint8.

    :param msg: sensor_msgs/CompressedImage.
    :return: (H, W, 3) uint8 RGB.
    :raises ValueError: the payload cannot be decoded (names the format field).
    """
    raw = _array(msg.data)
    decoded = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if decoded is None:
        raise ValueError(f"compressed image (format '{msg.format}', {raw.size} bytes) could not "
                         'be decoded; publish JPEG or PNG (image_transport compressed)')
    if decoded.size == 0:
        raise ValueError(f"compressed image (format '{msg.format}') decodes to no pixels; "
                         'check the camera driver')
    if decoded.ndim == 3 and decoded.shape[2] == 4:
        decoded = decoded[:, :, :3]
    return to_rgb8(decoded, 'bgr' if decoded.ndim == 3 and decoded.shape[2] == 3 else None)


def depth_to_image(depth: np.ndarray, header: Header) -> Image:
    """
    Build a 32FC1 depth Image (metres of the odometry scale; 0 = unknown, never NaN).

    :param depth: (H, W) float array; non-finite values become 0.
    :param header: stamp and frame of the image the depth belongs to.
    """
    d = np.nan_to_num(np.asarray(depth, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return numpy_to_image(d, '32FC1', header)


# --------------------------------------------------------------------------------------------
# camera intrinsics
# --------------------------------------------------------------------------------------------

def camera_info_to_K(msg: CameraInfo) -> np.ndarray:
    """
    Return K of a CameraInfo at the size of the images it describes.

    A region of interest moves the principal point; binning divides K (REP-104).

    :param msg: sensor_msgs/CameraInfo.
    :return: (3, 3) float64.
    :raises ValueError: K is not finite or fx, fy <= 0 (uncalibrated camera: the fix is to
        calibrate it, or set the node's ``camera_matrix``).
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy()
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'camera_info K is not a calibration (fx={K[0, 0]}, fy={K[1, 1]}); '
                         'calibrate the camera or set the camera_matrix parameter')
    roi = msg.roi
    if roi.width and roi.height:
        K[0, 2] -= roi.x_offset
        K[1, 2] -= roi.y_offset
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    if bx > 1 or by > 1:
        K[0, :] /= bx
        K[1, :] /= by
    return K


def camera_info_size(msg: CameraInfo) -> Tuple[int, int]:
    """Return the (height, width) of the images a CameraInfo describes (after ROI, binning)."""
    h, w = int(msg.height), int(msg.width)
    if msg.roi.width and msg.roi.height:
        h, w = int(msg.roi.height), int(msg.roi.width)
    return h // max(int(msg.binning_y), 1), w // max(int(msg.binning_x), 1)


def scale_K(K: np.ndarray, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]) -> np.ndarray:
    """
    Rescale K from images of size ``src_hw`` to ``dst_hw`` (pixel-centre convention).

    :return: (3, 3) float64.
    """
    sx = dst_hw[1] / float(src_hw[1])
    sy = dst_hw[0] / float(src_hw[0])
    out = np.asarray(K, dtype=np.float64).copy()
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out


def fit_K_to_image(K: np.ndarray, info_hw: Tuple[int, int], image_hw: Tuple[int, int],
                   tolerance: float = 0.01) -> np.ndarray:
    """
    Return K for an image whose size may differ from the camera_info's.

    :param K: (3, 3) at ``info_hw``.
    :param info_hw: (height, width) of the camera_info; (0, 0) = unknown (K used as is).
    :param image_hw: (height, width) of the image.
    :param tolerance: relative aspect-ratio difference still treated as a resize.
    :raises ImageSizeError: the aspect ratios differ (a crop, or the wrong camera_info).
    """
    if image_hw[0] <= 0 or image_hw[1] <= 0:
        raise ImageSizeError(f'image size {image_hw[1]}x{image_hw[0]} has no pixels; check the '
                             'camera driver')
    if info_hw[0] <= 0 or info_hw[1] <= 0 or tuple(info_hw) == tuple(image_hw):
        return np.asarray(K, dtype=np.float64)
    a_info = info_hw[1] / float(info_hw[0])
    a_img = image_hw[1] / float(image_hw[0])
    if abs(a_info - a_img) > tolerance * a_info:
        raise ImageSizeError(
            f'image size {image_hw[1]}x{image_hw[0]} does not match camera_info size '
            f'{info_hw[1]}x{info_hw[0]} (aspect {a_img:.3f} vs {a_info:.3f}); publish the '
            'camera_info of this image stream (remap camera_info)')
    return scale_K(K, info_hw, image_hw)


def make_camera_info(K: np.ndarray, height: int, width: int, header: Header,
                     distortion=None) -> CameraInfo:
    """
    Build a CameraInfo for an image of size ``height x width``.

    :param K: (3, 3) intrinsics at that size.
    :param distortion: the lens distortion of the image
        (:class:`~trianflow_ros.geometry.distortion.Distortion`; coefficients do not depend on
        the image size); None or 'none' = a rectified image (plumb_bob, zeros).
    """
    msg = CameraInfo()
    msg.header = header
    msg.height, msg.width = int(height), int(width)
    if distortion is None or distortion.model == 'none':
        msg.distortion_model, msg.d = 'plumb_bob', [0.0] * 5
    else:
        msg.distortion_model = distortion.model
        msg.d = [float(c) for c in distortion.coeffs]
    Kf = np.asarray(K, dtype=np.float64)
    msg.k = [float(v) for v in Kf.reshape(-1)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = Kf
    msg.p = [float(v) for v in P.reshape(-1)]
    return msg


# --------------------------------------------------------------------------------------------
# rotations, transforms and covariances
# --------------------------------------------------------------------------------------------

def rotation_vector(R: np.ndarray) -> np.ndarray:
    """Return the axis-angle vector (3,) of a rotation matrix (the SO(3) logarithm)."""
    R = np.asarray(R, dtype=np.float64)
    c = max(-1.0, min(1.0, (np.trace(R) - 1.0) / 2.0))
    angle = math.acos(c)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-7:
        return 0.5 * w
    if math.pi - angle < 1e-4:
        # near pi: axis from the symmetric part
        k = int(np.argmax(np.diag(R)))
        axis = (R[:, k] + np.eye(3)[:, k]) / math.sqrt(max(2.0 * (1.0 + R[k, k]), 1e-300))
        return axis / np.linalg.norm(axis) * angle
    return w * (angle / (2.0 * math.sin(angle)))


def conjugate_pose(T_bc: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Return ``T_bc @ T @ inv(T_bc)``: a camera-frame pose or motion expressed for the base."""
    return T_bc @ T @ se3_inverse(T_bc)


def conjugate_covariance(cov: np.ndarray, T_bc: np.ndarray, T: np.ndarray) -> np.ndarray:
    """
    Covariance of ``T_bc @ T @ inv(T_bc)`` from the covariance of ``T``.

    With ``T' = (Exp(dphi) R, t + dp)`` (perturbations about the parent frame's axes), the
    conjugate moves by ``dphi_b = R_bc dphi`` and ``dp_b = R_bc dp - R_bc [R t_cb]x dphi``
    where ``t_cb`` is the translation of ``inv(T_bc)``.

    :param cov: (6, 6) of T, order [x, y, z, roll, pitch, yaw].
    :param T_bc: (4, 4) base <- camera extrinsics.
    :param T: (4, 4) the camera-frame pose / motion the covariance belongs to.
    :return: (6, 6) symmetric.
    """
    R_bc = T_bc[:3, :3]
    t_cb = se3_inverse(T_bc)[:3, 3]
    J = np.zeros((6, 6))
    J[:3, :3] = R_bc
    J[:3, 3:] = -R_bc @ hat(T[:3, :3] @ t_cb)
    J[3:, 3:] = R_bc
    out = J @ np.asarray(cov, dtype=np.float64) @ J.T
    return 0.5 * (out + out.T)


def twist_from_motion(T_prev_cur: np.ndarray, dt: float) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return (linear, angular) velocity of the motion ``T_prev_cur`` over ``dt`` seconds.

    Both are expressed in the previous (body) frame, as nav_msgs/Odometry's twist (in the
    child frame); zero when ``dt`` <= 0.
    """
    if not dt > 0:
        return np.zeros(3), np.zeros(3)
    return T_prev_cur[:3, 3] / dt, rotation_vector(T_prev_cur[:3, :3]) / dt


def _fill_pose(pose, T: np.ndarray) -> None:
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    o = pose.orientation                  # of the rotation re-orthonormalised (drift)
    o.x, o.y, o.z, o.w = (float(v) for v in matrix_to_quaternion(nearest_rotation(T[:3, :3])))


def _covariance_list(cov: np.ndarray) -> list:
    c = np.nan_to_num(np.asarray(cov, dtype=np.float64).reshape(6, 6), nan=1e6, posinf=1e6,
                      neginf=1e6)
    return [float(v) for v in c.reshape(-1)]


def odometry_msg(T: np.ndarray, covariance: np.ndarray, header: Header, child_frame: str,
                 linear: Optional[np.ndarray] = None, angular: Optional[np.ndarray] = None,
                 twist_covariance: Optional[np.ndarray] = None) -> Odometry:
    """
    Build a nav_msgs/Odometry.

    :param T: (4, 4) pose of ``child_frame`` in ``header.frame_id``.
    :param covariance: (6, 6) pose covariance in the parent frame.
    :param header: stamp and parent (odometry) frame.
    :param child_frame: the body frame (base_link); the twist is expressed in it.
    :param linear: (3,) m/s, default 0.
    :param angular: (3,) rad/s, default 0.
    :param twist_covariance: (6, 6), default: a large diagonal (unknown).
    """
    msg = Odometry()
    msg.header = header
    msg.child_frame_id = child_frame
    _fill_pose(msg.pose.pose, T)
    msg.pose.covariance = _covariance_list(covariance)
    lin = np.zeros(3) if linear is None else np.asarray(linear, dtype=np.float64)
    ang = np.zeros(3) if angular is None else np.asarray(angular, dtype=np.float64)
    msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z = (
        float(v) for v in np.nan_to_num(lin))
    msg.twist.twist.angular.x, msg.twist.twist.angular.y, msg.twist.twist.angular.z = (
        float(v) for v in np.nan_to_num(ang))
    tc = np.eye(6) * 1e6 if twist_covariance is None else twist_covariance
    msg.twist.covariance = _covariance_list(tc)
    return msg


def transform_msg(T: np.ndarray, header: Header, child_frame: str) -> TransformStamped:
    """Build a TransformStamped of ``child_frame`` in ``header.frame_id`` from (4, 4) T."""
    msg = TransformStamped()
    msg.header = header
    msg.child_frame_id = child_frame
    tr = msg.transform.translation
    tr.x, tr.y, tr.z = (float(v) for v in T[:3, 3])
    rot = msg.transform.rotation
    rot.x, rot.y, rot.z, rot.w = (float(v) for v in matrix_to_quaternion(
        nearest_rotation(T[:3, :3])))
    return msg


def transform_to_matrix(msg) -> np.ndarray:
    """Return the (4, 4) matrix of a geometry_msgs/Transform (or TransformStamped)."""
    tf = msg.transform if hasattr(msg, 'transform') else msg
    T = np.eye(4)
    r = tf.rotation
    T[:3, :3] = quaternion_to_matrix([r.x, r.y, r.z, r.w])
    T[:3, 3] = [tf.translation.x, tf.translation.y, tf.translation.z]
    return T


def pose_to_matrix(pose) -> np.ndarray:
    """Return the (4, 4) matrix of a geometry_msgs/Pose."""
    T = np.eye(4)
    o = pose.orientation
    T[:3, :3] = quaternion_to_matrix([o.x, o.y, o.z, o.w])
    T[:3, 3] = [pose.position.x, pose.position.y, pose.position.z]
    return T


def pose_stamped_msg(T: np.ndarray, header: Header) -> PoseStamped:
    """Build a PoseStamped from (4, 4) T."""
    msg = PoseStamped()
    msg.header = header
    _fill_pose(msg.pose, T)
    return msg


# --------------------------------------------------------------------------------------------
# point clouds
# --------------------------------------------------------------------------------------------

def depth_to_points(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> np.ndarray:
    """
    Back-project the known pixels of a depth map (pinhole, optical frame).

    :param depth: (H, W) z-depth, 0 / non-finite = unknown.
    :param K: (3, 3) intrinsics of ``depth``.
    :param stride: use every ``stride``-th pixel in both directions.
    :return: (N, 3) float32 points in the camera optical frame.
    """
    d = np.asarray(depth, dtype=np.float64)[::stride, ::stride]
    h, w = d.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64) * stride
    ok = np.isfinite(d) & (d > 0)
    z = d[ok]
    x = (u[ok] - K[0, 2]) / K[0, 0] * z
    y = (v[ok] - K[1, 2]) / K[1, 1] * z
    return np.stack((x, y, z), axis=-1).astype(np.float32)


def pointcloud2_msg(points: np.ndarray, header: Header) -> PointCloud2:
    """
    Build an unorganised PointCloud2 with float32 fields x, y, z.

    :param points: (N, 3) float array.
    """
    pts = np.ascontiguousarray(np.asarray(points, dtype='<f4').reshape(-1, 3))
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, int(pts.shape[0])
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, n in enumerate('xyz')]
    msg.is_bigendian = False
    msg.point_step = 12
    msg.row_step = 12 * int(pts.shape[0])
    msg.is_dense = True
    msg.data = pts.tobytes()
    return msg
