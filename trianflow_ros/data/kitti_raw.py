"""
KITTI raw in its native layout, with Eigen-style split lists and static-frame filtering.

Layout (``root`` holds the date folders, as the KITTI raw zips extract)::

    root/2011_09_26/calib_cam_to_cam.txt                        P_rect_02, P_rect_03 lines
    root/2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000000.png   (or .jpg)
    root/2011_09_26/2011_09_26_drive_0002_sync/image_02/timestamps.txt        one per frame

Intrinsics are ``P_rect_02`` (left colour) / ``P_rect_03`` (right colour) of the date's
``calib_cam_to_cam.txt``, parsed by label. Camera poses (OXTS) and velodyne depth are not read:
samples have no ``T_21`` and no ``depth1``.

Frame lists (the project ships none: licence lineage; give your own files, by path, relative
to ``root`` or absolute). One frame per line, any of:

- ``2011_09_26/2011_09_26_drive_0002_sync 0000000069 l`` (folder, frame number, side l/r;
  monodepth2 style; the side may be omitted for the left camera);
- ``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png`` (Eigen test list);
- ``2011_09_26_drive_0002_sync_02 0000000069`` (SfMLearner's prepared-data list).

Scene lists (Eigen test scenes, excluded from training) hold one drive per line, e.g.
``2011_09_26_drive_0002`` (``_sync`` and a leading ``date/`` are accepted). Static-frame lists
hold ``2011_09_26 2011_09_26_drive_0009_sync 0000000386`` lines; a pair is dropped when either
of its frames is listed.
"""

from datetime import datetime, timezone
from pathlib import Path
import re
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from trianflow_ros.data.sample import (DatasetError, frame_pair_items, load_image,
                                       MissingFileError, PairDataset, parse_floats, PathLike,
                                       prepare_image, read_lines, require_path, Sample)

CAMERAS = {'l': '02', 'r': '03', '2': '02', '3': '03', '02': '02', '03': '03',
           'image_02': '02', 'image_03': '03'}
_DATE = re.compile(r'^\d{4}_\d{2}_\d{2}$')
_DRIVE = re.compile(r'^(\d{4}_\d{2}_\d{2})_drive_(\d{4})(?:_sync)?$')
_EXTENSIONS = ('.png', '.jpg')

Frame = Tuple[str, str, int]  # (drive folder e.g. '2011_09_26_drive_0002_sync', camera, frame)


def drive_folder(name: str, where: str = '') -> str:
    """
    Normalise a drive name to its folder name ``<date>_drive_<nnnn>_sync``.

    :param name: e.g. '2011_09_26_drive_0002', '2011_09_26/2011_09_26_drive_0002_sync'.
    :param where: file and line for the error message.
    """
    base = name.strip().strip('/').split('/')[-1]
    m = _DRIVE.match(base)
    if not m:
        raise DatasetError(f'{where}: expected a KITTI raw drive such as '
                           f'2011_09_26_drive_0002_sync, got {name!r}')
    return f'{m.group(1)}_drive_{m.group(2)}_sync'


def parse_frame_line(line: str, where: str = '') -> Frame:
    """
    Parse one line of a frame list (monodepth2, Eigen test or SfMLearner style).

    :param line: the text of the line.
    :param where: file and line for the error message.
    :return: (drive folder, camera '02' or '03', frame number).
    """
    tokens = line.split()
    try:
        if len(tokens) == 1 and '/data/' in tokens[0]:
            parts = tokens[0].split('/')
            drive = drive_folder(parts[-4], where)
            camera = CAMERAS[parts[-3]]
            frame = int(Path(parts[-1]).stem)
        elif len(tokens) in (2, 3):
            m = re.match(r'^(.*_sync)_(0[23])$', tokens[0])
            if m and len(tokens) == 2:
                drive, camera = drive_folder(m.group(1), where), m.group(2)
            else:
                drive = drive_folder(tokens[0], where)
                camera = CAMERAS[tokens[2].lower()] if len(tokens) == 3 else '02'
            frame = int(tokens[1])
        else:
            raise ValueError(line)
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(
            f'{where}: expected "2011_09_26/2011_09_26_drive_0002_sync 0000000069 l", '
            f'".../image_02/data/0000000069.png" or "<drive>_sync_02 0000000069", '
            f'got {line[:80]!r}') from e
    return drive, camera, frame


def read_frame_list(path: PathLike) -> List[Frame]:
    """Read a frame list file (see the module docstring) as (drive, camera, frame) tuples."""
    return [parse_frame_line(line, f'{path}, line {n}')
            for n, line in read_lines(path, 'KITTI raw frame list')]


def read_scene_list(path: PathLike) -> Set[str]:
    """Read a scene list (one drive per line) as a set of drive folder names."""
    return {drive_folder(line.split()[0], f'{path}, line {n}')
            for n, line in read_lines(path, 'KITTI raw scene list')}


def read_static_frames(path: PathLike) -> Set[Tuple[str, int]]:
    """Read a static-frame list ("date drive frame" lines) as a set of (drive, frame)."""
    out = set()
    for n, line in read_lines(path, 'KITTI raw static-frame list'):
        tokens = line.split()
        where = f'{path}, line {n}'
        if len(tokens) != 3 or not tokens[2].isdigit():
            raise DatasetError(f'{where}: expected "2011_09_26 2011_09_26_drive_0009_sync '
                               f'0000000386", got {line[:80]!r}')
        out.add((drive_folder(tokens[1], where), int(tokens[2])))
    return out


def read_cam_to_cam(path: PathLike) -> Dict[str, np.ndarray]:
    """
    Parse the numeric lines of ``calib_cam_to_cam.txt`` by label (``calib_time`` is skipped).

    :return: {'P_rect_02': (12,) float64, ...}.
    """
    out = {}
    for n, line in read_lines(path, 'KITTI raw calibration (calib_cam_to_cam.txt)'):
        label, sep, values = line.partition(':')
        if not sep:
            raise DatasetError(f'{path}, line {n}: expected "LABEL: numbers", got {line[:60]!r}')
        if label.strip() == 'calib_time':
            continue
        out[label.strip()] = parse_floats(values, path, n, None, f'numbers of {label.strip()}')
    return out


def read_raw_timestamps(path: PathLike) -> np.ndarray:
    """Read a KITTI raw ``timestamps.txt`` ('2011-09-26 13:02:25.964389445') as Unix seconds."""
    stamps = []
    for n, line in read_lines(path, 'KITTI raw timestamps (timestamps.txt)'):
        try:
            day, _, frac = line.partition('.')
            whole = datetime.strptime(day, '%Y-%m-%d %H:%M:%S').replace(tzinfo=timezone.utc)
            stamps.append(whole.timestamp() + (float('0.' + frac) if frac else 0.0))
        except ValueError as e:
            raise DatasetError(f'{path}, line {n}: expected "YYYY-MM-DD HH:MM:SS.fffffffff", '
                               f'got {line[:60]!r}') from e
    return np.array(stamps, dtype=np.float64)


def _resolve(root: Path, path: PathLike) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


class KittiRawDataset(PairDataset):
    """
    Frame pairs (f, f + stride) of KITTI raw drives (or single frames), resized.

    Without ``split_file`` every drive under ``root`` is used; ``exclude_scenes_file`` removes
    drives (the Eigen test scenes for training) and ``static_frames_file`` removes pairs that
    touch a static frame. With ``split_file`` each listed frame is frame 1 of a pair.
    """

    def __init__(self, root: PathLike, split_file: Optional[PathLike] = None,
                 exclude_scenes_file: Optional[PathLike] = None,
                 static_frames_file: Optional[PathLike] = None,
                 cameras: Sequence[str] = ('02',), height: int = 256, width: int = 832,
                 stride: int = 1, bgr: bool = False, pairs: bool = True,
                 transform: Optional[Callable[[Sample], Sample]] = None):
        """
        Index the frames (the images are read in ``__getitem__``).

        :param root: folder holding the date folders.
        :param split_file: frame list (relative to ``root`` or absolute); None scans ``root``.
        :param exclude_scenes_file: drives to leave out (e.g. Eigen test scenes), or None.
        :param static_frames_file: static frames to leave out, or None.
        :param cameras: cameras used when scanning: '02' (left), '03' (right) or both.
        :param height: network image height.
        :param width: network image width.
        :param stride: frame distance of a pair.
        :param bgr: BGR channel order.
        :param pairs: False for single frames (e.g. the Eigen depth test list).
        :param transform: optional callable applied to each sample.
        """
        super().__init__(height, width, stride, bgr, pairs, transform)
        self.root = require_path(root, 'KITTI raw root', is_dir=True)
        for c in cameras:
            if str(c) not in CAMERAS:
                raise ValueError(f'unknown KITTI raw camera {c!r}; use "02" (left) or "03" '
                                 '(right)')
        self.cameras = tuple(CAMERAS[str(c)] for c in cameras)
        self._files: Dict[Tuple[str, str], Dict[int, Path]] = {}
        self._K: Dict[Tuple[str, str], np.ndarray] = {}
        self._stamps: Dict[Tuple[str, str], np.ndarray] = {}
        excluded = (read_scene_list(_resolve(self.root, exclude_scenes_file))
                    if exclude_scenes_file is not None else set())
        static = (read_static_frames(_resolve(self.root, static_frames_file))
                  if static_frames_file is not None else set())
        self.num_static_dropped = 0

        def keep(drive, f1, f2):
            if (drive, f1) in static or (f2 is not None and (drive, f2) in static):
                self.num_static_dropped += 1
                return False
            return True

        if split_file is not None:
            list_path = _resolve(self.root, split_file)
            for n, line in read_lines(list_path, 'KITTI raw frame list'):
                drive, camera, f1 = parse_frame_line(line, f'{list_path}, line {n}')
                if drive in excluded:
                    continue
                f2 = f1 + stride if pairs else None
                for f in (f1, f2):
                    if f is not None and f not in self._frames(drive, camera):
                        raise MissingFileError(
                            f'{list_path}, line {n}: image {f:010d} of {drive} camera '
                            f'{camera} not found in {self._image_dir(drive, camera)}')
                if keep(drive, f1, f2):
                    self.items.append((drive, camera, f1, f2))
        else:
            drives = self._scan()
            if not drives:
                raise MissingFileError(f'no KITTI raw drives in {self.root} (expected '
                                       'ROOT/2011_09_26/2011_09_26_drive_0001_sync/image_02/'
                                       'data/0000000000.png)')
            for drive in drives:
                if drive in excluded:
                    continue
                for camera in self.cameras:
                    if not self._image_dir(drive, camera).is_dir():
                        continue
                    for f1, f2 in frame_pair_items(self._frames(drive, camera), stride, pairs):
                        if keep(drive, f1, f2):
                            self.items.append((drive, camera, f1, f2))

    def _scan(self) -> List[str]:
        out = []
        for date in sorted(p for p in self.root.iterdir() if _DATE.match(p.name) and p.is_dir()):
            for d in sorted(date.iterdir()):
                m = _DRIVE.match(d.name)
                if m and d.is_dir() and m.group(1) == date.name and d.name.endswith('_sync'):
                    out.append(d.name)
        return out

    def _image_dir(self, drive: str, camera: str) -> Path:
        return self.root / drive[:10] / drive / f'image_{camera}' / 'data'

    def _frames(self, drive: str, camera: str) -> Dict[int, Path]:
        key = (drive, camera)
        if key not in self._files:
            folder = require_path(self._image_dir(drive, camera),
                                  f'images of {drive} camera {camera}', is_dir=True)
            files = {}
            for p in folder.iterdir():
                if p.suffix.lower() in _EXTENSIONS and p.stem.isdigit():
                    files.setdefault(int(p.stem), p)
            self._files[key] = files
        return self._files[key]

    def intrinsics(self, drive: str, camera: str) -> np.ndarray:
        """Return the (3, 3) native intrinsics ``P_rect_<camera>[:, :3]`` of a drive's date."""
        date = drive[:10]
        if (date, camera) not in self._K:
            path = self.root / date / 'calib_cam_to_cam.txt'
            calib = read_cam_to_cam(path)
            label = f'P_rect_{camera}'
            if label not in calib or calib[label].size != 12:
                raise DatasetError(f'{path}: expected a line "{label}: 12 numbers"')
            self._K[(date, camera)] = calib[label].reshape(3, 4)[:, :3].copy()
        return self._K[(date, camera)]

    def stamps(self, drive: str, camera: str) -> np.ndarray:
        """Return the Unix times in seconds of a drive's camera, indexed by frame number."""
        key = (drive, camera)
        if key not in self._stamps:
            path = self._image_dir(drive, camera).parent / 'timestamps.txt'
            self._stamps[key] = read_raw_timestamps(path)
        return self._stamps[key]

    def _view(self, drive: str, camera: str, f: int):
        path = self._frames(drive, camera).get(f)
        if path is None:
            raise MissingFileError(f'image {f:010d} of {drive} camera {camera} not found in '
                                   f'{self._image_dir(drive, camera)}')
        stamps = self.stamps(drive, camera)
        if f >= stamps.size:
            raise DatasetError(f'{self._image_dir(drive, camera).parent / "timestamps.txt"}: '
                               f'{stamps.size} lines, frame {f} needs at least {f + 1}')
        return path, load_image(path), float(stamps[f])

    def load(self, index: int) -> Sample:
        """Build sample ``index``."""
        drive, camera, f1, f2 = self.items[index]
        K = self.intrinsics(drive, camera)
        path1, image1, stamp1 = self._view(drive, camera, f1)
        img1, K_net = prepare_image(image1, K, self.hw, self.bgr)
        sample = {'image1': img1, 'K': K_net,
                  'native_hw': torch.tensor(image1.shape[:2], dtype=torch.int64),
                  'stamp1': stamp1, 'frame1': f1, 'sequence': f'{drive}/image_{camera}',
                  'source1': str(path1)}
        if f2 is None:
            return sample
        path2, image2, stamp2 = self._view(drive, camera, f2)
        sample['image2'], _ = prepare_image(image2, K, self.hw, self.bgr)
        sample.update({'stamp2': stamp2, 'frame2': f2, 'source2': str(path2)})
        return sample
