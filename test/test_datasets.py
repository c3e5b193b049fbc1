"""Dataset readers: fake native trees built in tmp_path, and the real folders in shared/data."""

import math
from pathlib import Path
import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.config import DataConfig
from trianflow_ros.data.camera_files import (parse_distortion_option, read_distortion_file,
                                             read_intrinsics_file)
from trianflow_ros.data.kitti_odometry import (KittiOdometryDataset, KittiOdometrySequence,
                                               read_calib)
from trianflow_ros.data.kitti_raw import KittiRawDataset, parse_frame_line
from trianflow_ros.data.nyu import (NYU_INTRINSICS, NyuLabelledDataset, NyuRawDataset,
                                    read_split_indices)
from trianflow_ros.data.registry import ImageFolderDataset, make_dataset
from trianflow_ros.data.sample import (check_sample, collate_samples, DatasetError,
                                       hflip_sample, MissingFileError, RandomHorizontalFlip,
                                       rescale_intrinsics, resize_image)
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset
from trianflow_ros.data.tum import (associate, family_distortion, family_intrinsics,
                                    interpolate_pose, quaternion_to_matrix, TumRgbdDataset,
                                    TumRgbdSequence)
from trianflow_ros.geometry.distortion import Distortion

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def colour_image(h, w, seed=0):
    """BGR uint8 image (as OpenCV writes it) with distinct channels and texture."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    img[..., 2] += 180   # red channel dominant (BGR order on disk)
    return img


def pose(yaw=0.0, t=(0.0, 0.0, 0.0)):
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    T[:3, 3] = t
    return T


def kitti_pose_lines(poses):
    return ''.join(' '.join(f'{v:.12e}' for v in T[:3].ravel()) + '\n' for T in poses)


P_KITTI = {
    'P0': [[700.0, 0, 600.0, 0], [0, 700.0, 180.0, 0], [0, 0, 1, 0]],
    'P1': [[700.0, 0, 600.0, -380.0], [0, 700.0, 180.0, 0], [0, 0, 1, 0]],
    'P2': [[710.0, 0, 610.0, 46.0], [0, 712.0, 175.0, -0.2], [0, 0, 1, 0.003]],
    'P3': [[999.0, 0, 500.0, -330.0], [0, 999.0, 150.0, 2.0], [0, 0, 1, 0.004]],
}


def make_kitti_odo(root: Path, seq: str, n: int, hw, labels=('P0', 'P1', 'P2', 'P3'),
                   camera=2, poses=None, tr_last=True):
    """Fake ROOT/dataset/sequences/<seq>/ with n frames of size hw."""
    sdir = root / 'dataset' / 'sequences' / seq
    for i in range(n):
        if camera == 0:
            write_png(sdir / 'image_0' / f'{i:06d}.png', colour_image(*hw, i)[..., 0])
        else:
            write_png(sdir / f'image_{camera}' / f'{i:06d}.png', colour_image(*hw, i))
    lines = [f'{k}: ' + ' '.join(f'{v:.6e}' for v in np.ravel(P_KITTI[k])) for k in labels]
    if tr_last:
        lines.append('Tr: ' + ' '.join(['0.5'] * 12))
    (sdir / 'calib.txt').write_text('\n'.join(lines) + '\n')
    (sdir / 'times.txt').write_text(''.join(f'{0.1 * i:e}\n' for i in range(n)))
    if poses is None:
        poses = [pose(0.02 * i, (0.01 * i, 0.0, 0.8 * i)) for i in range(n)]
    (root / 'dataset' / 'poses').mkdir(parents=True, exist_ok=True)
    (root / 'dataset' / 'poses' / f'{seq}.txt').write_text(kitti_pose_lines(poses))
    return sdir, poses


def transform(T, X):
    return T[:3, :3] @ X + T[:3, 3]


def project(K, X):
    x = K @ X
    return x[:2] / x[2]


# --------------------------------------------------------------------------------------------
# sample utilities: intrinsics under resize, flip, collate
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('src_hw, dst_hw', [((370, 1226), (256, 832)),
                                            ((480, 640), (448, 576)),
                                            ((376, 1241), (128, 416))])
def test_rescaled_K_projects_to_the_resized_pixel(src_hw, dst_hw):
    K = np.array([[518.9, 0.0, 325.6], [0.0, 519.5, 253.7], [0.0, 0.0, 1.0]])
    K2 = rescale_intrinsics(K, src_hw, dst_hw)
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    rng = np.random.default_rng(0)
    for X in rng.uniform([-3, -2, 2], [3, 2, 20], size=(20, 3)):
        u, v = project(K, X)
        # cv2.resize maps pixel centres as u' = (u + 0.5) s - 0.5, per axis.
        np.testing.assert_allclose(project(K2, X), [(u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5],
                                   atol=1e-9)
    # x is scaled by the width ratio, y by the height ratio (the original swapped them for NYU)
    assert K2[0, 0] == pytest.approx(K[0, 0] * sx)
    assert K2[1, 1] == pytest.approx(K[1, 1] * sy)


def test_resized_image_blob_lands_where_rescaled_K_projects():
    """A bright spot drawn at a projected point is found at the rescaled projection."""
    h, w, H, W = 120, 300, 48, 100
    K = np.array([[150.0, 0, 151.3], [0, 140.0, 57.8], [0, 0, 1.0]])
    X = np.array([0.31, -0.17, 2.0])
    u, v = project(K, X)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 3.0 ** 2))
    img8 = np.repeat((img * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    small = resize_image(img8, (H, W))[..., 0].astype(np.float64)
    YY, XX = np.mgrid[0:H, 0:W]
    m = small / small.sum()
    centroid = np.array([(m * XX).sum(), (m * YY).sum()])
    np.testing.assert_allclose(centroid, project(rescale_intrinsics(K, (h, w), (H, W)), X),
                               atol=0.05)


def test_hflip_keeps_the_geometry_consistent():
    H, W = 20, 30
    K = torch.tensor([[25.0, 0, 12.3], [0, 24.0, 9.1], [0, 0, 1]])
    T = torch.from_numpy(pose(0.1, (0.2, -0.05, 0.3))).float()
    sample = {'image1': torch.rand(3, H, W), 'image2': torch.rand(3, H, W), 'K': K, 'T_21': T,
              'depth1': torch.rand(1, H, W) + 1, 'flow_12': torch.randn(2, H, W),
              'native_hw': torch.tensor([H, W]), 'index': 0}
    f = hflip_sample(sample)
    assert f['K'][0, 2] == pytest.approx(W - 1 - 12.3)
    assert torch.equal(f['image1'][:, :, 0], sample['image1'][:, :, -1])
    assert torch.equal(f['flow_12'][0, :, 0], -sample['flow_12'][0, :, -1])
    # a point seen at (u, v) with depth z maps through (K, T_21); mirrored, at (W-1-u, v).
    X1 = np.array([0.4, -0.2, 2.5])
    x2 = project(K.numpy(), transform(T.double().numpy(), X1))
    x1 = project(K.numpy(), X1)
    Kf, Tf = f['K'].double().numpy(), f['T_21'].double().numpy()
    X1f = np.linalg.inv(Kf) @ np.array([W - 1 - x1[0], x1[1], 1.0]) * X1[2]
    np.testing.assert_allclose(project(Kf, transform(Tf, X1f)), [W - 1 - x2[0], x2[1]],
                               atol=1e-4)
    # augmentation: reproducible per index, identity with p = 0
    aug = RandomHorizontalFlip(p=0.5, seed=3)
    assert torch.equal(aug(sample)['image1'], aug(sample)['image1'])
    assert RandomHorizontalFlip(p=0.0)(sample) is sample


def test_collate_stacks_and_rejects_mixed_keys():
    a = {'image1': torch.zeros(3, 4, 5), 'stamp1': 1.5, 'frame1': 3, 'sequence': 'x'}
    b = {'image1': torch.ones(3, 4, 5), 'stamp1': 2.5, 'frame1': 4, 'sequence': 'y'}
    batch = collate_samples([a, b])
    assert batch['image1'].shape == (2, 3, 4, 5)
    assert batch['stamp1'].dtype == torch.float64 and batch['frame1'].tolist() == [3, 4]
    assert batch['sequence'] == ['x', 'y']
    with pytest.raises(ValueError, match='T_21'):
        collate_samples([a, dict(b, T_21=torch.eye(4))])


# --------------------------------------------------------------------------------------------
# KITTI odometry
# --------------------------------------------------------------------------------------------

def test_kitti_odometry_pairs_sizes_and_calib_by_label(tmp_path):
    make_kitti_odo(tmp_path, '03', 7, (15, 42))
    make_kitti_odo(tmp_path, '05', 5, (12, 40))
    ds = KittiOdometryDataset(tmp_path, ['03', 5], camera=2, height=8, width=24, stride=2)
    assert len(ds) == (7 - 2) + (5 - 2)
    s = ds[0]
    check_sample(s, 8, 24)
    assert s['native_hw'].tolist() == [15, 42]
    assert ds[-1]['native_hw'].tolist() == [12, 40]
    assert (s['frame1'], s['frame2'], s['sequence']) == (0, 2, '03')
    assert s['stamp2'] - s['stamp1'] == pytest.approx(0.2)
    # P2 chosen by label, not P3 nor the last line (Tr); rescaled from the size on disk
    K_native = np.array(P_KITTI['P2'])[:, :3]
    np.testing.assert_allclose(s['K'].numpy(), rescale_intrinsics(K_native, (15, 42), (8, 24)),
                               rtol=1e-6)
    np.testing.assert_allclose(ds[-1]['K'].numpy(),
                               rescale_intrinsics(K_native, (12, 40), (8, 24)), rtol=1e-6)
    assert set(read_calib(tmp_path / 'dataset/sequences/03/calib.txt')) == {
        'P0', 'P1', 'P2', 'P3', 'Tr'}


def test_kitti_odometry_relative_pose_of_the_colour_camera(tmp_path):
    _, poses = make_kitti_odo(tmp_path, '00', 4, (10, 30))
    ds = KittiOdometryDataset(tmp_path, ['00'], camera=2, height=10, width=30, stride=1)
    T_21 = ds[1]['T_21'].double().numpy()      # frames 1 -> 2
    # Physical check: P2 projects cam0-frame points: P2 = K [I | t], so X_cam2 = X_cam0 + t.
    P2 = np.array(P_KITTI['P2'])
    t = np.linalg.solve(P2[:, :3], P2[:, 3])
    for Xw in np.random.default_rng(1).uniform(-5, 5, size=(5, 3)):
        X1 = transform(np.linalg.inv(poses[1]), Xw) + t
        X2 = transform(np.linalg.inv(poses[2]), Xw) + t
        np.testing.assert_allclose(transform(T_21, X1), X2, atol=1e-5)
    # the grey camera uses the pose file as it is
    make_kitti_odo(tmp_path, '01', 4, (10, 30), camera=0)
    ds0 = KittiOdometryDataset(tmp_path, ['01'], camera=0, height=10, width=30)
    seq = ds0.sequences[0]
    np.testing.assert_allclose(ds0[0]['T_21'].double().numpy(),
                               np.linalg.inv(seq.poses[1]) @ seq.poses[0], atol=1e-6)


def test_kitti_odometry_grey_to_three_channels_and_bgr(tmp_path):
    make_kitti_odo(tmp_path, '04', 3, (10, 30), camera=0)
    grey = KittiOdometryDataset(tmp_path, ['04'], camera=0, height=10, width=30)[0]['image1']
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    make_kitti_odo(tmp_path, '06', 3, (10, 30), camera=2)
    rgb = KittiOdometryDataset(tmp_path, ['06'], height=10, width=30, bgr=False)[0]['image1']
    bgr = KittiOdometryDataset(tmp_path, ['06'], height=10, width=30, bgr=True)[0]['image1']
    assert rgb[0].mean() > 0.7 and rgb[2].mean() < 0.3       # red file -> channel 0 in RGB
    assert torch.equal(bgr, rgb.flip(0))
    seq = KittiOdometrySequence(tmp_path, '06', camera=2)
    stamp, image, K = seq.frame(2)
    assert image.shape == (10, 30, 3) and image.dtype == np.uint8 and stamp == pytest.approx(0.2)
    np.testing.assert_allclose(K, np.array(P_KITTI['P2'])[:, :3])


def test_kitti_odometry_errors_name_the_file(tmp_path):
    sdir, _ = make_kitti_odo(tmp_path, '02', 3, (10, 30))
    (sdir / 'calib.txt').unlink()
    with pytest.raises(MissingFileError, match='calib.txt'):
        KittiOdometrySequence(tmp_path, '02')
    (sdir / 'calib.txt').write_text('P0: 1 0 0 0 0 1 0 0 0 0 1 0\n')
    with pytest.raises(DatasetError, match='labelled "P2:"'):
        KittiOdometrySequence(tmp_path, '02')
    (sdir / 'calib.txt').write_text('P2: 1 0 0 0 0 1 0 0 0 0 1\n')
    with pytest.raises(DatasetError, match=r'calib.txt, line 1: expected 12'):
        KittiOdometrySequence(tmp_path, '02')
    make_kitti_odo(tmp_path, '02', 3, (10, 30))
    pose_file = tmp_path / 'dataset' / 'poses' / '02.txt'
    lines = pose_file.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split()[3], 'abc')
    pose_file.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DatasetError, match=r'02.txt, line 2'):
        KittiOdometrySequence(tmp_path, '02')
    make_kitti_odo(tmp_path, '02', 3, (10, 30))
    (sdir / 'times.txt').write_text('0.0\n0.1\n')
    with pytest.raises(DatasetError, match='times.txt: 2 timestamps'):
        KittiOdometrySequence(tmp_path, '02')
    make_kitti_odo(tmp_path, '02', 3, (10, 30))
    (sdir / 'image_2' / '000001.png').write_bytes(b'not a png')
    ds = KittiOdometryDataset(tmp_path, ['02'], height=10, width=30)
    with pytest.raises(DatasetError, match='000001.png'):
        ds[0]
    with pytest.raises(MissingFileError, match='sequence 00'):
        KittiOdometryDataset(tmp_path, 'train')
    with pytest.raises(MissingFileError, match='dataset/sequences'):
        KittiOdometryDataset(tmp_path / 'nowhere', ['00'])


# --------------------------------------------------------------------------------------------
# KITTI raw
# --------------------------------------------------------------------------------------------

def make_kitti_raw(root: Path, drives=(('0001', 6), ('0002', 5)), hw=(12, 40),
                   cameras=('02',)):
    date = root / '2011_09_26'
    date.mkdir(parents=True, exist_ok=True)
    (date / 'calib_cam_to_cam.txt').write_text(
        'calib_time: 09-Jan-2012 13:57:47\ncorner_dist: 9.950000e-02\n'
        'P_rect_00: 7.2e+02 0 6.0e+02 0 0 7.2e+02 1.7e+02 0 0 0 1 0\n'
        'P_rect_02: 7.215377e+02 0 6.095593e+02 4.485728e+01 0 7.215377e+02 1.728540e+02 '
        '2.163791e-01 0 0 1 2.745884e-03\n'
        'P_rect_03: 7.3e+02 0 6.1e+02 -3.3e+02 0 7.3e+02 1.7e+02 2.0 0 0 1 3.0e-03\n')
    for drive, n in drives:
        for cam in cameras:
            ddir = date / f'2011_09_26_drive_{drive}_sync' / f'image_{cam}'
            for i in range(n):
                write_png(ddir / 'data' / f'{i:010d}.png', colour_image(*hw, i))
            (ddir / 'timestamps.txt').write_text(''.join(
                f'2011-09-26 13:02:{25 + 0.1 * i:012.9f}\n' for i in range(n)))
    return date


def test_kitti_raw_scan_exclusion_static_frames_and_K(tmp_path):
    make_kitti_raw(tmp_path)
    ds = KittiRawDataset(tmp_path, height=6, width=20, stride=1)
    assert len(ds) == 5 + 4
    s = ds[0]
    check_sample(s, 6, 20)
    assert 'T_21' not in s and s['sequence'] == '2011_09_26_drive_0001_sync/image_02'
    assert s['stamp2'] - s['stamp1'] == pytest.approx(0.1, abs=1e-6)
    K = np.array([[7.215377e+02, 0, 6.095593e+02], [0, 7.215377e+02, 1.728540e+02], [0, 0, 1]])
    np.testing.assert_allclose(s['K'].numpy(), rescale_intrinsics(K, (12, 40), (6, 20)),
                               rtol=1e-6)
    (tmp_path / 'test_scenes.txt').write_text('2011_09_26_drive_0002\n')
    (tmp_path / 'static.txt').write_text('2011_09_26 2011_09_26_drive_0001_sync 0000000003\n')
    ds = KittiRawDataset(tmp_path, exclude_scenes_file='test_scenes.txt',
                         static_frames_file='static.txt', height=6, width=20, stride=2)
    assert [(f1, f2) for _, _, f1, f2 in ds.items] == [(0, 2), (2, 4)]  # 1-3, 3-5 static
    assert ds.num_static_dropped == 2
    with pytest.raises(MissingFileError, match='static_frames.txt'):
        KittiRawDataset(tmp_path, static_frames_file='static_frames.txt')


def test_kitti_raw_split_list_formats_and_errors(tmp_path):
    make_kitti_raw(tmp_path, cameras=('02', '03'))
    lines = ['2011_09_26/2011_09_26_drive_0001_sync 0000000001 l',
             '2011_09_26/2011_09_26_drive_0002_sync 2 r',
             '2011_09_26/2011_09_26_drive_0001_sync/image_02/data/0000000003.png',
             '2011_09_26_drive_0002_sync_02 0000000000']
    (tmp_path / 'train_files.txt').write_text('\n'.join(lines) + '\n')
    ds = KittiRawDataset(tmp_path, split_file='train_files.txt', height=6, width=20, stride=2)
    assert ds.items == [('2011_09_26_drive_0001_sync', '02', 1, 3),
                        ('2011_09_26_drive_0002_sync', '03', 2, 4),
                        ('2011_09_26_drive_0001_sync', '02', 3, 5),
                        ('2011_09_26_drive_0002_sync', '02', 0, 2)]
    assert ds[1]['source2'].endswith('image_03/data/0000000004.png')
    single = KittiRawDataset(tmp_path, split_file='train_files.txt', pairs=False, height=6,
                             width=20)
    assert 'image2' not in single[0] and len(single) == 4
    assert parse_frame_line('2011_09_26/2011_09_26_drive_0001_sync 5') == (
        '2011_09_26_drive_0001_sync', '02', 5)
    (tmp_path / 'bad.txt').write_text('2011_09_26/2011_09_26_drive_0001_sync 0000000004 l\n')
    with pytest.raises(MissingFileError, match=r'bad.txt, line 1: image 0000000006'):
        KittiRawDataset(tmp_path, split_file='bad.txt', stride=2)
    (tmp_path / 'bad.txt').write_text('# header\nhello world l x\n')
    with pytest.raises(DatasetError, match=r'bad.txt, line 2'):
        KittiRawDataset(tmp_path, split_file='bad.txt')
    (tmp_path / '2011_09_26' / 'calib_cam_to_cam.txt').write_text('P_rect_00: 1 2 3\n')
    with pytest.raises(DatasetError, match='P_rect_02'):
        KittiRawDataset(tmp_path, height=6, width=20)[0]


# --------------------------------------------------------------------------------------------
# NYUv2
# --------------------------------------------------------------------------------------------

def test_nyu_raw_pairs_stride_10_and_unswapped_K(tmp_path):
    scene = tmp_path / 'bedroom_0001'
    for i in range(23):
        write_png(scene / f'{i:05d}.png', colour_image(6, 8, i))
    write_png(tmp_path / 'office_0002' / '00000.png', colour_image(6, 8))
    ds = NyuRawDataset(tmp_path, height=6, width=8)
    assert len(ds) == 23 - 10 and ds.stride == 10
    assert (ds[0]['frame1'], ds[0]['frame2'], ds[0]['sequence']) == (0, 10, 'bedroom_0001')
    # K at 640x480 rescaled to 576x448: x by 576/640, y by 448/480 (never swapped)
    ds = NyuRawDataset(tmp_path, scenes=['bedroom_0001'], height=448, width=576)
    fx, fy, cx, cy = NYU_INTRINSICS
    K = rescale_intrinsics(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), (480, 640),
                           (448, 576))
    assert K[0, 0] == pytest.approx(fx * 0.9) and K[1, 1] == pytest.approx(fy * 448 / 480)
    assert ds.K[0, 0] == pytest.approx(518.86, abs=0.01) and ds.K[1, 2] == pytest.approx(
        253.74, abs=0.01)
    (tmp_path / 'scenes.txt').write_text('bedroom_0001\nkitchen_0099\n')
    with pytest.raises(MissingFileError, match='kitchen_0099'):
        NyuRawDataset(tmp_path, scenes_file='scenes.txt')


def test_nyu_raw_toolbox_dump_with_a_real_frame(tmp_path, shared_data):
    """Toolbox layout r-<time>-<n>.ppm (a real NYUv2 Kinect frame), undistorted onto K."""
    real = shared_data / 'rgbd_samples' / 'RGBD' / 'other_formats' / 'NYU_color.ppm'
    scene = tmp_path / 'living_room_0001'
    scene.mkdir()
    for k, t in enumerate(('1294439283.377657', '1294439283.410912', '1294439283.444167')):
        shutil.copy(real, scene / f'r-{t}-{2685302366 + k}.ppm')
    shutil.copy(shared_data / 'rgbd_samples/RGBD/other_formats/NYU_depth.pgm',
                scene / 'd-1294439283.380000-2685302000.pgm')
    ds = NyuRawDataset(tmp_path, stride=2, height=448, width=576)
    assert len(ds) == 1
    s = ds[0]
    check_sample(s, 448, 576)
    assert s['native_hw'].tolist() == [480, 640]
    assert s['stamp2'] - s['stamp1'] == pytest.approx(0.06651, abs=1e-5)
    fx, fy, cx, cy = NYU_INTRINSICS
    np.testing.assert_allclose(s['K'].numpy(), [[fx * 0.9, 0, (cx + 0.5) * 0.9 - 0.5],
                                                [0, fy * 448 / 480,
                                                 (cy + 0.5) * 448 / 480 - 0.5], [0, 0, 1]],
                               rtol=1e-6)
    plain = NyuRawDataset(tmp_path, stride=2, undistort=False, height=448, width=576)[0]
    diff = (s['image1'] - plain['image1']).abs().mean(0)
    assert diff[200:248, 264:312].mean() < 0.02 < diff[:40].mean()   # centre kept, edges moved


def make_labelled_mat(path: Path, n=3):
    h5py = pytest.importorskip('h5py')
    images = np.zeros((n, 3, 640, 480), np.uint8)        # MATLAB v7.3 stores (N, C, W, H)
    rows = np.arange(480)[None, :] % 256
    images[:, 0] = rows
    images[:, 1] = (np.arange(640)[:, None] % 256)
    depths = np.zeros((n, 640, 480), np.float32)
    depths[:] = (np.arange(480)[None, :] + np.arange(640)[:, None] / 1000.0)[None]
    depths += np.arange(n, dtype=np.float32)[:, None, None] * 10
    with h5py.File(path, 'w') as f:
        f['images'] = images
        f['depths'] = depths
    return path


def test_nyu_labelled_mat_crop_orientation_and_split(tmp_path):
    pytest.importorskip('h5py')
    from scipy.io import savemat
    mat = make_labelled_mat(tmp_path / 'nyu_depth_v2_labeled.mat')
    savemat(tmp_path / 'splits.mat', {'testNdxs': np.array([[2], [3]]),
                                      'trainNdxs': np.array([[1]])})
    assert read_split_indices(tmp_path / 'splits.mat', 'test').tolist() == [1, 2]
    ds = NyuLabelledDataset(mat, tmp_path / 'splits.mat', height=427, width=561)
    assert len(ds) == 2
    s = ds[0]
    check_sample(s, 427, 561)
    assert 'image2' not in s and s['frame1'] == 1
    native = s['depth1_native'][0]
    assert native.shape == (427, 561)
    assert native[0, 0].item() == pytest.approx(10 + 45 + 41 / 1000.0, abs=1e-4)  # row 45, col 41
    assert native[10, 20].item() == pytest.approx(10 + 55 + 61 / 1000.0, abs=1e-4)
    assert round(s['image1'][0, 0, 0].item() * 255) == 45 and round(
        s['image1'][1, 0, 0].item() * 255) == 41
    fx, fy, cx, cy = NYU_INTRINSICS
    np.testing.assert_allclose(s['K'].numpy(), [[fx, 0, cx - 41], [0, fy, cy - 45], [0, 0, 1]],
                               rtol=1e-6)
    small = NyuLabelledDataset(mat, split='all', height=224, width=288)
    assert len(small) == 3 and small[2]['depth1'].shape == (1, 224, 288)
    copy = pickle.loads(pickle.dumps(small))        # DataLoader workers reopen the HDF5 file
    assert torch.equal(copy[2]['depth1_native'], small[2]['depth1_native'])
    (tmp_path / 'test.txt').write_text('3\n')
    assert NyuLabelledDataset(mat, tmp_path / 'test.txt')[0]['frame1'] == 2


def test_nyu_labelled_errors(tmp_path):
    with pytest.raises(MissingFileError, match='nyu_depth_v2_labeled.mat'):
        NyuLabelledDataset(tmp_path / 'nyu_depth_v2_labeled.mat')
    (tmp_path / 'fake.mat').write_bytes(b'MATLAB 5.0 MAT-file, not HDF5' * 10)
    try:
        import h5py
    except ImportError:    # the error path names the missing package
        with pytest.raises(ImportError, match='h5py'):
            NyuLabelledDataset(tmp_path / 'fake.mat', split='all')
        return
    with pytest.raises(DatasetError, match='fake.mat'):
        NyuLabelledDataset(tmp_path / 'fake.mat', split='all')
    with h5py.File(tmp_path / 'nodepth.mat', 'w') as f:
        f['images'] = np.zeros((1, 3, 640, 480), np.uint8)
    with pytest.raises(DatasetError, match="no dataset 'depths'"):
        NyuLabelledDataset(tmp_path / 'nodepth.mat', split='all')
    mat = make_labelled_mat(tmp_path / 'l.mat', n=2)
    from scipy.io import savemat
    savemat(tmp_path / 'splits.mat', {'trainNdxs': np.array([[1]])})
    with pytest.raises(DatasetError, match='testNdxs'):
        NyuLabelledDataset(mat, tmp_path / 'splits.mat')


# --------------------------------------------------------------------------------------------
# TUM RGB-D
# --------------------------------------------------------------------------------------------

def make_tum(root: Path, name='rgbd_dataset_freiburg2_desk', n=6, hw=(12, 16)):
    seq = root / name
    rgb_lines, depth_lines = ['# color images'], ['# depth maps']
    t0 = 1311868164.0
    for i in range(n):
        t = t0 + i / 30.0
        write_png(seq / 'rgb' / f'{t:.6f}.png', colour_image(*hw, i))
        rgb_lines.append(f'{t:.6f} rgb/{t:.6f}.png')
        dt = 0.05 if i == 3 else 0.004           # frame 3 has no depth within 0.02 s
        depth = np.full(hw, 5000 * (i + 1), np.uint16)
        write_png(seq / 'depth' / f'{t + dt:.6f}.png', depth)
        depth_lines.append(f'{t + dt:.6f} depth/{t + dt:.6f}.png')
    (seq / 'rgb.txt').write_text('\n'.join(rgb_lines) + '\n')
    (seq / 'depth.txt').write_text('\n'.join(depth_lines) + '\n')
    gt = ['# timestamp tx ty tz qx qy qz qw']
    for k in range(-5, 30):                        # 100 Hz around the frames
        t = t0 + k * 0.01
        yaw = 0.3 * (t - t0)                       # rad/s about y
        gt.append(f'{t:.4f} {0.5 * (t - t0):.6f} 0.1 {-0.2 * (t - t0):.6f} 0 '
                  f'{math.sin(yaw / 2):.9f} 0 {math.cos(yaw / 2):.9f}')
    (seq / 'groundtruth.txt').write_text('\n'.join(gt) + '\n')
    return seq, t0


def test_tum_association_depth_and_interpolated_pose(tmp_path):
    seq, t0 = make_tum(tmp_path)
    ds = TumRgbdDataset(tmp_path, height=6, width=8, stride=2)
    kept = ds.sequences[0]
    assert len(kept) == 5                           # frame 3 dropped (no depth)
    assert len(ds) == 3
    s = ds[0]
    check_sample(s, 6, 8)
    assert s['depth1'].unique().tolist() == [1.0] and s['depth2'].unique().tolist() == [3.0]
    assert s['stamp2'] - s['stamp1'] == pytest.approx(2 / 30.0, abs=1e-5)
    np.testing.assert_allclose(ds.sequences[0].K, family_intrinsics('fr2'))

    def truth(t):
        return pose(0.3 * (t - t0), (0.5 * (t - t0), 0.1, -0.2 * (t - t0)))

    t1, t2 = s['stamp1'], s['stamp2']
    expected = np.linalg.inv(truth(t2)) @ truth(t1)
    np.testing.assert_allclose(s['T_21'].double().numpy(), expected, atol=2e-6)
    assert 'T_21' in ds[2] and ds[2]['frame2'] == 4


def test_tum_helpers_and_errors(tmp_path):
    assert associate(np.array([0.0, 1.0, 2.0]), np.array([0.01, 1.03, 1.99]), 0.02) == {
        0: 0, 2: 2}
    stamps = np.array([0.0, 1.0])
    q = np.array([[0, 0, 0, 1.0], [0, math.sin(0.5), 0, math.cos(0.5)]])
    T = interpolate_pose(0.5, stamps, np.array([[0, 0, 0], [2.0, 0, 0]]), q)
    np.testing.assert_allclose(T[:3, :3], quaternion_to_matrix(
        np.array([0, math.sin(0.25), 0, math.cos(0.25)])), atol=1e-12)
    assert T[0, 3] == pytest.approx(1.0)
    assert interpolate_pose(1.5, stamps, np.zeros((2, 3)), q) is None
    assert interpolate_pose(0.5, stamps, np.zeros((2, 3)), q, max_gap=0.5) is None
    with pytest.raises(ValueError, match='intrinsics'):
        family_intrinsics('my_own_room')
    seq, _ = make_tum(tmp_path, name='my_room')
    ds = TumRgbdDataset(seq, intrinsics=(500.0, 501.0, 8.0, 6.0), height=12, width=16)
    assert ds[0]['K'][1, 1].item() == pytest.approx(501.0)
    lines = (seq / 'groundtruth.txt').read_text().splitlines()
    lines[4] = '1311868164.0 1 2 3'
    (seq / 'groundtruth.txt').write_text('\n'.join(lines) + '\n')
    with pytest.raises(DatasetError, match=r'groundtruth.txt, line 5: expected 8'):
        TumRgbdDataset(seq, intrinsics=(500.0, 501.0, 8.0, 6.0))
    (seq / 'depth.txt').unlink()
    with pytest.raises(MissingFileError, match='depth.txt'):
        TumRgbdDataset(seq, intrinsics=(500.0, 501.0, 8.0, 6.0))
    no_depth = TumRgbdDataset(seq, intrinsics=(500.0, 501.0, 8.0, 6.0), use_depth=False,
                              use_gt=False, height=12, width=16)
    assert len(no_depth) == 5 and 'depth1' not in no_depth[0]
    sorted(seq.glob('rgb/*.png'))[1].unlink()
    with pytest.raises(MissingFileError, match='rgb/.*png'):
        no_depth[0]


# --------------------------------------------------------------------------------------------
# real data in shared/data
# --------------------------------------------------------------------------------------------

def test_real_kitti_odometry_seq06(shared_data):
    root = shared_data / 'kitti_odometry_seq06'
    seq = KittiOdometrySequence(root, '06', camera=0)
    assert len(seq) == 51 and seq.image_hw() == (370, 1226)
    assert (seq.K[0, 0], seq.K[0, 2], seq.K[1, 2]) == (707.0912, 601.8873, 183.1104)
    stamp, image, K = seq.frame(50)
    assert image.shape == (370, 1226, 3) and stamp == pytest.approx(seq.times[50])
    ds = KittiOdometryDataset(root, ['06'], camera=0, height=256, width=832, stride=3)
    assert len(ds) == 48
    s = ds[10]
    check_sample(s, 256, 832)
    assert s['native_hw'].tolist() == [370, 1226]
    assert s['K'][0, 0].item() == pytest.approx(707.0912 * 832 / 1226, rel=1e-6)
    assert s['K'][1, 1].item() == pytest.approx(707.0912 * 256 / 370, rel=1e-6)
    assert s['K'][0, 2].item() == pytest.approx((601.8873 + 0.5) * 832 / 1226 - 0.5, rel=1e-6)
    gt = np.loadtxt(root / 'dataset' / 'poses' / '06.txt').reshape(-1, 3, 4)
    T_w = np.tile(np.eye(4), (51, 1, 1))
    T_w[:, :3] = gt
    np.testing.assert_allclose(s['T_21'].double().numpy(),
                               np.linalg.inv(T_w[13]) @ T_w[10], atol=1e-5)
    # the car drives forward (+z in the camera frame): points move toward the camera
    assert -4.0 < s['T_21'][2, 3].item() < -3.0
    # the shared calib has only P0 and P1: asking for the colour camera names P2
    assert set(read_calib(root / 'dataset/sequences/06/calib.txt')) == {'P0', 'P1'}
    with pytest.raises(MissingFileError, match='image_2'):
        KittiOdometrySequence(root, '06', camera=2)


def test_real_kitti_calib_without_p2_is_named(tmp_path, shared_data):
    src = shared_data / 'kitti_odometry_seq06' / 'dataset' / 'sequences' / '06'
    dst = tmp_path / 'dataset' / 'sequences' / '06'
    (dst / 'image_2').mkdir(parents=True)
    shutil.copy(src / 'calib.txt', dst / 'calib.txt')
    shutil.copy(src / 'times.txt', dst / 'times.txt')
    shutil.copy(src / 'image_0' / '000000.png', dst / 'image_2' / '000000.png')
    with pytest.raises(DatasetError, match=r"no line labelled \"P2:\".*\['P0', 'P1'\]"):
        KittiOdometrySequence(tmp_path, '06', camera=2)


FR1_D = (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)      # TUM documentation, d0..d4
FR2_D = (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)


def test_tum_camera_distortion_by_family_folder_files_and_argument(tmp_path):
    assert family_distortion('rgbd_dataset_freiburg1_xyz') == Distortion('plumb_bob', FR1_D)
    assert family_distortion('fr2_desk') == Distortion('plumb_bob', FR2_D)
    assert family_distortion('rgbd_dataset_freiburg3_long_office_household').is_identity
    with pytest.raises(ValueError, match='fr1/fr2/fr3'):
        family_distortion('my_room')
    seq, _ = make_tum(tmp_path)                               # ...freiburg2_desk
    s = TumRgbdSequence(seq)
    assert s.distortion.model == 'plumb_bob' and s.distortion.coeffs == FR2_D
    np.testing.assert_allclose(s.K, family_intrinsics('fr2'))
    assert s.camera_source == 'TUM documentation (fr2)'
    # the dataset's sequences carry it too; an explicit 'none' or K drops it
    assert TumRgbdDataset(tmp_path, height=6, width=8).sequences[0].distortion == s.distortion
    assert TumRgbdSequence(seq, distortion='none').distortion.is_identity
    assert TumRgbdSequence(seq, intrinsics=(500.0, 500.0, 8.0, 6.0)).distortion.is_identity
    given = TumRgbdSequence(seq, distortion='equidistant 0.1 0.01 0 0')
    assert given.distortion == Distortion('equidistant', (0.1, 0.01, 0.0, 0.0))
    # a folder's own files win over the family: intrinsics.txt + D.txt (VAMR style)
    (seq / 'intrinsics.txt').write_text('# fx fy cx cy\n400 401 8 6\n')
    (seq / 'D.txt').write_text('-0.3 0.08\n')
    own = TumRgbdSequence(seq)
    np.testing.assert_allclose(own.K, [[400, 0, 8], [0, 401, 6], [0, 0, 1]])
    assert own.distortion == Distortion('plumb_bob', (-0.3, 0.08, 0.0, 0.0, 0.0))
    assert own.camera_source == 'intrinsics.txt + D.txt'
    (seq / 'distortion.txt').write_text('rational_polynomial 0.1 0 0 0 0 0.05 0 0\n')
    assert TumRgbdSequence(seq).distortion.model == 'rational_polynomial'   # first name wins
    (seq / 'D.txt').unlink()
    (seq / 'distortion.txt').unlink()
    assert TumRgbdSequence(seq).distortion.is_identity           # own K, no distortion file
    # malformed files: one error naming the file
    (seq / 'D.txt').write_text('-0.3 zero\n')
    with pytest.raises(DatasetError, match=r'D.txt: .*Expected "\[plumb_bob'):
        TumRgbdSequence(seq)
    (seq / 'D.txt').write_text('fisheye_v2 0.1\n')
    with pytest.raises(DatasetError, match='unsupported distortion model'):
        TumRgbdSequence(seq)
    (seq / 'D.txt').write_text('plumb_bob 1 2 3 4 5 6\n')
    with pytest.raises(DatasetError, match='takes 5 coefficients'):
        TumRgbdSequence(seq)
    (seq / 'D.txt').unlink()
    (seq / 'intrinsics.txt').write_text('400 401 8\n')
    with pytest.raises(DatasetError, match='intrinsics.txt: expected "fx fy cx cy"'):
        TumRgbdSequence(seq)


def test_camera_files_and_distortion_option(tmp_path):
    (tmp_path / 'D.txt').write_text('# k1 k2\n-0.296609 0.080818\n')
    expected = Distortion('plumb_bob', (-0.296609, 0.080818))
    assert read_distortion_file(tmp_path / 'D.txt') == expected
    (tmp_path / 'empty.txt').write_text('# pinhole\n')
    assert read_distortion_file(tmp_path / 'empty.txt').is_identity
    with pytest.raises(MissingFileError, match='missing.txt'):
        read_distortion_file(tmp_path / 'missing.txt')
    assert parse_distortion_option(str(tmp_path / 'D.txt')).coeffs[:2] == (-0.296609, 0.080818)
    assert parse_distortion_option('plumb_bob 0.1 0.2 0.001 0.002 0.3').coeffs == (
        0.1, 0.2, 0.001, 0.002, 0.3)
    assert parse_distortion_option('none').is_identity
    with pytest.raises(DatasetError, match='lens distortion file not found: .*nope/D.txt'):
        parse_distortion_option(str(tmp_path / 'nope' / 'D.txt'))
    with pytest.raises(DatasetError, match='--distortion .*Expected'):
        parse_distortion_option('plumb_bob one two')
    (tmp_path / 'K.txt').write_text('1 0 2\n0 3 4\n0 0 1\n')
    np.testing.assert_allclose(read_intrinsics_file(tmp_path / 'K.txt'),
                               [[1, 0, 2], [0, 3, 4], [0, 0, 1]])


def test_real_tum_and_vamr_cameras(shared_data):
    """The readers give the documented cameras of the real folders in shared/data."""
    tum = shared_data / 'tum_rgbd_pairs'
    fr1 = TumRgbdSequence(tum / 'rgbd_dataset_freiburg1_xyz', use_depth=False)
    np.testing.assert_allclose(fr1.K, [[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1]])
    assert fr1.distortion == Distortion('plumb_bob', FR1_D)
    fr3 = TumRgbdSequence(tum / 'rgbd_dataset_freiburg3_long_office_household',
                          use_depth=False)
    np.testing.assert_allclose(fr3.K, [[535.4, 0, 320.1], [0, 539.2, 247.6], [0, 0, 1]])
    assert fr3.distortion.is_identity and fr3.poses is None
    vamr = TumRgbdSequence(shared_data / 'vamr_checkerboard', use_depth=False)
    assert len(vamr) == 400 and vamr.poses.shape == (400, 4, 4)
    np.testing.assert_allclose(vamr.K, [[420.506712, 0, 355.208298],
                                        [0, 420.610940, 250.336787], [0, 0, 1]])
    np.testing.assert_allclose(
        vamr.K, np.loadtxt(shared_data / 'vamr_checkerboard' / 'K_matrix.txt'))
    assert vamr.distortion == Distortion('plumb_bob', (-0.296609, 0.080818, 0.0, 0.0, 0.0))
    assert vamr.camera_source == 'intrinsics.txt + D.txt'
    stamp, image, K = vamr.frame(0)
    assert stamp == 0.0 and image.shape == (480, 752, 3) and image.dtype == np.uint8
    # ground truth = the first groundtruth.txt line (camera-to-world, metres)
    np.testing.assert_allclose(vamr.poses[0][:3, 3], [0.135203435, 0.273481503, -0.314364393])
    assert 0.2 < np.linalg.norm(vamr.poses[:, :3, 3], axis=1).min()        # above the board


def test_real_tum_fr1_xyz_pair_matches_derived_relative_pose(shared_data):
    folder = shared_data / 'tum_rgbd_pairs' / 'rgbd_dataset_freiburg1_xyz'
    ds = TumRgbdDataset(folder, height=480, width=640)
    assert len(ds) == 1
    s = ds[0]
    check_sample(s, 480, 640)
    T_c1_c2 = np.loadtxt(folder / 'DERIVED_pair_gt_relative_pose.txt')
    T_21 = s['T_21'].double().numpy()
    np.testing.assert_allclose(T_21 @ T_c1_c2, np.eye(4), atol=1e-6)
    assert np.linalg.norm(T_21[:3, 3]) == pytest.approx(0.0367, abs=1e-4)
    angle = math.degrees(math.acos((np.trace(T_21[:3, :3]) - 1) / 2))
    assert angle == pytest.approx(2.17, abs=0.01)
    np.testing.assert_allclose(s['K'].numpy(), family_intrinsics('fr1'), rtol=1e-6)
    d = s['depth1'][0]
    assert d.dtype == torch.float32 and 0.3 < d[d > 0].median().item() < 5.0
    both = TumRgbdDataset(shared_data / 'tum_rgbd_pairs', height=48, width=64)
    assert len(both) == 2 and not both.use_gt and 'T_21' not in both[1]
    assert both[1]['K'][0, 0].item() == pytest.approx(535.4 * 0.1)


# --------------------------------------------------------------------------------------------
# synthetic dataset, registry, image folder
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def synthetic():
    return SyntheticPairDataset(kinds=('forward',), seeds=(0,), num_frames=3, height=32,
                                width=96, stride=1)


def test_synthetic_pairs_carry_consistent_ground_truth(synthetic):
    assert len(synthetic) == 2
    s = synthetic[1]
    check_sample(s, 32, 96)
    for key in ('T_21', 'depth1', 'depth2', 'flow_12', 'flow_21', 'valid_12', 'valid_21'):
        assert key in s
    # flow_12 is the rigid flow of depth1 under T_21 and K
    K, T = s['K'].double().numpy(), s['T_21'].double().numpy()
    for v, u in ((5, 10), (16, 48), (25, 80)):
        X1 = np.linalg.inv(K) @ np.array([u, v, 1.0]) * s['depth1'][0, v, u].item()
        np.testing.assert_allclose(project(K, transform(T, X1)),
                                   np.array([u, v]) + s['flow_12'][:, v, u].double().numpy(),
                                   atol=1e-3)
    batch = collate_samples([synthetic[0], synthetic[1]])
    assert batch['flow_12'].shape == (2, 2, 32, 96) and batch['T_21'].shape == (2, 4, 4)
    bgr = SyntheticPairDataset(num_frames=3, height=32, width=96, bgr=True,
                               sequences=[synthetic.sequence(0)])
    assert torch.equal(bgr[1]['image1'], s['image1'].flip(0))


def test_registry_maps_config_names_to_readers(tmp_path, synthetic, shared_data):
    cfg = DataConfig(dataset='synthetic', img_height=32, img_width=96, stride=1, bgr=False)
    ds = make_dataset(cfg, 'val', num_frames=3, kinds=('forward',))
    assert isinstance(ds, SyntheticPairDataset) and ds.specs == [('forward', 1000, 3)]
    make_kitti_odo(tmp_path, '09', 4, (10, 30))
    make_kitti_odo(tmp_path, '10', 3, (10, 30))
    cfg = DataConfig(dataset='kitti_odo', root=str(tmp_path), img_height=8, img_width=24,
                     stride=2, bgr=True)
    ds = make_dataset(cfg, 'test')
    assert isinstance(ds, KittiOdometryDataset) and len(ds) == 2 + 1 and ds.bgr
    cfg = DataConfig(dataset='tum', root=str(shared_data / 'tum_rgbd_pairs'), img_height=48,
                     img_width=64)
    assert len(make_dataset(cfg, 'train')) == 2
    with pytest.raises(ValueError, match='data.root is empty'):
        make_dataset(DataConfig(dataset='nyu'), 'train')
    with pytest.raises(ValueError, match='unknown split'):
        make_dataset(cfg, 'training')
    make_kitti_raw(tmp_path / 'raw')
    cfg = DataConfig(dataset='kitti_raw', root=str(tmp_path / 'raw'))
    with pytest.raises(MissingFileError, match='test_scenes.txt'):
        make_dataset(cfg, 'train')


def test_image_folder_dataset(tmp_path):
    for i in (1, 2, 10):
        write_png(tmp_path / 'cam' / f'{i}.png', colour_image(10, 20, i))
    with pytest.raises(MissingFileError, match='intrinsics.txt'):
        ImageFolderDataset(tmp_path / 'cam')
    (tmp_path / 'cam' / 'intrinsics.txt').write_text('# fx fy cx cy\n20 21 9.5 4.5\n')
    ds = ImageFolderDataset(tmp_path / 'cam', height=10, width=20, stride=1)
    assert len(ds) == 2
    assert [ds[k]['frame2'] for k in range(2)] == [1, 2]
    assert ds[1]['source2'].endswith('10.png') and ds[1]['stamp2'] == 10.0   # natural order
    assert ds[0]['K'][1, 1].item() == pytest.approx(21.0)
    assert ds.distortion.is_identity
    (tmp_path / 'cam' / 'D.txt').write_text('-0.2 0.05\n')
    assert ImageFolderDataset(tmp_path / 'cam').distortion.coeffs[:2] == (-0.2, 0.05)
    given = ImageFolderDataset(tmp_path / 'cam', distortion=('equidistant', (0.1, 0, 0, 0)))
    assert given.distortion.model == 'equidistant'
