"""
Shared pieces of the batched RANSACs (essential / fundamental, homography, PnP).

- :func:`sample_minimal_sets`: random minimal sets, every hypothesis of every batch element at
  once;
- :func:`msac_score`: the MSAC quality every one of them ranks its hypotheses by.
"""

from typing import Optional, Union

import torch

from trianflow_ros.geometry.checks import check_shape


def msac_score(r2: torch.Tensor, thr2: Union[float, torch.Tensor],
               weights: Optional[torch.Tensor] = None, dim: int = -1) -> torch.Tensor:
    """
    MSAC quality (higher is better): ``sum_i w_i (1 - min(r2_i, thr2) / thr2)`` over ``dim``.

    The truncated quadratic of MSAC (Torr and Zisserman 2000) written as a quality: a point
    adds its weight for a perfect fit, less as its residual grows, nothing at or beyond the
    threshold. Give an outlier by construction (a point behind the camera) ``r2 >= thr2`` and
    a point that must not count weight 0.

    :param r2: squared residuals, the points along ``dim`` (e.g. (B, H, N)).
    :param thr2: squared threshold, a number or a tensor broadcastable to ``r2`` (e.g. one per
        batch element, (B, 1, 1)).
    :param weights: per-point weights broadcastable to ``r2``, or None for 1.
    :param dim: the dimension of the points, summed over.
    :return: ``r2`` without ``dim``. Differentiable almost everywhere.
    """
    quality = 1.0 - r2.clamp(max=thr2) / thr2
    return (quality if weights is None else weights * quality).sum(dim)


def sample_minimal_sets(weights: torch.Tensor, sample_size: int, num_hypotheses: int,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """
    Draw ``num_hypotheses`` minimal sets of ``sample_size`` point indices per batch element.

    Points are drawn in proportion to ``weights`` (zero = never drawn), so a batch whose elements
    have different numbers of valid points is handled by a mask. Draws are with replacement
    across the whole (H * k) sample, which keeps the cost at O(B * H * k); a set that repeats an
    index (probability about k^2 / (2 N)) is a degenerate hypothesis that simply scores badly.

    :param weights: non-negative sampling weights, shape (B, N); every row needs a positive sum
        and at least ``sample_size`` positive entries to give useful hypotheses.
    :param sample_size: k, the minimal set size (8 for the 8-point algorithm).
    :param num_hypotheses: H, hypotheses per batch element.
    :param generator: torch.Generator on the weights' device, for reproducible draws.
    :return: indices into N, shape (B, H, k), int64. Not differentiable.
    """
    check_shape(weights, 'weights', ('B', None))
    b, n = weights.shape
    positive = (weights > 0).sum(dim=1)
    if bool((positive < sample_size).any()):
        raise ValueError(
            f'each batch element needs at least {sample_size} points with positive weight, '
            f'got {positive.tolist()}; mask fewer points or skip that pair')
    idx = torch.multinomial(weights.detach().float(), num_hypotheses * sample_size,
                            replacement=True, generator=generator)
    return idx.reshape(b, num_hypotheses, sample_size)
