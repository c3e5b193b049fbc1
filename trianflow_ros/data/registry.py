"""
``make_dataset(cfg.data, split)``: the reader for a config's dataset name, and an image folder.

Names (``DataConfig.dataset``) and what each split reads (keyword ``overrides`` are passed to
the reader and win over these defaults; paths are relative to ``data.root``):

- ``synthetic``: ``SyntheticPairDataset``; train seeds 0-3, val seed 1000, test seed 2000,
  kinds 'forward' and 'handheld'.
- ``kitti_raw``: ``KittiRawDataset``; train = every drive less the scenes listed in
  ``test_scenes.txt`` and the frames in ``static_frames.txt`` (both user-supplied in the root);
  val = the frames of ``val_files.txt``; test = the single frames of ``test_files.txt``.
- ``kitti_odo``: ``KittiOdometryDataset``; train 00-08, val and test 09-10; camera 2.
- ``nyu``: train/val = ``NyuRawDataset`` over the scene folders of the root; test =
  ``NyuLabelledDataset`` (``nyu_depth_v2_labeled.mat`` + ``splits.mat`` in the root).
- ``tum``: ``TumRgbdDataset`` over the sequences in the root (any split).
- ``images``: ``ImageFolderDataset``, a folder of frames with an ``intrinsics.txt``.

Image size, stride and channel order come from the config (``img_height``, ``img_width``,
``stride``, ``bgr``).
"""

from pathlib import Path
import re
from typing import Callable, Optional

import torch

from trianflow_ros.data.camera_files import (find_distortion_file, intrinsics_matrix,
                                             read_distortion_file, read_intrinsics_file)
from trianflow_ros.data.kitti_odometry import KittiOdometryDataset
from trianflow_ros.data.kitti_raw import KittiRawDataset
from trianflow_ros.data.nyu import NyuLabelledDataset, NyuRawDataset
from trianflow_ros.data.sample import (DatasetError, frame_pair_items, load_image,
                                       MissingFileError, PairDataset, PathLike, prepare_image,
                                       require_path, Sample)
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset
from trianflow_ros.data.tum import TumRgbdDataset
from trianflow_ros.geometry.distortion import as_distortion, Distortion

__all__ = ['DATASETS', 'ImageFolderDataset', 'make_dataset', 'read_intrinsics_file', 'SPLITS']

DATASETS = ('synthetic', 'kitti_raw', 'kitti_odo', 'nyu', 'tum', 'images')
SPLITS = ('train', 'val', 'test')
_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.ppm', '.pgm', '.bmp')


class ImageFolderDataset(PairDataset):
    """
    Frame pairs (k, k + stride) of the images of one folder, in natural name order.

    ``K`` is given, or read from ``intrinsics.txt`` in the folder ('fx fy cx cy' or 9
    numbers), at the native size of the images; the lens distortion (attribute
    ``distortion``, not applied to the images) is given, or read from ``distortion.txt`` /
    ``D.txt`` in the folder (``trianflow_ros.data.camera_files``), else none. A file name that
    is a number is the stamp.
    """

    def __init__(self, root: PathLike, intrinsics=None, height: int = 256, width: int = 832,
                 stride: int = 1, bgr: bool = False, pairs: bool = True,
                 transform: Optional[Callable[[Sample], Sample]] = None, distortion=None):
        """
        Index the folder.

        :param root: folder of images (png, jpg, ppm, pgm, bmp).
        :param intrinsics: (fx, fy, cx, cy) or (3, 3); default ``root/intrinsics.txt``.
        :param height: (and ``width``, ``stride``, ``bgr``, ``pairs``, ``transform``) as
            :class:`~trianflow_ros.data.sample.PairDataset`.
        :param distortion: lens distortion (``Distortion``, ``(model, coeffs)`` or text);
            default: ``root/distortion.txt`` or ``root/D.txt``, else none.
        """
        super().__init__(height, width, stride, bgr, pairs, transform)
        self.root = require_path(root, 'image folder', is_dir=True)
        self.K = (intrinsics_matrix(intrinsics) if intrinsics is not None
                  else read_intrinsics_file(self.root / 'intrinsics.txt'))
        d_file = find_distortion_file(self.root)
        if distortion is not None:
            self.distortion = as_distortion(distortion) or Distortion()
        elif d_file is not None:
            self.distortion = read_distortion_file(d_file)
        else:
            self.distortion = Distortion()

        def key(p: Path):
            return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', p.name)]

        self.paths = sorted((p for p in self.root.iterdir()
                             if p.suffix.lower() in _IMAGE_EXTENSIONS and p.is_file()), key=key)
        if not self.paths:
            raise MissingFileError(f'no images ({", ".join(_IMAGE_EXTENSIONS)}) in {self.root}')
        self.stamps = []
        for p in self.paths:
            try:
                self.stamps.append(float(p.stem))
            except ValueError:
                self.stamps.append(float('nan'))
        self.items = frame_pair_items(range(len(self.paths)), stride, pairs)

    def load(self, index: int) -> Sample:
        """Build sample ``index``."""
        i, j = self.items[index]
        image1 = load_image(self.paths[i])
        img1, K = prepare_image(image1, self.K, self.hw, self.bgr)
        sample = {'image1': img1, 'K': K,
                  'native_hw': torch.tensor(image1.shape[:2], dtype=torch.int64),
                  'stamp1': self.stamps[i], 'frame1': i, 'sequence': self.root.name,
                  'source1': str(self.paths[i])}
        if j is None:
            return sample
        image2 = load_image(self.paths[j])
        if image2.shape != image1.shape:
            raise DatasetError(f'{self.paths[j]}: size {image2.shape[:2]} differs from '
                               f'{self.paths[i]} {image1.shape[:2]}')
        sample['image2'], _ = prepare_image(image2, self.K, self.hw, self.bgr)
        sample.update({'stamp2': self.stamps[j], 'frame2': j, 'source2': str(self.paths[j])})
        return sample


def make_dataset(data_cfg, split: str = 'train', **overrides) -> PairDataset:
    """
    Build the reader named by ``data_cfg.dataset`` for a split.

    :param data_cfg: a ``DataConfig`` (dataset, root, img_height, img_width, stride, bgr).
    :param split: 'train', 'val' or 'test'.
    :param overrides: keyword arguments for the reader (e.g. ``sequences=['06']``,
        ``split_file='my_list.txt'``, ``kinds=('forward',)``); they win over the defaults.
    :return: a ``PairDataset`` whose samples follow ``trianflow_ros.data.sample``.
    """
    name = data_cfg.dataset
    if name not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; choose one of {DATASETS}')
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; choose one of {SPLITS}')
    common = {'height': int(data_cfg.img_height), 'width': int(data_cfg.img_width),
              'bgr': bool(data_cfg.bgr)}
    stride = int(data_cfg.stride)
    if name == 'synthetic':
        seeds = {'train': (0, 1, 2, 3), 'val': (1000,), 'test': (2000,)}[split]
        kwargs = dict(common, stride=stride, seeds=seeds, kinds=('forward', 'handheld'))
        kwargs.update(overrides)
        return SyntheticPairDataset(**kwargs)
    if not str(data_cfg.root).strip():
        raise ValueError(f'data.root is empty: set it to the {name} dataset folder '
                         '(--set data.root=/path/to/dataset)')
    root = Path(data_cfg.root).expanduser()
    require_path(root, f'{name} dataset root (data.root)', is_dir=True)
    if name == 'kitti_raw':
        kwargs = dict(common, stride=stride)
        if split == 'train':
            kwargs.update(exclude_scenes_file='test_scenes.txt',
                          static_frames_file='static_frames.txt')
        elif split == 'val':
            kwargs.update(split_file='val_files.txt')
        else:
            kwargs.update(split_file='test_files.txt', pairs=False)
        kwargs.update(overrides)
        return KittiRawDataset(root, **kwargs)
    if name == 'kitti_odo':
        kwargs = dict(common, stride=stride, split='train' if split == 'train' else 'test')
        kwargs.update(overrides)
        return KittiOdometryDataset(root, **kwargs)
    if name == 'nyu':
        if split == 'test':
            kwargs = dict(common, mat_path=root / 'nyu_depth_v2_labeled.mat',
                          splits_path=root / 'splits.mat', split='test')
            kwargs.update(overrides)
            return NyuLabelledDataset(**kwargs)
        kwargs = dict(common, stride=stride)
        kwargs.update(overrides)
        return NyuRawDataset(root, **kwargs)
    if name == 'tum':
        kwargs = dict(common, stride=stride)
        kwargs.update(overrides)
        return TumRgbdDataset(root, **kwargs)
    kwargs = dict(common, stride=stride)
    kwargs.update(overrides)
    return ImageFolderDataset(root, **kwargs)
