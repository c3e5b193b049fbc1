"""
The depth the node publishes: at the camera's resolution (default) or the working one.

The odometry computes depth at its working resolution (the network's input size, e.g.
64 x 192). Overlaying or fusing it needs the camera's pixel grid, so :func:`resize_depth`
brings it there: bilinear where all four neighbours are known, the nearest pixel elsewhere,
so a known depth is never blended with an unknown (0) one and no edge gets half-depths.
The intrinsics of the published depth are the camera's own K (at the image size) and its
distortion: the core's depth lies on the raw (distorted) pixel grid of the image.
"""

from typing import Optional, Tuple

import cv2
import numpy as np

from trianflow_ros.ros.conversions import scale_K

#: ``depth_resolution`` values.
RESOLUTIONS = ('camera', 'network')
_NEAREST = getattr(cv2, 'INTER_NEAREST_EXACT', cv2.INTER_NEAREST)


def resize_depth(depth: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """
    Resize a depth map; unknown pixels (0, negative, non-finite) stay unknown (0).

    :param depth: (h, w) depth, 0 = unknown.
    :param hw: (height, width) of the result.
    :return: (H, W) float32, finite, >= 0. Pixel centres are aligned (as :func:`scale_K`).
    """
    d = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0)
    d0 = np.where(valid, d, 0.0).astype(np.float32)
    if tuple(d0.shape) == tuple(hw):
        return d0
    size = (int(hw[1]), int(hw[0]))
    linear = cv2.resize(d0, size, interpolation=cv2.INTER_LINEAR)
    weight = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    nearest = cv2.resize(d0, size, interpolation=_NEAREST)
    out = np.where(weight >= 1.0 - 1e-6, linear, nearest)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def depth_output(depth: np.ndarray, K_work: np.ndarray, image_hw: Tuple[int, int],
                 K_image: Optional[np.ndarray], resolution: str = 'camera'
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return the depth to publish and its K.

    :param depth: (h, w) depth at the working resolution (FrameResult.depth).
    :param K_work: (3, 3) K of ``depth`` (FrameResult.K).
    :param image_hw: (height, width) of the input image.
    :param K_image: (3, 3) K of the input image (None: ``K_work`` rescaled).
    :param resolution: 'camera' (the image's size) or 'network' (the working size).
    :return: (depth (H, W) float32, K (3, 3) float64).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f'depth resolution must be one of {RESOLUTIONS}, got {resolution!r}')
    if resolution == 'network' or tuple(depth.shape) == tuple(image_hw):
        return resize_depth(depth, depth.shape), np.asarray(K_work, dtype=np.float64)
    K = (np.asarray(K_image, dtype=np.float64) if K_image is not None
         else scale_K(K_work, depth.shape, image_hw))
    return resize_depth(depth, image_hw), K
