"""
Trajectory files: KITTI odometry and TUM RGB-D formats, KITTI times files, association.

A trajectory is a sequence of camera poses ``T_world_cam`` (4x4, ``X_world = T X_cam``) with
optional time stamps (:class:`Trajectory`). Numpy only (no torch, no ROS).

Formats (one pose a line; blank lines and lines starting with '#' are skipped):

- KITTI: 12 numbers, the 3x4 matrix ``[R | t]`` row-major (``r11 r12 r13 tx r21 ... tz``).
  13 numbers are accepted as a leading time stamp followed by the 12 (as the original
  evaluator's loader does, which reads that column as a frame index).
- TUM: 8 numbers ``timestamp tx ty tz qx qy qz qw`` (Hamilton quaternion, scalar last; the
  conversions are :mod:`trianflow_ros.geometry.lie`'s, written with ``qw >= 0``).

Commas are accepted as separators. :func:`read_trajectory` detects the format from the number
of values on the first data line. :func:`associate` pairs two stamped trajectories by time
stamp as the TUM benchmark tools do (greedy unique pairs with ``|dt| < max_dt``).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from trianflow_ros.geometry.lie import matrix_to_quaternion, quaternion_to_matrix

PathLike = Union[str, Path]

#: Format names accepted by the readers ('auto' detects from the content).
FORMATS = ('auto', 'kitti', 'tum')

#: Default maximum time difference of associated stamps, s (as the TUM benchmark tools).
MAX_DT = 0.02


class TrajectoryFormatError(ValueError):
    """Malformed trajectory or times file; the message names the file and the line."""


@dataclass
class Trajectory:
    """
    Camera poses with optional time stamps.

    :param poses: ``T_world_cam`` for every frame, shape (N, 4, 4), float64.
    :param stamps: time stamps in seconds, shape (N,), float64, or None (frames are indexed).
    :param source: where it came from (a file name), for messages; may be empty.
    """

    poses: np.ndarray
    stamps: Optional[np.ndarray] = None
    source: str = ''

    def __post_init__(self) -> None:
        """Check shapes and values; convert to float64."""
        self.poses = np.asarray(self.poses, dtype=np.float64)
        name = self.source or 'trajectory'
        if self.poses.ndim != 3 or self.poses.shape[1:] != (4, 4):
            raise ValueError(f'{name}: poses must have shape (N, 4, 4), got {self.poses.shape}')
        if not np.all(np.isfinite(self.poses)):
            raise ValueError(f'{name}: poses contain NaN or inf')
        if self.stamps is not None:
            self.stamps = np.asarray(self.stamps, dtype=np.float64)
            if self.stamps.shape != (len(self.poses),):
                raise ValueError(f'{name}: stamps must have shape ({len(self.poses)},), got '
                                 f'{self.stamps.shape}')
            if not np.all(np.isfinite(self.stamps)):
                raise ValueError(f'{name}: stamps contain NaN or inf')

    def __len__(self) -> int:
        """Return the number of poses."""
        return len(self.poses)

    @property
    def positions(self) -> np.ndarray:
        """Return the camera centres in the world frame, shape (N, 3)."""
        return self.poses[:, :3, 3]

    def subset(self, index: np.ndarray) -> 'Trajectory':
        """
        Return the poses (and stamps) at the given indices.

        :param index: integer indices or a boolean mask.
        :return: a new :class:`Trajectory`.
        """
        return Trajectory(self.poses[index],
                          None if self.stamps is None else self.stamps[index], self.source)

    def path_length(self) -> float:
        """Return the length of the path through the camera centres, m."""
        if len(self) < 2:
            return 0.0
        return float(np.sum(np.linalg.norm(np.diff(self.positions, axis=0), axis=1)))


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def data_lines(text: str) -> List[Tuple[int, str]]:
    """Return (1-based line number, stripped line) of the lines not blank and not '#' comments."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s and not s.startswith('#'):
            out.append((lineno, s))
    return out


def _numeric_lines(path: Path) -> List[Tuple[int, List[float]]]:
    """Return (line number, values) of every data line; errors name file and line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise TrajectoryFormatError(f'{path}: file not found') from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrajectoryFormatError(f'{path}: cannot read ({e})') from e
    rows = []
    for lineno, s in data_lines(text):
        try:
            values = [float(v) for v in s.replace(',', ' ').split()]
        except ValueError:
            raise TrajectoryFormatError(
                f'{path}:{lineno}: not a line of numbers: {s[:80]!r}') from None
        if not all(np.isfinite(values)):
            raise TrajectoryFormatError(f'{path}:{lineno}: NaN or inf in {s[:80]!r}')
        rows.append((lineno, values))
    return rows


def _table(path: Path, width: int, what: str, line: str) -> Tuple[List[int], np.ndarray]:
    """
    Return the line numbers and the values (N, width) of a file of ``width`` numbers a line.

    :param what: what the file holds, for the error of an empty file ('poses').
    :param line: what a line must hold, for the error of another count.
    :raises TrajectoryFormatError: no data line, or a line with another count (line named).
    """
    rows = _numeric_lines(path)
    if not rows:
        raise TrajectoryFormatError(f'{path}: no {what} (empty or only comments)')
    for lineno, values in rows:
        if len(values) != width:
            raise TrajectoryFormatError(f'{path}:{lineno}: {len(values)} numbers; {line}')
    return [lineno for lineno, _ in rows], np.array([v for _, v in rows], dtype=np.float64)


def detect_format(path: PathLike) -> str:
    """
    Detect the format of a trajectory file from its first data line.

    :param path: the file.
    :return: 'kitti' (12 or 13 numbers) or 'tum' (8 numbers).
    :raises TrajectoryFormatError: empty file or another count of numbers.
    """
    path = Path(path)
    rows = _numeric_lines(path)
    if not rows:
        raise TrajectoryFormatError(f'{path}: no poses (empty or only comments)')
    lineno, values = rows[0]
    if len(values) in (12, 13):
        return 'kitti'
    if len(values) == 8:
        return 'tum'
    raise TrajectoryFormatError(
        f'{path}:{lineno}: {len(values)} numbers; expected 12 or 13 (KITTI: [stamp] 3x4 '
        f'row-major pose) or 8 (TUM: stamp tx ty tz qx qy qz qw)')


def read_kitti(path: PathLike) -> Trajectory:
    """
    Read a KITTI odometry pose file (12 numbers a line, or 13 with a leading stamp).

    :param path: the file.
    :return: the trajectory; stamps from a 13-number file, else None.
    :raises TrajectoryFormatError: malformed line (file and line named), mixed 12/13 columns,
        or a rotation block that is not (close to) a rotation.
    """
    path = Path(path)
    rows = _numeric_lines(path)
    if not rows:
        raise TrajectoryFormatError(f'{path}: no poses (empty or only comments)')
    width = len(rows[0][1])
    if width not in (12, 13):
        raise TrajectoryFormatError(f'{path}:{rows[0][0]}: {width} numbers; a KITTI pose line '
                                    f'has 12 (3x4 row-major) or 13 (stamp + 12)')
    for lineno, values in rows:
        if len(values) != width:
            raise TrajectoryFormatError(f'{path}:{lineno}: {len(values)} numbers; the file '
                                        f'started with {width} a line')
    data = np.array([v for _, v in rows], dtype=np.float64)
    stamps = data[:, 0].copy() if width == 13 else None
    poses = np.tile(np.eye(4), (len(data), 1, 1))
    poses[:, :3, :4] = data[:, width - 12:].reshape(-1, 3, 4)
    _check_rotations(path, poses, [lineno for lineno, _ in rows])
    return Trajectory(poses, stamps, str(path))


def _check_rotations(path: Path, poses: np.ndarray, linenos: List[int],
                     tol: float = 1e-2) -> None:
    """Reject 3x3 blocks far from a rotation (wrong column order, a matrix of zeros)."""
    R = poses[:, :3, :3]
    dev = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bad = np.flatnonzero((dev > tol) | (det < 0))
    if bad.size:
        i = int(bad[0])
        raise TrajectoryFormatError(
            f'{path}:{linenos[i]}: the 3x3 block is not a rotation (|R R^T - I| = {dev[i]:.3g}, '
            f'det {det[i]:.3g}); expected r11 r12 r13 tx r21 r22 r23 ty r31 r32 r33 tz')


def read_tum(path: PathLike) -> Trajectory:
    """
    Read a TUM RGB-D trajectory file (``timestamp tx ty tz qx qy qz qw``, '#' comments).

    :param path: the file.
    :return: the trajectory with stamps.
    :raises TrajectoryFormatError: malformed line or zero quaternion (file and line named).
    """
    path = Path(path)
    linenos, data = _table(path, 8, 'poses', 'a TUM line has 8 (timestamp tx ty tz qx qy qz qw)')
    zero = np.flatnonzero(np.linalg.norm(data[:, 4:8], axis=1) < 1e-12)
    if zero.size:
        raise TrajectoryFormatError(f'{path}:{linenos[zero[0]]}: quaternion of zero norm')
    poses = np.tile(np.eye(4), (len(data), 1, 1))
    poses[:, :3, :3] = quaternion_to_matrix(data[:, 4:8])
    poses[:, :3, 3] = data[:, 1:4]
    return Trajectory(poses, data[:, 0].copy(), str(path))


def read_times(path: PathLike) -> np.ndarray:
    """
    Read a KITTI times file (``dataset/sequences/XX/times.txt``): one stamp (s) a line.

    :param path: the file.
    :return: stamps, shape (N,), float64.
    :raises TrajectoryFormatError: malformed line (file and line named) or empty file.
    """
    return _table(Path(path), 1, 'time stamps', 'a times file has one stamp a line')[1][:, 0]


def read_trajectory(path: PathLike, fmt: str = 'auto',
                    times: Optional[PathLike] = None) -> Trajectory:
    """
    Read a trajectory file in KITTI or TUM format.

    :param path: the file.
    :param fmt: 'auto' (detected from the content), 'kitti' or 'tum'.
    :param times: optional KITTI times file giving the stamps of a KITTI pose file (one per
        pose; replaces the stamps of a 13-number file).
    :return: the trajectory.
    :raises TrajectoryFormatError: malformed input, or a times file of another length.
    :raises ValueError: unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f'unknown trajectory format {fmt!r}; expected one of {FORMATS}')
    if fmt == 'auto':
        fmt = detect_format(path)
    traj = read_kitti(path) if fmt == 'kitti' else read_tum(path)
    if times is not None:
        if fmt == 'tum':
            raise TrajectoryFormatError(f'{path}: a TUM file has its own stamps; a times file '
                                        f'({times}) applies to KITTI files only')
        stamps = read_times(times)
        if len(stamps) != len(traj):
            raise TrajectoryFormatError(f'{times}: {len(stamps)} stamps but {path} has '
                                        f'{len(traj)} poses')
        traj.stamps = stamps
    return traj


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _number(x: float) -> str:
    """Shortest text that reads back as the same float64."""
    return repr(float(x))


def _write_lines(path: Path, lines: List[str], overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f'{path} exists; pass overwrite=True to replace it')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join(line + '\n' for line in lines))


def write_kitti(path: PathLike, traj: Trajectory, overwrite: bool = False,
                with_stamps: bool = False) -> None:
    """
    Write a KITTI pose file (12 numbers a line; exact float64 round trip).

    :param path: the file to create.
    :param traj: the trajectory.
    :param overwrite: replace an existing file.
    :param with_stamps: write 13 numbers a line, the stamp first (needs stamps).
    :raises FileExistsError: the file exists and ``overwrite`` is False.
    :raises ValueError: ``with_stamps`` without stamps.
    """
    if with_stamps and traj.stamps is None:
        raise ValueError('with_stamps=True needs a trajectory with stamps')
    rows = traj.poses[:, :3, :4].reshape(-1, 12)
    lines = []
    for i, row in enumerate(rows):
        values = ([traj.stamps[i]] if with_stamps else []) + list(row)
        lines.append(' '.join(_number(v) for v in values))
    _write_lines(Path(path), lines, overwrite)


def write_tum(path: PathLike, traj: Trajectory, overwrite: bool = False) -> None:
    """
    Write a TUM trajectory file (``timestamp tx ty tz qx qy qz qw``, with a '#' header).

    :param path: the file to create.
    :param traj: the trajectory; must have stamps.
    :param overwrite: replace an existing file.
    :raises FileExistsError: the file exists and ``overwrite`` is False.
    :raises ValueError: the trajectory has no stamps.
    """
    if traj.stamps is None:
        raise ValueError('the TUM format needs time stamps (give the trajectory stamps, e.g. '
                         'from a KITTI times file)')
    q = matrix_to_quaternion(traj.poses[:, :3, :3])
    t = traj.positions
    lines = ['# timestamp tx ty tz qx qy qz qw']
    for i in range(len(traj)):
        lines.append(' '.join(_number(v) for v in (traj.stamps[i], *t[i], *q[i])))
    _write_lines(Path(path), lines, overwrite)


def write_trajectory(path: PathLike, traj: Trajectory, fmt: str = 'kitti',
                     overwrite: bool = False) -> None:
    """
    Write a trajectory in KITTI or TUM format.

    :param path: the file to create.
    :param traj: the trajectory.
    :param fmt: 'kitti' or 'tum'.
    :param overwrite: replace an existing file.
    :raises FileExistsError: the file exists and ``overwrite`` is False.
    :raises ValueError: unknown ``fmt`` or TUM without stamps.
    """
    if fmt == 'kitti':
        write_kitti(path, traj, overwrite)
    elif fmt == 'tum':
        write_tum(path, traj, overwrite)
    else:
        raise ValueError(f"unknown trajectory format {fmt!r}; expected 'kitti' or 'tum'")


# --------------------------------------------------------------------------------------------
# Association
# --------------------------------------------------------------------------------------------

def associate(stamps_a: np.ndarray, stamps_b: np.ndarray, max_dt: float = MAX_DT,
              method: str = 'greedy', offset: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """
    Pair two lists of time stamps.

    'greedy' (the TUM benchmark tools): every pair with ``|a - (b + offset)| < max_dt`` is a
    candidate; candidates are taken in increasing ``|dt|``, each stamp used at most once.
    'nearest': every stamp of the shorter list takes its nearest stamp of the other list if
    ``|dt| <= max_dt`` (a stamp of the longer list may be used twice).

    :param stamps_a: shape (Na,), s.
    :param stamps_b: shape (Nb,), s.
    :param max_dt: largest accepted time difference, s (``inf``: any).
    :param method: 'greedy' or 'nearest'.
    :param offset: added to ``stamps_b`` before matching, s.
    :return: indices into a and into b of the pairs, in increasing stamp of a.
    """
    a = np.asarray(stamps_a, dtype=np.float64)
    b = np.asarray(stamps_b, dtype=np.float64) + offset
    if method not in ('greedy', 'nearest'):
        raise ValueError(f"unknown association method {method!r}; expected 'greedy' or "
                         f"'nearest'")
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    if method == 'nearest':
        b_is_short = len(b) < len(a)
        query, ref = (b, a) if b_is_short else (a, b)
        order = np.argsort(ref, kind='stable')
        sorted_ref = ref[order]
        pos = np.searchsorted(sorted_ref, query)
        lo = np.clip(pos - 1, 0, len(ref) - 1)
        hi = np.clip(pos, 0, len(ref) - 1)
        nearer_hi = np.abs(sorted_ref[hi] - query) < np.abs(sorted_ref[lo] - query)
        match = order[np.where(nearer_hi, hi, lo)]
        ok = np.abs(ref[match] - query) <= max_dt
        if b_is_short:
            ia, ib = match[ok], np.flatnonzero(ok)
        else:
            ia, ib = np.flatnonzero(ok), match[ok]
    else:
        order_b = np.argsort(b, kind='stable')
        sb = b[order_b]
        lo = np.searchsorted(sb, a - max_dt, side='left')
        hi = np.searchsorted(sb, a + max_dt, side='right')
        cand_a = np.repeat(np.arange(len(a)), hi - lo)
        cand_b = order_b[np.concatenate([np.arange(s, e) for s, e in zip(lo, hi)])
                         .astype(int)]
        dt = np.abs(a[cand_a] - b[cand_b])
        keep = dt < max_dt
        cand_a, cand_b, dt = cand_a[keep], cand_b[keep], dt[keep]
        used_a = np.zeros(len(a), bool)
        used_b = np.zeros(len(b), bool)
        pairs = []
        for k in np.argsort(dt, kind='stable'):
            i, j = cand_a[k], cand_b[k]
            if not used_a[i] and not used_b[j]:
                used_a[i] = used_b[j] = True
                pairs.append((i, j))
        pairs.sort()
        ia = np.array([p[0] for p in pairs], dtype=int)
        ib = np.array([p[1] for p in pairs], dtype=int)
    order = np.argsort(a[ia], kind='stable')
    return ia[order], ib[order]
