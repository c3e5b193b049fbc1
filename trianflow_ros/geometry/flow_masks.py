"""
Flow-derived masks and scores (TrianFlow Sec. 3.2-3.3) and the sampling of correspondences.

- Visibility (Wang et al., "Occlusion Aware Unsupervised Learning of Optical Flow", CVPR 2018):
  every pixel of image b is splatted bilinearly into image a along ``flow_ba``; a pixel of
  image a that receives no mass is not seen from image b (occluded or out of view).
- Forward-backward consistency: ``flow_21`` read at ``x + flow_12(x)`` must cancel
  ``flow_12(x)``; the residual is D_fb.
- Scores: M_s = valid / (0.1 + D_fb) (flow confidence) and M_r = [D_e < thr] / (1 + D_e)
  (agreement with the epipolar geometry; D_e from
  :func:`trianflow_ros.geometry.epipolar.epipolar_distance_map`).
- Sampling: the paper's "top 20 % of the score, 6000 samples", drawn without replacement and
  with ties broken uniformly at random (the original's ``torch.topk`` on binary masks picked a
  backend-defined, spatially biased subset and then sampled with replacement).

Masks are (B, 1, H, W) in the dtype of the flow; flows are (B, 2, H, W), channel 0 = u.
"""

from dataclasses import dataclass
import math
from typing import Optional

import torch

from trianflow_ros.geometry.camera import pixel_grid
from trianflow_ros.geometry.checks import all_finite, check_shape
from trianflow_ros.geometry.warp import backward_warp


def occlusion_mask(flow_ba: torch.Tensor) -> torch.Tensor:
    """
    Visibility of the pixels of image a in image b, by forward splatting along ``flow_ba``.

    A ones image on the pixel grid of image b is moved to ``x_b + flow_ba(x_b)`` and spread
    bilinearly onto the four neighbouring pixels of image a (scatter-add; shares that fall
    outside the image are dropped); the accumulated mass is clamped to [0, 1]. 1 = visible,
    0 = occluded or out of view; values in between occur at the boundary of a hole. Use
    ``occlusion_mask(flow_21)`` for image 1 and ``occlusion_mask(flow_12)`` for image 2.
    Pixels with a non-finite flow splat nothing.

    :param flow_ba: flow from image b to image a, shape (B, 2, H, W), channel 0 = u.
    :return: visibility of image a, shape (B, 1, H, W), dtype of the flow. Not
        differentiable (the original computes it without gradient, too).
    """
    check_shape(flow_ba, 'flow_ba', ('B', 2, 'H', 'W'))
    b, _, h, w = flow_ba.shape
    with torch.no_grad():
        flow = flow_ba.detach()
        target = pixel_grid(b, h, w, flow.device, flow.dtype) + flow          # (B, 2, H, W)
        u, v = target[:, 0], target[:, 1]                                    # (B, H, W)
        if not all_finite(flow):
            # non-finite targets: anywhere outside (the border of the canvas below)
            finite = torch.isfinite(u) & torch.isfinite(v)
            u = torch.where(finite, u, torch.full_like(u, -2.0))
            v = torch.where(finite, v, torch.full_like(v, -2.0))
        # far-away targets are clamped so the int cast is safe; the four neighbours are
        # spread onto a canvas with a 2-pixel border (every index valid, no inside tests),
        # whose border (the shares that fall outside the image) is cut off at the end
        u = u.clamp(-2.0, w + 1.0)
        v = v.clamp(-2.0, h + 1.0)
        u0, v0 = torch.floor(u), torch.floor(v)
        fu, fv = u - u0, v - v0                                               # in [0, 1)
        cw, ch = w + 5, h + 5
        base = (torch.arange(b, device=flow.device) * (ch * cw)).view(b, 1, 1)
        # the row-major canvas index of the floored target computed in floating point (exact:
        # integers below 2^24 in float32) and then cast: 0.7 instead of 2.2 ms at 256x832 on
        # one CPU thread, where int64 arithmetic on two maps was the largest cost
        exact = torch.float32 if ch * cw < 2 ** 24 and flow.dtype != torch.float64 \
            else torch.float64
        index = base + ((v0.to(exact) + 2.0) * cw + (u0.to(exact) + 2.0)).long()  # (B, H, W)
        gu, gv = 1.0 - fu, 1.0 - fv
        index = index.reshape(-1)
        out = torch.zeros(b * ch * cw, device=flow.device, dtype=flow.dtype)
        # the four neighbours one after the other (the order of one scatter of all four
        # stacked, without the stacked copies)
        for offset, share in ((0, gu * gv), (1, fu * gv), (cw, gu * fv), (cw + 1, fu * fv)):
            out.scatter_add_(0, index + offset if offset else index, share.reshape(-1))
        out = out.view(b, 1, ch, cw)[:, :, 2:h + 2, 2:w + 2]
        return out.clamp(0.0, 1.0).contiguous()


def fb_residual(flow_12: torch.Tensor, flow_21: torch.Tensor) -> torch.Tensor:
    """Return the per-channel ``|flow_21(x + flow_12(x)) + flow_12(x)|``, (B, 2, H, W)."""
    check_shape(flow_12, 'flow_12', ('B', 2, 'H', 'W'))
    check_shape(flow_21, 'flow_21', flow_12.shape)
    # zero padding as the original: a match that leaves the image reads flow 0, so its residual
    # is |flow_12| and it is inconsistent unless the flow is tiny
    warped = backward_warp(flow_21, flow_12, padding_mode='zeros', align_corners=True)
    return (warped + flow_12).abs()


def fb_difference(flow_12: torch.Tensor, flow_21: torch.Tensor) -> torch.Tensor:
    """
    Forward-backward difference D_fb of the pixels of image 1 (TrianFlow Sec. 3.2).

    ``D_fb(x) = mean_c |flow_21(x + flow_12(x)) + flow_12(x)|_c``: the mean of the absolute
    u and v residuals (not the L2 norm), as in the original's score map. ``flow_21`` is read
    with ``backward_warp`` (bilinear, zero padding, align_corners=True).

    :param flow_12: flow from image 1 to image 2, shape (B, 2, H, W).
    :param flow_21: flow from image 2 to image 1, shape (B, 2, H, W).
    :return: D_fb in pixels, shape (B, 1, H, W). Differentiable w.r.t. both flows.
    """
    return fb_residual(flow_12, flow_21).mean(dim=1, keepdim=True)


def fb_consistency_mask(flow_12: torch.Tensor, flow_21: torch.Tensor, alpha: float = 3.0,
                        beta: float = 0.05) -> torch.Tensor:
    """
    Forward-backward consistency of the pixels of image 1.

    With the per-channel residual ``r = |flow_21(x + flow_12(x)) + flow_12(x)|``, a pixel is
    consistent iff ``||r||_2 < max(beta * ||flow_12(x)||_2, alpha)``. Defaults are the
    original's ``h_flow_consist_alpha = 3.0`` px and ``h_flow_consist_beta = 0.05``.
    For image 2 swap the arguments.

    :param flow_12: flow from image 1 to image 2, shape (B, 2, H, W).
    :param flow_21: flow from image 2 to image 1, shape (B, 2, H, W).
    :param alpha: absolute threshold in pixels.
    :param beta: threshold relative to the flow magnitude.
    :return: 1 = consistent, 0 = not (or non-finite), shape (B, 1, H, W), dtype of the flow.
        Not differentiable.
    """
    with torch.no_grad():
        residual = fb_residual(flow_12.detach(), flow_21.detach())
        return fb_consistency_from_residual(flow_12.detach(), residual, alpha, beta)


def _channel_norm(x: torch.Tensor) -> torch.Tensor:
    # |x|_2 over the 2 channels of (B, 2, H, W): torch.hypot is elementwise; Tensor.norm over
    # dim 1 of a channels-first tensor was 80x slower on the CPU (18 ms at 256x832)
    return torch.hypot(x[:, 0:1], x[:, 1:2])


def fb_consistency_from_residual(flow_12: torch.Tensor, residual: torch.Tensor,
                                 alpha: float = 3.0, beta: float = 0.05) -> torch.Tensor:
    """
    Return :func:`fb_consistency_mask` from an F-B residual computed already.

    :param flow_12: (B, 2, H, W) flow from image 1 to image 2.
    :param residual: (B, 2, H, W) per-channel residual of :func:`fb_residual`.
    :param alpha: absolute threshold in pixels.
    :param beta: threshold relative to the flow magnitude.
    :return: 1 = consistent, 0 = not, shape (B, 1, H, W), dtype of the flow.
    """
    with torch.no_grad():
        bound = (beta * _channel_norm(flow_12)).clamp(min=alpha)
        return (_channel_norm(residual) < bound).to(flow_12.dtype)


def flow_valid_mask(flow_12: torch.Tensor, flow_21: torch.Tensor, consistency: bool = True,
                    alpha: float = 3.0, beta: float = 0.05) -> torch.Tensor:
    """
    Return the valid mask of image 1: visible in image 2 and (optionally) F-B consistent.

    The original uses ``visible * consistent`` for KITTI and ``visible`` alone for NYUv2
    (``consistency=False``).

    :param flow_12: flow from image 1 to image 2, shape (B, 2, H, W).
    :param flow_21: flow from image 2 to image 1, shape (B, 2, H, W).
    :param consistency: multiply with :func:`fb_consistency_mask`.
    :param alpha: absolute F-B threshold in pixels.
    :param beta: relative F-B threshold.
    :return: mask in [0, 1], shape (B, 1, H, W). Not differentiable.
    """
    check_shape(flow_12, 'flow_12', ('B', 2, 'H', 'W'))
    check_shape(flow_21, 'flow_21', flow_12.shape)
    mask = occlusion_mask(flow_21)
    if consistency:
        mask = mask * fb_consistency_mask(flow_12, flow_21, alpha, beta)
    return mask


def score_map(valid: torch.Tensor, d_fb: torch.Tensor, offset: float = 0.1) -> torch.Tensor:
    """
    Flow confidence score M_s = valid / (offset + D_fb) (TrianFlow Sec. 3.3, offset 0.1).

    Values range from 0 to 1 / offset (10 for a perfectly consistent valid pixel).

    :param valid: valid mask or weights, shape (B, 1, H, W).
    :param d_fb: forward-backward difference from :func:`fb_difference`, shape (B, 1, H, W).
    :param offset: positive offset of the denominator.
    :return: M_s, shape (B, 1, H, W). Differentiable w.r.t. both inputs (detach it to use it
        as a weight only).
    """
    check_shape(valid, 'valid', ('B', 1, 'H', 'W'))
    check_shape(d_fb, 'd_fb', valid.shape)
    if not offset > 0:
        raise ValueError(f'offset must be positive, got {offset}')
    return valid.to(d_fb.dtype) / (offset + d_fb)


def rigid_score(epipolar_dist: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """
    Rigidity score M_r = [D_e < threshold] / (1 + D_e) (TrianFlow Sec. 3.3).

    The original uses 0.5 px for KITTI and 1.0 px for NYUv2. Non-finite distances score 0.

    :param epipolar_dist: D_e, the distance of each match to its epipolar line in pixels,
        shape (B, 1, H, W) (:func:`trianflow_ros.geometry.epipolar.epipolar_distance_map`).
    :param threshold: rigid threshold in pixels.
    :return: M_r in [0, 1], shape (B, 1, H, W). Differentiable w.r.t. D_e through 1 / (1 + D_e)
        (the selection is not).
    """
    check_shape(epipolar_dist, 'epipolar_dist', ('B', 1, None, None))
    rigid = (epipolar_dist < threshold) & (epipolar_dist >= 0)
    safe = torch.where(rigid, epipolar_dist, torch.zeros_like(epipolar_dist))
    return torch.where(rigid, 1.0 / (1.0 + safe), torch.zeros_like(epipolar_dist))


@dataclass
class Correspondences:
    """
    Matches drawn by :func:`sample_correspondences`.

    :param x1: pixels in image 1, shape (B, N, 2) (integer pixel centres, dtype of the flow).
    :param x2: ``x1 + flow_12(x1)``, shape (B, N, 2); not clamped to the image.
    :param valid: real samples, shape (B, N) bool; the first ``count`` entries of each row.
        Padded entries (an element with fewer than N candidates) repeat that element's real
        samples (or pixel (0, 0) with x2 = x1 if it has none), so they are finite; give them
        weight 0.
    :param count: number of real samples per element, shape (B,) int64.
    :param index: flat pixel index ``v * W + u`` of x1, shape (B, N) int64.
    :param score: the score at each sample, 0 for padded entries, shape (B, N).
    """

    x1: torch.Tensor
    x2: torch.Tensor
    valid: torch.Tensor
    count: torch.Tensor
    index: torch.Tensor
    score: torch.Tensor

    @property
    def weights(self) -> torch.Tensor:
        """Return 1.0 for real samples and 0.0 for padding, shape (B, N), dtype of x1."""
        return self.valid.to(self.x1.dtype)


WEIGHTINGS = ('uniform', 'score')


def sample_correspondences(score: torch.Tensor, flow_12: torch.Tensor, num: int = 6000,
                           top_ratio: float = 0.2, generator: Optional[torch.Generator] = None,
                           weighting: str = 'uniform') -> Correspondences:
    """
    Draw ``num`` matches without replacement from the top share of a score map.

    TrianFlow's sampling (Sec. 3.3: top 20 % of the score, 6000 samples), made unbiased:

    1. Candidates are the ``round(top_ratio * H * W)`` highest-scoring pixels. Ties are broken
       uniformly at random: each score gets a random relative jitter below 2^-30 (far below
       the spacing of float32 scores, so distinct scores keep their order; float64 scores
       closer than that count as equal), so on a binary mask the top share is a uniformly
       random subset of the ones (the original's ``topk`` took a backend-defined, spatially
       clustered subset). Only pixels with a finite, positive score and a finite flow are
       candidates.
    2. ``num`` distinct candidates are drawn: uniformly (``weighting='uniform'``, the paper)
       or with probability proportional to the score, without replacement
       (``weighting='score'``, by Gumbel top-k keys ``log s + Gumbel``).

    An element with fewer than ``num`` candidates returns all of them, then padding (see
    :class:`Correspondences`). Everything is batched; the draw is reproducible with
    ``generator`` (a torch.Generator on the score's device).

    :param score: sampling score, e.g. M_s or M_r * M_s, shape (B, 1, H, W); <= 0 = excluded.
    :param flow_12: flow from image 1 to image 2, shape (B, 2, H, W).
    :param num: number of samples N per element (>= 1).
    :param top_ratio: share of the H * W pixels that forms the candidate set, in (0, 1].
    :param generator: random generator for the tie-break and the draw.
    :param weighting: 'uniform' or 'score' (see above).
    :return: :class:`Correspondences` (x1, x2 (B, N, 2); valid (B, N); count (B,); index,
        score (B, N)). x2 is differentiable w.r.t. the flow; the selection is not.
    """
    check_shape(score, 'score', ('B', 1, 'H', 'W'))
    b, _, h, w = score.shape
    check_shape(flow_12, 'flow_12', (b, 2, h, w))
    if num < 1:
        raise ValueError(f'num must be >= 1, got {num}')
    if not 0.0 < top_ratio <= 1.0:
        raise ValueError(f'top_ratio must be in (0, 1], got {top_ratio}')
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got '{weighting}'")
    n = h * w
    device = score.device
    flat_flow = flow_12.reshape(b, 2, n)
    with torch.no_grad():
        s = score.detach().reshape(b, n)
        ok = torch.isfinite(s) & (s > 0) & torch.isfinite(flat_flow.detach()).all(dim=1)
        keyed = torch.where(ok, s, torch.full_like(s, -math.inf))
        # 1. top share with a uniformly random tie-break: a random relative jitter far below
        #    the gap between distinct float32 scores (2^-24 relative) orders the ties at
        #    random, then the k-th largest key is the threshold (a selection, not a sort of
        #    all H * W pixels: 25 -> 5 ms at 256x832)
        k = min(n, max(1, int(round(top_ratio * n))))
        jitter = torch.rand(b, n, generator=generator, device=device, dtype=torch.float64)
        keyed = keyed.double() * (1.0 + jitter * 2.0 ** -30)
        num_ok = ok.sum(dim=1, keepdim=True)                                  # (B, 1)
        kth = torch.kthvalue(keyed, n - k + 1, dim=1, keepdim=True).values    # k-th largest
        cand = ok & ((keyed >= kth) | (num_ok <= k))
        # 2. draw without replacement among the candidates
        noise = torch.rand(b, n, generator=generator, device=device, dtype=torch.float64)
        if weighting == 'score':
            gumbel = -torch.log(-torch.log(noise.clamp(1e-300, 1.0 - 1e-16)))
            key = s.double().clamp(min=1e-300).log() + gumbel
        else:
            key = noise
        key = torch.where(cand, key, torch.full_like(key, -math.inf))
        m = min(num, k)
        chosen = key.topk(m, dim=1).indices                                  # (B, m), sorted
        count = cand.sum(dim=1).clamp(max=num)                               # (B,)
        # padding: entry j >= count repeats real sample j mod count (pixel chosen[0] if none)
        j = torch.arange(num, device=device).expand(b, num)
        src = j % count.clamp(min=1).unsqueeze(1)
        index = chosen.gather(1, src)
        valid = j < count.unsqueeze(1)
        index = torch.where(valid | (count > 0).unsqueeze(1), index, torch.zeros_like(index))
        sampled_score = torch.where(valid, s.gather(1, index), torch.zeros_like(s[:, :1]))
    u = (index % w).to(flow_12.dtype)
    v = torch.div(index, w, rounding_mode='floor').to(flow_12.dtype)
    x1 = torch.stack((u, v), dim=-1)                                         # (B, N, 2)
    x2 = x1 + flat_flow.gather(2, index.unsqueeze(1).expand(b, 2, num)).transpose(1, 2)
    keep = (valid | (count > 0).unsqueeze(1)).unsqueeze(-1) & torch.isfinite(x2)
    x2 = torch.where(keep, x2, x1)
    return Correspondences(x1=x1, x2=x2, valid=valid, count=count, index=index,
                           score=sampled_score)
