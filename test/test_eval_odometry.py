"""
Odometry evaluation: trajectory files, Umeyama alignment, KITTI / ATE / RPE metrics, the CLI.

The regression tests reproduce the original TrianFlow evaluator's printout (results.txt) on the
released model's KITTI trajectories; the evo tests compare ATE / RPE with numbers recorded from
``evo_ape`` / ``evo_rpe`` 1.38.1 (run outside this environment) and, where evo is importable,
with evo itself.
"""

import importlib.util
import json
from pathlib import Path
import re

import numpy as np
import pytest
from trianflow_ros.eval import cli
from trianflow_ros.eval.alignment import align_kitti_original, align_poses, rebase
from trianflow_ros.eval.alignment import Similarity, umeyama
from trianflow_ros.eval.odometry_metrics import evaluate_odometry, kitti_rotation_angle
from trianflow_ros.eval.odometry_metrics import kitti_segments, rotation_angle, rpe_pairs
from trianflow_ros.eval.odometry_metrics import trajectory_distances
from trianflow_ros.eval.plots import plot_trajectories
from trianflow_ros.eval.trajectory_io import associate, detect_format, read_kitti, read_times
from trianflow_ros.eval.trajectory_io import read_trajectory, read_tum, Trajectory
from trianflow_ros.eval.trajectory_io import TrajectoryFormatError, write_kitti, write_tum

KITTI_GT = 'kitti_odometry_gt'
RELEASED = 'kitti_odometry_gt/trianflow_released_model_trajectories'


# --------------------------------------------------------------------------------------------
# Helpers: synthetic trajectories
# --------------------------------------------------------------------------------------------

def rot(axis: str, angle: float) -> np.ndarray:
    """Rotation matrix about a coordinate axis."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = {'x': (1, 2), 'y': (2, 0), 'z': (0, 1)}[axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def pose(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def car_trajectory(n: int = 400, step: float = 1.0, seed: int = 0) -> np.ndarray:
    """Return a car-like camera path (x right, y down, z forward): forward motion, turns."""
    rng = np.random.default_rng(seed)
    yaw_rate = np.convolve(rng.normal(0, 0.03, n), np.ones(15) / 15, mode='same')
    poses = [np.eye(4)]
    for i in range(1, n):
        rel = pose(rot('y', yaw_rate[i]) @ rot('x', 0.002 * np.sin(i / 20)),
                   [0.01 * np.sin(i / 7), 0.005 * np.cos(i / 11), step])
        poses.append(poses[-1] @ rel)
    return np.stack(poses)


def straight_line(n: int, spacing: float = 1.0) -> np.ndarray:
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = spacing * np.arange(n)
    return poses


def scaled(poses: np.ndarray, s: float) -> np.ndarray:
    out = poses.copy()
    out[:, :3, 3] *= s
    return out


def traj(poses, stamps=None) -> Trajectory:
    return Trajectory(poses, stamps)


# --------------------------------------------------------------------------------------------
# Trajectory files
# --------------------------------------------------------------------------------------------

def test_kitti_round_trip_exact(tmp_path):
    poses = car_trajectory(50)
    path = tmp_path / 'est.txt'
    write_kitti(path, traj(poses))
    lines = path.read_text().splitlines()
    assert len(lines) == 50 and all(len(line.split()) == 12 for line in lines)
    back = read_trajectory(path)
    assert detect_format(path) == 'kitti'
    assert back.stamps is None
    np.testing.assert_array_equal(back.poses, poses)      # repr() round trip is exact


def test_kitti_13_columns_and_times_file(tmp_path):
    poses = car_trajectory(20)
    stamps = 0.1 * np.arange(20) + 3.0
    path = tmp_path / 'stamped.txt'
    write_kitti(path, traj(poses, stamps), with_stamps=True)
    back = read_kitti(path)
    np.testing.assert_array_equal(back.stamps, stamps)
    np.testing.assert_array_equal(back.poses, poses)
    times = tmp_path / 'times.txt'
    times.write_text(''.join(f'{t:e}\n' for t in stamps * 2))
    with_times = read_trajectory(path, times=times)       # a times file replaces the stamps
    np.testing.assert_allclose(with_times.stamps, stamps * 2)
    np.testing.assert_allclose(read_times(times), stamps * 2)
    short = tmp_path / 'short_times.txt'
    short.write_text('0.0\n0.1\n')
    with pytest.raises(TrajectoryFormatError, match='short_times.txt: 2 stamps'):
        read_trajectory(path, times=short)


def test_tum_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    poses = np.stack([pose(random_rotation(rng), rng.normal(size=3)) for _ in range(40)])
    poses[0, :3, :3] = rot('z', np.pi)                    # trace -1: the w ~ 0 branch
    poses[1, :3, :3] = rot('x', np.pi - 1e-9)
    stamps = 1305031102.160407 + 0.033 * np.arange(40)
    path = tmp_path / 'traj.tum'
    write_tum(path, traj(poses, stamps))
    assert path.read_text().startswith('#')
    assert detect_format(path) == 'tum'
    back = read_tum(path)
    np.testing.assert_array_equal(back.stamps, stamps)
    np.testing.assert_array_equal(back.positions, poses[:, :3, 3])
    np.testing.assert_allclose(back.poses, poses, atol=1e-12)


def test_tum_reads_known_quaternion(tmp_path):
    path = tmp_path / 'one.txt'
    # 90 deg about z: q = (0, 0, sin 45, cos 45); comments and blank lines skipped.
    path.write_text('# header\n\n1.5 1 2 3 0 0 0.7071067811865476 0.7071067811865476\n')
    t = read_trajectory(path)
    np.testing.assert_allclose(t.poses[0, :3, :3], rot('z', np.pi / 2), atol=1e-15)
    np.testing.assert_array_equal(t.positions[0], [1, 2, 3])
    assert t.stamps[0] == 1.5


def test_writing_never_overwrites(tmp_path):
    path = tmp_path / 'keep.txt'
    path.write_text('precious\n')
    with pytest.raises(FileExistsError, match='keep.txt'):
        write_kitti(path, traj(car_trajectory(3)))
    with pytest.raises(FileExistsError, match='keep.txt'):
        write_tum(path, traj(car_trajectory(3), np.arange(3.0)))
    assert path.read_text() == 'precious\n'
    write_kitti(path, traj(car_trajectory(3)), overwrite=True)
    assert len(read_kitti(path)) == 3
    with pytest.raises(ValueError, match='time stamps'):
        write_tum(tmp_path / 'new.txt', traj(car_trajectory(3)))


@pytest.mark.parametrize('text, fmt, where', [
    ('1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 x 0 0 1 0\n', 'auto', ':2:'),
    ('1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 0 0 0 1\n', 'auto', ':2: 11 numbers'),
    ('# c\n1 0 0 0 0 1 0 0 0 0 1\n', 'auto', ':2: 11 numbers'),
    ('1 0 0 0 0 1 0 0 0 0 1 0\n\n2 0 0 0 0 1 0 0 0 0 1 0\n', 'kitti', ':3: the 3x3 block'),
    ('0 1 2 3 0 0 0 1\n0.1 1 2 3 0 0 1\n', 'tum', ':2: 7 numbers'),
    ('0 1 2 3 0 0 0 1\n0.1 1 2 3 0 0 0 0\n', 'tum', ':2: quaternion of zero norm'),
    ('0 1 2 3 0 0 0 1\n0.1 1 2 nan 0 0 0 1\n', 'tum', ':2: NaN'),
    ('# only a comment\n', 'auto', 'no poses'),
])
def test_malformed_lines_name_file_and_line(tmp_path, text, fmt, where):
    path = tmp_path / 'bad.txt'
    path.write_text(text)
    with pytest.raises(TrajectoryFormatError) as info:
        read_trajectory(path, fmt)
    assert str(path) in str(info.value) and where in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TrajectoryFormatError, match='nothere.txt: file not found'):
        read_trajectory(tmp_path / 'nothere.txt')


def test_associate_greedy_and_nearest():
    a = np.array([0.0, 0.10, 0.20, 0.30, 1.00])
    b = np.array([0.005, 0.009, 0.195, 0.31, 0.5])
    ia, ib = associate(a, b, max_dt=0.02)
    # 0.0 takes 0.005 (|dt| 0.005 < 0.009); 0.1, 1.0 have no partner; 0.3 - 0.31 = 0.01.
    assert ia.tolist() == [0, 2, 3] and ib.tolist() == [0, 2, 3]
    ia, ib = associate(a, b, max_dt=0.02, method='nearest')
    assert ia.tolist() == [0, 2, 3] and ib.tolist() == [0, 2, 3]
    # Greedy pairs are unique; nearest lets two stamps share a partner.
    ia, ib = associate(np.array([0.0, 0.01]), np.array([0.004, 5.0]), max_dt=0.02)
    assert ia.tolist() == [0] and ib.tolist() == [0]
    ia, ib = associate(np.array([0.0, 0.01]), np.array([0.004, 5.0, 6.0]), max_dt=0.02,
                       method='nearest')
    assert ia.tolist() == [0, 1] and ib.tolist() == [0, 0]
    ia, ib = associate(np.array([0.004, 5.0, 6.0]), np.array([0.0, 0.01]), max_dt=0.02,
                       method='nearest')                   # the shorter list is the query
    assert ia.tolist() == [0, 0] and ib.tolist() == [0, 1]
    ia, ib = associate(a, b + 100.0, max_dt=0.02, offset=-100.0)
    assert ia.tolist() == [0, 2, 3]


# --------------------------------------------------------------------------------------------
# Umeyama alignment
# --------------------------------------------------------------------------------------------

def horn_similarity(x: np.ndarray, y: np.ndarray):
    """Independent closed form: Horn (1987) unit-quaternion rotation, asymmetric scale."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    M = xc.T @ yc
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = M
    N = np.array([[sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
                  [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
                  [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
                  [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz]])
    w, v = np.linalg.eigh(N)
    q0, qx, qy, qz = v[:, -1]
    R = np.array([[q0 * q0 + qx * qx - qy * qy - qz * qz, 2 * (qx * qy - q0 * qz),
                   2 * (qx * qz + q0 * qy)],
                  [2 * (qy * qx + q0 * qz), q0 * q0 - qx * qx + qy * qy - qz * qz,
                   2 * (qy * qz - q0 * qx)],
                  [2 * (qz * qx - q0 * qy), 2 * (qz * qy + q0 * qx),
                   q0 * q0 - qx * qx - qy * qy + qz * qz]])
    s = np.sum(yc * (xc @ R.T)) / np.sum(xc * xc)
    return R, s, y.mean(0) - s * R @ x.mean(0)


def test_umeyama_recovers_known_similarity_exactly():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 3)) * [10, 3, 1]
    R, t, s = random_rotation(rng), rng.normal(size=3) * 5, 2.5
    y = s * x @ R.T + t
    sim = umeyama(x, y, with_scale=True)
    np.testing.assert_allclose(sim.rotation, R, atol=1e-12)
    np.testing.assert_allclose(sim.translation, t, atol=1e-10)
    assert sim.scale == pytest.approx(s, rel=1e-12)
    np.testing.assert_allclose(sim.apply_points(x), y, atol=1e-10)
    rigid = umeyama(x, x @ R.T + t, with_scale=False)
    np.testing.assert_allclose(rigid.rotation, R, atol=1e-12)
    np.testing.assert_allclose(rigid.translation, t, atol=1e-10)
    assert rigid.scale == 1.0


def test_umeyama_matches_closed_form_on_noisy_points():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(200, 3)) * [20, 5, 2]
    y = 0.3 * x @ random_rotation(rng).T + [1, -2, 3] + rng.normal(scale=0.5, size=x.shape)
    sim = umeyama(x, y)
    R, s, t = horn_similarity(x, y)
    np.testing.assert_allclose(sim.rotation, R, atol=1e-10)
    assert sim.scale == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(sim.translation, t, atol=1e-9)
    # Umeyama's minimum residual (the paper's eq. 33): sigma_y^2 - tr(DS)^2 / sigma_x^2.
    xc, yc = x - x.mean(0), y - y.mean(0)
    d = np.linalg.svd(yc.T @ xc / len(x), compute_uv=False)
    e2 = np.mean(np.sum(yc ** 2, 1)) - np.sum(d) ** 2 / np.mean(np.sum(xc ** 2, 1))
    resid = np.mean(np.sum((y - sim.apply_points(x)) ** 2, 1))
    assert resid == pytest.approx(e2, rel=1e-9)


def test_umeyama_reflection_gives_proper_rotation():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 3))
    y = x * [1, 1, -1]                                     # a mirror image: no rotation fits
    sim = umeyama(x, y)
    assert np.linalg.det(sim.rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(sim.rotation @ sim.rotation.T, np.eye(3), atol=1e-12)


def test_umeyama_errors_and_collinear_points():
    with pytest.raises(ValueError, match='shape'):
        umeyama(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match='coincide'):
        umeyama(np.ones((4, 3)), np.random.default_rng(0).normal(size=(4, 3)))
    line = straight_line(10)[:, :3, 3]
    sim = umeyama(line, 3.0 * line + [1, 2, 3])            # rank 1: still exact on the line
    np.testing.assert_allclose(sim.apply_points(line), 3.0 * line + [1, 2, 3], atol=1e-9)


def test_similarity_acts_on_poses_as_original():
    rng = np.random.default_rng(2)
    poses = car_trajectory(5)
    sim = Similarity(random_rotation(rng), rng.normal(size=3), 1.7)
    out = sim.apply_poses(poses)
    # Positions map as p -> s R p + t, orientations as R_T -> R R_T.
    np.testing.assert_allclose(out[:, :3, 3], sim.apply_points(poses[:, :3, 3]), atol=1e-12)
    np.testing.assert_allclose(out[:, :3, :3], sim.rotation @ poses[:, :3, :3], atol=1e-12)


def test_align_kitti_original_rebases_and_scales():
    gt = car_trajectory(100)
    offset = pose(rot('y', 0.4), [5, 1, -3])
    est = offset @ scaled(gt, 0.2)                         # another origin and scale
    aligned, gt0, sim = align_kitti_original(est, gt)
    np.testing.assert_allclose(gt0, rebase(gt), atol=1e-12)
    np.testing.assert_allclose(aligned, gt0, atol=1e-9)
    assert sim.scale == pytest.approx(5.0)


# --------------------------------------------------------------------------------------------
# Metrics on hand-made trajectories
# --------------------------------------------------------------------------------------------

def test_identical_trajectories_give_zero_errors():
    gt = car_trajectory(400)
    res = evaluate_odometry(traj(gt), traj(gt.copy()))
    assert len(res.segments) > 0 and res.length_m > 300
    for key in ('t_err', 'r_err', 'ate', 'ate_se3', 'ate_sim3', 'rpe_trans', 'rpe_rot'):
        assert getattr(res, key) == pytest.approx(0.0, abs=1e-6), key
    assert res.scale == pytest.approx(1.0)
    assert res.notes == []


def test_scaled_estimate_sim3_zero_se3_positive():
    gt = car_trajectory(400)
    res = evaluate_odometry(traj(gt), traj(scaled(gt, 2.0)))
    assert res.ate_sim3 == pytest.approx(0.0, abs=1e-9)
    assert res.ate == res.ate_sim3
    assert res.scale == pytest.approx(0.5)
    assert res.ate_se3 > 10.0
    assert res.t_err == pytest.approx(0.0, abs=1e-7)
    assert res.rpe_trans == pytest.approx(0.0, abs=1e-9)
    se3 = evaluate_odometry(traj(gt), traj(scaled(gt, 2.0)), align='se3')
    assert se3.ate == se3.ate_se3 > 10.0
    # Every step estimated twice as long: the error of a step is the step.
    steps = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
    assert se3.rpe_trans == pytest.approx(np.sqrt(np.mean(steps ** 2)), rel=1e-12)
    assert se3.t_err > 50.0


def test_rigidly_moved_estimate():
    gt = car_trajectory(300)
    offset = pose(rot('y', 0.3) @ rot('x', 0.1), [3.0, -1.0, 4.0])
    res = evaluate_odometry(traj(gt), traj(offset @ gt))
    for key in ('t_err', 'r_err', 'ate_se3', 'ate_sim3', 'rpe_trans', 'rpe_rot'):
        assert getattr(res, key) == pytest.approx(0.0, abs=1e-6), key
    shift = pose(np.eye(3), [3.0, 0.0, 4.0])
    none = evaluate_odometry(traj(gt), traj(shift @ gt), align='none')
    assert none.ate == pytest.approx(5.0)                  # a constant 5 m offset
    assert none.t_err == pytest.approx(0.0, abs=1e-9)     # segments are relative


def test_known_kitti_translation_error_on_straight_line():
    # gt: 1 m between frames along z; estimate: 1.1 m. Without alignment every segment of
    # length L ends at the first frame more than L m away, L + 1 m, and is 10 % too long.
    gt, est = straight_line(1000), straight_line(1000, spacing=1.1)
    res = evaluate_odometry(traj(gt), traj(est), align='none')
    expected = []
    for f in range(0, 1000, 10):
        for L in range(100, 900, 100):
            if f + L + 1 < 1000:
                expected.append(0.1 * (L + 1) / L)
    assert len(res.segments) == len(expected)
    assert res.t_err == pytest.approx(100 * np.mean(expected), rel=1e-9)
    assert res.r_err == pytest.approx(0.0, abs=1e-9)
    assert res.rpe_trans == pytest.approx(0.1)
    sim3 = evaluate_odometry(traj(gt), traj(est))          # the scale is fitted away
    assert sim3.t_err == pytest.approx(0.0, abs=1e-7)
    assert sim3.scale == pytest.approx(1 / 1.1)


def test_known_rotation_drift():
    # The estimate turns an extra theta about y every frame: RPE(1 frame) = theta exactly,
    # and a segment of n frames has an angle error of n * theta.
    theta = 1e-3
    gt = straight_line(600)
    est = [np.eye(4)]
    for i in range(1, 600):
        est.append(est[-1] @ (np.linalg.inv(gt[i - 1]) @ gt[i]) @ pose(rot('y', theta), 0))
    res = evaluate_odometry(traj(gt), traj(np.stack(est)), align='se3')
    assert res.rpe_rot == pytest.approx(np.degrees(theta), rel=1e-9)
    assert res.rpe_trans == pytest.approx(0.0, abs=1e-12)
    per_seg = [(L + 1) * theta / L for f in range(0, 600, 10) for L in range(100, 900, 100)
               if f + L + 1 < 600]
    assert res.r_err == pytest.approx(np.mean(per_seg) * 180 / np.pi * 100, rel=1e-6)


def test_rotation_angles():
    for angle in (0.0, 1e-7, 0.3, 2.0, np.pi):
        R = rot('x', angle) if angle < np.pi else rot('z', np.pi)
        assert rotation_angle(R) == pytest.approx(angle, abs=1e-15)
        assert kitti_rotation_angle(R) == pytest.approx(angle, abs=1e-7)
    assert rotation_angle(np.stack([rot('y', 0.1), rot('y', 0.2)])).shape == (2,)


def test_segments_and_rpe_pairs_by_distance():
    gt = straight_line(30, spacing=2.0)
    assert trajectory_distances(gt[:, :3, 3])[-1] == pytest.approx(58.0)
    seg = kitti_segments(gt, gt, lengths=(10.0,), step=10)
    assert seg.first.tolist() == [0, 10, 20] and seg.last.tolist() == [6, 16, 26]
    i, j = rpe_pairs(gt, 5.0, 'm')                         # first frame > 5 m further: +3
    assert np.all(j - i == 3) and len(i) == 27
    with pytest.raises(ValueError, match='integer'):
        rpe_pairs(gt, 1.5, 'frames')


def test_short_sequence_reports_none_with_note():
    gt = car_trajectory(40)                                # 39 m < 100 m
    res = evaluate_odometry(traj(gt), traj(scaled(gt, 0.5)))
    assert res.t_err is None and res.r_err is None
    assert any('shorter than the shortest segment' in n for n in res.notes)
    assert res.ate_sim3 == pytest.approx(0.0, abs=1e-9) and res.rpe_trans is not None
    d = json.loads(cli._json_line(res.as_dict()))
    assert d['t_err'] is None and d['ate'] is not None
    short = evaluate_odometry(traj(gt), traj(scaled(gt, 0.5)), segment_lengths=(10, 20))
    assert short.t_err == pytest.approx(0.0, abs=1e-7)


def test_pairing_by_index_and_by_stamp():
    gt = car_trajectory(200)
    res = evaluate_odometry(traj(gt), traj(gt[:150]))      # a shorter estimate: a prefix
    assert res.frames == 150 and any('first 150 frames' in n for n in res.notes)
    with pytest.raises(ValueError, match='pair by index'):
        evaluate_odometry(traj(gt[:150]), traj(gt))
    stamps = 0.1 * np.arange(200)
    # Estimate at every other frame, stamps off by 3 ms: associated by time.
    est = Trajectory(gt[::2], stamps[::2] + 0.003)
    res = evaluate_odometry(Trajectory(gt, stamps), est)
    assert res.frames == 100 and res.ate_sim3 == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match='same clock'):
        evaluate_odometry(Trajectory(gt, stamps), Trajectory(gt, stamps + 1000.0))


# --------------------------------------------------------------------------------------------
# Regression against the original evaluator (released model, KITTI 00-10)
# --------------------------------------------------------------------------------------------

def reference_results(path: Path):
    """Parse the original evaluator's printout: {sequence: (t_err %, r_err deg/100 m)}."""
    text = path.read_text()
    out = {}
    pattern = (r'Sequence:\s*(\d+)\s*Translational error \(%\):\s*([0-9.eE+-]+)\s*'
               r'Rotational error \(deg/100m\):\s*([0-9.eE+-]+)')
    for seq, t, r in re.findall(pattern, text):
        out[f'{int(seq):02d}'] = (float(t), float(r))
    return out


def evaluate_released(shared_data: Path, seq: str):
    gt = read_trajectory(shared_data / KITTI_GT / 'dataset' / 'poses' / f'{seq}.txt')
    est = read_trajectory(shared_data / RELEASED / seq / 'trianflow_results.txt')
    return evaluate_odometry(gt, est)


@pytest.mark.parametrize('seq, t_err, r_err', [('09', 9.948, 3.916), ('10', 13.497, 6.008)])
def test_regression_issue_numbers(shared_data, seq, t_err, r_err):
    res = evaluate_released(shared_data, seq)
    assert res.t_err == pytest.approx(t_err, abs=5e-4)
    assert res.r_err == pytest.approx(r_err, abs=5e-4)


@pytest.mark.parametrize('seq', [f'{i:02d}' for i in range(11) if i != 1])
def test_regression_results_txt(shared_data, seq):
    ref = reference_results(shared_data / RELEASED / 'results.txt')
    assert {'09', '10'} <= set(ref), 'results.txt no longer parses'
    if seq not in ref:
        pytest.skip(f'results.txt has no figures for sequence {seq}')
    res = evaluate_released(shared_data, seq)
    assert res.t_err == pytest.approx(ref[seq][0], abs=5e-4)
    assert res.r_err == pytest.approx(ref[seq][1], abs=5e-4)


# --------------------------------------------------------------------------------------------
# evo (GPL; never a dependency): recorded reference numbers and a live check where installed
# --------------------------------------------------------------------------------------------

SAMPLES = 'trajectory_samples'
#: evo 1.38.1, ``evo_ape <fmt> GT EST -a`` / ``-as`` and ``evo_rpe ... -as [-r angle_deg]``
#: (default t_max_diff 0.01 s; stats.json of --save_results): (frames, ate_se3, ate_sim3,
#: sim3 scale correction, rpe_trans, rpe_rot deg).
EVO_REFERENCE = {
    ('KITTI_00_gt.txt', 'KITTI_00_ORB.txt'): (
        4541, 1.303449714565045, 0.937709073611404, 1.0046980764526638,
        0.027822453343562318, 0.11497352125979238),
    ('freiburg1_xyz-groundtruth.txt', 'freiburg1_xyz-rgbdslam.txt'): (
        785, 0.013470088849733695, 0.013389384904168217, 1.0080013899313374,
        0.00580569456312166, 0.3536131610447985),
}
EVO_MAX_DT = 0.01


@pytest.mark.parametrize('gt_name, est_name', list(EVO_REFERENCE))
def test_ate_rpe_match_recorded_evo(shared_data, gt_name, est_name):
    frames, ate_se3, ate_sim3, scale, rpe_t, rpe_r = EVO_REFERENCE[(gt_name, est_name)]
    res = evaluate_odometry(read_trajectory(shared_data / SAMPLES / gt_name),
                            read_trajectory(shared_data / SAMPLES / est_name),
                            max_dt=EVO_MAX_DT)
    assert res.frames == frames
    assert res.ate_se3 == pytest.approx(ate_se3, rel=1e-9)
    assert res.ate_sim3 == pytest.approx(ate_sim3, rel=1e-9)
    assert res.scale == pytest.approx(scale, rel=1e-9)
    assert res.rpe_trans == pytest.approx(rpe_t, rel=1e-6)
    assert res.rpe_rot == pytest.approx(rpe_r, rel=1e-6)


def test_ate_matches_live_evo(shared_data):
    if importlib.util.find_spec('evo') is None:
        pytest.skip('evo is not installed (GPL, never a dependency; install it elsewhere to '
                    'run this comparison)')
    from evo.core import metrics, sync
    from evo.tools import file_interface
    data = shared_data / SAMPLES
    for (gt_name, est_name) in EVO_REFERENCE:
        for with_scale in (False, True):
            if gt_name.startswith('KITTI'):
                ref = file_interface.read_kitti_poses_file(str(data / gt_name))
                est = file_interface.read_kitti_poses_file(str(data / est_name))
            else:
                ref = file_interface.read_tum_trajectory_file(str(data / gt_name))
                est = file_interface.read_tum_trajectory_file(str(data / est_name))
                ref, est = sync.associate_trajectories(ref, est, max_diff=EVO_MAX_DT)
            est.align(ref, correct_scale=with_scale)
            ape = metrics.APE(metrics.PoseRelation.translation_part)
            ape.process_data((ref, est))
            want = ape.get_statistic(metrics.StatisticsType.rmse)
            res = evaluate_odometry(read_trajectory(data / gt_name),
                                    read_trajectory(data / est_name), max_dt=EVO_MAX_DT)
            got = res.ate_sim3 if with_scale else res.ate_se3
            assert got == pytest.approx(want, rel=1e-9), (gt_name, with_scale)


# --------------------------------------------------------------------------------------------
# CLI and plot
# --------------------------------------------------------------------------------------------

def run_cli(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_kitti_seq09_json_and_plot(shared_data, tmp_path, capsys):
    png = tmp_path / 'plots' / 'seq09.png'
    rc, out, _ = run_cli(capsys, [
        'odometry', '--gt', shared_data / KITTI_GT / 'dataset' / 'poses' / '09.txt',
        '--est', shared_data / RELEASED / '09' / 'trianflow_results.txt', '--plot', png])
    assert rc == 0
    res = json.loads(out.strip().splitlines()[-1])
    for key in ('t_err', 'r_err', 'ate', 'rpe_trans', 'rpe_rot', 'ate_se3', 'ate_sim3',
                'scale', 'frames', 'length_m'):
        assert key in res
    assert res['t_err'] == pytest.approx(9.948, abs=5e-4)
    assert res['r_err'] == pytest.approx(3.916, abs=5e-4)
    assert res['ate'] == res['ate_sim3'] < res['ate_se3']
    assert res['frames'] == 1591 and res['segments'] > 0
    assert 't_err' in out.splitlines()[1] and '800' in out
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_short_kitti_clip_gives_null_kitti_errors(shared_data, tmp_path, capsys):
    gt_path = shared_data / 'kitti_odometry_seq06' / 'dataset' / 'poses' / '06.txt'
    gt = read_trajectory(gt_path)
    assert len(gt) == 51
    released = read_trajectory(shared_data / RELEASED / '06' / 'trianflow_results.txt')
    est_path = tmp_path / 'est06.txt'
    write_kitti(est_path, released.subset(np.arange(len(gt))))
    rc, out, _ = run_cli(capsys, ['odometry', '--gt', gt_path, '--est', est_path])
    assert rc == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert res['t_err'] is None and res['r_err'] is None
    assert res['ate'] is not None and res['rpe_trans'] is not None and res['frames'] == 51
    assert any('shorter than the shortest segment' in n for n in res['notes'])
    assert 'note:' in out
    rc, out, _ = run_cli(capsys, ['odometry', '--gt', gt_path, '--est', est_path,
                                  '--segments', '10,20,30'])
    res = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and res['t_err'] > 0 and res['r_err'] > 0


def test_cli_tum_with_options(shared_data, capsys):
    data = shared_data / SAMPLES
    rc, out, _ = run_cli(capsys, [
        'odometry', '--gt', data / 'freiburg1_xyz-groundtruth.txt',
        '--est', data / 'freiburg1_xyz-rgbdslam.txt', '--align', 'se3', '--max-dt', '0.01',
        '--rpe-delta', '0.1', '--rpe-unit', 'm'])
    assert rc == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert res['frames'] == 785 and res['align'] == 'se3'
    assert res['ate'] == pytest.approx(EVO_REFERENCE[
        ('freiburg1_xyz-groundtruth.txt', 'freiburg1_xyz-rgbdslam.txt')][1], rel=1e-9)
    assert res['t_err'] is None and res['rpe_trans'] > 0


def test_cli_kitti_with_gt_times_pairs_tum_estimate(shared_data, tmp_path, capsys):
    data = shared_data / SAMPLES
    gt = read_trajectory(data / 'KITTI_00_gt.txt', times=data / 'KITTI_00_gt_times.txt')
    est_tum = tmp_path / 'est.tum'
    write_tum(est_tum, gt.subset(np.arange(0, 600, 3)))   # every 3rd frame, TUM format
    rc, out, _ = run_cli(capsys, ['odometry', '--gt', data / 'KITTI_00_gt.txt', '--gt-times',
                                  data / 'KITTI_00_gt_times.txt', '--est', est_tum])
    assert rc == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert res['frames'] == 200 and res['ate'] == pytest.approx(0.0, abs=1e-9)


def test_cli_errors_name_the_file(tmp_path, capsys):
    good = tmp_path / 'gt.txt'
    write_kitti(good, traj(car_trajectory(20)))
    bad = tmp_path / 'est.txt'
    bad.write_text('1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 oops 0 0 1 0\n')
    rc, out, err = run_cli(capsys, ['odometry', '--gt', good, '--est', bad])
    assert rc == 1 and f'{bad}:2' in err and out == ''
    rc, _, err = run_cli(capsys, ['odometry', '--gt', good, '--est', tmp_path / 'none.txt'])
    assert rc == 1 and 'none.txt' in err
    with pytest.raises(SystemExit):
        cli.main(['odometry', '--gt', str(good), '--est', str(good), '--segments', '0,-1'])


def test_plot_trajectories_aligns_and_writes_png(tmp_path):
    gt = traj(car_trajectory(100))
    est = traj(scaled(car_trajectory(100, seed=1), 0.1))
    out = plot_trajectories(tmp_path / 'p.png', gt, {'ours': est, 'again': est}, 'title',
                            align='sim3')
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    out = plot_trajectories(tmp_path / 'est_only.png', None, {'ours': est})
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError, match='same length'):
        plot_trajectories(tmp_path / 'x.png', None, {'ours': est}, align='se3')
    aligned, _ = align_poses(est.poses, gt.poses, 'sim3')
    assert aligned.shape == est.poses.shape
