"""The Lie module: hat, rigid inverse, quaternions (x, y, z, w), rpy; numpy and torch."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from trianflow_ros.geometry.lie import (hat, matrix_to_quaternion, nearest_rotation,
                                        quaternion_slerp, quaternion_to_matrix, rpy_to_matrix,
                                        se3_inverse, skew, transform_from_xyz_rpy)


def random_quaternions(rng, n):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def axis_angle(axis, angle):
    """Rodrigues' formula, written out here (independent of the module)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def random_transforms(rng, n):
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = quaternion_to_matrix(random_quaternions(rng, n))
    T[:, :3, 3] = rng.normal(size=(n, 3))
    return T


def test_shapes_and_kinds():
    for shape in ((), (5,), (2, 3)):
        v = np.ones(shape + (3,))
        assert hat(v).shape == shape + (3, 3)
        assert hat(torch.ones(shape + (3,), dtype=torch.float32)).dtype == torch.float32
        assert quaternion_to_matrix(np.ones(shape + (4,))).shape == shape + (3, 3)
        assert matrix_to_quaternion(np.tile(np.eye(3), shape + (1, 1))).shape == shape + (4,)
        assert se3_inverse(np.tile(np.eye(4), shape + (1, 1))).shape == shape + (4, 4)
        assert rpy_to_matrix(np.zeros(shape + (3,))).shape == shape + (3, 3)
        assert transform_from_xyz_rpy(np.zeros(shape + (6,))).shape == shape + (4, 4)
        assert nearest_rotation(np.tile(np.eye(3), shape + (1, 1))).shape == shape + (3, 3)
    # lists in, float64 numpy out; torch in, torch out (same dtype)
    assert hat([1, 2, 3]).dtype == np.float64
    out = se3_inverse(torch.eye(4, dtype=torch.float32)[None])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (1, 4, 4)
    assert skew is hat
    with pytest.raises(ValueError, match=r'v must have shape \(\.\.\., 3\)'):
        hat(np.ones(4))
    with pytest.raises(ValueError, match=r'T must have shape \(\.\.\., 4, 4\)'):
        se3_inverse(torch.eye(3))
    with pytest.raises(ValueError, match='q must have shape'):
        quaternion_to_matrix([0.0, 0.0, 1.0])


def test_hat_is_the_cross_product():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 10, 3))
    np.testing.assert_allclose((hat(a) @ b[..., None])[..., 0], np.cross(a, b), atol=1e-15)
    np.testing.assert_array_equal(hat(a), -hat(a).swapaxes(-1, -2))
    at = torch.from_numpy(a)
    np.testing.assert_array_equal(hat(at).numpy(), hat(a))


def test_se3_inverse():
    rng = np.random.default_rng(1)
    T = random_transforms(rng, 20)
    Ti = se3_inverse(T)
    np.testing.assert_allclose(Ti @ T, np.tile(np.eye(4), (20, 1, 1)), atol=1e-14)
    np.testing.assert_allclose(Ti, np.linalg.inv(T), atol=1e-14)
    np.testing.assert_array_equal(Ti[:, 3], np.tile([0.0, 0, 0, 1], (20, 1)))
    np.testing.assert_allclose(se3_inverse(torch.from_numpy(T)).numpy(), Ti, atol=1e-15)
    np.testing.assert_allclose(se3_inverse(Ti), T, atol=1e-14)


def test_quaternion_to_matrix_closed_forms_and_normalisation():
    for axis, i in (((1, 0, 0), 0), ((0, 1, 0), 1), ((0, 0, 1), 2)):
        for angle in (0.3, -1.2, math.pi, 2.5):
            q = np.zeros(4)
            q[i], q[3] = math.sin(angle / 2), math.cos(angle / 2)
            np.testing.assert_allclose(quaternion_to_matrix(q), axis_angle(axis, angle),
                                       atol=1e-15)
            # any scale and either sign: the same rotation
            np.testing.assert_allclose(quaternion_to_matrix(-3.0 * q), axis_angle(axis, angle),
                                       atol=1e-15)
    np.testing.assert_array_equal(quaternion_to_matrix([0, 0, 0, 1.0]), np.eye(3))
    for bad in ([0.0, 0, 0, 0], [1e-13, 0, 0, 0], [np.nan, 0, 0, 1], [np.inf, 0, 0, 1]):
        with pytest.raises(ValueError, match='zero or non-finite norm'):
            quaternion_to_matrix(bad)
        with pytest.raises(ValueError, match='zero or non-finite norm'):
            quaternion_to_matrix(torch.tensor([[0.0, 0, 0, 1], bad], dtype=torch.float64))


def test_matrix_to_quaternion_every_branch_and_sign():
    # identity and 180 deg about each axis: every branch of Shepperd's method
    np.testing.assert_array_equal(matrix_to_quaternion(np.eye(3)), [0, 0, 0, 1.0])
    for i in range(3):
        R = -np.eye(3)
        R[i, i] = 1.0
        expected = np.zeros(4)
        expected[i] = 1.0
        np.testing.assert_allclose(matrix_to_quaternion(R), expected, atol=1e-15)
    rng = np.random.default_rng(2)
    axes = rng.normal(size=(200, 3))
    angles = np.concatenate((rng.uniform(-math.pi, math.pi, 150), math.pi - 10.0 ** -rng.uniform(
        0, 12, 50)))
    R = np.stack([axis_angle(a, t) for a, t in zip(axes, angles)])
    q = matrix_to_quaternion(R)
    assert np.all(q[:, 3] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-15)
    # q = +-(sin(t/2) a, cos(t/2)), the sign making w >= 0
    a = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    ref = np.concatenate((np.sin(angles / 2)[:, None] * a, np.cos(angles / 2)[:, None]), 1)
    ref *= np.where(ref[:, 3:] < 0, -1.0, 1.0)
    np.testing.assert_allclose(q, ref, atol=1e-14)
    # round trips
    np.testing.assert_allclose(quaternion_to_matrix(q), R, atol=1e-14)
    qr = random_quaternions(rng, 100)
    back = matrix_to_quaternion(quaternion_to_matrix(qr))
    np.testing.assert_allclose(back, qr * np.where(qr[:, 3:] < 0, -1.0, 1.0), atol=1e-14)
    # torch gives the same numbers
    np.testing.assert_allclose(matrix_to_quaternion(torch.from_numpy(R)).numpy(), q, atol=1e-15)


def test_against_scipy():
    Rotation = pytest.importorskip('scipy.spatial.transform').Rotation
    rng = np.random.default_rng(3)
    q = random_quaternions(rng, 100)
    np.testing.assert_allclose(quaternion_to_matrix(q), Rotation.from_quat(q).as_matrix(),
                               atol=1e-14)
    R = Rotation.random(100, random_state=4)
    ref = R.as_quat()                                    # (x, y, z, w), scalar last
    ref *= np.where(ref[:, 3:] < 0, -1.0, 1.0)
    np.testing.assert_allclose(matrix_to_quaternion(R.as_matrix()), ref, atol=1e-14)
    rpy = rng.uniform(-math.pi, math.pi, size=(100, 3))
    # scipy's lower-case 'xyz': extrinsic (fixed-axis) x, then y, then z = Rz Ry Rx
    np.testing.assert_allclose(rpy_to_matrix(rpy), Rotation.from_euler('xyz', rpy).as_matrix(),
                               atol=1e-14)


def test_rpy_and_xyz_rpy():
    r, p, y = 0.3, -0.7, 2.1
    Rx, Ry, Rz = axis_angle((1, 0, 0), r), axis_angle((0, 1, 0), p), axis_angle((0, 0, 1), y)
    np.testing.assert_allclose(rpy_to_matrix([r, p, y]), Rz @ Ry @ Rx, atol=1e-15)
    T = transform_from_xyz_rpy([1.0, 2.0, 3.0, r, p, y])
    np.testing.assert_allclose(T[:3, :3], Rz @ Ry @ Rx, atol=1e-15)
    np.testing.assert_array_equal(T[:3, 3], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(T[3], [0, 0, 0, 1.0])
    # REP-103 optical frame: z forward = base x, x right = base -y, y down = base -z
    R = transform_from_xyz_rpy([0, 0, 0, -math.pi / 2, 0, -math.pi / 2])[:3, :3]
    np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, -1, 0], atol=1e-15)
    for bad in ([0, 0, 0], [0, 0, 0, 0, 0, float('nan')], ['a'] * 6):
        with pytest.raises(ValueError, match='6 finite numbers'):
            transform_from_xyz_rpy(bad)


def test_slerp():
    def about_z(angle):
        return np.array([0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)])

    q0, q1 = about_z(0.2), about_z(1.4)
    for s in (0.0, 0.25, 0.5, 1.0):
        np.testing.assert_allclose(quaternion_slerp(q0, q1, s), about_z(0.2 + 1.2 * s),
                                   atol=1e-15)
        # -q1 is the same rotation: the shortest arc is taken all the same
        np.testing.assert_allclose(quaternion_slerp(q0, -q1, s), about_z(0.2 + 1.2 * s),
                                   atol=1e-15)
    # (nearly) equal quaternions: linear interpolation, normalised
    np.testing.assert_allclose(quaternion_slerp(q0, q0, 0.3), q0, atol=1e-15)
    # batched, with one fraction a pair; torch gives the same
    rng = np.random.default_rng(7)
    a, b, s = random_quaternions(rng, 20), random_quaternions(rng, 20), rng.uniform(size=20)
    out = quaternion_slerp(a, b, s)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-15)
    for k in range(20):
        np.testing.assert_allclose(out[k], quaternion_slerp(a[k], b[k], s[k]), atol=1e-15)
    ot = quaternion_slerp(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(s))
    np.testing.assert_allclose(ot.numpy(), out, atol=1e-15)
    Rotation = pytest.importorskip('scipy.spatial.transform').Rotation
    Slerp = pytest.importorskip('scipy.spatial.transform').Slerp
    for k in range(20):
        ref = Slerp([0.0, 1.0], Rotation.from_quat([a[k], b[k]]))([s[k]]).as_matrix()[0]
        np.testing.assert_allclose(quaternion_to_matrix(out[k]), ref, atol=1e-13)


def test_nearest_rotation():
    rng = np.random.default_rng(5)
    R = quaternion_to_matrix(random_quaternions(rng, 10))
    np.testing.assert_allclose(nearest_rotation(R), R, atol=1e-14)
    noisy = nearest_rotation(R + 1e-3 * rng.normal(size=R.shape))
    np.testing.assert_allclose(noisy @ noisy.swapaxes(1, 2), np.tile(np.eye(3), (10, 1, 1)),
                               atol=1e-14)
    np.testing.assert_allclose(np.linalg.det(noisy), 1.0, atol=1e-14)
    assert np.abs(noisy - R).max() < 1e-2
    # a reflection is turned into the nearest proper rotation
    np.testing.assert_allclose(np.linalg.det(nearest_rotation(np.diag([1.0, 1.0, -1.0]))), 1.0)


@pytest.mark.parametrize('name', ['hat', 'se3_inverse', 'quaternion_to_matrix',
                                  'matrix_to_quaternion', 'rpy_to_matrix',
                                  'transform_from_xyz_rpy', 'nearest_rotation',
                                  'quaternion_slerp'])
def test_torch_gradients(name):
    rng = np.random.default_rng(6)
    if name == 'hat':
        fn, x = hat, rng.normal(size=(4, 3))
    elif name == 'se3_inverse':
        fn, x = se3_inverse, random_transforms(rng, 3)
    elif name == 'quaternion_to_matrix':
        fn, x = quaternion_to_matrix, 2.0 * rng.normal(size=(5, 4))
    elif name == 'matrix_to_quaternion':
        # near identity and near 180 deg about x, y, z: each branch of Shepperd's method
        fn = matrix_to_quaternion
        x = np.stack([axis_angle(a, t) for a, t in (((1, 2, 3), 0.4), ((1, 0.1, 0.1), 3.0),
                                                    ((0.1, 1, 0.2), 3.0), ((0.1, 0.2, 1), 3.0))])
    elif name == 'rpy_to_matrix':
        fn, x = rpy_to_matrix, rng.uniform(-3, 3, size=(4, 3))
    elif name == 'transform_from_xyz_rpy':
        fn, x = transform_from_xyz_rpy, rng.uniform(-3, 3, size=(4, 6))
    elif name == 'quaternion_slerp':
        q = random_quaternions(rng, 6)

        def fn(x):
            return quaternion_slerp(x[:3], x[3:], 0.3)
        x = q
    else:
        fn = nearest_rotation
        x = quaternion_to_matrix(random_quaternions(rng, 3)) + 0.05 * rng.normal(size=(3, 3, 3))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (xt,))
    np.testing.assert_allclose(fn(xt).detach().numpy(), fn(x), atol=1e-14)


def test_no_torch_for_numpy_users():
    """The numpy layers (eval, the Lie module itself) import no torch through this module."""
    code = ('import sys\nimport trianflow_ros.geometry.lie, trianflow_ros.eval.trajectory_io\n'
            'import trianflow_ros.eval.odometry_metrics\n'
            'assert "torch" not in sys.modules, "torch imported"\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
