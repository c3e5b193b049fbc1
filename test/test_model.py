"""Tests of the training models: stages, freezing, loss weights, geometry, failures, seeds."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trianflow_ros.config import load_config
from trianflow_ros.data.sample import collate_samples
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset
from trianflow_ros.geometry.se3 import direction_error_deg, rotation_error_deg
from trianflow_ros.geometry.triangulation import min_angle_for_parallax, ray_angle_mask
from trianflow_ros.losses.photometric import flow_photometric_loss
from trianflow_ros.model import (build_model, LOSS_KEYS, loss_weights, PoseNetModel,
                                 solve_two_view, TrianFlowModel)
from trianflow_ros.model.trianflow import gated_mean

CONFIG = Path(__file__).resolve().parents[1] / 'config'
H, W = 64, 128
SIZE = [f'data.img_height={H}', f'data.img_width={W}']


def _config(name='kitti.yaml', *overrides):
    return load_config(CONFIG / name, SIZE + list(overrides))


def _batch(kinds):
    ds = SyntheticPairDataset(kinds=kinds, seeds=(0,), num_frames=3, height=H, width=W,
                              stride=2)
    return collate_samples([ds[0], ds[1]])


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """
    Run on one intra-op thread.

    On a shared 2-core machine two OpenMP threads made these small CPU steps 10-30x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def batch():
    """Return a forward-driving and a hand-held pair with exact ground truth, 64 x 128."""
    return _batch(('forward', 'handheld'))


@pytest.fixture(scope='module')
def rotation_batch():
    """Return a forward-driving and a pure-rotation pair (no parallax: nothing triangulates)."""
    return _batch(('forward', 'pure_rotation'))


def _pyramid(flow):
    """Return the flow net's four scales of a full-resolution flow (values scaled too)."""
    out = [flow]
    for s in (2, 4, 8):
        out.append(F.interpolate(flow, scale_factor=1.0 / s, mode='bilinear',
                                 align_corners=False) / s)
    return out


def inject_flow(model, flow_12, flow_21):
    """
    Make the real flow net return the given flows (values) while staying in the graph.

    The wrapper still runs the network and returns ``net + (gt - net).detach()``, so the
    values are the ground truth but gradients reach the flow net as they would. It records
    the network's mode and whether gradients were enabled during each call.
    """
    original = model.flow_net.forward_backward
    calls = []

    def forward_backward(img1, img2):
        calls.append({'training': model.flow_net.training,
                      'grad': torch.is_grad_enabled()})
        net_12, net_21 = original(img1, img2)
        return ([n + (g - n).detach() for n, g in zip(net_12, _pyramid(flow_12))],
                [n + (g - n).detach() for n, g in zip(net_21, _pyramid(flow_21))])
    model.flow_net.forward_backward = forward_backward
    return calls


def _finite_losses(out):
    assert set(out.losses) == set(LOSS_KEYS)
    for key, value in out.losses.items():
        assert value.dim() == 0, key
        assert torch.isfinite(value), key


def _grads(module):
    return [p.grad for p in module.parameters()]


def _has_grad(module):
    grads = [g for g in _grads(module) if g is not None]
    return bool(grads) and all(torch.isfinite(g).all() for g in grads) and any(
        bool(g.abs().sum() > 0) for g in grads)


def test_flow_stage_trains_the_flow_only(batch):
    torch.manual_seed(0)
    model = TrianFlowModel(_config())
    params = model.parameters_to_train('flow')
    assert {id(p) for p in params} == {id(p) for p in model.flow_net.parameters()}
    out = model(batch, 'flow')
    _finite_losses(out)
    assert float(out.losses['loss_pixel'].detach()) > 0
    assert float(out.losses['loss_ssim'].detach()) > 0
    assert float(out.losses['loss_flow_smooth'].detach()) > 0
    for key in ('loss_flow_consis', 'geo_loss', 'pt_depth_loss', 'pj_depth_loss',
                'depth_smooth_loss', 'flow_error'):
        assert float(out.losses[key].detach()) == 0.0, key
    model.total_loss(out.losses).backward()
    assert _has_grad(model.flow_net)
    assert all(g is None for g in _grads(model.depth_net))
    assert [tuple(f.shape) for f in out.flows_12] == [(2, 2, H, W), (2, 2, H // 2, W // 2),
                                                      (2, 2, H // 4, W // 4),
                                                      (2, 2, H // 8, W // 8)]
    assert out.valid_12.shape == (2, 1, H, W)


def test_depth_stage_freezes_the_flow_net(batch):
    torch.manual_seed(0)
    model = TrianFlowModel(_config())
    calls = inject_flow(model, batch['flow_12'], batch['flow_21'])
    params = model.parameters_to_train('depth')
    assert {id(p) for p in params} == {id(p) for p in model.depth_net.parameters()}
    assert not any(p.requires_grad for p in model.flow_net.parameters())
    flow_before = [p.detach().clone() for p in model.flow_net.parameters()]
    depth_before = [p.detach().clone() for p in model.depth_net.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    model.train()
    out = model(batch, 'depth')
    _finite_losses(out)
    # the flow net ran frozen, and its mode is restored afterwards
    assert calls == [{'training': False, 'grad': False}]
    assert model.flow_net.training
    for key in ('loss_pixel', 'loss_ssim', 'loss_flow_smooth', 'loss_flow_consis'):
        assert float(out.losses[key].detach()) == 0.0, key
    assert out.geometry_ok.tolist() == [True, True]
    for key in ('pt_depth_loss', 'pj_depth_loss', 'depth_smooth_loss', 'flow_error'):
        assert float(out.losses[key].detach()) > 0, key
    optimizer.zero_grad()
    model.total_loss(out.losses).backward()
    assert all(g is None for g in _grads(model.flow_net))
    assert _has_grad(model.depth_net)
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(flow_before, model.flow_net.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(depth_before, model.depth_net.parameters()))
    assert out.depth1.shape == (2, 1, H, W) and out.depth2.shape == (2, 1, H, W)
    assert out.F.shape == (2, 3, 3) and out.T_21.shape == (2, 4, 4)


def test_depth_pose_stage_trains_both_nets(batch):
    torch.manual_seed(0)
    model = TrianFlowModel(_config())
    calls = inject_flow(model, batch['flow_12'], batch['flow_21'])
    params = model.parameters_to_train('depth_pose')
    assert len(params) == len(list(model.parameters()))
    out = model(batch, 'depth_pose')
    _finite_losses(out)
    assert calls[0]['grad']
    assert float(out.losses['loss_pixel'].detach()) > 0
    assert float(out.losses['pt_depth_loss'].detach()) > 0
    model.total_loss(out.losses).backward()
    assert _has_grad(model.flow_net) and _has_grad(model.depth_net)
    assert 0.0 < out.diagnostics['inlier_ratio'] <= 1.0
    assert out.diagnostics['mean_De'] < 0.1          # exact flow: on the epipolar lines


def test_total_loss_is_the_weighted_sum_of_raw_losses(batch):
    """kitti_3stage: pt/pj/smooth weights are 0; photometric weights apply exactly once."""
    cfg = _config('kitti_3stage.yaml')
    weights = loss_weights(cfg)
    assert weights['pt_depth_loss'] == weights['pj_depth_loss'] == 0.0
    assert weights['depth_smooth_loss'] == 0.0
    assert weights['loss_pixel'] == pytest.approx(0.15) and weights['loss_ssim'] == 0.85
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, TrianFlowModel)
    inject_flow(model, batch['flow_12'], batch['flow_21'])
    model.parameters_to_train('depth_pose')
    out = model(batch, 'depth_pose')
    lo = out.losses
    expected = (0.15 * lo['loss_pixel'] + 0.85 * lo['loss_ssim'] + 10.0 * lo['loss_flow_smooth']
                + 0.01 * lo['loss_flow_consis'] + 0.002 * lo['geo_loss']
                + 0.01 * lo['flow_error'])
    total = model.total_loss(lo)
    assert torch.allclose(total, expected, rtol=1e-6, atol=0)
    assert float(lo['pt_depth_loss'].detach()) > 0                  # computed, weighted by 0
    # the photometric share of the total equals the photometric loss with w_ssim = 0.85,
    # computed independently over both directions and the three scales
    img1, img2 = batch['image1'], batch['image2']
    photometric = 0.0
    for f12, f21 in list(zip(_pyramid(batch['flow_12']), _pyramid(batch['flow_21'])))[:3]:
        i1 = F.adaptive_avg_pool2d(img1, f12.shape[-2:])
        i2 = F.adaptive_avg_pool2d(img2, f12.shape[-2:])
        for a, b_, fa, fb in ((i1, i2, f12, f21), (i2, i1, f21, f12)):
            pixel, ssim = flow_photometric_loss(a, b_, fa, model.valid_mask(fa, fb), 0.85)
            photometric += float(pixel.mean() + ssim.mean())
    got = float((0.15 * lo['loss_pixel'] + 0.85 * lo['loss_ssim']).detach())
    assert got == pytest.approx(photometric, rel=1e-5)
    # with every depth weight at 0 the depth net runs frozen: no gradient reaches it
    total.backward()
    assert all(g is None for g in _grads(model.depth_net))
    assert _has_grad(model.flow_net)
    with pytest.raises(KeyError, match='without a weight'):
        model.total_loss({'no_such_loss': total})


@pytest.mark.parametrize('parallax_px, min_share', [(0.0, 0.5), (1.0, 0.3)])
def test_ground_truth_flow_recovers_pose_and_depth(batch, parallax_px, min_share):
    cfg = _config('kitti.yaml', f'loss.tri_min_parallax_px={parallax_px}')
    model = TrianFlowModel(cfg)
    f12, f21, K = batch['flow_12'], batch['flow_21'], batch['K']
    geo = solve_two_view(f12, f21, model.valid_mask(f12, f21), K, cfg,
                         torch.Generator().manual_seed(0))
    assert geo.ok.tolist() == [True, True]
    T_gt = batch['T_21']
    assert (rotation_error_deg(geo.T_21[:, :3, :3], T_gt[:, :3, :3]) < 1.0).all()
    assert (direction_error_deg(geo.T_21[:, :3, 3], T_gt[:, :3, 3]) < 3.0).all()
    assert torch.allclose(geo.T_21[:, :3, 3].norm(dim=1), torch.ones(2))
    # every kept point has the configured parallax (focal x ray angle)
    min_angle = min_angle_for_parallax(parallax_px, K, cfg.geometry.triangulation.min_angle_deg)
    parallax_ok = ray_angle_mask(geo.x1, geo.x2, K, K, geo.T_21, min_angle)
    assert not bool((geo.tri_ok & ~parallax_ok).any())
    for i in range(2):
        sel = geo.tri_ok[i]
        assert int(sel.sum()) > min_share * int(geo.matches.count[i])
        x = geo.x1[i, sel].round().long()
        gt = batch['depth1'][i, 0, x[:, 1], x[:, 0]]
        tri = geo.z1[i, sel] * T_gt[i, :3, 3].norm()       # unit baseline -> metres
        corr = torch.corrcoef(torch.stack((tri, gt)))[0, 1]
        assert corr > 0.98
        assert ((tri - gt).abs() / gt).median() < 0.05
    # and the model reports the same geometry
    inject_flow(model, f12, f21)
    with torch.no_grad():
        out = model(batch, 'depth')
    assert (direction_error_deg(out.T_21[:, :3, 3], T_gt[:, :3, 3]) < 3.0).all()
    assert out.diagnostics['geometry_ok_ratio'] == 1.0


def test_parallax_floor_drops_low_parallax_points(batch):
    """The pixel parallax floor keeps a subset of the original's points, the far ones go."""
    f12, f21, K = batch['flow_12'], batch['flow_21'], batch['K']
    geos = {}
    for px in (0.0, 1.0):
        cfg = _config('kitti.yaml', f'loss.tri_min_parallax_px={px}')
        model = TrianFlowModel(cfg)
        geos[px] = solve_two_view(f12, f21, model.valid_mask(f12, f21), K, cfg,
                                  torch.Generator().manual_seed(0))
    kept, dropped = geos[1.0].tri_ok, geos[0.0].tri_ok & ~geos[1.0].tri_ok
    assert not bool((kept & ~geos[0.0].tri_ok).any())                   # same samples, subset
    assert int(dropped.sum()) > 0
    z = geos[0.0].z1
    assert float(z[dropped].median()) > float(z[kept].median())         # far points go


def test_a_failed_sample_is_masked_alone(rotation_batch):
    """Sample 1 is a pure rotation: F is fine, but nothing can be triangulated."""
    torch.manual_seed(0)
    model = TrianFlowModel(_config())
    inject_flow(model, rotation_batch['flow_12'], rotation_batch['flow_21'])
    model.parameters_to_train('depth')
    out = model(rotation_batch, 'depth')
    _finite_losses(out)
    assert out.geometry_ok.tolist() == [True, False]
    for key in ('pt_depth_loss', 'pj_depth_loss', 'depth_smooth_loss', 'flow_error'):
        assert float(out.losses[key].detach()) > 0, key
    # the pose itself is fine (a pure rotation): it is reported, only nothing triangulates
    R_gt = rotation_batch['T_21'][:, :3, :3]
    assert (rotation_error_deg(out.T_21[:, :3, :3], R_gt) < 1.0).all()
    assert out.diagnostics['tri_valid_ratio'] < 0.75
    assert out.diagnostics['num_geometry_ok'] == 1.0
    model.total_loss(out.losses).backward()
    assert _has_grad(model.depth_net)


def test_black_standstill_sample_and_all_failed_batch(batch):
    torch.manual_seed(0)
    model = TrianFlowModel(_config())
    black = dict(batch)
    black['image1'], black['image2'] = batch['image1'].clone(), batch['image2'].clone()
    black['image1'][1] = 0.0
    black['image2'][1] = 0.0
    zero = torch.zeros_like(batch['flow_12'][:1])
    f12 = torch.cat((batch['flow_12'][:1], zero))
    f21 = torch.cat((batch['flow_21'][:1], zero))
    inject_flow(model, f12, f21)
    model.parameters_to_train('depth')
    out = model(black, 'depth')
    _finite_losses(out)
    assert out.geometry_ok.tolist() == [True, False]
    assert float(out.losses['pt_depth_loss'].detach()) > 0
    # every sample fails: depth losses are 0 (not NaN), the diagnostics say so, and the
    # step still runs
    model = TrianFlowModel(_config())
    inject_flow(model, torch.zeros_like(batch['flow_12']), torch.zeros_like(batch['flow_21']))
    model.parameters_to_train('depth')
    out = model(black, 'depth')
    _finite_losses(out)
    assert out.geometry_ok.tolist() == [False, False]
    assert out.diagnostics['all_geometry_failed'] == 1.0
    for key in ('pt_depth_loss', 'pj_depth_loss', 'depth_smooth_loss', 'flow_error'):
        assert float(out.losses[key].detach()) == 0.0, key
    model.total_loss(out.losses).backward()
    assert all(g is None or bool((g == 0).all()) for g in _grads(model.depth_net))


def test_gated_mean_normalises_over_good_samples():
    values = torch.tensor([2.0, float('nan'), 4.0], requires_grad=True)
    ok = torch.tensor([True, False, True])
    mean = gated_mean(values, ok)
    assert float(mean.detach()) == 3.0
    mean.backward()
    assert values.grad.tolist() == [0.5, 0.0, 0.5]
    assert float(gated_mean(values, torch.zeros(3, dtype=torch.bool)).detach()) == 0.0


def test_same_seed_same_losses(batch):
    torch.manual_seed(0)
    first = TrianFlowModel(_config())
    second = TrianFlowModel(_config())
    other_seed = TrianFlowModel(_config('kitti.yaml', 'geometry.ransac.seed=1'))
    second.load_state_dict(first.state_dict())
    other_seed.load_state_dict(first.state_dict())
    results = []
    for model in (first, second, other_seed):
        inject_flow(model, batch['flow_12'], batch['flow_21'])
        model.eval()
        with torch.no_grad():
            out = model(batch, 'depth_pose')
        results.append(out)
        assert model.geometry_calls == 1
    for key in LOSS_KEYS:
        assert torch.equal(results[0].losses[key], results[1].losses[key]), key
    assert torch.equal(results[0].F, results[1].F)
    assert torch.equal(results[0].T_21, results[1].T_21)
    # the seed is used: another one draws other matches (the same geometry up to rounding)
    assert not torch.equal(results[0].F, results[2].F)
    assert torch.allclose(results[0].T_21, results[2].T_21, atol=1e-3)


def test_autocast_networks_fp32_geometry(batch):
    """Under (CPU bfloat16) autocast the nets run low precision, losses and geometry fp32."""
    torch.manual_seed(0)
    model = TrianFlowModel(_config())
    original = model.flow_net.forward_backward
    calls = inject_flow(model, batch['flow_12'], batch['flow_21'])
    injected = model.flow_net.forward_backward

    def low_precision(img1, img2):
        net_12, _ = original(img1, img2)
        flows_12, flows_21 = injected(img1, img2)
        return ([f.to(net_12[0].dtype) for f in flows_12],
                [f.to(net_12[0].dtype) for f in flows_21])
    model.flow_net.forward_backward = low_precision
    model.parameters_to_train('depth_pose')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(batch, 'depth_pose')
        total = model.total_loss(out.losses)
    assert calls and out.flows_12[0].dtype == torch.float32
    _finite_losses(out)
    assert all(v.dtype == torch.float32 for v in out.losses.values())
    assert out.geometry_ok.tolist() == [True, True]
    assert (direction_error_deg(out.T_21[:, :3, 3], batch['T_21'][:, :3, 3]) < 3.0).all()
    total.backward()
    assert _has_grad(model.depth_net) and _has_grad(model.flow_net)


@pytest.mark.parametrize('mode', ['posenet', 'flowposenet'])
def test_posenet_models(batch, mode):
    torch.manual_seed(0)
    model = build_model(_config('kitti.yaml', f'train.mode={mode}'))
    assert isinstance(model, PoseNetModel)
    params = model.parameters_to_train(mode)
    out = model(batch, mode)
    _finite_losses(out)
    for key in ('flow_error', 'pj_depth_loss', 'depth_smooth_loss'):
        assert float(out.losses[key].detach()) > 0, key
    assert out.T_21.shape == (2, 4, 4) and out.depth1.shape == (2, 1, H, W)
    model.total_loss(out.losses).backward()
    assert _has_grad(model.pose_net) and _has_grad(model.depth_net)
    if mode == 'flowposenet':
        assert all(g is None for g in _grads(model.flow_net))
        assert not any(p.requires_grad for p in model.flow_net.parameters())
        assert len(out.flows_12) == 4
    assert {id(p) for p in params} == {id(p) for p in model.pose_net.parameters()} | {
        id(p) for p in model.depth_net.parameters()}


def test_bad_stage_and_batch_are_reported(batch):
    model = TrianFlowModel(_config())
    with pytest.raises(ValueError, match='stage must be one of'):
        model(batch, 'posenet')
    with pytest.raises(ValueError, match="no 'K'"):
        model({'image1': batch['image1'], 'image2': batch['image2']}, 'flow')
    with pytest.raises(ValueError, match='network'):
        model({'image1': batch['image1'], 'image2': batch['image2'],
               'K': batch['K'][0]}, 'flow')
