"""Tests of the losses: photometric, smoothness, depth (triangulation, L_pd, L_pf), epipolar."""

import numpy as np
import pytest
import torch

from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.geometry.camera import pixel_grid
from trianflow_ros.geometry.se3 import se3_exp
from trianflow_ros.geometry.warp import rigid_flow
from trianflow_ros.losses import masked_mean, MaskedLoss
from trianflow_ros.losses.depth import (align_and_triangulation_loss, depth_reprojection_loss,
                                        flow_rigid_loss, triangulation_depth_loss)
from trianflow_ros.losses.epipolar import epipolar_geo_loss
from trianflow_ros.losses.photometric import (C1, C2, flow_photometric_loss, photometric_loss,
                                              ssim)
from trianflow_ros.losses.smoothness import disparity_smoothness, flow_smoothness_2nd


@pytest.fixture(scope='module')
def pair():
    """Render a driving pair with exact depth, flow, pose and visibility (64x208)."""
    seq = make_sequence('forward', num_frames=2, height=64, width=208, seed=0, stride=2)
    return seq.pair(0, 1)


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _K(b=1, h=24, w=32, dtype=torch.float64):
    K = torch.tensor([[30.0, 0.0, w / 2.0], [0.0, 30.0, h / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(b, 3, 3).clone()


# ----------------------------------------------------------------------- masked mean

def test_masked_mean_normalisation_and_empty_mask():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, float('inf'), 7.0, float('nan')]],
                          requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = masked_mean(values, mask)
    assert isinstance(out, MaskedLoss)
    assert torch.allclose(out.value, torch.tensor([1.5, 0.0]))
    assert out.valid.tolist() == [True, False]
    out.value.sum().backward()
    assert torch.isfinite(values.grad).all()
    assert torch.allclose(values.grad[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert torch.allclose(out.mean(), torch.tensor(0.75))
    assert torch.allclose(out.mean_valid(), torch.tensor(1.5))
    # weights: the weighted average; a 1-channel mask broadcasts over 3 channels
    assert torch.allclose(masked_mean(torch.tensor([[2.0, 4.0]]), torch.tensor([[3.0, 1.0]])
                                      ).value, torch.tensor([2.5]))
    img = torch.arange(12.0).view(1, 3, 2, 2)
    m = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    assert torch.allclose(masked_mean(img, m).value, img[0, :, 0, 0].mean().view(1))
    none = MaskedLoss(torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    assert none.mean_valid() == 0


# ----------------------------------------------------------------------- photometric

def _ssim_reference(x, y):
    """Direct SSIM with explicit 3x3 windows, zeros outside, divided by 9 (the original)."""
    x = np.pad(x, 1)
    y = np.pad(y, 1)
    h, w = x.shape[0] - 2, x.shape[1] - 2
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            a, b = x[i:i + 3, j:j + 3].ravel(), y[i:i + 3, j:j + 3].ravel()
            ma, mb = a.sum() / 9.0, b.sum() / 9.0
            va = (a * a).sum() / 9.0 - ma * ma
            vb = (b * b).sum() / 9.0 - mb * mb
            cov = (a * b).sum() / 9.0 - ma * mb
            out[i, j] = ((2 * ma * mb + C1) * (2 * cov + C2)
                         / ((ma * ma + mb * mb + C1) * (va + vb + C2)))
    return out


def test_ssim_known_values():
    x = _rand(2, 3, 9, 11, seed=1)
    same = ssim(x, x)
    assert same.shape == x.shape and torch.allclose(same, torch.ones_like(same))
    a, b = 0.2, 0.6
    interior = ssim(torch.full((1, 1, 5, 5), a, dtype=torch.float64),
                    torch.full((1, 1, 5, 5), b, dtype=torch.float64))[..., 1:-1, 1:-1]
    expected = (2 * a * b + C1) / (a * a + b * b + C1)     # variances and covariance are 0
    assert torch.allclose(interior, torch.full_like(interior, expected))
    y = _rand(1, 1, 6, 7, seed=2)
    z = _rand(1, 1, 6, 7, seed=3)
    ref = _ssim_reference(y[0, 0].numpy(), z[0, 0].numpy())
    assert np.allclose(ssim(y, z)[0, 0].numpy(), ref, atol=1e-12)
    assert torch.allclose(ssim(y, z), ssim(z, y))


def test_ssim_gradcheck():
    x = _rand(1, 1, 3, 4, seed=4).requires_grad_()
    y = _rand(1, 1, 3, 4, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(ssim, (x, y), fast_mode=True)


def test_photometric_loss_zero_for_identical_images():
    img = _rand(2, 3, 12, 16, seed=6)
    pixel, structure = photometric_loss(img, img.clone(), torch.ones(2, 1, 12, 16,
                                                                     dtype=img.dtype))
    assert pixel.value.shape == (2,) and torch.all(pixel.value == 0)
    assert structure.value.abs().max() < 1e-12
    pixel, structure = flow_photometric_loss(img, img, torch.zeros(2, 2, 12, 16,
                                                                   dtype=img.dtype),
                                             torch.ones(2, 1, 12, 16, dtype=img.dtype))
    assert pixel.value.abs().max() < 1e-12 and structure.value.abs().max() < 1e-12


def test_photometric_loss_known_values_and_mask_normalisation():
    h, w = 10, 12
    img1 = torch.full((1, 3, h, w), 0.3, dtype=torch.float64)
    img2 = img1 + 0.1
    full = torch.ones(1, 1, h, w, dtype=torch.float64)
    pixel, structure = photometric_loss(img1, img2, full, w_ssim=0.0)
    assert torch.allclose(pixel.value, torch.tensor([0.1], dtype=torch.float64))
    assert structure.value.item() == 0
    pixel, structure = photometric_loss(img1, img2, full, w_ssim=0.85)
    assert torch.allclose(pixel.value, torch.tensor([0.15 * 0.1], dtype=torch.float64))
    # SSIM part: mean of clamp((1 - SSIM) / 2) of the constant images, checked by the direct
    # windowed formula (border windows include the zero padding)
    ref = _ssim_reference(img1[0, 0].numpy(), img2[0, 0].numpy())
    assert np.isclose(structure.value.item(), 0.85 * np.clip((1 - ref) / 2, 0, 1).mean())
    # normalisation by the mask mean: a difference of 0.2 on the masked half -> 0.2, not 0.1
    img2 = img1.clone()
    img2[..., :, : w // 2] += 0.2
    half = torch.zeros(1, 1, h, w, dtype=torch.float64)
    half[..., :, : w // 2] = 1.0
    pixel, _ = photometric_loss(img1, img2, half, w_ssim=0.0)
    assert torch.allclose(pixel.value, torch.tensor([0.2], dtype=torch.float64))
    # differences outside the mask cost nothing
    pixel, _ = photometric_loss(img1, img2, 1.0 - half, w_ssim=0.0)
    assert pixel.value.item() == 0


def test_photometric_loss_empty_mask_gives_zero_and_finite_gradients():
    img1 = _rand(2, 3, 8, 8, seed=7)
    flow = torch.zeros(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    mask[1] = 0.0
    pixel, structure = flow_photometric_loss(img1, _rand(2, 3, 8, 8, seed=8), flow, mask)
    assert pixel.valid.tolist() == [True, False] and structure.valid.tolist() == [True, False]
    assert pixel.value[1] == 0 and structure.value[1] == 0
    (pixel.value + structure.value).sum().backward()
    assert torch.isfinite(flow.grad).all()
    assert flow.grad[0].abs().sum() > 0 and flow.grad[1].abs().sum() == 0


def test_flow_photometric_loss_integer_shift():
    h, w = 12, 16
    img2 = _rand(1, 3, h, w, seed=9)
    img1 = torch.zeros_like(img2)
    img1[..., :, :-2] = img2[..., :, 2:]                     # image 1 pixel x is x + 2 in image 2
    flow = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flow[:, 0] = 2.0
    mask = torch.ones(1, 1, h, w, dtype=torch.float64)
    mask[..., -2:] = 0.0                                     # these leave image 2
    pixel, _ = flow_photometric_loss(img1, img2, flow, mask, w_ssim=0.0)
    assert pixel.value.item() < 1e-12
    wrong, _ = flow_photometric_loss(img1, img2, torch.zeros_like(flow), mask, w_ssim=0.0)
    assert wrong.value.item() > 0.1


def test_flow_photometric_loss_on_synthetic_pair(pair):
    img1, img2 = pair.image_i[None], pair.image_j[None]
    mask = pair.valid_ij[None].float()
    good = flow_photometric_loss(img1, img2, pair.flow_ij[None], mask)
    zero = flow_photometric_loss(img1, img2, torch.zeros_like(pair.flow_ij[None]), mask)
    good_total = (good[0].value + good[1].value).item()
    zero_total = (zero[0].value + zero[1].value).item()
    assert good_total < 0.25 * zero_total


# ------------------------------------------------------------------------ smoothness

def test_flow_smoothness_zero_for_constant_and_affine_flow():
    h, w = 9, 12
    image = _rand(2, 3, h, w, seed=10)
    grid = pixel_grid(2, h, w, dtype=torch.float64)
    assert torch.all(flow_smoothness_2nd(torch.full((2, 2, h, w), 3.0, dtype=torch.float64),
                                         image) == 0)
    A = torch.tensor([[0.1, -0.3], [0.2, 0.05]], dtype=torch.float64)
    affine = torch.einsum('ij,bjhw->bihw', A, grid) + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    loss = flow_smoothness_2nd(affine, image)
    assert loss.shape == (2,) and loss.abs().max() < 1e-14


def test_flow_smoothness_known_value_and_edge_awareness():
    h, w = 6, 10
    flat = torch.zeros(1, 3, h, w, dtype=torch.float64)
    grid = pixel_grid(1, h, w, dtype=torch.float64)
    flow = torch.zeros(1, 2, h, w, dtype=torch.float64)
    flow[:, 0] = grid[:, 0] ** 2                          # d2u/du2 = 2 -> 0.1 after /20
    # u-term: mean over both channels of 0.1 and 0 = 0.05; v-term 0; halved -> 0.025
    assert torch.allclose(flow_smoothness_2nd(flow, flat), torch.tensor([0.025],
                                                                        dtype=torch.float64))
    # a kink at column 4 is cheaper by exp(-10) if the image has a unit edge between 4 and 5
    kink = torch.zeros(1, 2, h, w, dtype=torch.float64)
    kink[:, 0] = (grid[:, 0] - 4.0).abs() * 20.0
    edge = flat.clone()
    edge[..., 5:] = 1.0
    ratio = flow_smoothness_2nd(kink, edge) / flow_smoothness_2nd(kink, flat)
    assert torch.allclose(ratio, torch.exp(torch.tensor([-10.0], dtype=torch.float64)))


def test_disparity_smoothness_values():
    h, w = 7, 9
    image = torch.zeros(2, 3, h, w, dtype=torch.float64)
    assert torch.all(disparity_smoothness(torch.full((2, 1, h, w), 0.3, dtype=torch.float64),
                                          image) == 0)
    grid = pixel_grid(1, h, w, dtype=torch.float64)
    disp = (1.0 + 0.5 * grid[:, :1]).expand(2, 1, h, w).clone()   # ramp along u, mean 3
    disp[1] *= 7.0                                                 # scale invariance
    loss = disparity_smoothness(disp, image)
    assert torch.allclose(loss, torch.full((2,), 0.5 / 3.0, dtype=torch.float64))
    assert torch.allclose(disparity_smoothness(disp[:1], image[:1], normalize=False),
                          torch.tensor([0.5], dtype=torch.float64))
    edge = image.clone()
    edge[..., 4:] = 1.0                               # one unit edge of 8 column gaps
    expected = 0.5 / 3.0 * (7.0 + np.exp(-1.0)) / 8.0
    assert torch.allclose(disparity_smoothness(disp, edge),
                          torch.full((2,), expected, dtype=torch.float64))


# ----------------------------------------------------------------- triangulation loss

def test_triangulation_loss_values_mask_and_empty():
    tri = 1.0 + 9.0 * _rand(3, 50, seed=11)
    assert torch.all(triangulation_depth_loss(tri.clone(), tri).value == 0)
    pred = (0.9 * tri).requires_grad_()
    mask = torch.ones(3, 50, dtype=torch.bool)
    mask[1, 25:] = False
    mask[2] = False
    bad = tri.clone()
    bad[0, 0] = 0.0                                   # unusable triangulation: left out
    out = triangulation_depth_loss(pred, bad, mask)
    assert torch.allclose(out.value, torch.tensor([0.01, 0.01, 0.0], dtype=torch.float64))
    assert out.valid.tolist() == [True, True, False]
    out.value.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[2].abs().sum() == 0


def _smooth_depth(b, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = 2.0 + 8.0 * torch.rand(b, 1, 3, 4, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode='bilinear',
                                           align_corners=False)


def test_align_and_triangulation_loss_exact_and_original_equivalence():
    b, h, w, n = 2, 24, 32, 200
    gt = _smooth_depth(b, h, w, seed=12)
    g = torch.Generator().manual_seed(13)
    index = torch.stack([torch.randperm(h * w, generator=g)[:n] for _ in range(b)])
    x = torch.stack((index % w, index // w), dim=-1).to(torch.float64)
    tri = gt.reshape(b, -1).gather(1, index)
    pred = (gt * torch.tensor([3.7, 0.2], dtype=torch.float64).view(b, 1, 1, 1))
    pred.requires_grad_()
    out = align_and_triangulation_loss(pred, x, tri)
    assert out.loss.value.abs().max() < 1e-20 and out.loss.valid.all()
    assert torch.allclose(out.scale, torch.tensor([1 / 3.7, 5.0], dtype=torch.float64))
    assert torch.allclose(out.depth, gt) and not out.scale.requires_grad
    # noisy prediction: same scale as the original register_depth (median, then scale_adapt)
    noisy = pred.detach() * (1.0 + 0.2 * (_rand(b, 1, h, w, seed=14) - 0.5))
    out = align_and_triangulation_loss(noisy.requires_grad_(), x, tri)
    at_x = noisy.detach().reshape(b, -1).gather(1, index)
    s_med = at_x.median(dim=1).values / tri.median(dim=1).values
    d = at_x / s_med[:, None]
    a = (d / tri).sum(1) / (d * d / tri / tri).sum(1)
    assert torch.allclose(out.scale, a / s_med)
    expected = ((1.0 - d * a[:, None] / tri) ** 2).mean(1)
    assert torch.allclose(out.loss.value, expected)
    out.loss.value.sum().backward()
    assert torch.isfinite(noisy.grad).all() and noisy.grad.abs().sum() > 0
    # points outside the image and masked points are left out; nothing left -> 0, flagged
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1] = False
    x_out = x.clone()
    x_out[0, :10, 0] = w + 5.0
    out = align_and_triangulation_loss(pred.detach(), x_out, tri, mask)
    assert out.loss.valid.tolist() == [True, False] and out.loss.value[1] == 0
    assert out.scale[1] == 1 and out.loss.value[0] < 1e-20


# ------------------------------------------------------------------ reprojection L_pd

def test_depth_reprojection_loss_analytic_cases():
    b, h, w = 2, 24, 32
    depth = _smooth_depth(b, h, w, seed=15)
    K = _K(b, h, w)
    eye = torch.eye(4, dtype=torch.float64).expand(b, 4, 4)
    ones = torch.ones(b, 1, h, w, dtype=torch.float64)
    out = depth_reprojection_loss(depth, depth, eye, K, ones)
    assert out.value.shape == (b,) and out.value.abs().max() < 1e-15
    # depth 2 predicted 25 % farther: |1 - 1 / 1.25| = 0.2 everywhere
    out = depth_reprojection_loss(depth, 1.25 * depth, eye, K, ones)
    assert torch.allclose(out.value, torch.full((b,), 0.2, dtype=torch.float64))
    # fronto-parallel plane, sideways motion: z' = Z = depth 2 at the projection
    plane = torch.full((b, 1, h, w), 5.0, dtype=torch.float64)
    T = se3_exp(torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.0, 0.0]] * b, dtype=torch.float64))
    out = depth_reprojection_loss(plane, plane, T, K, ones)
    assert out.value.abs().max() < 1e-14
    # all pixels leave image 2 -> nothing to measure: 0, flagged, finite gradients
    far = se3_exp(torch.tensor([[50.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * b, dtype=torch.float64))
    d1 = plane.clone().requires_grad_()
    out = depth_reprojection_loss(d1, plane, far, K, ones)
    assert not out.valid.any() and torch.all(out.value == 0)
    out.value.sum().backward()
    assert torch.isfinite(d1.grad).all()


def test_depth_reprojection_loss_gradcheck():
    b, h, w = 1, 5, 6
    d1 = _smooth_depth(b, h, w, seed=17).requires_grad_()
    d2 = _smooth_depth(b, h, w, seed=18).requires_grad_()
    T = se3_exp(torch.tensor([[0.05, 0.02, 0.1, 0.0, 0.01, 0.0]], dtype=torch.float64))
    K = _K(b, h, w)
    mask = _rand(b, 1, h, w, seed=19)

    def loss(a, c):
        return depth_reprojection_loss(a, c, T, K, mask).value

    assert torch.autograd.gradcheck(loss, (d1, d2), fast_mode=True)


def test_depth_reprojection_loss_on_synthetic_pair(pair):
    d1, d2 = pair.depth_i[None], pair.depth_j[None]
    T, K = pair.T_ji[None].float(), pair.K[None]
    mask = pair.valid_ij[None].float()
    exact = depth_reprojection_loss(d1, d2, T, K, mask)
    assert exact.valid.all() and exact.value.item() < 0.005          # measured 0.0022
    wrong = depth_reprojection_loss(d1, 1.1 * d2, T, K, mask)
    assert wrong.value.item() > 0.08                                  # ~ 1 - 1 / 1.1
    # gradients reach both depths and are finite
    d1g, d2g = d1.clone().requires_grad_(), d2.clone().requires_grad_()
    depth_reprojection_loss(d1g, 1.1 * d2g, T, K, mask).value.sum().backward()
    assert torch.isfinite(d1g.grad).all() and torch.isfinite(d2g.grad).all()
    assert d1g.grad.abs().sum() > 0 and d2g.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- L_pf

def test_flow_rigid_loss_values_and_gradients(pair):
    b, h, w = 2, 24, 32
    depth = _smooth_depth(b, h, w, seed=16)
    K = _K(b, h, w)
    T = se3_exp(torch.tensor([[0.1, -0.05, 0.4, 0.01, 0.02, -0.01],
                              [-0.2, 0.0, 0.3, 0.0, -0.03, 0.0]], dtype=torch.float64))
    rigid, _ = rigid_flow(depth, T, K)
    ones = torch.ones(b, 1, h, w, dtype=torch.float64)
    assert torch.all(flow_rigid_loss(rigid, depth, T, K, ones).value == 0)
    flow = (rigid + torch.tensor([1.0, -2.0], dtype=torch.float64).view(1, 2, 1, 1))
    flow.requires_grad_()
    d = depth.clone().requires_grad_()
    half = ones.clone()
    half[..., : h // 2, :] = 0.0
    out = flow_rigid_loss(flow, d, T, K, half)
    assert torch.allclose(out.value, torch.full((b,), 1.5, dtype=torch.float64))
    out.value.sum().backward()
    assert d.grad is None and torch.isfinite(flow.grad).all()       # trains the flow only
    empty = flow_rigid_loss(flow.detach(), depth, T, K, torch.zeros_like(ones))
    assert not empty.valid.any() and torch.all(empty.value == 0)
    # the generator's flow is the rigid flow of its depth and pose
    real = flow_rigid_loss(pair.flow_ij[None], pair.depth_i[None], pair.T_ji[None],
                           pair.K[None], pair.valid_ij[None].float())
    assert real.value.item() < 1e-4                                  # px, float32 rounding


# ------------------------------------------------------------------------- geo loss

def test_epipolar_geo_loss_band():
    d_e = torch.tensor([0.05, 0.2, 0.3, 0.6, 1.0, 0.1, 0.5, 0.0],
                       dtype=torch.float64).view(1, 1, 2, 4).requires_grad_()
    out = epipolar_geo_loss(d_e)
    assert torch.allclose(out.value, torch.tensor([0.2], dtype=torch.float64))   # 0.1 .2 .3
    out.value.sum().backward()
    band = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0], dtype=torch.float64).view(1, 1, 2, 4)
    assert torch.allclose(d_e.grad, band / 3.0)
    wide = epipolar_geo_loss(d_e.detach(), rigid_thres=1.0)
    assert torch.allclose(wide.value, torch.tensor([(0.1 + 0.2 + 0.3 + 0.5 + 0.6) / 5],
                                                   dtype=torch.float64))
    # the original returned NaN for an empty band
    empty = epipolar_geo_loss(torch.tensor([0.0, 0.05, 0.7, 2.0]).view(1, 1, 2, 2))
    assert empty.value.item() == 0 and not empty.valid.any()
    mask = torch.ones(1, 1, 2, 4, dtype=torch.bool)
    mask[..., 0, 2] = False                                            # drops the 0.3
    assert torch.allclose(epipolar_geo_loss(d_e.detach(), mask=mask).value,
                          torch.tensor([0.15], dtype=torch.float64))
    with pytest.raises(ValueError):
        epipolar_geo_loss(d_e.detach(), inlier_thres=0.5, rigid_thres=0.5)
