"""
Training losses of TrianFlow, as pure batched functions (no networks, no ROS).

Modules:

- ``photometric``: SSIM, the masked L1 + SSIM photometric loss, and its flow-warping form.
- ``smoothness``: second-order edge-aware flow smoothness, first-order disparity smoothness.
- ``depth``: triangulation depth loss (with scale alignment), dense depth reprojection loss
  L_pd, and the flow-to-rigid-flow loss L_pf.
- ``epipolar``: the geometric (epipolar band) loss.

Masked losses follow the original's normalisation, per sample:
``mean(loss_map * mask) / mean(mask)`` over (C, H, W), and return a :class:`MaskedLoss`: a
sample whose mask is empty gets the value 0 and ``valid = False`` instead of NaN.
"""

from dataclasses import dataclass

import torch


@dataclass
class MaskedLoss:
    """
    A per-sample loss and whether each sample had anything to measure.

    :param value: loss per batch element, shape (B,); exactly 0 where ``valid`` is False.
    :param valid: the element's mask was not empty, shape (B,) bool.
    """

    value: torch.Tensor
    valid: torch.Tensor

    def mean(self) -> torch.Tensor:
        """Return the batch mean of ``value`` (empty samples count as 0, as in the original)."""
        return self.value.mean()

    def mean_valid(self) -> torch.Tensor:
        """Return the mean over valid samples only; 0 if no sample is valid. Differentiable."""
        n = self.valid.sum()
        total = torch.where(self.valid, self.value, torch.zeros_like(self.value)).sum()
        return total / n.clamp(min=1).to(self.value.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> MaskedLoss:
    """
    Mask-normalised mean per sample: ``mean(values * mask) / mean(mask)``.

    ``values`` (B, C, ...) is averaged over all its non-batch dimensions with the mask
    broadcast over channels, ``mask`` (B, 1, ...) or (B, C, ...) over its own, so the result is
    the mask-weighted average of ``values`` (the original's ``divider = mask.mean((1, 2, 3))``).
    Entries where the mask is 0 are ignored even if ``values`` is not finite there. A sample
    with ``sum(mask) == 0`` gets 0 and ``valid = False``.

    :param values: per-pixel (or per-point) loss, shape (B, ...).
    :param mask: non-negative weights or bool, broadcastable to ``values`` with the same batch
        size and the same number of dimensions.
    :return: :class:`MaskedLoss`. Differentiable w.r.t. ``values`` and a float ``mask``.
    """
    if values.dim() != mask.dim() or values.shape[0] != mask.shape[0]:
        raise ValueError(f'mask of shape {tuple(mask.shape)} does not match values of shape '
                         f'{tuple(values.shape)} (same batch size and number of dimensions)')
    b = values.shape[0]
    weight = mask.to(values.dtype) if mask.dtype == torch.bool else mask
    weight = weight.expand_as(values) if weight.shape != values.shape else weight
    selected = weight > 0
    safe = torch.where(selected, values, torch.zeros_like(values))
    numerator = (safe * weight).reshape(b, -1).mean(dim=1)
    # the divider is the mean of the mask itself (as given, not broadcast to C channels)
    divider = (mask.to(values.dtype) if mask.dtype == torch.bool else mask).reshape(b, -1)
    divider = divider.mean(dim=1)
    valid = divider > 0
    value = numerator / torch.where(valid, divider, torch.ones_like(divider))
    return MaskedLoss(value=torch.where(valid, value, torch.zeros_like(value)), valid=valid)
