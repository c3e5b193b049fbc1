"""
Helpers shared by every training model: the batch check, the precision and frozen contexts.

Used by :mod:`.trianflow`, :mod:`.posenet_model` and :mod:`.refined_posenet`; it imports none
of them, so the model modules form no import circle.
"""

import contextlib
from typing import Dict, Iterator, Tuple

import torch
from torch import nn


def check_batch(batch: Dict[str, torch.Tensor]) -> Tuple[int, int, int]:
    """
    Check the keys the models read: 'image1', 'image2' (B, 3, H, W) and 'K' (B, 3, 3).

    :return: (B, H, W).
    :raises ValueError: naming the key and the expected shape.
    """
    for key in ('image1', 'image2', 'K'):
        if key not in batch:
            raise ValueError(f"batch has no {key!r}; a pair sample needs 'image1', 'image2' "
                             "and 'K' (see trianflow_ros/data/sample.py)")
        if not isinstance(batch[key], torch.Tensor):
            raise ValueError(f'batch[{key!r}] must be a tensor, got {type(batch[key]).__name__}')
    img1, img2, K = batch['image1'], batch['image2'], batch['K']
    if img1.dim() != 4 or img1.shape[1] != 3:
        raise ValueError(f"batch['image1'] must have shape (B, 3, H, W), got {tuple(img1.shape)}")
    if img2.shape != img1.shape:
        raise ValueError(f"batch['image2'] must have the shape of image1 {tuple(img1.shape)}, "
                         f'got {tuple(img2.shape)}')
    b, _, h, w = img1.shape
    if K.shape != (b, 3, 3):
        raise ValueError(f"batch['K'] must have shape ({b}, 3, 3) (intrinsics at the network "
                         f'resolution), got {tuple(K.shape)}')
    return b, h, w


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode under no_grad, then restore its train/eval mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def full_precision(device: torch.device):
    """Return a context that disables autocast on ``device`` (losses and geometry in fp32)."""
    return torch.autocast(device_type=device.type, enabled=False)
