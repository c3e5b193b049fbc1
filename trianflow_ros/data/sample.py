"""
The sample dictionary every dataset reader returns, its batching, and the image utilities.

Every reader in ``trianflow_ros.data`` yields samples with the keys below (one dictionary for
all datasets, as in monodepth2). Keys marked *optional* are present only where the dataset
knows the value; a given dataset object always returns the same set of keys, so batches of one
dataset collate.

Always present:

- ``'image1'``: (3, H, W) float32 in [0, 1], frame 1 at the network resolution
  (``height x width`` of the reader); channel order RGB, or BGR when the reader's ``bgr`` is
  True (the order the original's released weights expect).
- ``'image2'``: (3, H, W) like ``image1``, frame 2 = frame 1 + ``stride`` (pair readers).
- ``'K'``: (3, 3) float32 intrinsics of both images at the network resolution (resize, crop and
  flip applied; pixel centres at integer coordinates, the convention of ``geometry.camera``).
- ``'native_hw'``: (2,) int64 (height, width) of frame 1 as stored, before any crop or resize.
- ``'stamp1'``, ``'stamp2'``: float timestamps in seconds (NaN where the dataset has none).
- ``'frame1'``, ``'frame2'``: int frame numbers within the sequence.
- ``'index'``: int index of the sample in the dataset.
- ``'sequence'``: str identifier of the sequence (e.g. ``'06'``, a KITTI drive, a TUM folder).
- ``'source1'``, ``'source2'``: str file paths of the two images (a description for
  synthetic data).

Optional (ground truth):

- ``'T_21'``: (4, 4) float32 relative pose mapping points of camera 1 into camera 2
  (``X_2 = T_21 X_1``).
- ``'depth1'``, ``'depth2'``: (1, H, W) float32 z-depth in metres at the network resolution
  (nearest-neighbour resampling), 0 where there is no measurement.
- ``'depth1_native'``: (1, h, w) float32 evaluation depth at its own resolution (NYUv2 test).
- ``'flow_12'``, ``'flow_21'``: (2, H, W) float32 optical flow, channel 0 = u (synthetic).
- ``'valid_12'``, ``'valid_21'``: (1, H, W) float32 in {0, 1}, where the flow is observable.

Single-frame readers (``pairs=False``, e.g. depth evaluation) leave out every key of frame 2:
``image2``, ``stamp2``, ``frame2``, ``source2``, ``T_21``, ``depth2``, flows and masks.

Resizing uses ``cv2.resize`` with ``INTER_AREA`` (which OpenCV computes bilinearly when
enlarging); depth maps use ``INTER_NEAREST_EXACT``. Both follow the half-pixel convention of
``geometry.camera.resize_intrinsics`` (``u' = (u + 0.5) s - 0.5``), which rescales ``K``
(x by the width ratio, y by the height ratio).
"""

from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from trianflow_ros.eval.trajectory_io import data_lines
from trianflow_ros.geometry.camera import resize_intrinsics

PathLike = Union[str, Path]
Sample = Dict[str, object]

#: Keys that belong to frame 2 (absent in single-frame readers).
FRAME2_KEYS = ('image2', 'stamp2', 'frame2', 'source2', 'T_21', 'depth2', 'flow_12', 'flow_21',
               'valid_12', 'valid_21')
#: Keys every sample has.
REQUIRED_KEYS = ('image1', 'K', 'native_hw', 'stamp1', 'frame1', 'index', 'sequence', 'source1')


class DatasetError(ValueError):
    """A dataset file is malformed or inconsistent; the message names the file."""


class MissingFileError(DatasetError, FileNotFoundError):
    """A file or folder a dataset needs does not exist; the message names it."""


def require_path(path: PathLike, what: str, is_dir: bool = False) -> Path:
    """
    Return ``path`` as a Path, or raise ``MissingFileError`` naming it and what was expected.

    :param path: the file or folder.
    :param what: what it should be, e.g. ``'KITTI odometry calibration (calib.txt)'``.
    :param is_dir: expect a folder instead of a file.
    """
    p = Path(path)
    ok = p.is_dir() if is_dir else p.is_file()
    if not ok:
        kind = 'folder' if is_dir else 'file'
        raise MissingFileError(f'{what}: {kind} not found: {p}')
    return p


def read_lines(path: PathLike, what: str) -> List[Tuple[int, str]]:
    """
    Read a text file as (line number, stripped line), skipping blank lines and '#' comments.

    :param path: the file.
    :param what: description used in errors.
    :return: list of (1-based line number, text).
    """
    p = require_path(path, what)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f'{what}: cannot read {p} as text ({e})') from e
    return data_lines(text)


def parse_floats(text: str, path: PathLike, lineno: int, count: Optional[int] = None,
                 what: str = 'numbers') -> np.ndarray:
    """
    Parse whitespace-separated floats of one line, with an error naming the file and line.

    :param text: the line (without label).
    :param path: file the line came from (for the message).
    :param lineno: 1-based line number (for the message).
    :param count: required number of values, or None for any.
    :param what: what the values are (for the message).
    :return: float64 array.
    """
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f'{path}, line {lineno}: expected {what}, got {text[:80]!r}') from e
    if count is not None and values.size != count:
        raise DatasetError(f'{path}, line {lineno}: expected {count} {what}, '
                           f'got {values.size}')
    if not np.all(np.isfinite(values)):
        raise DatasetError(f'{path}, line {lineno}: non-finite value in {what}')
    return values


def load_image(path: PathLike, bgr: bool = False) -> np.ndarray:
    """
    Read an image file as (H, W, 3) uint8; grey images are repeated to three channels.

    :param path: PNG, JPEG, PPM... anything OpenCV reads (16-bit images are scaled to 8 bits).
    :param bgr: return BGR instead of RGB.
    :return: (H, W, 3) uint8.
    """
    p = require_path(path, 'image')
    image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f'cannot decode image file {p} (corrupt or not an image)')
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise DatasetError(f'image {p}: expected 8-bit pixels, got {image.dtype}')
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    elif image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if not bgr:
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def load_depth_png(path: PathLike, scale: float) -> np.ndarray:
    """
    Read a 16-bit depth PNG as metres: ``depth = value / scale``; 0 stays 0 (no measurement).

    :param path: the 16-bit single-channel PNG.
    :param scale: raw units per metre (5000 for TUM RGB-D, 1000 for millimetres).
    :return: (H, W) float32 metres.
    """
    p = require_path(path, 'depth image')
    raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f'cannot decode depth image file {p}')
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise DatasetError(f'depth image {p}: expected a 16-bit single-channel PNG, got '
                           f'{raw.dtype} with shape {raw.shape}')
    return raw.astype(np.float32) / np.float32(scale)


def resize_image(image: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """
    Resize an (H, W, C) image to ``hw`` = (height, width) with ``cv2.INTER_AREA``.

    INTER_AREA averages pixel areas when shrinking and interpolates bilinearly when enlarging;
    both keep pixel centres at ``u' = (u + 0.5) s - 0.5``. A no-op when the size matches.
    """
    h, w = int(hw[0]), int(hw[1])
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def resize_depth(depth: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """
    Resize an (H, W) depth map with nearest-neighbour sampling (no mixing across edges).

    ``INTER_NEAREST_EXACT`` picks the source pixel whose centre is nearest, the same
    half-pixel convention as ``resize_image``.
    """
    h, w = int(hw[0]), int(hw[1])
    if depth.shape[:2] == (h, w):
        return depth
    return cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """Convert an (H, W, 3) uint8 image to a (3, H, W) float32 tensor in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}')
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def rescale_intrinsics(K: np.ndarray, src_hw: Tuple[int, int], dst_hw: Tuple[int, int]
                       ) -> np.ndarray:
    """
    Intrinsics of an image resized from ``src_hw`` to ``dst_hw`` (x by widths, y by heights).

    A numpy wrapper of ``geometry.camera.resize_intrinsics``: fx and cx scale with the width
    ratio, fy and cy with the height ratio, under the half-pixel convention of cv2.resize.

    :param K: (3, 3) intrinsics at ``src_hw``.
    :return: (3, 3) float64 intrinsics at ``dst_hw``.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f'K must have shape (3, 3), got {K.shape}')
    out = resize_intrinsics(torch.from_numpy(K)[None], tuple(src_hw), tuple(dst_hw))
    return out[0].numpy()


def prepare_image(image: np.ndarray, K: np.ndarray, hw: Tuple[int, int], bgr: bool
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Resize an RGB uint8 image to the network size and rescale its intrinsics.

    :param image: (h, w, 3) uint8 RGB at native resolution.
    :param K: (3, 3) intrinsics of ``image``.
    :param hw: network (height, width).
    :param bgr: return the channels in BGR order.
    :return: image (3, H, W) float32 in [0, 1] and K (3, 3) float32 at the network size.
    """
    src_hw = image.shape[:2]
    resized = resize_image(image, hw)
    if bgr:
        resized = resized[:, :, ::-1]
    K_net = rescale_intrinsics(K, src_hw, hw)
    return image_to_tensor(np.ascontiguousarray(resized)), torch.from_numpy(K_net).float()


def depth_to_tensor(depth: np.ndarray, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Convert an (h, w) depth map (optionally resized, nearest) to (1, H, W) float32."""
    if hw is not None:
        depth = resize_depth(depth, hw)
    return torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]


def relative_pose(T_w1: np.ndarray, T_w2: np.ndarray) -> np.ndarray:
    """
    Relative pose ``T_21 = T_w2^-1 T_w1`` (maps points of camera 1 into camera 2).

    :param T_w1: (4, 4) camera-to-world pose of frame 1.
    :param T_w2: (4, 4) camera-to-world pose of frame 2.
    :return: (4, 4) float64.
    """
    R2, t2 = T_w2[:3, :3], T_w2[:3, 3]
    T_2w = np.eye(4)
    T_2w[:3, :3] = R2.T
    T_2w[:3, 3] = -R2.T @ t2
    return T_2w @ T_w1


def make_pairs(frames: Sequence[int], stride: int) -> List[Tuple[int, int]]:
    """
    Frame pairs ``(f, f + stride)`` where both frame numbers are in ``frames``.

    :param frames: available frame numbers of one sequence.
    :param stride: frame distance of a pair (>= 1).
    :return: sorted list of (frame1, frame2).
    """
    if stride < 1:
        raise ValueError(f'stride must be >= 1, got {stride}')
    have = {int(f) for f in frames}
    return [(f, f + stride) for f in sorted(have) if f + stride in have]


def hflip_sample(sample: Sample) -> Sample:
    """
    Mirror a sample left-right, keeping it geometrically consistent.

    Images, depths, flows and masks are flipped; ``cx`` becomes ``W - 1 - cx`` (the original
    flipped without updating ``cx``); flows change the sign of u; ``T_21`` is conjugated by the
    mirror ``diag(-1, 1, 1)`` (the flipped pair sees the mirrored scene).

    :param sample: a sample dictionary (not modified).
    :return: a new dictionary.
    """
    out = dict(sample)
    width = sample['image1'].shape[-1]
    for key in ('image1', 'image2', 'depth1', 'depth2', 'depth1_native', 'valid_12',
                'valid_21'):
        if key in sample:
            out[key] = sample[key].flip(-1)
    for key in ('flow_12', 'flow_21'):
        if key in sample:
            flow = sample[key].flip(-1).clone()
            flow[0] = -flow[0]
            out[key] = flow
    K = sample['K'].clone()
    K[0, 2] = (width - 1) - K[0, 2]
    K[0, 1] = -K[0, 1]
    out['K'] = K
    if 'T_21' in sample:
        M = torch.diag(sample['T_21'].new_tensor([-1.0, 1.0, 1.0, 1.0]))
        out['T_21'] = M @ sample['T_21'] @ M
    return out


class RandomHorizontalFlip:
    """
    Augmentation: ``hflip_sample`` with probability ``p``, reproducible per sample index.

    The decision for a sample is drawn from ``numpy.random.default_rng((seed, index))``, so it
    is the same in every worker process and every run with the same seed.
    """

    def __init__(self, p: float = 0.5, seed: int = 0):
        """Flip with probability ``p`` using ``seed``."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f'p must be in [0, 1], got {p}')
        self.p = p
        self.seed = seed

    def __call__(self, sample: Sample) -> Sample:
        """Return the sample, flipped or not."""
        rng = np.random.default_rng((self.seed, int(sample['index'])))
        return hflip_sample(sample) if rng.random() < self.p else sample


def collate_samples(batch: Sequence[Sample]) -> Dict[str, object]:
    """
    Batch samples: tensors are stacked (B, ...), numbers become tensors (B,), strings lists.

    Stamps become float64, ints int64. Every sample must have the same keys and shapes; a
    mismatch raises a ValueError naming the key.

    :param batch: samples from one dataset.
    :return: the batched dictionary (use as ``DataLoader(collate_fn=collate_samples)``).
    """
    if not batch:
        raise ValueError('cannot collate an empty batch')
    keys = set(batch[0])
    for s in batch[1:]:
        if set(s) != keys:
            diff = sorted(keys.symmetric_difference(s))
            raise ValueError(f'samples of one batch have different keys: {diff}')
    out = {}
    for key in batch[0]:
        values = [s[key] for s in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise ValueError(f'key {key!r}: tensors of different shapes {sorted(shapes)}; '
                                 'use one image size per batch')
            out[key] = torch.stack(values)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, (int, np.integer)):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif isinstance(first, (float, np.floating)):
            out[key] = torch.tensor([float(v) for v in values], dtype=torch.float64)
        else:
            out[key] = list(values)
    return out


def check_sample(sample: Sample, height: Optional[int] = None, width: Optional[int] = None
                 ) -> None:
    """
    Raise a ValueError naming the key if ``sample`` breaks the documented layout.

    :param sample: a sample dictionary.
    :param height: expected network height (default: that of ``image1``).
    :param width: expected network width.
    """
    missing = [k for k in REQUIRED_KEYS if k not in sample]
    if missing:
        raise ValueError(f'sample lacks required keys {missing}')
    h = height if height is not None else sample['image1'].shape[-2]
    w = width if width is not None else sample['image1'].shape[-1]
    expect = {'image1': (3, h, w), 'image2': (3, h, w), 'K': (3, 3), 'native_hw': (2,),
              'T_21': (4, 4), 'depth1': (1, h, w), 'depth2': (1, h, w), 'flow_12': (2, h, w),
              'flow_21': (2, h, w), 'valid_12': (1, h, w), 'valid_21': (1, h, w)}
    for key, shape in expect.items():
        if key not in sample:
            continue
        value = sample[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f'sample[{key!r}] must be a tensor, got {type(value).__name__}')
        if tuple(value.shape) != shape:
            raise ValueError(f'sample[{key!r}] must have shape {shape}, '
                             f'got {tuple(value.shape)}')
        want = torch.int64 if key == 'native_hw' else torch.float32
        if value.dtype != want:
            raise ValueError(f'sample[{key!r}] must be {want}, got {value.dtype}')
    for key in ('image1', 'image2'):
        if key in sample and (sample[key].min() < 0.0 or sample[key].max() > 1.0):
            raise ValueError(f'sample[{key!r}] must lie in [0, 1]')
    for key in ('stamp1', 'stamp2'):
        if key in sample and not isinstance(sample[key], float):
            raise ValueError(f'sample[{key!r}] must be a float')


class PairDataset(Dataset):
    """
    Base of the readers: a list of items, each loaded into a sample dictionary.

    Subclasses fill ``self.items`` and implement ``load(index)``; this class adds ``index``,
    applies the optional ``transform`` (e.g. ``RandomHorizontalFlip``) and checks bounds.

    :ivar height: network image height.
    :ivar width: network image width.
    :ivar bgr: images in BGR order.
    :ivar stride: frame distance of a pair.
    :ivar pairs: True for frame pairs, False for single frames.
    """

    def __init__(self, height: int, width: int, stride: int = 1, bgr: bool = False,
                 pairs: bool = True, transform: Optional[Callable[[Sample], Sample]] = None):
        """Store the common settings (see the class docstring)."""
        if height < 1 or width < 1:
            raise ValueError(f'image size must be positive, got {height}x{width}')
        if stride < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        self.height = int(height)
        self.width = int(width)
        self.stride = int(stride)
        self.bgr = bool(bgr)
        self.pairs = bool(pairs)
        self.transform = transform
        self.items: List[object] = []

    @property
    def hw(self) -> Tuple[int, int]:
        """Network (height, width)."""
        return self.height, self.width

    def __len__(self) -> int:
        """Return the number of samples."""
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        """Load sample ``index`` (negative indices count from the end)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f'sample {index} out of range for {type(self).__name__} of {n}')
        index = int(index) % n
        sample = self.load(index)
        sample['index'] = index
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def load(self, index: int) -> Sample:
        """Build sample ``index`` (implemented by every reader)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        """Short description: class, size, resolution."""
        kind = 'pairs' if self.pairs else 'frames'
        return (f'{type(self).__name__}({len(self)} {kind}, {self.height}x{self.width}, '
                f'stride={self.stride}, bgr={self.bgr})')


def frame_pair_items(frames: Iterable[int], stride: int, pairs: bool
                     ) -> List[Tuple[int, Optional[int]]]:
    """
    Items of one sequence: (f, f + stride) pairs, or (f, None) single frames.

    :param frames: available frame numbers.
    :param stride: pair distance.
    :param pairs: False for single frames.
    """
    frames = list(frames)
    if not pairs:
        return [(int(f), None) for f in sorted(set(frames))]
    return [(a, b) for a, b in make_pairs(frames, stride)]
