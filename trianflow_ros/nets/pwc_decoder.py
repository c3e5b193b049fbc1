"""
PWC-Net flow decoder: cost volume, coarse-to-fine flow estimators and the context network.

PWC-Net (Sun et al., "PWC-Net: CNNs for Optical Flow Using Pyramid, Warping, and Cost
Volume", CVPR 2018, Sec. 3) as used by TrianFlow. For levels l = 6 (H/64) .. 2 (H/4)::

    up_l   = upsample(flow_{l+1})                       # bilinear x2, values x2 (l < 6)
    w_l    = warp(c2_l, up_l)                           # backward warp of image-2 features
    cv_l   = cost_volume(c1_l, w_l)                     # (2 d + 1)^2 channels, d = 4
    x      = cv_l (l = 6)  or  cat(cv_l, c1_l, up_l)    # 81 | 81 + C_l + 2 channels
    x0 = conv(x); x1 = conv(x0); x2 = conv(x0, x1); x3 = conv(x1, x2); x4 = conv(x2, x3)
    flow_l = predict(x3, x4) + up_l                     # residual (up_6 = 0)

with 3x3 convs of 128, 128, 96, 64, 32 channels (+ LeakyReLU 0.1) and a plain 3x3 conv to 2
channels for the prediction. At level 2 the context network (dilations 1, 2, 4, 8, 16, 1;
128, 128, 128, 96, 64, 32 channels, then 3x3 to 2) reads ``cat(flow_2, x4)`` and its output is
added to ``flow_2``. Differences from the paper's PWC-Net that the released TrianFlow weights
depend on: the cost volume is the *mean* over channels of the product, with no activation
after it; flow is upsampled bilinearly (no deconvolution, no upsampled features); flow at level
l is expressed in pixels of level l (no x20 scaling), so it is multiplied by 2 at each
upsampling and warping uses it directly; level 1 (H/2) is unused.

Warping follows the original's ``grid_sample`` convention ``align_corners=True`` (PyTorch 1.2)
through :func:`trianflow_ros.geometry.warp.backward_warp`, with zero padding. Every
``F.interpolate`` here uses ``align_corners=False``, as the original (the default then and now).
"""

from typing import List, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from trianflow_ros.geometry.warp import backward_warp
from trianflow_ros.nets.feature_pyramid import conv_lrelu, PYRAMID_CHANNELS

#: Widths of the five convolutions of each level's flow estimator.
ESTIMATOR_CHANNELS = (128, 128, 96, 64, 32)
#: (dilation, out channels) of the context network's convolutions dc_conv1 .. dc_conv6.
CONTEXT_LAYERS = ((1, 128), (2, 128), (4, 128), (8, 96), (16, 64), (1, 32))
#: Pyramid levels with a flow estimator, coarsest first.
LEVELS = (6, 5, 4, 3, 2)


def normalize_feature_pair(feature1: torch.Tensor, feature2: torch.Tensor,
                           eps: float = 1e-10) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Centre and scale two feature maps jointly, per sample (before the cost volume).

    ``mu_c`` = mean of channel c over the pixels of both maps, ``sigma^2`` = mean over channels
    and pixels of both centred maps squared; returns ``((f1 - mu) / sigma, (f2 - mu) / sigma)``.
    The cost volume of the result is invariant to an affine change ``a f + b_c`` of the features
    (a > 0, a^2 sigma^2 >> eps) and of order 1 whatever their magnitude, as in the correlation
    layers of self-supervised flow methods (UFlow, Jonschkowski et al., ECCV 2020). The original
    TrianFlow does not normalise (its cost volume is ~1e-4 at initialisation, so a network
    trained from scratch ignores it for many thousands of steps); ``flow_net.cost_volume_norm``
    switches this on. Each sample is normalised on its own, so a result never depends on the
    other elements of the batch. Computed in float32 at least (safe under autocast).

    :param feature1: features of image 1, shape (B, C, H, W).
    :param feature2: (warped) features of image 2, shape (B, C, H, W).
    :param eps: added to sigma^2 (a constant map stays finite: it becomes 0).
    :return: the two normalised maps, shapes (B, C, H, W), dtype of the inputs. Differentiable.
    """
    dtype = feature1.dtype
    f1 = feature1.float() if dtype in (torch.float16, torch.bfloat16) else feature1
    f2 = feature2.float() if dtype in (torch.float16, torch.bfloat16) else feature2
    mu = 0.5 * (f1.mean(dim=(2, 3), keepdim=True) + f2.mean(dim=(2, 3), keepdim=True))
    f1, f2 = f1 - mu, f2 - mu
    var = 0.5 * (f1.pow(2).mean(dim=(1, 2, 3), keepdim=True)
                 + f2.pow(2).mean(dim=(1, 2, 3), keepdim=True))
    inv = torch.rsqrt(var + eps)
    return (f1 * inv).to(dtype), (f2 * inv).to(dtype)


def cost_volume(feature1: torch.Tensor, feature2: torch.Tensor,
                search_range: int = 4, normalize: bool = False) -> torch.Tensor:
    """
    Correlation of ``feature1`` with shifted ``feature2``, averaged over channels.

    ``cv[:, k](x) = mean_c feature1[:, c](x) * feature2[:, c](x + (dx, dy))`` for
    ``k = (dy + d) * (2 d + 1) + (dx + d)``, ``dx, dy in [-d, d]`` (row-major, dy outer), with
    feature2 zero outside the image. No activation is applied.

    :param feature1: features of image 1, shape (B, C, H, W).
    :param feature2: (warped) features of image 2, shape (B, C, H, W).
    :param search_range: d, the maximum displacement in pixels.
    :param normalize: first normalise the pair with :func:`normalize_feature_pair` (not in
        the original; ``flow_net.cost_volume_norm``).
    :return: cost volume, shape (B, (2 d + 1)^2, H, W). Differentiable.
    """
    if feature1.shape != feature2.shape or feature1.dim() != 4:
        raise ValueError('cost_volume needs two (B, C, H, W) tensors of equal shape, got '
                         f'{tuple(feature1.shape)} and {tuple(feature2.shape)}')
    if normalize:
        feature1, feature2 = normalize_feature_pair(feature1, feature2)
    d = search_range
    h, w = feature1.shape[-2:]
    padded = F.pad(feature2, (d, d, d, d), value=0.0)
    costs = [(feature1 * padded[:, :, dy:dy + h, dx:dx + w]).mean(dim=1)
             for dy in range(2 * d + 1) for dx in range(2 * d + 1)]
    return torch.stack(costs, dim=1)


def upsample_flow(flow: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """
    Resize a flow field bilinearly and rescale its values to the new pixel units.

    For a size twice the input this is the original's ``interpolate(x2) * 2``.

    :param flow: flow in pixels of its own resolution, shape (B, 2, h, w), channel 0 = u.
    :param size: target (H, W).
    :return: flow in pixels of the target resolution, shape (B, 2, H, W). Differentiable.
    """
    h, w = flow.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    scale = flow.new_tensor([out_w / w, out_h / h]).view(1, 2, 1, 1)
    up = F.interpolate(flow, size=(out_h, out_w), mode='bilinear', align_corners=False)
    return up * scale


def _resize_output_flow(flow: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    # the original scales the values first, then resizes: keep that order (same rounding)
    h, w = flow.shape[-2:]
    scale = flow.new_tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)
    return F.interpolate(flow * scale, size=size, mode='bilinear', align_corners=False)


class PWCDecoder(nn.Module):
    """
    Coarse-to-fine flow decoder of PWC-Net (the original's ``PWC_tf``, keys ``pwc_model.*``).

    Parameter names: ``conv{l}_{0..4}.0``, ``predict_flow{l}`` for l = 6..2, ``dc_conv{1..6}.0``
    and ``dc_conv7``.
    """

    def __init__(self, *, search_range: int = 4,
                 pyramid_channels: Sequence[int] = PYRAMID_CHANNELS,
                 estimator_channels: Sequence[int] = ESTIMATOR_CHANNELS,
                 context_channels: Sequence[int] = tuple(c for _, c in CONTEXT_LAYERS),
                 cost_volume_norm: bool = False):
        """
        Build the estimators and the context network (PyTorch default initialisation).

        :param search_range: cost-volume search range d in pixels (the original: 4).
        :param pyramid_channels: channels of pyramid levels 1..6.
        :param estimator_channels: widths of the five estimator convolutions (the original:
            ``ESTIMATOR_CHANNELS``; a small variant passes fewer, same key names).
        :param context_channels: widths of dc_conv1 .. dc_conv6 (the original: those of
            ``CONTEXT_LAYERS``).
        :param cost_volume_norm: normalise each feature pair before the correlation
            (:func:`normalize_feature_pair`; no parameters, so the key names do not change;
            False = the original network, which the released weights need).
        """
        super().__init__()
        if len(estimator_channels) != 5 or len(context_channels) != len(CONTEXT_LAYERS):
            raise ValueError('estimator_channels needs 5 and context_channels '
                             f'{len(CONTEXT_LAYERS)} entries')
        self.search_range = int(search_range)
        self.cost_volume_norm = bool(cost_volume_norm)
        num_costs = (2 * self.search_range + 1) ** 2
        a, b, c, d, e = (int(x) for x in estimator_channels)
        for level in LEVELS:
            in_channels = num_costs if level == 6 else (
                num_costs + pyramid_channels[level - 1] + 2)
            setattr(self, f'conv{level}_0', conv_lrelu(in_channels, a))
            setattr(self, f'conv{level}_1', conv_lrelu(a, b))
            setattr(self, f'conv{level}_2', conv_lrelu(a + b, c))
            setattr(self, f'conv{level}_3', conv_lrelu(b + c, d))
            setattr(self, f'conv{level}_4', conv_lrelu(c + d, e))
            setattr(self, f'predict_flow{level}', nn.Conv2d(d + e, 2, 3, padding=1, bias=True))
        width = e + 2
        for i, ((dilation, _), channels) in enumerate(zip(CONTEXT_LAYERS, context_channels)):
            channels = int(channels)
            setattr(self, f'dc_conv{i + 1}', conv_lrelu(width, channels, dilation=dilation))
            width = channels
        self.dc_conv7 = nn.Conv2d(width, 2, 3, padding=1, bias=True)

    def warp(self, features2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """
        Backward-warp image-2 features into image 1 (``align_corners=True``, zero padding).

        Zero flow is the identity (exact in float64, to rounding of the normalised grid in
        float32), as in the original under PyTorch 1.2.

        :param features2: image-2 features of one level, shape (B, C, h, w).
        :param flow: flow_12 in pixels of that level, shape (B, 2, h, w).
        :return: warped features, shape (B, C, h, w). Differentiable.
        """
        return backward_warp(features2, flow, padding_mode='zeros', align_corners=True)

    def estimate(self, level: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Run the flow estimator of one level.

        :param level: pyramid level, 2..6.
        :param x: estimator input (cost volume, or cat(cost volume, c1_l, up_l)).
        :return: the flow increment (B, 2, h, w) and the last features x4 (B, 32, h, w;
            fewer channels in a small variant).
        """
        x0 = getattr(self, f'conv{level}_0')(x)
        x1 = getattr(self, f'conv{level}_1')(x0)
        x2 = getattr(self, f'conv{level}_2')(torch.cat((x0, x1), dim=1))
        x3 = getattr(self, f'conv{level}_3')(torch.cat((x1, x2), dim=1))
        x4 = getattr(self, f'conv{level}_4')(torch.cat((x2, x3), dim=1))
        flow = getattr(self, f'predict_flow{level}')(torch.cat((x3, x4), dim=1))
        return flow, x4

    def context(self, flow: torch.Tensor, x4: torch.Tensor) -> torch.Tensor:
        """
        Residual of the dilated context network on level 2.

        :param flow: level-2 flow (B, 2, h, w).
        :param x4: last estimator features of level 2 (B, 32, h, w; fewer in a small variant).
        :return: flow correction (B, 2, h, w).
        """
        x = torch.cat((flow, x4), dim=1)
        for i in range(len(CONTEXT_LAYERS)):
            x = getattr(self, f'dc_conv{i + 1}')(x)
        return self.dc_conv7(x)

    def forward(self, features1: Sequence[torch.Tensor], features2: Sequence[torch.Tensor],
                image_size: Sequence[int]) -> List[torch.Tensor]:
        """
        Estimate flow_12 from the two pyramids.

        :param features1: pyramid [c1 .. c6] of image 1 (FeaturePyramid output).
        :param features2: pyramid [c1 .. c6] of image 2.
        :param image_size: (H, W) of the input images.
        :return: four flows_12 in pixels of their own resolution, shapes (B, 2, H, W),
            (B, 2, H/2, W/2), (B, 2, H/4, W/4), (B, 2, H/8, W/8) (from levels 2, 3, 4, 5
            resized x4, the original's output). Differentiable.
        """
        if len(features1) != 6 or len(features2) != 6:
            raise ValueError('PWCDecoder needs 6-level pyramids of both images')
        height, width = int(image_size[0]), int(image_size[1])
        flows = {}
        flow = None
        for level in LEVELS:
            c1, c2 = features1[level - 1], features2[level - 1]
            if flow is None:
                x = cost_volume(c1, c2, self.search_range, self.cost_volume_norm)
                delta, x4 = self.estimate(level, x)
                flow = delta
            else:
                up = upsample_flow(flow, c1.shape[-2:])
                warped = self.warp(c2, up)
                cv = cost_volume(c1, warped, self.search_range, self.cost_volume_norm)
                x = torch.cat((cv, c1, up), dim=1)
                delta, x4 = self.estimate(level, x)
                flow = delta + up
            flows[level] = flow
        flows[2] = flows[2] + self.context(flows[2], x4)
        return [_resize_output_flow(flows[2], (height, width)),
                _resize_output_flow(flows[3], (height // 2, width // 2)),
                _resize_output_flow(flows[4], (height // 4, width // 4)),
                _resize_output_flow(flows[5], (height // 8, width // 8))]
