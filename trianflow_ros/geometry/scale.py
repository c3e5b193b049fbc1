"""
One-scale alignment of depths: find s with ``s * source ~ target`` per batch element.

TrianFlow aligns the predicted depth *to* the triangulated structure before its depth losses
(source = predicted depth read at the triangulated pixels, target = triangulated depth: the
original's ``register_depth``, a median ratio followed by the closed-form relative least squares
``scale_adapt``). Its VO goes the other way and scales the unit-norm translation to the predicted
depth: call the same primitive with source = triangulated depth, target = predicted depth and
multiply the translation by the result.

The closed-form least squares is scale-equivariant, so the original's median pre-scaling does
not change its result: ``method='lsq'`` alone reproduces ``register_depth``. Unlike the
original (reflection padding), :func:`align_depth_map` leaves points outside the image out.

Only points with a true mask, finite values and ``source > 0`` and ``target > 0`` take part.
An element with no such point gets scale 1 and ``valid = False``; no result is ever NaN.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from trianflow_ros.geometry.checks import check_shape
from trianflow_ros.geometry.warp import sample_at

METHODS = ('median', 'lsq', 'robust', 'log')


@dataclass
class ScaleFit:
    """
    Result of :func:`fit_scale`.

    :param scale: s with ``s * source ~ target``, shape (B,); 1 where ``valid`` is False.
    :param valid: whether the element had enough usable points, shape (B,) bool.
    :param inliers: points used by the final estimate, shape (B, N) bool (for 'median' and
        'lsq' all usable points; for 'robust' the consensus set).
    """

    scale: torch.Tensor
    valid: torch.Tensor
    inliers: torch.Tensor


def usable_points(source: torch.Tensor, target: torch.Tensor,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """
    Return the points that can take part in a scale fit.

    :param source: depths to be scaled, shape (B, N).
    :param target: reference depths, shape (B, N).
    :param mask: optional extra selection, shape (B, N), bool or weights (> 0 = selected).
    :return: ``mask & finite & source > 0 & target > 0``, shape (B, N) bool. Not differentiable.
    """
    ok = torch.isfinite(source) & torch.isfinite(target) & (source > 0) & (target > 0)
    if mask is not None:
        ok = ok & (mask > 0 if mask.dtype != torch.bool else mask)
    return ok


def masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Median of the masked entries of every row (mean of the two middle values for even counts).

    :param values: shape (B, N).
    :param mask: shape (B, N) bool; a row without a true entry returns 0.
    :return: shape (B,). Differentiable w.r.t. values (through the selected entries).
    """
    n = mask.sum(dim=1)
    filled = torch.where(mask, values, torch.full_like(values, float('inf')))
    ordered, _ = torch.sort(filled, dim=1)
    lo = ((n - 1).clamp(min=0) // 2).unsqueeze(1)
    hi = (n // 2).clamp(max=values.shape[1] - 1).unsqueeze(1)
    med = 0.5 * (ordered.gather(1, lo) + ordered.gather(1, hi)).squeeze(1)
    return torch.where(n > 0, med, torch.zeros_like(med))


def _lsq_scale(source: torch.Tensor, target: torch.Tensor, ok: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Relative least squares: argmin_s sum (1 - s source / target)^2 over ``ok``."""
    r = torch.where(ok, source / torch.where(ok, target, torch.ones_like(target)),
                    torch.zeros_like(source))
    num = r.sum(dim=1)
    den = (r * r).sum(dim=1)
    good = den > 0
    return num / torch.where(good, den, torch.ones_like(den)), good


def _max_consensus_log_scale(log_ratio: torch.Tensor, ok: torch.Tensor, threshold: float
                             ) -> torch.Tensor:
    """
    Exact 1-D maximum consensus: the log scale c maximising #{i: |log_ratio_i - c| < thr}.

    Sorting the log ratios, every window [l_i, l_i + 2 thr] is scored at once with
    searchsorted; the best window's median is returned, shape (B,).
    """
    filled = torch.where(ok, log_ratio, torch.full_like(log_ratio, float('inf')))
    ordered, _ = torch.sort(filled, dim=1)
    valid_sorted = torch.isfinite(ordered)
    end = torch.searchsorted(ordered, ordered + 2.0 * threshold, right=True)  # (B, N)
    start = torch.arange(ordered.shape[1], device=ordered.device).expand_as(end)
    count = torch.where(valid_sorted, end - start, torch.full_like(end, -1))
    best = count.argmax(dim=1, keepdim=True)                                  # first maximum
    window = (start >= best) & (start < best + count.gather(1, best))
    return masked_median(ordered.masked_fill(~valid_sorted, 0.0), window & valid_sorted)


def fit_scale(source: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
              method: str = 'median', *, threshold: float = 0.1, refits: int = 2,
              weights: Optional[torch.Tensor] = None) -> ScaleFit:
    """
    Fit one scale per batch element so that ``scale * source ~ target``.

    The methods:

    - ``'median'``: ``median(target) / median(source)`` over the usable points (the original's
      first step; even counts use the mean of the two middle values).
    - ``'lsq'``: closed-form relative least squares, minimising ``sum (1 - s source/target)^2``:
      ``s = sum(source/target) / sum(source^2/target^2)`` (the original's ``scale_adapt``).
    - ``'robust'``: per-point log ratios ``log(target/source)`` are hypotheses of ``log s``; the
      exact maximum-consensus window of half-width ``threshold`` (what RANSAC over one-point
      hypotheses approximates, found deterministically by sorting) gives a first estimate; then
      ``refits`` times: inliers ``|log(s source/target)| < threshold``, ``'lsq'`` on the
      inliers. Survives any outlier fraction as long as the inliers form the largest cluster.
    - ``'log'``: the consensus of ``'robust'``, then ``refits`` times the weighted mean of the
      inliers' log ratios, ``log s = sum w log(target/source) / sum w``. Unbiased when the
      relative errors are symmetric in log space, which the least-squares refit is not: with
      ``r = source/target`` carrying a relative error ``e``, ``sum r / sum r^2`` is low by
      about ``var(e)`` (measured in the VO: -0.2 % per pair at 1 % depth noise, a monotonic
      drift of the propagated scale, 10 % over 50 KITTI frames). Use it when scales are
      chained (odometry); ``weights`` (e.g. inverse log-depth variances) weigh the points.

    Batch elements may have different numbers of usable points; all of them are solved at once.

    :param source: depths to be scaled, shape (B, N).
    :param target: reference depths, shape (B, N).
    :param mask: optional selection, shape (B, N), bool or weights (> 0 = selected).
    :param method: 'median', 'lsq' or 'robust'.
    :param threshold: 'robust' only: inlier threshold on ``|log(s source/target)|`` (0.1 is about
        10 % relative depth error).
    :param refits: 'robust' only: number of inlier / least-squares refits.
    :param weights: 'log' only: non-negative weights of the points, shape (B, N) (None: 1).
    :return: :class:`ScaleFit` (scale (B,), valid (B,), inliers (B, N)). 'median' and 'lsq' are
        differentiable w.r.t. source and target; 'robust' through its final least-squares refit
        (the inlier selection is not differentiable).
    """
    check_shape(source, 'source', ('B', 'N'))
    check_shape(target, 'target', source.shape)
    if mask is not None:
        check_shape(mask, 'mask', source.shape)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    ok = usable_points(source, target, mask)
    valid = ok.any(dim=1)
    if method == 'median':
        num, den = masked_median(target, ok), masked_median(source, ok)
        scale = num / torch.where(valid, den, torch.ones_like(den))
        inliers = ok
    elif method == 'lsq':
        scale, good = _lsq_scale(source, target, ok)
        valid = valid & good
        inliers = ok
    elif method == 'log':
        if weights is not None:
            check_shape(weights, 'weights', source.shape)
            ok = ok & (weights > 0)
            w = torch.where(ok, weights.to(source.dtype), torch.zeros_like(source))
        else:
            w = ok.to(source.dtype)
        safe_s = torch.where(ok, source, torch.ones_like(source))
        safe_t = torch.where(ok, target, torch.ones_like(target))
        log_ratio = safe_t.log() - safe_s.log()
        log_s = _max_consensus_log_scale(log_ratio.detach(), ok, threshold)
        inliers = ok
        for _ in range(max(refits, 1)):
            inliers = ok & ((log_ratio.detach() - log_s.detach().unsqueeze(1)).abs() < threshold)
            wi = torch.where(inliers, w, torch.zeros_like(w))
            total = wi.sum(dim=1)
            good = total > 0
            mean = (wi * log_ratio).sum(dim=1) / torch.where(good, total, torch.ones_like(total))
            log_s = torch.where(good, mean, log_s)
        scale = log_s.exp()
        valid = valid & inliers.any(dim=1)
    else:
        safe_s = torch.where(ok, source, torch.ones_like(source))
        safe_t = torch.where(ok, target, torch.ones_like(target))
        log_ratio = (safe_t.log() - safe_s.log()).detach()
        log_s = _max_consensus_log_scale(log_ratio, ok, threshold)
        inliers = ok
        scale = log_s.exp()
        for _ in range(max(refits, 1)):
            inliers = ok & ((log_ratio - scale.detach().log().unsqueeze(1)).abs() < threshold)
            refit, good = _lsq_scale(source, target, inliers)
            scale = torch.where(good, refit, scale)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        valid = valid & inliers.any(dim=1)
    scale = torch.where(valid, scale, torch.ones_like(scale))
    return ScaleFit(scale=scale, valid=valid, inliers=inliers & valid.unsqueeze(1))


def align_scale(source: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                method: str = 'median', *, threshold: float = 0.1, refits: int = 2
                ) -> torch.Tensor:
    """
    Return the scale s (B,) with ``s * source ~ target``; see :func:`fit_scale`.

    Use :func:`fit_scale` for the ``valid`` flag (elements without usable points get s = 1) and
    the inlier mask.

    :param source: depths to be scaled, shape (B, N).
    :param target: reference depths, shape (B, N).
    :param mask: optional selection, shape (B, N), bool or weights.
    :param method: 'median', 'lsq' or 'robust'.
    :param threshold: 'robust' only, inlier threshold on the log ratio.
    :param refits: 'robust' only, number of least-squares refits.
    :return: scale, shape (B,). Differentiable as described in :func:`fit_scale`.
    """
    return fit_scale(source, target, mask, method, threshold=threshold, refits=refits).scale


def align_depth_map(depth: torch.Tensor, x: torch.Tensor, depth_tri: torch.Tensor,
                    mask: Optional[torch.Tensor] = None, method: str = 'lsq', *,
                    threshold: float = 0.1, refits: int = 2
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Scale a predicted depth map to triangulated depths (TrianFlow's ``register_depth``).

    The map is read bilinearly at the triangulated pixels (``sample_at``, align_corners=True);
    pixels outside ``[0, W-1] x [0, H-1]`` are left out of the fit.

    :param depth: predicted depth map, shape (B, 1, H, W).
    :param x: pixels of the triangulated points in this image, shape (B, N, 2).
    :param depth_tri: triangulated depths at those pixels, shape (B, N).
    :param mask: optional selection, shape (B, N), bool or weights.
    :param method: 'median', 'lsq' or 'robust' (see :func:`fit_scale`).
    :param threshold: 'robust' only, inlier threshold on the log ratio.
    :param refits: 'robust' only, number of least-squares refits.
    :return: scale (B,) (1 where no point was usable) and the aligned depth ``scale * depth``
        (B, 1, H, W). Differentiable as described in :func:`fit_scale`.
    """
    check_shape(depth, 'depth', ('B', 1, None, None))
    b, _, h, w = depth.shape
    check_shape(x, 'x', (b, 'N', 2))
    check_shape(depth_tri, 'depth_tri', (b, x.shape[1]))
    sampled = sample_at(depth, x, padding_mode='border', align_corners=True)[..., 0]  # (B, N)
    inside = ((x[..., 0] >= 0) & (x[..., 0] <= w - 1) & (x[..., 1] >= 0) & (x[..., 1] <= h - 1))
    if mask is not None:
        check_shape(mask, 'mask', (b, x.shape[1]))
        inside = inside & (mask > 0 if mask.dtype != torch.bool else mask)
    scale = align_scale(sampled, depth_tri, inside, method, threshold=threshold, refits=refits)
    return scale, depth * scale[:, None, None, None]
