"""
Optical-flow metrics of the KITTI 2015 benchmark (numpy, no torch).

Flow arrays here are numpy ``(H, W, 2)`` with channel 0 = u (columns), 1 = v (rows), the layout
of the KITTI PNG files (the torch layers use ``(B, 2, H, W)``: transpose before calling).

With prediction f^ and ground truth f at a valid pixel (Menze & Geiger, CVPR 2015; KITTI 2015
development kit):

    (1) EPE     = ||f^ - f||_2                                 end-point error (px)
    (2) outlier = EPE > 3 px  and  EPE > 0.05 ||f||_2          "Fl" outlier
    (3) Fl      = 100 * (#outliers) / (#valid pixels)           percent

Regions of one KITTI 2015 image: ``all`` = valid pixels of ``flow_occ``; ``noc`` = valid pixels
of ``flow_noc``; ``occ`` = all but not noc; ``move`` / ``static`` = all with object-map id > 0 /
== 0 (``obj_map``). The benchmark figures are per-image values averaged over images (the
original's ``evaluate_flow.py``, notes Sec. 5.2), not pooled over the pixels of all images;
:class:`FlowEvaluator` returns both. A prediction of another size is resized to the ground truth
first (:func:`resize_flow`), as the original did.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

#: Outlier thresholds of eq. (2).
FL_ABS_PX = 3.0
FL_REL = 0.05

#: Region names in the order they are reported.
REGIONS = ('all', 'noc', 'occ', 'move', 'static')


def _check_flow(name: str, flow: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'{name} must have shape (H, W, 2) with channel 0 = u, got {flow.shape}')
    return flow


def resize_flow(flow: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """
    Resize a flow field bilinearly and rescale its vectors to the new pixel units.

    u is multiplied by ``W / w`` and v by ``H / h``.

    :param flow: flow (h, w, 2), channel 0 = u.
    :param size: target (H, W).
    :return: flow (H, W, 2), float32 (float64 input stays float64).
    """
    flow = _check_flow('flow', flow)
    h, w = flow.shape[:2]
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f'target size must be positive, got {size}')
    if flow.dtype not in (np.float32, np.float64):
        flow = flow.astype(np.float32)
    out = cv2.resize(flow, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= out_w / w
    out[..., 1] *= out_h / h
    return out


def epe_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """
    Return the per-pixel end-point error, eq. (1).

    :param pred: predicted flow (H, W, 2).
    :param gt: ground-truth flow (H, W, 2).
    :return: EPE (H, W), float64.
    """
    pred, gt = _check_flow('pred', pred), _check_flow('gt', gt)
    if pred.shape != gt.shape:
        raise ValueError(f'pred {pred.shape} and gt {gt.shape} differ: resize_flow first')
    return np.linalg.norm(pred.astype(np.float64) - gt.astype(np.float64), axis=2)


def outlier_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """
    Return the KITTI 2015 Fl outliers, eq. (2): EPE > 3 px and EPE > 5 % of ``|gt|``.

    Both inequalities are strict; the relative test is written ``EPE > 0.05 |gt|`` so that a
    zero ground-truth vector needs no division.

    :param pred: predicted flow (H, W, 2).
    :param gt: ground-truth flow (H, W, 2).
    :return: bool (H, W).
    """
    epe = epe_map(pred, gt)
    mag = np.linalg.norm(np.asarray(gt, dtype=np.float64), axis=2)
    return (epe > FL_ABS_PX) & (epe > FL_REL * mag)


@dataclass
class RegionStats:
    """
    Sums over the pixels of one region of one image (sums make pooling over images exact).

    :param epe_sum: sum of EPE over the region (px).
    :param outliers: number of Fl outliers in the region.
    :param count: number of pixels in the region.
    """

    epe_sum: float
    outliers: int
    count: int

    @property
    def epe(self) -> float:
        """Mean EPE of the region (px); NaN for an empty region."""
        return self.epe_sum / self.count if self.count else float('nan')

    @property
    def fl(self) -> float:
        """Fl of the region in percent, eq. (3); NaN for an empty region."""
        return 100.0 * self.outliers / self.count if self.count else float('nan')


def _region(epe: np.ndarray, out: np.ndarray, mask: np.ndarray) -> RegionStats:
    return RegionStats(epe_sum=float(epe[mask].sum()), outliers=int(out[mask].sum()),
                       count=int(mask.sum()))


def _check_mask(name: str, mask: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f'{name} must have shape {shape}, got {mask.shape}')
    return mask.astype(bool) if mask.dtype != bool else mask


def eval_flow_image(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, *,
                    gt_noc: Optional[np.ndarray] = None, valid_noc: Optional[np.ndarray] = None,
                    obj_map: Optional[np.ndarray] = None) -> Dict[str, RegionStats]:
    """
    Evaluate one predicted flow against KITTI 2015-style ground truth.

    :param pred: predicted flow (h, w, 2); resized with :func:`resize_flow` when (h, w) differs
        from the ground truth.
    :param gt: ground-truth flow (H, W, 2) (``flow_occ``).
    :param valid: valid pixels of ``gt``, (H, W) bool.
    :param gt_noc: ground truth of the non-occluded pixels (``flow_noc``), (H, W, 2); optional.
    :param valid_noc: its valid pixels, (H, W) bool; needed with ``gt_noc``.
    :param obj_map: object map (H, W), id 0 = static background; adds 'move' / 'static'.
    :return: :class:`RegionStats` per region: 'all', plus 'noc' and 'occ' with ``gt_noc``, plus
        'move' and 'static' with ``obj_map``.
    """
    gt = _check_flow('gt', gt)
    shape = gt.shape[:2]
    valid = _check_mask('valid', valid, shape)
    pred = _check_flow('pred', pred)
    if pred.shape[:2] != shape:
        pred = resize_flow(pred, shape)
    if not np.all(np.isfinite(pred[valid])):
        raise ValueError('prediction has non-finite flow where the ground truth is valid')
    epe = epe_map(pred, gt)
    out = outlier_map(pred, gt)
    stats = {'all': _region(epe, out, valid)}
    if (gt_noc is None) != (valid_noc is None):
        raise ValueError('gt_noc and valid_noc go together')
    if gt_noc is not None:
        gt_noc = _check_flow('gt_noc', gt_noc)
        if gt_noc.shape[:2] != shape:
            raise ValueError(f'gt_noc has shape {gt_noc.shape}, gt {gt.shape}')
        valid_noc = _check_mask('valid_noc', valid_noc, shape)
        stats['noc'] = _region(epe_map(pred, gt_noc), outlier_map(pred, gt_noc), valid_noc)
        stats['occ'] = _region(epe, out, valid & ~valid_noc)
    if obj_map is not None:
        obj_map = np.asarray(obj_map)
        if obj_map.shape != shape:
            raise ValueError(f'obj_map must have shape {shape}, got {obj_map.shape}')
        stats['move'] = _region(epe, out, valid & (obj_map > 0))
        stats['static'] = _region(epe, out, valid & (obj_map == 0))
    return stats


def image_metrics(stats: Dict[str, RegionStats]) -> Dict[str, float]:
    """
    Flatten the region statistics of one image into named figures.

    :param stats: output of :func:`eval_flow_image`.
    :return: ``epe`` / ``fl`` for 'all' and ``epe_<region>`` / ``fl_<region>`` for the others.
    """
    out = {}
    for region, s in stats.items():
        suffix = '' if region == 'all' else '_' + region
        out['epe' + suffix] = s.epe
        out['fl' + suffix] = s.fl
    return out


@dataclass
class FlowSummary:
    """
    Result of :meth:`FlowEvaluator.summary`.

    :param means: per-image figures averaged over the images that have the region (the
        benchmark convention): 'epe', 'fl' (percent), 'epe_noc', 'fl_noc', ...
    :param pooled: the same figures pooled over all pixels of all images (for reference).
    :param count: number of images.
    :param region_counts: number of images with a non-empty region, per region name.
    :param per_image: per-image figures, in order of addition.
    :param names: names given to :meth:`FlowEvaluator.add`.
    """

    means: Dict[str, float]
    pooled: Dict[str, float]
    count: int
    region_counts: Dict[str, int]
    per_image: List[Dict[str, float]]
    names: List[Optional[str]]

    def as_dict(self) -> Dict[str, Optional[float]]:
        """
        Flat JSON-ready dict: means, ``<key>_pooled`` and ``count``.

        'epe', 'epe_noc' and 'fl' are always present (None where not evaluated); NaN becomes None.
        """
        out: Dict[str, Optional[float]] = {'epe': None, 'epe_noc': None, 'fl': None}
        for k, v in self.means.items():
            out[k] = None if np.isnan(v) else v
        for k, v in self.pooled.items():
            out[k + '_pooled'] = None if np.isnan(v) else v
        out['count'] = self.count
        return out


class FlowEvaluator:
    """Accumulate per-image flow statistics; average per image and pool over pixels."""

    def __init__(self):
        """Start empty."""
        self._stats: List[Dict[str, RegionStats]] = []
        self._names: List[Optional[str]] = []

    def add(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, *,
            gt_noc: Optional[np.ndarray] = None, valid_noc: Optional[np.ndarray] = None,
            obj_map: Optional[np.ndarray] = None, name: Optional[str] = None
            ) -> Dict[str, float]:
        """
        Evaluate one image (arguments of :func:`eval_flow_image`) and remember it.

        :param name: optional label (file name), used in error messages and the summary.
        :return: the image's figures (:func:`image_metrics`).
        :raises ValueError: as :func:`eval_flow_image`, the message prefixed with ``name``.
        """
        try:
            stats = eval_flow_image(pred, gt, valid, gt_noc=gt_noc, valid_noc=valid_noc,
                                    obj_map=obj_map)
        except ValueError as e:
            raise ValueError(f'{name}: {e}' if name else str(e)) from e
        self._stats.append(stats)
        self._names.append(name)
        return image_metrics(stats)

    def __len__(self) -> int:
        """Return the number of images added."""
        return len(self._stats)

    def summary(self) -> FlowSummary:
        """
        Average per image (images with an empty region are left out of that region's mean).

        :return: a :class:`FlowSummary`.
        """
        means, pooled, region_counts = {}, {}, {}
        for region in REGIONS:
            suffix = '' if region == 'all' else '_' + region
            present = [s[region] for s in self._stats if region in s]
            nonempty = [r for r in present if r.count > 0]
            if not present:
                continue
            region_counts[region] = len(nonempty)
            nan = float('nan')
            means['epe' + suffix] = float(np.mean([r.epe for r in nonempty])) if nonempty else nan
            means['fl' + suffix] = float(np.mean([r.fl for r in nonempty])) if nonempty else nan
            total = RegionStats(sum(r.epe_sum for r in present), sum(r.outliers for r in present),
                                sum(r.count for r in present))
            pooled['epe' + suffix] = total.epe
            pooled['fl' + suffix] = total.fl
        return FlowSummary(means=means, pooled=pooled, count=len(self._stats),
                           region_counts=region_counts,
                           per_image=[image_metrics(s) for s in self._stats],
                           names=list(self._names))
