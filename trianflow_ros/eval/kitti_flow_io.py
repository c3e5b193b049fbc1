"""
KITTI 16-bit PNG codecs: optical flow, disparity and depth maps.

Flow (KITTI 2012/2015 ``flow_occ`` / ``flow_noc``): a 3-channel uint16 PNG whose channels in
file (RGB) order are

    R = u * 64 + 2^15,   G = v * 64 + 2^15,   B = 1 if valid else 0

so flow is stored in steps of 1/64 px within [-512, 512). OpenCV reads and writes the channels
in BGR order: ``img[..., 2]`` is u, ``img[..., 1]`` is v, ``img[..., 0]`` the valid flag.

Disparity (KITTI ``disp_occ_0`` etc.) and depth (KITTI depth completion / ``gt_depths``
exports): a 1-channel uint16 PNG with ``value = round(x * 256)``; 0 means invalid.

Values on the quantisation grid round-trip exactly.
"""

from pathlib import Path
from typing import Optional, Tuple, Union

import cv2
import numpy as np

PathLike = Union[str, Path]

FLOW_SCALE = 64.0
FLOW_OFFSET = 2.0 ** 15
#: Largest |flow| the PNG can hold on each side (px): codes 0..65535.
FLOW_MIN = -FLOW_OFFSET / FLOW_SCALE
FLOW_MAX = (65535.0 - FLOW_OFFSET) / FLOW_SCALE
PNG16_SCALE = 256.0


def _imread16(path: PathLike, channels: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f'cannot read image {path} (missing file or not an image)')
    if img.dtype != np.uint16:
        raise ValueError(f'{path}: expected a 16-bit PNG, got {img.dtype}')
    got = 1 if img.ndim == 2 else img.shape[2]
    if got != channels:
        raise ValueError(f'{path}: expected {channels} channel(s), got {got}')
    return img


def _imwrite(path: PathLike, img: np.ndarray) -> None:
    path = Path(path)
    if path.suffix.lower() != '.png':
        raise ValueError(f'{path}: KITTI maps are written as .png')
    if not cv2.imwrite(str(path), img):
        raise OSError(f'cannot write {path}')


def encode_flow(flow: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Encode flow into the KITTI uint16 image in OpenCV (BGR) channel order.

    Values are rounded to 1/64 px and clipped to [FLOW_MIN, FLOW_MAX]; non-finite vectors are
    stored as zero flow and marked invalid.

    :param flow: flow (H, W, 2), channel 0 = u.
    :param valid: (H, W) bool; None = valid wherever the flow is finite.
    :return: uint16 (H, W, 3) as ``[valid, v, u]`` (ready for ``cv2.imwrite``).
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'flow must have shape (H, W, 2), got {flow.shape}')
    finite = np.all(np.isfinite(flow), axis=2)
    if valid is None:
        valid = finite
    else:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != flow.shape[:2]:
            raise ValueError(f'valid must have shape {flow.shape[:2]}, got {valid.shape}')
        valid = valid & finite
    code = np.where(finite[..., None], flow, 0.0) * FLOW_SCALE + FLOW_OFFSET
    code = np.clip(np.round(code), 0, 65535).astype(np.uint16)
    img = np.empty(flow.shape[:2] + (3,), dtype=np.uint16)
    img[..., 0] = valid
    img[..., 1] = code[..., 1]
    img[..., 2] = code[..., 0]
    return img


def decode_flow(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    Decode a KITTI flow image read by OpenCV (BGR channel order).

    :param img: uint16 (H, W, 3) as ``[valid, v, u]``.
    :return: (flow (H, W, 2) float32 with channel 0 = u, valid (H, W) bool). Flow at invalid
        pixels is decoded as stored and carries no meaning.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'KITTI flow image must be (H, W, 3), got {img.shape}')
    flow = np.empty(img.shape[:2] + (2,), dtype=np.float32)
    flow[..., 0] = (img[..., 2].astype(np.float32) - FLOW_OFFSET) / FLOW_SCALE
    flow[..., 1] = (img[..., 1].astype(np.float32) - FLOW_OFFSET) / FLOW_SCALE
    return flow, img[..., 0] > 0


def read_kitti_flow(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """
    Read a KITTI flow PNG.

    :param path: a 16-bit 3-channel PNG (``flow_occ/000000_10.png``).
    :return: (flow (H, W, 2) float32, channel 0 = u; valid (H, W) bool).
    :raises FileNotFoundError: unreadable file. ``ValueError``: not a 16-bit 3-channel PNG.
    """
    return decode_flow(_imread16(path, 3))


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: Optional[np.ndarray] = None
                     ) -> None:
    """
    Write a KITTI flow PNG (see :func:`encode_flow` for rounding, clipping and validity).

    :param path: output .png path.
    :param flow: flow (H, W, 2), channel 0 = u.
    :param valid: (H, W) bool; None = valid wherever finite.
    """
    _imwrite(path, encode_flow(flow, valid))


def read_png16(path: PathLike, scale: float = PNG16_SCALE) -> Tuple[np.ndarray, np.ndarray]:
    """
    Read a 1-channel 16-bit PNG map stored as ``value = x * scale`` with 0 = invalid.

    :param path: the PNG.
    :param scale: 256 for KITTI disparity and depth.
    :return: (map (H, W) float32, 0 where invalid; valid (H, W) bool).
    """
    img = _imread16(path, 1)
    return img.astype(np.float32) / np.float32(scale), img > 0


def write_png16(path: PathLike, values: np.ndarray, scale: float = PNG16_SCALE) -> None:
    """
    Write a map as a 1-channel 16-bit PNG, ``value = round(x * scale)``.

    Non-finite and non-positive values are written as 0 (invalid); values above
    ``65535 / scale`` are clipped. A positive value that rounds to 0 becomes invalid.

    :param path: output .png path.
    :param values: map (H, W).
    :param scale: 256 for KITTI disparity and depth.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f'map must have shape (H, W), got {values.shape}')
    ok = np.isfinite(values) & (values > 0)
    code = np.clip(np.round(np.where(ok, values, 0.0) * scale), 0, 65535)
    _imwrite(path, code.astype(np.uint16))


def read_kitti_disparity(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """
    Read a KITTI disparity PNG (disparity = value / 256 px, 0 = invalid).

    :param path: the PNG.
    :return: (disparity (H, W) float32, valid (H, W) bool).
    """
    return read_png16(path, PNG16_SCALE)


def write_kitti_disparity(path: PathLike, disp: np.ndarray) -> None:
    """
    Write a KITTI disparity PNG (value = round(disparity * 256), 0 = invalid).

    :param path: output .png path.
    :param disp: disparity (H, W) in px; non-positive or non-finite = invalid.
    """
    write_png16(path, disp, PNG16_SCALE)


def read_depth_png(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """
    Read a KITTI-convention depth PNG (depth = value / 256 m, 0 = invalid).

    :param path: the PNG.
    :return: (depth (H, W) float32 in m, valid (H, W) bool).
    """
    return read_png16(path, PNG16_SCALE)


def write_depth_png(path: PathLike, depth: np.ndarray) -> None:
    """
    Write a KITTI-convention depth PNG (value = round(depth * 256), up to 255.996 m).

    :param path: output .png path.
    :param depth: depth (H, W) in m; non-positive or non-finite = invalid.
    """
    write_png16(path, depth, PNG16_SCALE)
