"""
Edge-aware smoothness losses (TrianFlow Sec. 3.2 for the flow, Sec. 3.4 for the disparity).

Image gradients are forward differences; the edge weight of a pixel pair is
``exp(-k * mean_c |grad I|)`` so that the prior relaxes across image edges (Godard et al.,
CVPR 2017; the second-order form for flow follows Wang et al., CVPR 2018 / UnFlow).
"""

from typing import Tuple

import torch

from trianflow_ros.geometry.checks import check_shape


def _gradients(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward differences: d/du (B, C, H, W-1) and d/dv (B, C, H-1, W)."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _edge_weights(image: torch.Tensor, edge_weight: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``exp(-edge_weight * mean_c |grad I|)`` along u (B, 1, H, W-1) and v (B, 1, H-1, W)."""
    gu, gv = _gradients(image)
    return (torch.exp(-edge_weight * gu.abs().mean(dim=1, keepdim=True)),
            torch.exp(-edge_weight * gv.abs().mean(dim=1, keepdim=True)))


def flow_smoothness_2nd(flow: torch.Tensor, image: torch.Tensor, edge_weight: float = 10.0,
                        flow_scale: float = 20.0) -> torch.Tensor:
    """
    Second-order edge-aware smoothness of a flow field.

    On ``f = flow / flow_scale``:
    ``L = (mean(w_u * |d2f/du2|) + mean(w_v * |d2f/dv2|)) / 2`` with the second differences
    ``f(u+1) - 2 f(u) + f(u-1)`` centred at u and, as the original, the edge weight of the
    forward difference that starts at the centre, ``w_u(u) = exp(-edge_weight * mean_c
    |I(u+1) - I(u)|)`` (same along v). Means run over both flow channels and all positions.
    Zero for any affine flow field (translation, rotation, zoom).

    :param flow: flow, shape (B, 2, H, W) with H, W >= 3.
    :param image: the image the flow starts from, shape (B, C, H, W), values in [0, 1].
    :param edge_weight: k of the edge weight (10 in the original).
    :param flow_scale: the flow is divided by this (20 in the original).
    :return: loss per sample, shape (B,). Differentiable w.r.t. the flow (and the image).
    """
    check_shape(flow, 'flow', ('B', 2, 'H', 'W'))
    b, _, h, w = flow.shape
    check_shape(image, 'image', (b, None, h, w))
    if h < 3 or w < 3:
        raise ValueError(f'flow must be at least 3x3 for second differences, got {h}x{w}')
    wu, wv = _edge_weights(image, edge_weight)
    du, dv = _gradients(flow / flow_scale)
    duu = du[..., :, 1:] - du[..., :, :-1]                 # (B, 2, H, W-2), centred at u + 1
    dvv = dv[..., 1:, :] - dv[..., :-1, :]                 # (B, 2, H-2, W)
    loss_u = (wu[..., :, 1:] * duu.abs()).mean(dim=(1, 2, 3))
    loss_v = (wv[..., 1:, :] * dvv.abs()).mean(dim=(1, 2, 3))
    return 0.5 * (loss_u + loss_v)


def disparity_smoothness(disp: torch.Tensor, image: torch.Tensor, normalize: bool = True,
                         edge_weight: float = 1.0, eps: float = 1e-12) -> torch.Tensor:
    """
    First-order edge-aware smoothness of a disparity map.

    ``L = mean(|dd/du| * exp(-k mean_c |dI/du|)) + mean(|dd/dv| * exp(-k mean_c |dI/dv|))`` on
    ``d = disp / mean_HW(disp)`` (mean normalisation makes it scale invariant, so the network
    cannot shrink the disparity to lower it; the original's ``get_smooth_loss`` with k = 1).
    Zero for a constant disparity.

    :param disp: disparity (inverse depth), shape (B, 1, H, W), positive.
    :param image: the matching image, shape (B, C, H, W), values in [0, 1].
    :param normalize: divide by the per-sample mean disparity first.
    :param edge_weight: k of the edge weight.
    :param eps: added to the mean before the division.
    :return: loss per sample, shape (B,). Differentiable w.r.t. the disparity.
    """
    check_shape(disp, 'disp', ('B', 1, 'H', 'W'))
    b, _, h, w = disp.shape
    check_shape(image, 'image', (b, None, h, w))
    if normalize:
        disp = disp / (disp.mean(dim=(2, 3), keepdim=True) + eps)
    wu, wv = _edge_weights(image, edge_weight)
    du, dv = _gradients(disp)
    return (du.abs() * wu).mean(dim=(1, 2, 3)) + (dv.abs() * wv).mean(dim=(1, 2, 3))
