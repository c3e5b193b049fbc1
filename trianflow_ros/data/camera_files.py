"""
Camera description files of a sequence folder: intrinsics and lens distortion.

- Intrinsics (``intrinsics.txt``): 'fx fy cx cy' or the 9 numbers of K (row-major), at the
  native image size; '#' comments.
- Distortion (``distortion.txt``, or ``D.txt`` as in the UZH VAMR data): the text read by
  :meth:`~trianflow_ros.geometry.distortion.Distortion.parse`, ``[model] c1 c2 ...``: a model
  name (plumb_bob, rational_polynomial, equidistant, none) and the coefficients in the ROS
  camera_info ``D`` order; numbers alone are plumb_bob (``k1 k2 [p1 p2 [k3]]``, missing ones
  are 0). An empty file (or only comments) is the pinhole camera.

Readers look for these files in the sequence folder (image folders: beside the intrinsics
file); ``find_distortion_file`` gives the one found first, in ``DISTORTION_FILES`` order.
"""

from pathlib import Path
from typing import Optional, Union

import numpy as np

from trianflow_ros.data.sample import DatasetError, parse_floats, PathLike, read_lines
from trianflow_ros.data.sample import require_path
from trianflow_ros.geometry.distortion import Distortion

#: File names of a folder's intrinsics, in the order they are looked for.
INTRINSICS_FILES = ('intrinsics.txt',)
#: File names of a folder's lens distortion, in the order they are looked for.
DISTORTION_FILES = ('distortion.txt', 'D.txt')

Intrinsics = Union[tuple, list, np.ndarray]


def intrinsics_matrix(values: Intrinsics) -> np.ndarray:
    """Return K (3, 3) float64 from (fx, fy, cx, cy) or from a (3, 3) matrix."""
    a = np.asarray(values, dtype=np.float64)
    if a.shape == (3, 3):
        return a.copy()
    if a.shape != (4,):
        raise ValueError(f'intrinsics must be (fx, fy, cx, cy) or a 3x3 matrix, got {a.shape}')
    fx, fy, cx, cy = a
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def read_intrinsics_file(path: PathLike) -> np.ndarray:
    """
    Read intrinsics from a text file: 'fx fy cx cy' or the 9 numbers of K (row-major).

    :return: (3, 3) float64.
    :raises MissingFileError: the file does not exist.
    :raises DatasetError: it does not hold 4 or 9 numbers.
    """
    values = [v for n, line in read_lines(path, 'intrinsics file (intrinsics.txt)')
              for v in parse_floats(line, path, n, None, 'intrinsics')]
    if len(values) not in (4, 9):
        raise DatasetError(f'{path}: expected "fx fy cx cy" or the 9 numbers of K, '
                           f'got {len(values)} numbers')
    return intrinsics_matrix(values if len(values) == 4 else np.reshape(values, (3, 3)))


def read_distortion_file(path: PathLike) -> Distortion:
    """
    Read a lens distortion file: ``[model] c1 c2 ...`` (numbers alone: plumb_bob).

    :return: the :class:`~trianflow_ros.geometry.distortion.Distortion` (model 'none' for an
        empty file).
    :raises MissingFileError: the file does not exist.
    :raises DatasetError: unreadable text, an unknown model or a wrong number of coefficients
        (the message names the file and the expected format).
    """
    p = require_path(path, 'lens distortion file (distortion.txt / D.txt)')
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f'lens distortion file: cannot read {p} as text ({e})') from e
    try:
        return Distortion.parse(text)
    except ValueError as e:
        raise DatasetError(f'{p}: {_one_line(str(e))}') from None


def find_distortion_file(folder: PathLike) -> Optional[Path]:
    """Return the first of ``DISTORTION_FILES`` present in ``folder``, or None."""
    for name in DISTORTION_FILES:
        p = Path(folder) / name
        if p.is_file():
            return p
    return None


def find_intrinsics_file(folder: PathLike) -> Optional[Path]:
    """Return the first of ``INTRINSICS_FILES`` present in ``folder``, or None."""
    for name in INTRINSICS_FILES:
        p = Path(folder) / name
        if p.is_file():
            return p
    return None


def parse_distortion_option(value: str) -> Distortion:
    """
    Read a ``--distortion`` value: a file path, or the text itself (``"plumb_bob k1 k2 ..."``).

    An existing file is read with :func:`read_distortion_file`; otherwise the value is parsed
    as text, and a value that is neither (e.g. a mistyped path) raises an error naming both.

    :raises DatasetError: not a readable file and not valid distortion text.
    """
    text = str(value).strip()
    if Path(text).is_file():
        return read_distortion_file(text)
    try:
        return Distortion.parse(text)
    except ValueError as e:
        looks_like_path = '/' in text or text.lower().endswith('.txt')
        if looks_like_path:
            raise DatasetError(f'lens distortion file not found: {text}') from None
        raise DatasetError(f'--distortion {text!r}: {_one_line(str(e))}') from None


def describe_distortion(dist: Optional[Distortion]) -> str:
    """Return a one-line description of a distortion for logs ('none (pinhole)' or model + D)."""
    if dist is None or dist.is_identity:
        return 'none (pinhole)'
    return f'{dist.model} D = [{", ".join(f"{c:g}" for c in dist.coeffs)}]'


def _one_line(text: str) -> str:
    return ' '.join(text.split())
