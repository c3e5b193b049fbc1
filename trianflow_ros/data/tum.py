"""
TUM RGB-D in its native layout: association, intrinsics by sequence family, GT relative poses.

Layout (``root`` is one sequence folder, or a folder of them)::

    root/rgbd_dataset_freiburg1_xyz/rgb.txt          'timestamp rgb/<timestamp>.png' lines
    root/rgbd_dataset_freiburg1_xyz/depth.txt        'timestamp depth/<timestamp>.png' lines
    root/rgbd_dataset_freiburg1_xyz/groundtruth.txt  'timestamp tx ty tz qx qy qz qw' (T_world_cam)
    root/rgbd_dataset_freiburg1_xyz/rgb/*.png, depth/*.png (16-bit, metres = value / 5000)

Each RGB frame is associated with the depth frame nearest in time within ``max_dt`` (0.02 s,
like the TUM tools; a depth frame is used once, closest pairs first); RGB frames without depth
are dropped when depth is used. Ground-truth poses are interpolated at the RGB timestamps
(linear in position, slerp in orientation) between the two bracketing samples; RGB frames
outside the ground truth, or in a gap longer than ``max_gt_gap``, are dropped when the ground
truth is used. Pairs are (k, k + stride) over the frames kept.

Camera (``TumRgbdSequence.K`` and ``.distortion``), first match wins:

1. ``intrinsics=`` / ``distortion=`` given to the reader;
2. files in the sequence folder (``trianflow_ros.data.camera_files``): ``intrinsics.txt``
   ('fx fy cx cy' or the 9 numbers of K) and ``distortion.txt`` or ``D.txt`` (``[model] c1
   c2 ...``, numbers alone = plumb_bob) -- so any sequence in the TUM layout (rgb.txt,
   groundtruth.txt) with its own camera files can be read, e.g. ``vamr_checkerboard``;
3. the TUM documentation, by the family in the sequence name (640x480 colour cameras):
   fr1 fx 517.3 fy 516.5 cx 318.6 cy 255.3 with plumb_bob D = (0.2624, -0.9531, -0.0054,
   0.0026, 1.1633); fr2 520.9 521.0 325.1 249.7, D = (0.2312, -0.7849, -0.0033, -0.0001,
   0.9172); fr3 535.4 539.2 320.1 247.6, no distortion (its images are already undistorted).

The distortion follows the intrinsics it belongs to: with ``intrinsics=`` or a folder
``intrinsics.txt`` and no distortion given or found there, the camera is a pinhole one. The
images are never undistorted here; the VO undistorts its matches (``VisualOdometry.step(...,
distortion=seq.distortion)``).
"""

import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from trianflow_ros.data.camera_files import (find_distortion_file, find_intrinsics_file,
                                             intrinsics_matrix, read_distortion_file,
                                             read_intrinsics_file)
from trianflow_ros.data.sample import (DatasetError, depth_to_tensor, load_depth_png,
                                       load_image, MissingFileError, PairDataset, parse_floats,
                                       PathLike, prepare_image, read_lines, relative_pose,
                                       require_path, Sample)
from trianflow_ros.eval.trajectory_io import associate as associate_stamps
from trianflow_ros.geometry.distortion import as_distortion, Distortion
from trianflow_ros.geometry.lie import quaternion_slerp, quaternion_to_matrix

#: fx, fy, cx, cy of the TUM RGB-D colour cameras at 640x480 (TUM documentation).
FAMILY_INTRINSICS = {'fr1': (517.3, 516.5, 318.6, 255.3),
                     'fr2': (520.9, 521.0, 325.1, 249.7),
                     'fr3': (535.4, 539.2, 320.1, 247.6)}
#: Lens distortion of the TUM RGB-D colour cameras (TUM documentation, d0..d4 = k1 k2 p1 p2
#: k3 of OpenCV / plumb_bob); fr3 images are already undistorted.
FAMILY_DISTORTION = {
    'fr1': Distortion('plumb_bob', (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    'fr2': Distortion('plumb_bob', (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    'fr3': Distortion(),
}
DEPTH_SCALE = 5000.0
_FAMILY = re.compile(r'(?:freiburg|fr)([123])')

Intrinsics = Union[Tuple[float, float, float, float], np.ndarray]


def family(name: str) -> Optional[str]:
    """Return the TUM camera ('fr1', 'fr2' or 'fr3') that a sequence name names, or None."""
    m = _FAMILY.search(name.lower())
    return f'fr{m.group(1)}' if m else None


def family_intrinsics(name: str) -> np.ndarray:
    """
    Return the (3, 3) intrinsics of the family named in a sequence name ('...freiburg1...').

    :raise ValueError: when the name names no family (pass ``intrinsics`` then).
    """
    fam = family(name)
    if fam is None:
        raise ValueError(f'cannot tell the TUM camera (fr1/fr2/fr3) from the sequence name '
                         f'{name!r}; pass intrinsics=(fx, fy, cx, cy) or put an '
                         'intrinsics.txt (fx fy cx cy) in the sequence folder')
    return intrinsics_matrix(FAMILY_INTRINSICS[fam])


def family_distortion(name: str) -> Distortion:
    """
    Return the lens distortion of the family named in a sequence name ('...freiburg2...').

    :raise ValueError: when the name names no family.
    """
    fam = family(name)
    if fam is None:
        raise ValueError(f'cannot tell the TUM camera (fr1/fr2/fr3) from the sequence name '
                         f'{name!r}')
    return FAMILY_DISTORTION[fam]


def read_file_list(path: PathLike, what: str) -> Tuple[np.ndarray, List[str]]:
    """
    Read a TUM ``rgb.txt`` / ``depth.txt``: 'timestamp filename' per line ('#' comments).

    :return: stamps (N,) float64 sorted, and the file names relative to the sequence folder.
    """
    stamps, names = [], []
    for n, line in read_lines(path, what):
        tokens = line.split()
        if len(tokens) != 2:
            raise DatasetError(f'{path}, line {n}: expected "timestamp filename", '
                               f'got {line[:80]!r}')
        stamps.append(parse_floats(tokens[0], path, n, 1, 'timestamp')[0])
        names.append(tokens[1])
    order = np.argsort(stamps, kind='stable')
    return np.asarray(stamps)[order], [names[i] for i in order]


def read_groundtruth(path: PathLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Read a TUM ``groundtruth.txt`` ('timestamp tx ty tz qx qy qz qw', T_world_cam).

    :return: stamps (N,), positions (N, 3), unit quaternions (N, 4) as (x, y, z, w), sorted.
    """
    rows = [parse_floats(line, path, n, 8, 'values "timestamp tx ty tz qx qy qz qw"')
            for n, line in read_lines(path, 'TUM ground truth (groundtruth.txt)')]
    if not rows:
        raise DatasetError(f'{path}: no ground-truth lines')
    data = np.stack(rows)
    data = data[np.argsort(data[:, 0], kind='stable')]
    norms = np.linalg.norm(data[:, 4:], axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        raise DatasetError(f'{path}: a quaternion has zero norm')
    return data[:, 0], data[:, 1:4], data[:, 4:] / norms


def associate(stamps_a: np.ndarray, stamps_b: np.ndarray, max_dt: float) -> Dict[int, int]:
    """
    Match two timestamp lists one-to-one as the TUM tools do (closest pairs first, |dt| < max_dt).

    :return: {index in a: index in b} (see :func:`trianflow_ros.eval.trajectory_io.associate`).
    """
    ia, ib = associate_stamps(stamps_a, stamps_b, max_dt)
    return dict(zip(ia.tolist(), ib.tolist()))


def interpolate_pose(t: float, stamps: np.ndarray, positions: np.ndarray,
                     quaternions: np.ndarray, max_gap: float = np.inf) -> Optional[np.ndarray]:
    """
    Pose T_world_cam (4, 4) at time ``t``: linear position, slerp orientation.

    :return: the pose, or None when ``t`` is outside the samples or in a gap > ``max_gap``.
    """
    k = int(np.searchsorted(stamps, t))
    if k < stamps.size and stamps[k] == t:
        i0 = i1 = k
    elif 0 < k < stamps.size:
        i0, i1 = k - 1, k
    else:
        return None
    if stamps[i1] - stamps[i0] > max_gap:
        return None
    s = 0.0 if i0 == i1 else (t - stamps[i0]) / (stamps[i1] - stamps[i0])
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(quaternion_slerp(quaternions[i0], quaternions[i1], s))
    T[:3, 3] = (1 - s) * positions[i0] + s * positions[i1]
    return T


class TumRgbdSequence:
    """
    One TUM RGB-D sequence: associated RGB(-D) frames with interpolated ground truth.

    :ivar name: sequence folder name.
    :ivar K: (3, 3) float64 intrinsics at the native image size (640x480 for TUM).
    :ivar distortion: the lens distortion of the images (a
        :class:`~trianflow_ros.geometry.distortion.Distortion`; model 'none' for a pinhole
        camera).
    :ivar camera_source: where K and the distortion came from (for logs): 'given', the
        folder's file names, or 'TUM documentation (frN)'.
    :ivar stamps: (N,) RGB timestamps of the frames kept.
    :ivar rgb_paths: N RGB image paths.
    :ivar depth_paths: N depth image paths (None entries when depth is not used).
    :ivar poses: (N, 4, 4) T_world_cam at the RGB stamps, or None without ground truth.
    """

    def __init__(self, path: PathLike, intrinsics: Optional[Intrinsics] = None,
                 max_dt: float = 0.02, use_depth: bool = True, use_gt: Optional[bool] = None,
                 max_gt_gap: float = 0.1, distortion=None):
        """
        Read the lists of one sequence folder (not the images).

        :param path: the sequence folder (with rgb.txt).
        :param intrinsics: (fx, fy, cx, cy) or (3, 3); default: the folder's intrinsics.txt,
            else by the family in the name.
        :param max_dt: RGB-depth association tolerance in seconds.
        :param use_depth: keep only RGB frames with a depth frame and load depth.
        :param use_gt: use groundtruth.txt (True: required; None: if present; False: never).
        :param max_gt_gap: longest ground-truth gap (s) to interpolate across.
        :param distortion: the lens distortion (a ``Distortion``, ``(model, coeffs)`` or text
            ``"plumb_bob k1 k2 ..."``; 'none' for a pinhole camera); default: the folder's
            distortion.txt / D.txt, else the family's when K is the family's, else none.
        :raises DatasetError: a malformed intrinsics or distortion file.
        :raises ValueError: no camera: no intrinsics given or in the folder and no family in
            the name.
        """
        self.dir = require_path(path, 'TUM RGB-D sequence', is_dir=True)
        self.name = self.dir.name
        self.K, self.distortion, self.camera_source = self._camera(intrinsics, distortion)
        stamps, names = read_file_list(self.dir / 'rgb.txt', 'TUM RGB list (rgb.txt)')
        keep = np.arange(stamps.size)
        depth_names: List[Optional[str]] = [None] * stamps.size
        if use_depth:
            d_stamps, d_names = read_file_list(self.dir / 'depth.txt',
                                               'TUM depth list (depth.txt)')
            match = associate(stamps, d_stamps, max_dt)
            keep = np.array(sorted(match), dtype=np.int64)
            depth_names = [d_names[match[i]] if i in match else None for i in range(len(names))]
        gt_path = self.dir / 'groundtruth.txt'
        if use_gt and not gt_path.is_file():
            raise MissingFileError(f'TUM ground truth (groundtruth.txt): file not found: '
                                   f'{gt_path}')
        self.poses: Optional[np.ndarray] = None
        poses = None
        if use_gt or (use_gt is None and gt_path.is_file()):
            gt = read_groundtruth(gt_path)
            poses = [interpolate_pose(stamps[i], *gt, max_gap=max_gt_gap) for i in keep]
            keep = np.array([i for i, T in zip(keep, poses) if T is not None], dtype=np.int64)
            poses = [T for T in poses if T is not None]
        self.stamps = stamps[keep] if keep.size else np.zeros(0)
        self.rgb_paths = [self.dir / names[i] for i in keep]
        self.depth_paths = [self.dir / depth_names[i] if depth_names[i] else None
                            for i in keep]
        if poses is not None:
            self.poses = np.stack(poses) if poses else np.zeros((0, 4, 4))
        self.use_depth = use_depth

    def _camera(self, intrinsics, distortion) -> Tuple[np.ndarray, Distortion, str]:
        """Return K, the distortion and where they came from (see the module docstring)."""
        given_d = None
        if distortion is not None:
            given_d = as_distortion(distortion) or Distortion()
        d_file = find_distortion_file(self.dir)
        k_file = find_intrinsics_file(self.dir)
        if intrinsics is not None:
            K, source = intrinsics_matrix(intrinsics), 'given'
        elif k_file is not None:
            K, source = read_intrinsics_file(k_file), k_file.name
        else:
            K = family_intrinsics(self.name)
            fam = family(self.name)
            source = f'TUM documentation ({fam})'
            if given_d is None and d_file is None:
                return K, FAMILY_DISTORTION[fam], source
        if given_d is not None:
            return K, given_d, f'{source}; distortion given'
        if d_file is not None:
            return K, read_distortion_file(d_file), f'{source} + {d_file.name}'
        return K, Distortion(), source

    def __len__(self) -> int:
        """Return the number of frames kept."""
        return len(self.rgb_paths)

    def frame(self, i: int, bgr: bool = False) -> Tuple[float, np.ndarray, np.ndarray]:
        """
        Return the i-th frame for the VO.

        :return: (stamp in seconds, image (480, 640, 3) uint8 RGB or BGR, K (3, 3) float64);
            the lens distortion is ``self.distortion``.
        """
        return float(self.stamps[i]), load_image(self.rgb_paths[i], bgr), self.K.copy()

    def depth(self, i: int) -> np.ndarray:
        """Load the i-th depth map as (H, W) float32 metres (0 = no measurement)."""
        if self.depth_paths[i] is None:
            raise ValueError(f'sequence {self.name} was read without depth (use_depth=False)')
        return load_depth_png(self.depth_paths[i], DEPTH_SCALE)


class TumRgbdDataset(PairDataset):
    """
    Frame pairs of TUM RGB-D sequences with depth and interpolated GT relative poses.

    Samples carry ``depth1``/``depth2`` (when ``use_depth``) and ``T_21`` (when every sequence
    has ground truth and ``use_gt`` is not False).
    """

    def __init__(self, root: PathLike, sequences: Optional[Sequence[str]] = None,
                 intrinsics: Optional[Intrinsics] = None, max_dt: float = 0.02,
                 use_depth: bool = True, use_gt: Optional[bool] = None, max_gt_gap: float = 0.1,
                 height: int = 448, width: int = 576, stride: int = 1, bgr: bool = False,
                 pairs: bool = True, transform: Optional[Callable[[Sample], Sample]] = None):
        """
        Index sequences.

        :param root: a sequence folder (with rgb.txt) or a folder of sequence folders.
        :param sequences: names of sequence folders under ``root`` (default: all).
        :param intrinsics: (fx, fy, cx, cy) overriding the family default for all sequences.
        :param max_dt: RGB-depth association tolerance in seconds.
        :param use_depth: load associated depth (frames without depth are dropped).
        :param use_gt: ground truth: True required, None if present in every sequence, False off.
        :param max_gt_gap: longest ground-truth gap (s) to interpolate across.
        :param height: (and ``width``, ``stride``, ``bgr``, ``pairs``, ``transform``) as
            :class:`~trianflow_ros.data.sample.PairDataset`.
        """
        super().__init__(height, width, stride, bgr, pairs, transform)
        root = require_path(root, 'TUM RGB-D root', is_dir=True)
        if sequences is not None:
            dirs = [root / s for s in sequences]
        elif (root / 'rgb.txt').is_file():
            dirs = [root]
        else:
            dirs = sorted(p.parent for p in root.glob('*/rgb.txt'))
            if not dirs:
                raise MissingFileError(f'no TUM RGB-D sequence in {root} (expected '
                                       'ROOT/rgbd_dataset_freiburg1_xyz/rgb.txt)')
        if use_gt is None:
            use_gt = all((d / 'groundtruth.txt').is_file() for d in dirs) or False
        self.use_gt = bool(use_gt)
        self.use_depth = use_depth
        self.sequences = [TumRgbdSequence(d, intrinsics, max_dt, use_depth, self.use_gt,
                                          max_gt_gap) for d in dirs]
        for k, seq in enumerate(self.sequences):
            for i, j in _pairs(len(seq), stride, pairs):
                self.items.append((k, i, j))

    def _view(self, seq: TumRgbdSequence, i: int):
        image = load_image(seq.rgb_paths[i])
        img, K = prepare_image(image, seq.K, self.hw, self.bgr)
        depth = None
        if self.use_depth:
            d = seq.depth(i)
            if d.shape != image.shape[:2]:
                raise DatasetError(f'{seq.depth_paths[i]}: depth size {d.shape} differs from '
                                   f'the RGB image {seq.rgb_paths[i]} {image.shape[:2]}')
            depth = depth_to_tensor(d, self.hw)
        return image, img, K, depth

    def load(self, index: int) -> Sample:
        """Build sample ``index``."""
        k, i, j = self.items[index]
        seq = self.sequences[k]
        image1, img1, K, depth1 = self._view(seq, i)
        sample = {'image1': img1, 'K': K,
                  'native_hw': torch.tensor(image1.shape[:2], dtype=torch.int64),
                  'stamp1': float(seq.stamps[i]), 'frame1': i, 'sequence': seq.name,
                  'source1': str(seq.rgb_paths[i])}
        if depth1 is not None:
            sample['depth1'] = depth1
        if j is None:
            return sample
        _, img2, _, depth2 = self._view(seq, j)
        sample.update({'image2': img2, 'stamp2': float(seq.stamps[j]), 'frame2': j,
                       'source2': str(seq.rgb_paths[j])})
        if depth2 is not None:
            sample['depth2'] = depth2
        if self.use_gt:
            sample['T_21'] = torch.from_numpy(relative_pose(seq.poses[i], seq.poses[j])).float()
        return sample


def _pairs(n: int, stride: int, pairs: bool) -> List[Tuple[int, Optional[int]]]:
    if not pairs:
        return [(i, None) for i in range(n)]
    return [(i, i + stride) for i in range(n - stride)]
