"""
NYU Depth v2: raw scenes as frame pairs for training, the labelled set for depth evaluation.

Raw scenes (``NyuRawDataset``), one folder per scene, in either of two layouts::

    root/<scene>/r-<timestamp>-<n>.ppm    toolbox dump (the raw zips): RGB frames, 640x480;
                                          d-*.pgm, a-*.dump and INDEX.txt are not read
    root/<scene>/<name>.png | .jpg        frames already extracted, in name order
                                          (a name that is a number is used as timestamp)

Frames are ordered by the timestamp in their names (toolbox dump) or by name; pairs are
(k, k + stride) with stride 10 by default, as the original trained. Intrinsics: the NYU
toolbox colour camera (``camera_params.m``), fx=518.858 fy=519.470 cx=325.582 cy=253.736 at
640x480 (the original's 518.86, 519.47, 325.58, 253.74). Toolbox-dump frames are undistorted by
default with the toolbox coefficients onto that same K (``cv2.undistort``, no crop), so K is
exact; the original undistorted with ``getOptimalNewCameraMatrix`` + ROI crop and then kept
the old K. Extracted frames are used as they are (``undistort=False``). K is rescaled to the
network size with the width ratio on x and the height ratio on y (the original swapped them).

Labelled set (``NyuLabelledDataset``): ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, read
with h5py: 'images' (N, 3, 640, 480) uint8, 'depths' (N, 640, 480) float32 metres, stored
transposed) and ``splits.mat`` ('testNdxs' / 'trainNdxs', 1-based; a text file of 1-based
indices works too). Image and depth are cropped to rows 45:472, columns 41:602 (the white
border of the toolbox's undistortion), K is shifted by the crop and rescaled; samples are
single frames with ``depth1`` (network size, nearest) and ``depth1_native`` (427x561).
"""

import math
import os
from pathlib import Path
import re
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from trianflow_ros.data.sample import (DatasetError, depth_to_tensor, load_image,
                                       MissingFileError, PairDataset, PathLike, prepare_image,
                                       read_lines, require_path, Sample)
from trianflow_ros.data.tum import intrinsics_matrix

#: NYU toolbox colour camera at 640x480: fx, fy, cx, cy.
NYU_INTRINSICS = (5.1885790117450188e+02, 5.1946961112127485e+02,
                  3.2558244941119034e+02, 2.5373616633400465e+02)
#: NYU toolbox colour distortion (OpenCV order k1, k2, p1, p2, k3).
NYU_DISTORTION = (2.0796615318809061e-01, -5.8613825163911781e-01, 7.2231363135888329e-04,
                  1.0479627195765181e-03, 4.9856986684705107e-01)
#: Evaluation crop of the labelled set: (top, bottom, left, right), rows top:bottom.
EVAL_CROP = (45, 472, 41, 602)
_RAW = re.compile(r'^r-(\d+(?:\.\d+)?)-(\d+)\.ppm$')
_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.ppm')


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', path.name)]


def list_scene_frames(scene_dir: PathLike) -> Tuple[List[Path], np.ndarray, bool]:
    """
    List the RGB frames of one raw scene folder (see the module docstring for the layouts).

    :return: frame paths in time order, their timestamps (NaN where unknown), and True for a
        toolbox dump (r-*.ppm), False for extracted images.
    """
    folder = require_path(scene_dir, 'NYUv2 scene', is_dir=True)
    raw = []
    others = []
    for p in folder.iterdir():
        m = _RAW.match(p.name)
        if m:
            raw.append((float(m.group(1)), int(m.group(2)), p))
        elif p.suffix.lower() in _EXTENSIONS and p.is_file() and not p.name.startswith('d-'):
            others.append(p)
    if raw:
        raw.sort()
        return [p for _, _, p in raw], np.array([t for t, _, _ in raw]), True
    others.sort(key=_natural_key)
    stamps = []
    for p in others:
        try:
            stamps.append(float(p.stem))
        except ValueError:
            stamps.append(math.nan)
    return others, np.array(stamps, dtype=np.float64), False


class NyuRawDataset(PairDataset):
    """Frame pairs (k, k + stride) of NYUv2 raw scenes (stride 10 by default)."""

    def __init__(self, root: PathLike, scenes: Optional[Sequence[str]] = None,
                 scenes_file: Optional[PathLike] = None, undistort: Optional[bool] = None,
                 intrinsics=None, height: int = 448, width: int = 576, stride: int = 10,
                 bgr: bool = False, pairs: bool = True,
                 transform: Optional[Callable[[Sample], Sample]] = None):
        """
        Index the scenes.

        :param root: folder of scene folders.
        :param scenes: scene folder names to use (default: every folder with frames).
        :param scenes_file: text file of scene names, one per line (relative to ``root`` or
            absolute), e.g. the training scenes; exclusive with ``scenes``.
        :param undistort: undistort with the toolbox coefficients (default: True for
            toolbox-dump frames, False for extracted images).
        :param intrinsics: (fx, fy, cx, cy) or (3, 3) at the native size, default the toolbox K.
        :param height: network image height.
        :param width: network image width.
        :param stride: frame distance of a pair (10 in the original).
        :param bgr: BGR channel order.
        :param pairs: False for single frames.
        :param transform: optional callable applied to each sample.
        """
        super().__init__(height, width, stride, bgr, pairs, transform)
        self.root = require_path(root, 'NYUv2 raw root', is_dir=True)
        if scenes is not None and scenes_file is not None:
            raise ValueError('give scenes or scenes_file, not both')
        if scenes_file is not None:
            path = Path(scenes_file)
            path = path if path.is_absolute() else self.root / path
            scenes = [line.split()[0] for _, line in read_lines(path, 'NYUv2 scene list')]
        if scenes is None:
            dirs = [d for d in sorted(self.root.iterdir()) if d.is_dir()]
        else:
            dirs = [require_path(self.root / s, 'NYUv2 scene', is_dir=True) for s in scenes]
        self.K = intrinsics_matrix(NYU_INTRINSICS if intrinsics is None else intrinsics)
        self.undistort = undistort
        self.scenes = []
        for d in dirs:
            paths, stamps, is_raw = list_scene_frames(d)
            if not paths:
                if scenes is not None:
                    raise MissingFileError(f'no frames (r-*.ppm, *.png, *.jpg) in NYUv2 '
                                           f'scene {d}')
                continue
            k = len(self.scenes)
            self.scenes.append((d.name, paths, stamps, is_raw if undistort is None
                                else bool(undistort)))
            if pairs:
                self.items.extend((k, i, i + stride) for i in range(len(paths) - stride))
            else:
                self.items.extend((k, i, None) for i in range(len(paths)))
        if not self.scenes:
            raise MissingFileError(f'no NYUv2 scenes with frames in {self.root} (expected '
                                   'ROOT/<scene>/r-<time>-<n>.ppm or ROOT/<scene>/*.png)')

    def _image(self, k: int, i: int) -> np.ndarray:
        _, paths, _, undistort = self.scenes[k]
        image = load_image(paths[i])
        if undistort:
            image = cv2.undistort(image, self.K, np.array(NYU_DISTORTION))
        return image

    def load(self, index: int) -> Sample:
        """Build sample ``index``."""
        k, i, j = self.items[index]
        name, paths, stamps, _ = self.scenes[k]
        image1 = self._image(k, i)
        img1, K = prepare_image(image1, self.K, self.hw, self.bgr)
        sample = {'image1': img1, 'K': K,
                  'native_hw': torch.tensor(image1.shape[:2], dtype=torch.int64),
                  'stamp1': float(stamps[i]), 'frame1': i, 'sequence': name,
                  'source1': str(paths[i])}
        if j is None:
            return sample
        image2 = self._image(k, j)
        if image2.shape != image1.shape:
            raise DatasetError(f'{paths[j]}: size {image2.shape[:2]} differs from {paths[i]} '
                               f'{image1.shape[:2]}')
        sample['image2'], _ = prepare_image(image2, self.K, self.hw, self.bgr)
        sample.update({'stamp2': float(stamps[j]), 'frame2': j, 'source2': str(paths[j])})
        return sample


def _import_h5py(path: Path):
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is in requirements/core.txt
        raise ImportError(f'reading {path} (MATLAB v7.3 = HDF5) needs h5py: '
                          'pip install h5py') from e
    return h5py


def read_split_indices(path: PathLike, split: str) -> np.ndarray:
    """
    Read the 0-based indices of a split of the labelled set.

    ``splits.mat`` holds 'testNdxs' / 'trainNdxs' (1-based); a text file holds 1-based indices.

    :param path: splits.mat (MATLAB v5 or v7.3) or a .txt file.
    :param split: 'test' or 'train' (ignored for a text file).
    :return: (M,) int64 0-based indices.
    """
    p = require_path(path, 'NYUv2 split file (splits.mat)')
    key = f'{split}Ndxs'
    if p.suffix.lower() != '.mat':
        values = [int(v) for _, line in read_lines(p, 'NYUv2 split list')
                  for v in line.replace(',', ' ').split()]
        idx = np.array(values, dtype=np.int64)
    else:
        try:
            from scipy.io import loadmat
            data = loadmat(str(p))
        except NotImplementedError:  # v7.3
            h5py = _import_h5py(p)
            with h5py.File(p, 'r') as f:
                data = {k: np.asarray(f[k]) for k in f.keys() if not k.startswith('#')}
        except (ValueError, OSError) as e:
            raise DatasetError(f'cannot read {p} as a MATLAB file ({e})') from e
        if key not in data:
            raise DatasetError(f'{p}: no variable {key!r} (has {sorted(data)})')
        idx = np.asarray(data[key]).astype(np.int64).ravel()
    if idx.size == 0 or idx.min() < 1:
        raise DatasetError(f'{p}: split indices must be 1-based and non-empty')
    return idx - 1


class NyuLabelledDataset(PairDataset):
    """
    The NYUv2 labelled set (654 test images with ``splits.mat``) as single-frame samples.

    Reads ``nyu_depth_v2_labeled.mat`` lazily with h5py (one handle per process).
    """

    def __init__(self, mat_path: PathLike, splits_path: Optional[PathLike] = None,
                 split: str = 'test', crop: Optional[Tuple[int, int, int, int]] = EVAL_CROP,
                 height: int = 448, width: int = 576, bgr: bool = False,
                 transform: Optional[Callable[[Sample], Sample]] = None):
        """
        Open the labelled set and select a split.

        :param mat_path: nyu_depth_v2_labeled.mat.
        :param splits_path: splits.mat (or a text file of 1-based indices); None takes every
            image (``split`` must then be 'all').
        :param split: 'test', 'train' or 'all'.
        :param crop: (top, bottom, left, right) applied to image and depth; None for no crop.
        :param height: network image height.
        :param width: network image width.
        :param bgr: BGR channel order (the original fed the labelled set as RGB).
        :param transform: optional callable applied to each sample.
        """
        super().__init__(height, width, 1, bgr, False, transform)
        self.mat_path = require_path(mat_path, 'NYUv2 labelled set (nyu_depth_v2_labeled.mat)')
        if split not in ('test', 'train', 'all'):
            raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}")
        self._h5 = None
        self._pid = None
        f = self._file()
        for key in ('images', 'depths'):
            if key not in f:
                raise DatasetError(f'{self.mat_path}: no dataset {key!r} (has {sorted(f)})')
        n, c, w, h = f['images'].shape
        if c != 3 or f['depths'].shape != (n, w, h):
            raise DatasetError(f'{self.mat_path}: expected images (N, 3, W, H) and depths '
                               f'(N, W, H), got {f["images"].shape} and {f["depths"].shape}')
        self.native_hw = (int(h), int(w))
        if crop is not None:
            top, bottom, left, right = crop
            if not (0 <= top < bottom <= h and 0 <= left < right <= w):
                raise ValueError(f'crop {crop} does not fit images of {h}x{w}')
        self.crop = crop
        if split == 'all':
            indices = np.arange(n)
        else:
            if splits_path is None:
                raise ValueError(f'split {split!r} needs splits_path (splits.mat)')
            indices = read_split_indices(splits_path, split)
            if indices.max() >= n:
                raise DatasetError(f'{splits_path}: index {indices.max() + 1} exceeds the '
                                   f'{n} images of {self.mat_path}')
        self.items = [int(i) for i in indices]
        K = intrinsics_matrix(NYU_INTRINSICS)
        if crop is not None:
            K[0, 2] -= crop[2]
            K[1, 2] -= crop[0]
        self.K = K
        self._close()

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            h5py = _import_h5py(self.mat_path)
            try:
                self._h5 = h5py.File(self.mat_path, 'r')
            except OSError as e:
                raise DatasetError(f'cannot open {self.mat_path} as MATLAB v7.3 (HDF5): '
                                   f'{e}') from e
            self._pid = os.getpid()
        return self._h5

    def _close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
        self._h5 = None

    def __getstate__(self):
        """Pickle without the HDF5 handle (DataLoader workers reopen it)."""
        state = dict(self.__dict__)
        state['_h5'] = None
        return state

    def load(self, index: int) -> Sample:
        """Build sample ``index``."""
        i = self.items[index]
        f = self._file()
        image = np.ascontiguousarray(np.asarray(f['images'][i]).transpose(2, 1, 0))
        depth = np.asarray(f['depths'][i], dtype=np.float32).T
        if self.crop is not None:
            top, bottom, left, right = self.crop
            image = np.ascontiguousarray(image[top:bottom, left:right])
            depth = np.ascontiguousarray(depth[top:bottom, left:right])
        img, K = prepare_image(image, self.K, self.hw, self.bgr)
        return {'image1': img, 'K': K,
                'native_hw': torch.tensor(self.native_hw, dtype=torch.int64),
                'stamp1': math.nan, 'frame1': i, 'sequence': 'nyu_labelled',
                'source1': f'{self.mat_path}#{i}', 'depth1': depth_to_tensor(depth, self.hw),
                'depth1_native': depth_to_tensor(depth)}
