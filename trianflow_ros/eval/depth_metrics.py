"""
Single-image depth metrics and the KITTI Eigen / NYUv2 evaluation protocols (numpy, no torch).

Metrics over the N valid pixels with ground truth d and prediction d^ (Eigen et al., NIPS 2014,
Sec. 4; the numbering below is used in the comments):

    (1) AbsRel   = mean(|d - d^| / d)
    (2) SqRel    = mean((d - d^)^2 / d)
    (3) RMSE     = sqrt(mean((d - d^)^2))
    (4) RMSElog  = sqrt(mean((ln d - ln d^)^2))
    (5) log10    = mean(|log10 d - log10 d^|)               (NYUv2 tables)
    (6) a_k      = mean(max(d / d^, d^ / d) < 1.25^k), k = 1, 2, 3

Protocol of one image (the original's ``test.py`` / ``evaluate_depth.py``, notes Sec. 5.1, 5.4):

    (7) resize the predicted depth to the ground-truth size (bilinear);
    (8) valid = min_depth < d < max_depth  and  crop;
    (9) per-image median scaling d^ <- d^ * median(d) / median(d^) over the valid pixels;
    (10) clamp d and d^ to [min_depth, max_depth]; metrics (1)-(6) on the valid pixels.

Evaluation takes DEPTH predictions. Convert the network's sigmoid disparity with the mapping the
network was trained with (:func:`disp_to_depth_affine` with ``depth_net.min_depth`` /
``depth_net.max_depth`` of the config, 0.1..100 m by default). The original evaluated KITTI with
``1 / (disp + 1e-4)`` and NYUv2 with ``1 / disp`` instead (notes Sec. 2.2, 6.2 item 11);
:func:`disp_to_depth_eval_original` reproduces that for parity with its published numbers.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

#: Metric names in the order of equations (1)-(6).
METRIC_NAMES = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10', 'a1', 'a2', 'a3')

#: Columns of the printed KITTI table and of the NYUv2 table (log10 in place of rmse_log).
KITTI_COLUMNS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3')
NYU_COLUMNS = ('abs_rel', 'sq_rel', 'rmse', 'log10', 'a1', 'a2', 'a3')

#: Garg et al. (ECCV 2016) crop as fractions (row_start, row_end, col_start, col_end).
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
#: Eigen et al. (NIPS 2014) crop as fractions (row_start, row_end, col_start, col_end).
EIGEN_CROP = (0.3324324, 0.91351351, 0.0359477, 0.96405229)
#: NYUv2 crop in pixels of the 480x640 frame: rows [45, 472), cols [41, 602).
NYU_CROP = (45, 472, 41, 602)
NYU_SHAPE = (480, 640)

CROPS = ('garg', 'eigen', 'nyu', None)


def compute_depth_errors(gt: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
    """
    Compute metrics (1)-(6) of paired valid depths.

    No masking, scaling or clamping happens here: pass the valid pixels only.

    :param gt: ground-truth depths, shape (N,), all finite and > 0.
    :param pred: predicted depths, shape (N,), all finite and > 0.
    :return: dict with the keys of :data:`METRIC_NAMES` (floats; a1..a3 as fractions in [0, 1]).
    :raises ValueError: on shape mismatch, no points, or non-finite / non-positive values.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.ndim != 1 or gt.shape != pred.shape:
        raise ValueError(f'gt and pred must be 1-D arrays of equal length, got {gt.shape} and '
                         f'{pred.shape}')
    if gt.size == 0:
        raise ValueError('no valid depth to evaluate (empty arrays)')
    for name, a in (('gt', gt), ('pred', pred)):
        if not np.all(np.isfinite(a)) or not np.all(a > 0):
            raise ValueError(f'{name} depths must be finite and > 0 (apply the valid mask and '
                             f'clamp first)')
    diff = gt - pred
    ratio = np.maximum(gt / pred, pred / gt)
    return {
        'abs_rel': float(np.mean(np.abs(diff) / gt)),                      # (1)
        'sq_rel': float(np.mean(diff ** 2 / gt)),                          # (2)
        'rmse': float(np.sqrt(np.mean(diff ** 2))),                        # (3)
        'rmse_log': float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),  # (4)
        'log10': float(np.mean(np.abs(np.log10(gt) - np.log10(pred)))),   # (5)
        'a1': float(np.mean(ratio < 1.25)),                                # (6), k = 1
        'a2': float(np.mean(ratio < 1.25 ** 2)),
        'a3': float(np.mean(ratio < 1.25 ** 3)),
    }


def _fraction_crop_mask(h: int, w: int, fractions: Tuple[float, float, float, float]
                        ) -> np.ndarray:
    # Bounds are the fractions times the size truncated to integers (the protocol casts the
    # products to int32), end-exclusive.
    r0, r1, c0, c1 = (int(f * s) for f, s in zip(fractions, (h, h, w, w)))
    mask = np.zeros((h, w), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def garg_crop_mask(h: int, w: int) -> np.ndarray:
    """
    Return the Garg crop of an h x w image as a boolean mask.

    Rows ``[int(0.40810811 h), int(0.99189189 h))`` and columns ``[int(0.03594771 w),
    int(0.96405229 w))``: the products are truncated to integers as in the KITTI Eigen-split
    protocol, the ends are exclusive. For 375 x 1242 that is rows 153:371, columns 44:1197.

    :param h: image height in pixels.
    :param w: image width in pixels.
    :return: bool array of shape (h, w), True inside the crop.
    """
    return _fraction_crop_mask(h, w, GARG_CROP)


def eigen_crop_mask(h: int, w: int) -> np.ndarray:
    """
    Return the Eigen crop of an h x w image as a boolean mask (same integer truncation as Garg).

    :param h: image height in pixels.
    :param w: image width in pixels.
    :return: bool array of shape (h, w), True inside the crop.
    """
    return _fraction_crop_mask(h, w, EIGEN_CROP)


def nyu_crop_mask(h: int = 480, w: int = 640) -> np.ndarray:
    """
    Return the NYUv2 evaluation crop (rows 45:472, cols 41:602) of a 480 x 640 frame as a mask.

    :param h: image height, must be 480.
    :param w: image width, must be 640.
    :return: bool array of shape (480, 640), True on 427 x 561 pixels.
    :raises ValueError: for another size (a ground truth already cropped to 427 x 561 needs
        ``crop=None``).
    """
    if (h, w) != NYU_SHAPE:
        raise ValueError(f'the NYU crop is defined on 480x640 frames, got {h}x{w}; if the ground '
                         f'truth is already cropped (427x561) use no crop')
    mask = np.zeros((h, w), dtype=bool)
    mask[NYU_CROP[0]:NYU_CROP[1], NYU_CROP[2]:NYU_CROP[3]] = True
    return mask


def crop_mask(crop: Optional[str], h: int, w: int) -> np.ndarray:
    """
    Return the named crop as a boolean mask.

    :param crop: 'garg', 'eigen', 'nyu' or None (the whole image).
    :param h: image height in pixels.
    :param w: image width in pixels.
    :return: bool array of shape (h, w).
    """
    if crop is None or crop == 'none':
        return np.ones((h, w), dtype=bool)
    makers = {'garg': garg_crop_mask, 'eigen': eigen_crop_mask, 'nyu': nyu_crop_mask}
    if crop not in makers:
        raise ValueError(f"unknown crop {crop!r}; choose one of 'garg', 'eigen', 'nyu', None")
    return makers[crop](h, w)


def disp_to_depth_affine(disp: np.ndarray, min_depth: float = 0.1,
                         max_depth: float = 100.0) -> np.ndarray:
    """
    Map a sigmoid disparity to depth as in training: ``1 / (1/max + (1/min - 1/max) disp)``.

    Use the ``depth_net.min_depth`` / ``depth_net.max_depth`` the network was trained with.

    :param disp: sigmoid disparity in [0, 1], any shape.
    :param min_depth: depth of disparity 1 (m).
    :param max_depth: depth of disparity 0 (m).
    :return: depth in [min_depth, max_depth], same shape, float64.
    """
    disp = np.asarray(disp, dtype=np.float64)
    return 1.0 / (1.0 / max_depth + (1.0 / min_depth - 1.0 / max_depth) * disp)


def disp_to_depth_eval_original(disp: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """
    Map a sigmoid disparity to depth as the original's evaluation did: ``1 / (disp + eps)``.

    The original used ``eps = 1e-4`` on KITTI and ``eps = 0`` on NYUv2. Only for parity with its
    published numbers: it is not the mapping the network was trained with (see the module doc).

    :param disp: sigmoid disparity, any shape.
    :param eps: offset added to the disparity.
    :return: depth, same shape, float64.
    """
    return 1.0 / (np.asarray(disp, dtype=np.float64) + eps)


def _check_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:-1])
    if a.ndim != 2 or min(a.shape) == 0:
        raise ValueError(f'{name} must be a 2-D depth map (H, W), got shape {a.shape}')
    return a


def eval_depth_image(gt: np.ndarray, pred: np.ndarray, *, min_depth: float = 1e-3,
                     max_depth: float = 80.0, crop: Optional[str] = 'garg',
                     median_scaling: bool = True) -> Tuple[Dict[str, float], float]:
    """
    Evaluate one predicted depth map against its ground truth, steps (7)-(10).

    :param gt: ground-truth depth (H, W) in m; invalid pixels 0, negative or non-finite.
    :param pred: predicted depth (h, w), any positive scale; resized bilinearly to (H, W).
    :param min_depth: valid ground truth is strictly above; clamp bound (m).
    :param max_depth: valid ground truth is strictly below; clamp bound (m).
    :param crop: 'garg' (KITTI Eigen split), 'eigen', 'nyu' (480x640 ground truth) or None.
    :param median_scaling: scale the prediction by median(gt) / median(pred), eq. (9).
    :return: (metrics of :func:`compute_depth_errors`, scale applied; 1.0 without scaling).
    :raises ValueError: no valid ground-truth pixel, non-finite prediction in the valid region,
        or a non-positive prediction median.
    """
    if not 0 < min_depth < max_depth:
        raise ValueError(f'need 0 < min_depth < max_depth, got {min_depth}, {max_depth}')
    gt = _check_2d('gt', gt).astype(np.float64)
    pred = _check_2d('pred', pred).astype(np.float64)
    h, w = gt.shape
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (w, h), interpolation=cv2.INTER_LINEAR)       # (7)
    with np.errstate(invalid='ignore'):
        valid = (gt > min_depth) & (gt < max_depth)                           # (8)
    valid &= crop_mask(crop, h, w)
    if not valid.any():
        raise ValueError(f'no ground-truth depth in ({min_depth}, {max_depth}) m inside the '
                         f'{crop} crop')
    g, p = gt[valid], pred[valid]
    if not np.all(np.isfinite(p)):
        raise ValueError(f'prediction has {int(np.sum(~np.isfinite(p)))} non-finite depth(s) '
                         f'where the ground truth is valid')
    scale = 1.0
    if median_scaling:
        med_p = float(np.median(p))
        if med_p <= 0:
            raise ValueError(f'median predicted depth is {med_p} <= 0: pass depths, not '
                             f'disparities or log-depths')
        scale = float(np.median(g)) / med_p                                   # (9)
        p = p * scale
    p = np.clip(p, min_depth, max_depth)                                      # (10)
    g = np.clip(g, min_depth, max_depth)
    return compute_depth_errors(g, p), scale


@dataclass
class DepthSummary:
    """
    Result of :meth:`DepthEvaluator.summary`.

    :param means: mean over images of every metric of :data:`METRIC_NAMES`.
    :param count: number of images.
    :param scales: per-image median-scaling factors, shape (count,). Their spread
        (``scale_std / scale_mean``) measures how scale-consistent the depth network is.
    :param per_image: the metric dicts of the individual images, in order of addition.
    :param names: the names given to :meth:`DepthEvaluator.add` (None where none was given).
    """

    means: Dict[str, float]
    count: int
    scales: np.ndarray
    per_image: List[Dict[str, float]] = field(default_factory=list)
    names: List[Optional[str]] = field(default_factory=list)

    @property
    def scale_mean(self) -> float:
        """Return the mean of the median-scaling factors."""
        return float(np.mean(self.scales)) if self.count else float('nan')

    @property
    def scale_std(self) -> float:
        """Return the (population) standard deviation of the median-scaling factors."""
        return float(np.std(self.scales)) if self.count else float('nan')

    def as_dict(self) -> Dict[str, float]:
        """Means, ``count``, ``scale_mean`` and ``scale_std`` as a flat JSON-ready dict."""
        out: Dict[str, float] = dict(self.means)
        out['count'] = self.count
        out['scale_mean'] = self.scale_mean
        out['scale_std'] = self.scale_std
        return out


class DepthEvaluator:
    """
    Accumulate per-image depth metrics and average them over images (the protocol's mean).

    :param min_depth: see :func:`eval_depth_image`.
    :param max_depth: see :func:`eval_depth_image`.
    :param crop: see :func:`eval_depth_image`.
    :param median_scaling: see :func:`eval_depth_image`.
    """

    def __init__(self, *, min_depth: float = 1e-3, max_depth: float = 80.0,
                 crop: Optional[str] = 'garg', median_scaling: bool = True):
        """Store the protocol; see the class doc."""
        if crop not in CROPS:
            raise ValueError(f"unknown crop {crop!r}; choose one of 'garg', 'eigen', 'nyu', None")
        self.min_depth = min_depth
        self.max_depth = max_depth
        self.crop = crop
        self.median_scaling = median_scaling
        self._errors: List[Dict[str, float]] = []
        self._scales: List[float] = []
        self._names: List[Optional[str]] = []

    def add(self, gt: np.ndarray, pred: np.ndarray, name: Optional[str] = None
            ) -> Dict[str, float]:
        """
        Evaluate one image and remember its metrics.

        :param gt: ground-truth depth (H, W) in m.
        :param pred: predicted depth (h, w).
        :param name: optional label (file name), kept in the summary and used in errors.
        :return: the image's metrics.
        :raises ValueError: as :func:`eval_depth_image`, the message prefixed with ``name``.
        """
        try:
            errors, scale = eval_depth_image(
                gt, pred, min_depth=self.min_depth, max_depth=self.max_depth, crop=self.crop,
                median_scaling=self.median_scaling)
        except ValueError as e:
            raise ValueError(f'{name}: {e}' if name else str(e)) from e
        self._errors.append(errors)
        self._scales.append(scale)
        self._names.append(name)
        return errors

    def __len__(self) -> int:
        """Return the number of images added."""
        return len(self._errors)

    def summary(self) -> DepthSummary:
        """
        Average the metrics over the images added so far.

        :return: a :class:`DepthSummary`; means are NaN when no image was added.
        """
        means = {k: (float(np.mean([e[k] for e in self._errors])) if self._errors
                     else float('nan')) for k in METRIC_NAMES}
        return DepthSummary(means=means, count=len(self._errors),
                            scales=np.asarray(self._scales, dtype=np.float64),
                            per_image=list(self._errors), names=list(self._names))
