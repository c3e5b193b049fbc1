"""Random minimal sets for batched RANSAC: every hypothesis of every batch element at once."""

from typing import Optional

import torch

from trianflow_ros.geometry.checks import check_shape


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
