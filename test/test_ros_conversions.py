"""Message conversions, the stamp synchroniser and parameter checks of the node (no DDS)."""

import math

from builtin_interfaces.msg import Time
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from trianflow_ros.geometry.lie import hat, matrix_to_quaternion, quaternion_to_matrix
from trianflow_ros.ros import conversions as conv
from trianflow_ros.ros import params
from trianflow_ros.ros.tf import OPTICAL_XYZ_RPY

RNG = np.random.default_rng(0)


def header(t: float = 1.5, frame: str = 'cam') -> Header:
    ns = int(round(t * 1e9))
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)


def rgb_image(h=6, w=5):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('encoding, dtype, channels', [
    ('rgb8', np.uint8, 3), ('bgr8', np.uint8, 3), ('rgba8', np.uint8, 4),
    ('bgra8', np.uint8, 4), ('mono8', np.uint8, 1), ('mono16', np.uint16, 1),
    ('16UC1', np.uint16, 1), ('32FC1', np.float32, 1), ('rgb16', np.uint16, 3),
    ('bgr16', np.uint16, 3)])
def test_image_round_trip(encoding, dtype, channels):
    shape = (6, 5) if channels == 1 else (6, 5, channels)
    if dtype == np.float32:
        arr = RNG.random(shape).astype(np.float32)
    else:
        arr = RNG.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    msg = conv.numpy_to_image(arr, encoding, header())
    assert (msg.height, msg.width, msg.encoding) == (6, 5, encoding)
    assert msg.step == 5 * channels * np.dtype(dtype).itemsize
    out = conv.image_to_numpy(msg)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, arr)


def test_rgb8_from_every_input_encoding():
    rgb = rgb_image()
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    cases = {'rgb8': rgb, 'bgr8': bgr, 'rgba8': np.concatenate([rgb, alpha], 2),
             'bgra8': np.concatenate([bgr, alpha], 2),
             'rgb16': rgb.astype(np.uint16) * 257, 'bgr16': bgr.astype(np.uint16) * 257}
    for enc, arr in cases.items():
        out = conv.image_to_rgb8(conv.numpy_to_image(arr, enc))
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.array_equal(out, rgb), enc
    grey = rgb[:, :, 0].copy()
    for enc, arr in (('mono8', grey), ('mono16', grey.astype(np.uint16) * 257),
                     ('16UC1', grey.astype(np.uint16) * 257)):
        out = conv.image_to_rgb8(conv.numpy_to_image(arr, enc))
        assert np.array_equal(out, np.repeat(grey[:, :, None], 3, 2)), enc


def test_padded_rows_and_big_endian():
    arr = RNG.integers(0, 65535, (4, 3), dtype=np.uint16)
    step = 3 * 2 + 4
    rows = np.zeros((4, step), np.uint8)
    rows[:, :6] = arr.astype('>u2').view(np.uint8).reshape(4, 6)
    msg = Image(height=4, width=3, encoding='mono16', is_bigendian=1, step=step,
                data=rows.tobytes())
    assert np.array_equal(conv.image_to_numpy(msg), arr)
    rgb = rgb_image(4, 3)
    rows = np.zeros((4, 3 * 3 + 3), np.uint8)
    rows[:, :9] = rgb.reshape(4, 9)
    msg = Image(height=4, width=3, encoding='rgb8', step=12, data=rows.tobytes())
    assert np.array_equal(conv.image_to_rgb8(msg), rgb)


def test_bad_images_are_rejected_clearly():
    msg = Image(height=2, width=2, encoding='yuv422', step=4, data=bytes(8))
    with pytest.raises(conv.UnsupportedEncodingError, match="'yuv422'.*rgb8.*mono16"):
        conv.image_to_rgb8(msg)
    depth = conv.numpy_to_image(np.zeros((2, 2), np.float32), '32FC1')
    with pytest.raises(conv.UnsupportedEncodingError, match='32FC1'):
        conv.image_to_rgb8(depth)
    short = Image(height=4, width=4, encoding='rgb8', step=12, data=bytes(20))
    with pytest.raises(ValueError, match='expected step'):
        conv.image_to_rgb8(short)
    narrow = Image(height=1, width=4, encoding='rgb8', step=6, data=bytes(6))
    with pytest.raises(ValueError, match='step'):
        conv.image_to_rgb8(narrow)
    with pytest.raises(ValueError, match='uint8'):
        conv.numpy_to_image(np.zeros((2, 2), np.float32), 'mono8')
    empty = Image(height=0, width=0, encoding='rgb8', step=0, data=b'')
    with pytest.raises(ValueError, match='0x0.*no pixels.*camera driver'):
        conv.image_to_rgb8(empty)
    with pytest.raises(conv.ImageSizeError, match='no pixels'):
        conv.fit_K_to_image(np.eye(3), (480, 640), (0, 0))


def test_frame_parameters_are_checked_together():
    from trianflow_ros.ros.node_params import check_frames, removed_given
    assert check_frames({'odom_frame': 'odom', 'base_frame': 'base_link'}) == []
    empty = check_frames({'odom_frame': '', 'base_frame': 'base_link'})
    assert len(empty) == 1 and 'odom_frame is empty' in empty[0] and 'Fix' in empty[0]
    same = check_frames({'odom_frame': 'base_link', 'base_frame': 'base_link'})
    assert len(same) == 1 and 'both' in same[0] and 'Fix' in same[0]
    slash = check_frames({'odom_frame': 'odom', 'base_frame': '/base_link',
                          'camera_frame': '/cam'})
    assert len(slash) == 2 and all("starts with '/'" in r for r in slash)
    notes = removed_given({'camera_info_timeout': 1, 'sync_slop': 2, 'queue_size': 3})
    assert len(notes) == 1 and 'sync_slop' in notes[0] and 'camera_info_max_age' in notes[0]


def test_camera_info_carries_the_distortion():
    from trianflow_ros.geometry.distortion import Distortion
    K = np.array([[400.0, 0, 320], [0, 400, 240], [0, 0, 1]])
    plain = conv.make_camera_info(K, 480, 640, header())
    assert plain.distortion_model == 'plumb_bob' and list(plain.d) == [0.0] * 5
    dist = Distortion('equidistant', (0.1, -0.01, 0.0, 0.001))
    info = conv.make_camera_info(K, 480, 640, header(), dist)
    assert info.distortion_model == 'equidistant' and list(info.d) == [0.1, -0.01, 0.0, 0.001]
    assert Distortion.from_camera_info(info.distortion_model, info.d) == dist


def test_compressed_images():
    rgb = rgb_image(16, 24)
    ok, png = cv2.imencode('.png', rgb[:, :, ::-1])
    msg = CompressedImage(format='png', data=png.tobytes())
    assert np.array_equal(conv.compressed_to_rgb8(msg), rgb)
    grey16 = (rgb[:, :, 0].astype(np.uint16) * 257)
    ok, png16 = cv2.imencode('.png', grey16)
    out = conv.compressed_to_rgb8(CompressedImage(format='png', data=png16.tobytes()))
    assert np.array_equal(out[:, :, 0], rgb[:, :, 0]) and out.shape == (16, 24, 3)
    smooth = np.zeros((16, 24, 3), np.uint8)          # JPEG: smooth colours, channel order
    smooth[:, :, 0] = 200
    smooth[:, :, 1] = np.arange(24) * 4
    smooth[:, :, 2] = 30
    ok, jpg = cv2.imencode('.jpg', smooth[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = conv.compressed_to_rgb8(CompressedImage(format='jpeg', data=jpg.tobytes()))
    assert np.abs(out.astype(int) - smooth).mean() < 4
    with pytest.raises(ValueError, match="format 'jpeg'"):
        conv.compressed_to_rgb8(CompressedImage(format='jpeg', data=b'garbage'))


def test_depth_image_has_no_nan():
    d = np.array([[1.0, np.nan], [np.inf, 2.5]], np.float32)
    msg = conv.depth_to_image(d, header(3.0, 'cam'))
    assert msg.encoding == '32FC1' and msg.header.frame_id == 'cam'
    out = conv.image_to_numpy(msg)
    assert np.array_equal(out, [[1.0, 0.0], [0.0, 2.5]])


# --------------------------------------------------------------------------------------------
# intrinsics
# --------------------------------------------------------------------------------------------
def test_camera_info_K_roi_binning_and_rescale():
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    info = conv.make_camera_info(K, 480, 640, header())
    assert np.allclose(conv.camera_info_to_K(info), K)
    assert conv.camera_info_size(info) == (480, 640)
    info.binning_x = info.binning_y = 2
    assert np.allclose(conv.camera_info_to_K(info)[:2], K[:2] / 2)
    assert conv.camera_info_size(info) == (240, 320)
    info = conv.make_camera_info(K, 480, 640, header())
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 10, 20, 100, 50
    assert np.allclose(conv.camera_info_to_K(info)[:2, 2], [310, 220])
    assert conv.camera_info_size(info) == (50, 100)
    with pytest.raises(ValueError, match='camera_matrix'):
        conv.camera_info_to_K(CameraInfo())
    half = conv.fit_K_to_image(K, (480, 640), (240, 320))
    assert np.allclose(half[0, 0], 250) and np.allclose(half[0, 2], 159.75)
    assert conv.fit_K_to_image(K, (480, 640), (480, 640)) is not None
    with pytest.raises(conv.ImageSizeError, match='does not match camera_info size'):
        conv.fit_K_to_image(K, (480, 640), (100, 640))
    # the rescaled K maps pixel centres consistently (centre of the image stays the centre)
    centre = np.array([319.5, 239.5, 1.0])
    ray = np.linalg.inv(K) @ centre
    assert np.allclose(np.linalg.inv(half) @ np.array([159.5, 119.5, 1.0]), ray)


# --------------------------------------------------------------------------------------------
# poses, covariances, clouds
# --------------------------------------------------------------------------------------------
def random_T(rng):
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(R) < 0:
        R[:, 0] = -R[:, 0]
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = rng.normal(size=3)
    return T


def exp_so3(w):
    theta = np.linalg.norm(w)
    if theta < 1e-12:
        return np.eye(3)
    k = hat(w / theta)
    return np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * k @ k


def test_quaternions_and_rpy():
    rng = np.random.default_rng(1)
    for _ in range(50):
        R = random_T(rng)[:3, :3]
        q = matrix_to_quaternion(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        assert np.allclose(quaternion_to_matrix(q), R, atol=1e-10)
        assert np.allclose(exp_so3(conv.rotation_vector(R)), R, atol=1e-8)
    assert np.allclose(matrix_to_quaternion(np.diag([1.0, -1, -1])), [1, 0, 0, 0])
    # REP-103: optical z (forward) = base x, optical x (right) = base -y, y (down) = base -z
    T = conv.transform_from_xyz_rpy(OPTICAL_XYZ_RPY)
    assert np.allclose(T[:3, :3] @ [0, 0, 1], [1, 0, 0])
    assert np.allclose(T[:3, :3] @ [1, 0, 0], [0, -1, 0])
    assert np.allclose(T[:3, :3] @ [0, 1, 0], [0, 0, -1])
    with pytest.raises(ValueError, match='6 finite'):
        conv.transform_from_xyz_rpy([0, 0, 0])


def test_conjugated_covariance_matches_sampling():
    """Monte-Carlo check of the covariance of T_bc T inv(T_bc) (left perturbations)."""
    rng = np.random.default_rng(2)
    T_bc, T = random_T(rng), random_T(rng)
    A = rng.normal(size=(6, 6)) * 1e-3
    cov = A @ A.T
    n = 20000
    xi = rng.multivariate_normal(np.zeros(6), cov, n)
    ref = conv.conjugate_pose(T_bc, T)
    samples = np.empty((n, 6))
    for i in range(n):
        Tp = T.copy()
        Tp[:3, :3] = exp_so3(xi[i, 3:]) @ T[:3, :3]
        Tp[:3, 3] = T[:3, 3] + xi[i, :3]
        B = conv.conjugate_pose(T_bc, Tp)
        samples[i, :3] = B[:3, 3] - ref[:3, 3]
        samples[i, 3:] = conv.rotation_vector(B[:3, :3] @ ref[:3, :3].T)
    emp = np.cov(samples.T)
    pred = conv.conjugate_covariance(cov, T_bc, T)
    assert np.allclose(pred, pred.T)
    assert np.abs(emp - pred).max() < 0.05 * np.abs(pred).max()


def test_odometry_transform_and_path_messages():
    T = random_T(np.random.default_rng(3))
    cov = np.diag([1.0, 2, 3, 4, 5, 6])
    cov[0, 1] = cov[1, 0] = 0.5
    m = conv.odometry_msg(T, cov, header(2.0, 'odom'), 'base_link', [1.0, 0, 0], [0, 0, 0.1])
    assert (m.header.frame_id, m.child_frame_id) == ('odom', 'base_link')
    assert np.allclose(conv.pose_to_matrix(m.pose.pose), T)
    assert np.allclose(np.reshape(m.pose.covariance, (6, 6)), cov)
    assert m.twist.twist.linear.x == 1.0 and m.twist.twist.angular.z == 0.1
    assert np.reshape(m.twist.covariance, (6, 6))[0, 0] >= 1e6    # unknown twist: large
    nan = conv.odometry_msg(T, np.full((6, 6), np.nan), header(), 'b')
    assert all(math.isfinite(v) for v in nan.pose.covariance)
    t = conv.transform_msg(T, header(2.0, 'odom'), 'base_link')
    assert np.allclose(conv.transform_to_matrix(t), T)
    p = conv.pose_stamped_msg(T, header(2.0, 'odom'))
    assert np.allclose(conv.pose_to_matrix(p.pose), T)
    lin, ang = conv.twist_from_motion(T, 0.5)
    assert np.allclose(lin, T[:3, 3] / 0.5)
    assert np.allclose(conv.twist_from_motion(T, 0.0)[0], 0)


def test_points_from_depth():
    K = np.array([[10.0, 0, 2], [0, 10, 1], [0, 0, 1]])
    d = np.zeros((3, 5), np.float32)
    d[1, 2] = 2.0
    d[2, 4] = 4.0
    d[0, 0] = np.nan
    pts = conv.depth_to_points(d, K)
    assert pts.shape == (2, 3)
    assert np.allclose(pts[0], [0, 0, 2]) and np.allclose(pts[1], [0.8, 0.4, 4])
    msg = conv.pointcloud2_msg(pts, header())
    assert (msg.width, msg.point_step, msg.row_step) == (2, 12, 24)
    assert np.allclose(np.frombuffer(bytes(msg.data), '<f4').reshape(-1, 3), pts)


# --------------------------------------------------------------------------------------------
# synchroniser
# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def test_parameter_specs_cover_the_config_with_ranges():
    from trianflow_ros.config import Config, field_specs
    cfg = Config()
    specs = {s.name: s for s in params.node_param_specs() + params.config_param_specs(cfg)}
    for f in field_specs(cfg):
        mapped = (f.name.startswith(('vo.', 'geometry.', 'flow_net.fb_'))
                  or f.name in ('data.img_height', 'data.img_width'))
        if mapped and f.name not in params.RENAMED_CONFIG:
            assert f.name in specs, f.name
            assert specs[f.name].bounds == (None if f.bounds is None else tuple(f.bounds))
    assert 'vo.device' not in specs and 'device' in specs and 'checkpoint' in specs
    assert specs['vo.flow_provider'].default == 'auto'
    assert specs['data.img_height'].read_only and not specs['vo.num_matches'].read_only
    d = params.descriptor(specs['vo.num_matches'])
    assert d.integer_range[0].from_value == 8 and 'range' in d.description
    d = params.descriptor(specs['geometry.ransac.threshold_px'])
    assert d.floating_point_range[0].to_value == 100.0
    assert params.descriptor(specs['image_qos']).read_only
    for s in specs.values():
        assert s.description and params.check_value(s, s.default) is None, s.name


def test_parameter_values_are_checked_with_reasons():
    specs = {s.name: s for s in params.node_param_specs()
             + params.config_param_specs(__import__('trianflow_ros.config').config.Config())}
    assert 'out of range [8' in params.check_value(specs['vo.num_matches'], 1)
    assert params.check_value(specs['vo.num_matches'], 100) is None
    assert 'must be of type int' in params.check_value(specs['vo.num_matches'], 'a')
    assert params.check_value(specs['geometry.ransac.threshold_px'], 2) is None
    assert 'not one of' in params.check_value(specs['image_qos'], 'best_effort')
    assert 'finite' in params.check_value(specs['camera_info_max_age'], float('nan'))
    assert 'range' in params.check_value(specs['vo.top_ratio'], 0.0)        # every frame LOST
    assert params.check_value(specs['vo.top_ratio'], 0.05) is None
    assert '2 positive' in params.check_value(specs['twist_unknown_sigma'], [1.0, 0.0])
    assert 'not one of' in params.check_value(specs['depth_resolution'], 'full')
    assert '9 numbers' in params.check_value(specs['camera_matrix'], [1.0, 2.0])
    assert 'pinhole' in params.check_value(specs['camera_matrix'], [1.0] * 9)
    K = [500.0, 0, 320, 0, 500, 240, 0, 0, 1]
    assert params.check_value(specs['camera_matrix'], K) is None
    assert params.camera_matrix_or_none(K)[0, 2] == 320
    assert params.camera_matrix_or_none([0.0] * 9) is None
    assert params.check_value(specs['device'], 'cuda:1') is None
    assert 'auto, cpu' in params.check_value(specs['device'], 'gpu')
    assert '6 finite' in params.check_value(specs['base_to_camera'], [0.0] * 5)
