"""
KITTI odometry in its native layout: per-sequence frames for the VO, frame pairs for training.

Layout (``root`` is the folder that holds ``dataset/``, or ``dataset/`` itself)::

    root/dataset/sequences/XX/image_0/NNNNNN.png    left grey camera  (intrinsics P0)
    root/dataset/sequences/XX/image_2/NNNNNN.png    left colour camera (intrinsics P2)
    root/dataset/sequences/XX/calib.txt             'P0: 12 numbers' ... one line per label
    root/dataset/sequences/XX/times.txt             one timestamp (s) per frame
    root/dataset/poses/XX.txt                       3x4 row-major T_world_cam0 per frame (00-10)

The calibration is parsed by label (``P0:`` for image_0, ``P2:`` for image_2), never by line
position; the image size is read from the files (1241x376 for 00-02, 1242x375 for 03, 1226x370
for 04-12). The pose files give the left grey camera (cam0); for ``image_2`` the poses are moved
to camera 2 with the rectified baseline read from P2 (``t = K^-1 P2[:, 3]``), so ``T_21`` is
the motion of the camera that took the images.

Splits as in the original: 'train' = 00-08, 'test' = 09-10, or an explicit list.
"""

from pathlib import Path
import re
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from trianflow_ros.data.sample import (DatasetError, frame_pair_items, load_image,
                                       MissingFileError, PairDataset, parse_floats, PathLike,
                                       prepare_image, read_lines, relative_pose, require_path,
                                       Sample)

TRAIN_SEQUENCES = tuple(f'{i:02d}' for i in range(9))
TEST_SEQUENCES = ('09', '10')
SPLITS = {'train': TRAIN_SEQUENCES, 'test': TEST_SEQUENCES,
          'all': TRAIN_SEQUENCES + TEST_SEQUENCES}
_FRAME = re.compile(r'^(\d{6})\.png$')


def dataset_dir(root: PathLike) -> Path:
    """Return the folder holding ``sequences/``: ``root/dataset`` or ``root`` itself."""
    root = Path(root)
    if (root / 'dataset' / 'sequences').is_dir():
        return root / 'dataset'
    if (root / 'sequences').is_dir():
        return root
    raise MissingFileError(f'KITTI odometry root: folder not found: {root}/dataset/sequences '
                           '(expected ROOT/dataset/sequences/XX/image_2/000000.png)')


def sequence_name(sequence: Union[int, str]) -> str:
    """Return the two-digit name of a sequence ('6' or 6 -> '06')."""
    s = str(sequence).strip()
    if not s.isdigit():
        raise ValueError(f'KITTI odometry sequence must be a number such as 06, got {sequence!r}')
    return f'{int(s):02d}'


def read_calib(path: PathLike) -> Dict[str, np.ndarray]:
    """
    Parse a KITTI ``calib.txt`` by label: ``{'P0': (3, 4), 'P2': (3, 4), 'Tr': (3, 4), ...}``.

    :param path: the calib.txt file.
    :return: every labelled 3x4 matrix, float64.
    """
    out = {}
    for n, line in read_lines(path, 'KITTI odometry calibration (calib.txt)'):
        label, sep, values = line.partition(':')
        if not sep or not label.strip():
            raise DatasetError(f'{path}, line {n}: expected "LABEL: 12 numbers" '
                               f'(e.g. "P0: ..."), got {line[:60]!r}')
        out[label.strip()] = parse_floats(values, path, n, 12, 'numbers of a 3x4 matrix'
                                          ).reshape(3, 4)
    return out


def read_poses(path: PathLike) -> np.ndarray:
    """
    Read a KITTI pose file: one 3x4 row-major T_world_cam per line.

    :return: (N, 4, 4) float64.
    """
    rows = read_lines(path, 'KITTI odometry poses (poses/XX.txt)')
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    for k, (n, line) in enumerate(rows):
        poses[k, :3, :] = parse_floats(line, path, n, 12, 'numbers of a 3x4 pose').reshape(3, 4)
    return poses


def read_times(path: PathLike) -> np.ndarray:
    """Read a KITTI ``times.txt`` (one float per line) as (N,) float64 seconds."""
    rows = read_lines(path, 'KITTI odometry timestamps (times.txt)')
    return np.array([parse_floats(line, path, n, 1, 'timestamp')[0] for n, line in rows])


class KittiOdometrySequence:
    """
    One KITTI odometry sequence, frame by frame (the input of the VO).

    :ivar name: two-digit sequence name.
    :ivar camera: 0 (left grey, ``image_0``) or 2 (left colour, ``image_2``).
    :ivar frame_numbers: (N,) frame numbers of the images present, sorted.
    :ivar times: (N,) float64 timestamps of those frames in seconds.
    :ivar K: (3, 3) float64 intrinsics at the native image size (from ``P<camera>``).
    :ivar poses: (N, 4, 4) float64 ground truth T_world_cam0 as in ``poses/XX.txt`` (what the
        KITTI benchmark compares against), or None where the file does not exist (11-21).
    :ivar camera_poses: (N, 4, 4) poses of the chosen camera (world = cam0 of frame 0), or None.
    """

    def __init__(self, root: PathLike, sequence: Union[int, str], camera: int = 2):
        """
        Index a sequence (reads calib.txt, times.txt and the pose file, not the images).

        :param root: folder holding ``dataset/sequences`` (or ``sequences``).
        :param sequence: sequence number, e.g. '06' or 6.
        :param camera: 0 for ``image_0`` (grey, P0), 2 for ``image_2`` (colour, P2).
        """
        if camera not in (0, 1, 2, 3):
            raise ValueError(f'camera must be 0 (image_0, grey) or 2 (image_2, colour), '
                             f'got {camera!r}')
        base = dataset_dir(root)
        self.name = sequence_name(sequence)
        self.camera = int(camera)
        self.dir = require_path(base / 'sequences' / self.name,
                                f'KITTI odometry sequence {self.name}', is_dir=True)
        self.image_dir = require_path(self.dir / f'image_{camera}',
                                      f'images of camera {camera} of sequence {self.name}',
                                      is_dir=True)
        numbers = sorted(int(m.group(1)) for m in map(_FRAME.match, (
            p.name for p in self.image_dir.iterdir())) if m)
        if not numbers:
            raise MissingFileError(f'no NNNNNN.png images in {self.image_dir}')
        self.frame_numbers = np.array(numbers, dtype=np.int64)

        calib_path = self.dir / 'calib.txt'
        calib = read_calib(calib_path)
        label = f'P{camera}'
        if label not in calib:
            raise DatasetError(f'{calib_path}: no line labelled "{label}:" for image_{camera} '
                               f'(labels present: {sorted(calib)})')
        P = calib[label]
        self.K = P[:, :3].copy()
        if abs(self.K[2, 2] - 1.0) > 1e-9 or self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise DatasetError(f'{calib_path}: {label} does not start with a pinhole K '
                               f'(got {self.K.tolist()})')
        # Rectified rig: P_c = K [I | t_c] with X_c = X_0 + t_c.
        t_c = np.linalg.solve(self.K, P[:, 3])
        self.T_cam0_cam = np.eye(4)
        self.T_cam0_cam[:3, 3] = -t_c

        last = int(self.frame_numbers[-1])
        times_path = self.dir / 'times.txt'
        all_times = read_times(times_path)
        if all_times.size <= last:
            raise DatasetError(f'{times_path}: {all_times.size} timestamps, but image '
                               f'{last:06d}.png needs at least {last + 1}')
        self.times = all_times[self.frame_numbers]

        pose_path = base / 'poses' / f'{self.name}.txt'
        self.pose_path = pose_path if pose_path.is_file() else None
        self.poses: Optional[np.ndarray] = None
        self.camera_poses: Optional[np.ndarray] = None
        if self.pose_path is not None:
            all_poses = read_poses(pose_path)
            if all_poses.shape[0] <= last:
                raise DatasetError(f'{pose_path}: {all_poses.shape[0]} poses, but image '
                                   f'{last:06d}.png needs at least {last + 1}')
            self.poses = all_poses[self.frame_numbers]
            self.camera_poses = self.poses @ self.T_cam0_cam

    def __len__(self) -> int:
        """Return the number of frames present."""
        return int(self.frame_numbers.size)

    def image_path(self, i: int) -> Path:
        """Return the path of the i-th frame present."""
        return self.image_dir / f'{int(self.frame_numbers[i]):06d}.png'

    def load_image(self, i: int, bgr: bool = False) -> np.ndarray:
        """Read the i-th frame as (H, W, 3) uint8, RGB (grey repeated) or BGR, at native size."""
        return load_image(self.image_path(i), bgr=bgr)

    def frame(self, i: int, bgr: bool = False) -> Tuple[float, np.ndarray, np.ndarray]:
        """
        Return the i-th frame for the VO.

        :param i: position in the sequence (0 .. len - 1).
        :param bgr: BGR instead of RGB.
        :return: (stamp in seconds, image (H, W, 3) uint8 at native size, K (3, 3) float64).
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f'frame {i} out of range for sequence {self.name} of {len(self)}')
        return float(self.times[i]), self.load_image(i, bgr), self.K.copy()

    def __iter__(self):
        """Iterate over ``frame(i)`` for every frame."""
        for i in range(len(self)):
            yield self.frame(i)

    def image_hw(self) -> Tuple[int, int]:
        """Native (height, width), read from the first image."""
        return tuple(self.load_image(0).shape[:2])


class KittiOdometryDataset(PairDataset):
    """
    Frame pairs (i, i + stride) of KITTI odometry sequences, resized to the network size.

    Samples carry ``T_21`` (float32) when every selected sequence has a pose file. See
    ``trianflow_ros.data.sample`` for the sample keys.
    """

    def __init__(self, root: PathLike, split: Union[str, Sequence[Union[int, str]]] = 'train',
                 camera: int = 2, height: int = 256, width: int = 832, stride: int = 1,
                 bgr: bool = False, pairs: bool = True,
                 transform: Optional[Callable[[Sample], Sample]] = None):
        """
        Index the sequences of a split.

        :param root: folder holding ``dataset/sequences``.
        :param split: 'train' (00-08), 'test' (09-10), 'all' (00-10) or a list of sequences.
        :param camera: 0 (image_0, grey repeated to 3 channels) or 2 (image_2, colour).
        :param height: network image height.
        :param width: network image width.
        :param stride: frame distance of a pair.
        :param bgr: BGR channel order (the original's released weights).
        :param pairs: False for single frames (keys of frame 2 absent).
        :param transform: optional callable applied to each sample (augmentation).
        """
        super().__init__(height, width, stride, bgr, pairs, transform)
        if isinstance(split, str):
            if split not in SPLITS:
                raise ValueError(f'unknown KITTI odometry split {split!r}; choose one of '
                                 f'{sorted(SPLITS)} or give a list of sequences')
            names = SPLITS[split]
        else:
            names = [sequence_name(s) for s in split]
        if not names:
            raise ValueError('no KITTI odometry sequence selected')
        self.sequences = [KittiOdometrySequence(root, s, camera) for s in names]
        self.has_poses = all(s.poses is not None for s in self.sequences)
        for k, seq in enumerate(self.sequences):
            positions = range(len(seq))
            numbers = {int(f): p for p, f in zip(positions, seq.frame_numbers)}
            for f1, f2 in frame_pair_items(numbers, stride, pairs):
                self.items.append((k, numbers[f1], None if f2 is None else numbers[f2]))

    def load(self, index: int) -> Sample:
        """Build sample ``index``."""
        k, i, j = self.items[index]
        seq = self.sequences[k]
        image1 = seq.load_image(i)
        img1, K = prepare_image(image1, seq.K, self.hw, self.bgr)
        sample = {'image1': img1, 'K': K,
                  'native_hw': torch.tensor(image1.shape[:2], dtype=torch.int64),
                  'stamp1': float(seq.times[i]), 'frame1': int(seq.frame_numbers[i]),
                  'sequence': seq.name, 'source1': str(seq.image_path(i))}
        if j is None:
            return sample
        image2 = seq.load_image(j)
        if image2.shape != image1.shape:
            raise DatasetError(f'{seq.image_path(j)}: size {image2.shape[:2]} differs from '
                               f'{seq.image_path(i)} {image1.shape[:2]}')
        sample['image2'], _ = prepare_image(image2, seq.K, self.hw, self.bgr)
        sample.update({'stamp2': float(seq.times[j]), 'frame2': int(seq.frame_numbers[j]),
                       'source2': str(seq.image_path(j))})
        if self.has_poses:
            T_21 = relative_pose(seq.camera_poses[i], seq.camera_poses[j])
            sample['T_21'] = torch.from_numpy(T_21).float()
        return sample
