"""Networks: shapes, parameter counts and key layout of the original, warping, gradients."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trianflow_ros.nets.depth_net import DepthNet, disp_to_depth
from trianflow_ros.nets.feature_pyramid import FeaturePyramid
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.nets.posenet import FlowPoseNet, pose_from_vector, PoseNet
from trianflow_ros.nets.pwc_decoder import cost_volume, normalize_feature_pair, PWCDecoder
from trianflow_ros.nets.pwc_decoder import upsample_flow

KEYS_DIR = Path(__file__).resolve().parents[2] / 'shared' / 'reference' / 'checkpoint_keys'
H, W = 64, 128


@pytest.fixture
def keys_dir() -> Path:
    """Return the manifests of the original checkpoints (../shared/reference/checkpoint_keys)."""
    if not KEYS_DIR.is_dir():
        if os.environ.get('CI'):
            pytest.fail(f'checkpoint manifests missing in CI: {KEYS_DIR}')
        pytest.skip(f'checkpoint manifests not found at {KEYS_DIR}')
    return KEYS_DIR


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layout(module: torch.nn.Module, prefix: str = '') -> list:
    return [f'{prefix}{k}\t{tuple(v.shape)}' for k, v in module.state_dict().items()]


def manifest(path: Path, prefix: str = '') -> list:
    return [line for line in path.read_text().splitlines() if line.startswith(prefix)]


def images(b: int = 2, h: int = H, w: int = W, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g, dtype=dtype),
            torch.rand(b, 3, h, w, generator=g, dtype=dtype))


def test_parameter_counts_match_the_original():
    assert num_params(FeaturePyramid()) == 1_040_744
    assert num_params(PWCDecoder()) == 4_093_580
    assert num_params(FlowNet()) == 5_134_324
    depth = DepthNet()
    assert num_params(depth) == 14_840_217
    assert num_params(depth) - num_params(depth.encoder.encoder.fc) == 14_327_217


def test_state_dict_layout_equals_the_manifests(keys_dir):
    # same names, same shapes, same order as the original modules
    assert layout(DepthNet()) == manifest(keys_dir / 'keys_depth_net.txt')
    assert layout(FeaturePyramid()) == manifest(keys_dir / 'keys_feature_pyramid.txt')
    assert layout(PWCDecoder()) == manifest(keys_dir / 'keys_pwc_tf.txt')
    assert layout(FlowNet()) == manifest(keys_dir / 'keys_model_flow.txt')
    combined = manifest(keys_dir / 'keys_model_depth_pose.txt')
    assert layout(DepthNet(), 'depth_net.') + layout(FlowNet(), 'model_pose.model_flow.') \
        == combined
    assert layout(FlowPoseNet(), 'pose_net.') == manifest(
        keys_dir / 'keys_model_flowposenet.txt', 'pose_net.')


def test_depth_net_outputs_sigmoid_disparity_at_full_resolution():
    net = DepthNet().eval()
    img, _ = images()
    with torch.no_grad():
        disps = net(img)
        depth = net.predict_depth(img)
    assert len(disps) == 1 and disps[0].shape == (2, 1, H, W)
    assert torch.isfinite(disps[0]).all()
    assert (disps[0] > 0).all() and (disps[0] < 1).all()
    assert depth.shape == (2, 1, H, W)
    assert (depth >= 0.1).all() and (depth <= 100.0).all()


def test_depth_net_normalises_its_input_like_the_original():
    net = DepthNet().eval()
    img, _ = images(b=1)
    with torch.no_grad():
        expected = net.decoder(net.encoder((img - 0.45) / 0.225), (H, W))[0]
        unnormalised = net.decoder(net.encoder(img), (H, W))[0]
        got = net(img)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, unnormalised)


def test_depth_net_multi_scale_and_odd_sizes():
    net = DepthNet(num_disp_scales=4).eval()
    img, _ = images(b=1)
    with torch.no_grad():
        disps = net(img)
    assert [tuple(d.shape) for d in disps] == [(1, 1, H // 2 ** s, W // 2 ** s) for s in range(4)]
    assert all(k.startswith('decoder.dispconvs.') for k in
               set(net.state_dict()) - set(DepthNet().state_dict()))
    with torch.no_grad():
        odd = DepthNet().eval()(torch.rand(1, 3, 70, 100))[0]
    assert odd.shape == (1, 1, 70, 100)


def test_disp_to_depth_maps_the_disparity_range_to_min_max_depth():
    disp = torch.tensor([0.0, 1.0, 0.5])
    depth = disp_to_depth(disp, 0.1, 100.0)
    torch.testing.assert_close(depth[:2], torch.tensor([100.0, 0.1]))
    torch.testing.assert_close(depth[2], torch.tensor(1.0 / (0.01 + 0.5 * 9.99)))
    with pytest.raises(ValueError):
        disp_to_depth(disp, 1.0, 0.5)


def test_flow_net_outputs_four_scales():
    net = FlowNet().eval()
    img1, img2 = images()
    with torch.no_grad():
        flows = net(img1, img2)
    assert [tuple(f.shape) for f in flows] == [
        (2, 2, H, W), (2, 2, H // 2, W // 2), (2, 2, H // 4, W // 4), (2, 2, H // 8, W // 8)]
    assert all(torch.isfinite(f).all() for f in flows)
    with pytest.raises(ValueError, match='img2'):
        net(img1, img2[:, :, :32])
    with torch.no_grad():   # not a multiple of 64: every upsampling goes to the next level's size
        odd = net(*images(b=1, h=72, w=100))
    assert [tuple(f.shape[-2:]) for f in odd] == [(72, 100), (36, 50), (18, 25), (9, 12)]


def test_forward_backward_equals_two_separate_passes():
    net = FlowNet().eval()
    img1, img2 = images(b=1, w=64)
    with torch.no_grad():
        fwd, bwd = net.forward_backward(img1, img2)
        fwd_ref, bwd_ref = net(img1, img2), net(img2, img1)
    for got, ref in zip(fwd + bwd, fwd_ref + bwd_ref):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fwd[0], bwd[0])


def test_cost_volume_is_the_channel_mean_of_shifted_products():
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(2, 5, 7, 9, generator=g, dtype=torch.float64)
    f2 = torch.randn(2, 5, 7, 9, generator=g, dtype=torch.float64)
    cv = cost_volume(f1, f2, search_range=4)
    assert cv.shape == (2, 81, 7, 9)
    for dy, dx in [(0, 0), (-4, -4), (2, -3), (4, 1), (-1, 4)]:
        k = (dy + 4) * 9 + (dx + 4)          # dy outer, dx inner
        for y, x in [(3, 4), (0, 0), (6, 8), (2, 7)]:
            yy, xx = y + dy, x + dx
            inside = 0 <= yy < 7 and 0 <= xx < 9
            want = (f1[:, :, y, x] * f2[:, :, yy, xx]).mean(1) if inside else torch.zeros(2)
            torch.testing.assert_close(cv[:, k, y, x], want.to(cv.dtype))


def test_normalized_cost_volume_is_affine_invariant_and_per_sample():
    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(3, 6, 5, 8, generator=g, dtype=torch.float64)
    f2 = torch.randn(3, 6, 5, 8, generator=g, dtype=torch.float64)
    n1, n2 = normalize_feature_pair(f1, f2)
    both = torch.cat((n1, n2), dim=3)                                    # (B, C, H, 2W)
    torch.testing.assert_close(both.mean(dim=(2, 3)), torch.zeros(3, 6, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(both.pow(2).mean(dim=(1, 2, 3)),
                               torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-8)
    # a per-sample gain and per-channel offset of the features change nothing
    gain = torch.tensor([1e-2, 3.0, 250.0], dtype=torch.float64).view(3, 1, 1, 1)
    offset = torch.randn(3, 6, 1, 1, generator=g, dtype=torch.float64)
    ref = cost_volume(f1, f2, 4, normalize=True)
    got = cost_volume(gain * f1 + offset, gain * f2 + offset, 4, normalize=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)   # eps / sigma^2 = 1e-6
    assert not torch.allclose(cost_volume(gain * f1, gain * f2, 4), cost_volume(f1, f2, 4))
    # each sample on its own: the result of sample 0 does not depend on the others
    torch.testing.assert_close(cost_volume(f1[:1], f2[:1], 4, normalize=True), ref[:1])
    # identical maps correlate to mean_c n^2 at zero displacement; a constant map stays finite
    same = cost_volume(f1, f1, 4, normalize=True)[:, 40]
    torch.testing.assert_close(same, normalize_feature_pair(f1, f1)[0].pow(2).mean(1))
    flat = cost_volume(torch.ones(1, 4, 3, 3), torch.ones(1, 4, 3, 3), 2, normalize=True)
    assert torch.isfinite(flat).all() and flat.abs().max() == 0
    assert torch.autograd.gradcheck(
        lambda a, b: cost_volume(a, b, 1, normalize=True),
        (f1[:1, :2, :3, :4].clone().requires_grad_(), f2[:1, :2, :3, :4].clone().requires_grad_()))


def test_flow_net_cost_volume_norm_comes_from_the_config_and_keeps_the_keys():
    from trianflow_ros.config import load_config
    plain = FlowNet.from_config(load_config(None, []))
    normed = FlowNet.from_config(load_config(None, ['flow_net.cost_volume_norm=true']))
    assert not plain.pwc_model.cost_volume_norm and normed.pwc_model.cost_volume_norm
    assert list(plain.state_dict()) == list(normed.state_dict())
    normed.load_state_dict(plain.state_dict())
    img = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = plain(img, img.flip(-1))[0], normed(img, img.flip(-1))[0]
    assert torch.isfinite(b).all() and not torch.allclose(a, b)


def test_pwc_warp_with_zero_flow_is_the_identity_and_integer_flow_shifts():
    decoder = PWCDecoder()
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(2, 32, 16, 52, generator=g, dtype=torch.float64)
    zero = torch.zeros(2, 2, 16, 52, dtype=torch.float64)
    torch.testing.assert_close(decoder.warp(feat, zero), feat, rtol=0, atol=1e-12)
    # float32: the normalised grid coordinate rounds (sample positions off by ~W * 3e-8 px)
    torch.testing.assert_close(decoder.warp(feat.float(), zero.float()), feat.float(),
                               rtol=0, atol=1e-4)
    # align_corners=True semantics: a flow of +1 px in u samples the next column exactly
    shift = torch.zeros_like(zero)
    shift[:, 0] = 1.0
    warped = decoder.warp(feat, shift)
    torch.testing.assert_close(warped[..., :-1], feat[..., 1:], rtol=0, atol=1e-12)
    assert warped[..., -1].abs().max() == 0     # zero padding outside


def test_pwc_warps_every_level_with_the_upsampled_flow_of_that_level():
    decoder = PWCDecoder().eval()
    pyramid = FeaturePyramid().eval()
    img1, img2 = images(b=1)
    calls = []
    original_warp = decoder.warp

    def spy(features2, flow):
        calls.append((tuple(features2.shape[-2:]), tuple(flow.shape)))
        return original_warp(features2, flow)

    decoder.warp = spy
    with torch.no_grad():
        decoder(pyramid(img1), pyramid(img2), (H, W))
    assert calls == [((H // 2 ** lv, W // 2 ** lv), (1, 2, H // 2 ** lv, W // 2 ** lv))
                     for lv in (5, 4, 3, 2)]


def test_upsample_flow_doubles_resolution_and_values():
    flow = torch.randn(1, 2, 4, 13)
    up = upsample_flow(flow, (8, 26))
    torch.testing.assert_close(
        up, 2.0 * F.interpolate(flow, scale_factor=2.0, mode='bilinear', align_corners=False))
    const = torch.stack((torch.full((3, 5), 1.5), torch.full((3, 5), -0.5))).unsqueeze(0)
    torch.testing.assert_close(upsample_flow(const, (6, 20)),
                               const.new_tensor([6.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 6, 20))


def test_gradients_are_finite_for_every_parameter():
    depth, flow = DepthNet(), FlowNet()
    img1, img2 = images(b=1, w=64)
    depth(img1)[0].mean().backward()
    fwd, bwd = flow.forward_backward(img1, img2)
    sum(f.abs().mean() for f in fwd + bwd).backward()
    for name, p in list(depth.named_parameters()) + list(flow.named_parameters()):
        if '.fc.' in name:
            assert p.grad is None      # kept for key parity, unused
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in flow.fpyramid.parameters())


def test_float64_forward():
    depth, flow = DepthNet().double().eval(), FlowNet().double().eval()
    img1, img2 = images(b=1, w=64, dtype=torch.float64)
    with torch.no_grad():
        disp = depth(img1)[0]
        fwd, bwd = flow.forward_backward(img1, img2)
    assert disp.dtype == torch.float64 and fwd[0].dtype == torch.float64
    assert torch.isfinite(disp).all() and torch.isfinite(bwd[0]).all()


def rot(axis: int, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    R = torch.eye(3, dtype=torch.float64)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    if axis == 1:               # R_y has the sine signs flipped in the (z, x) plane
        R = R.T
    return R


def test_pose_from_vector_conventions():
    vec = torch.tensor([[0.1, -0.2, 0.3, 0.05, -0.02, 0.04]], dtype=torch.float64)
    T = pose_from_vector(vec, 'euler')
    R_ref = rot(0, 0.05) @ rot(1, -0.02) @ rot(2, 0.04)
    torch.testing.assert_close(T[0, :3, :3], R_ref)
    torch.testing.assert_close(T[0, :3, 3], vec[0, :3])
    torch.testing.assert_close(T[0, 3], vec.new_tensor([0.0, 0.0, 0.0, 1.0]))
    single = pose_from_vector(torch.tensor([[0, 0, 0, 0, 0.3, 0.0]], dtype=torch.float64),
                              'axis_angle')
    torch.testing.assert_close(single[0, :3, :3], rot(1, 0.3))
    with pytest.raises(ValueError, match='rotation'):
        pose_from_vector(vec, 'quat')


def test_pose_nets_return_rigid_transforms_and_backpropagate():
    img1, img2 = images(b=2)
    flow = 5.0 * torch.randn(2, 2, H, W)
    for net, args in ((FlowPoseNet(), (flow,)), (PoseNet(), (img1, img2))):
        T = net(*args)
        assert T.shape == (2, 4, 4)
        R = T[:, :3, :3]
        torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3),
                                   atol=1e-5, rtol=0)
        T[:, :3, 3].sum().backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_flow_pose_net_normalises_flow_by_image_size():
    net = FlowPoseNet().eval()
    flow = 4.0 * torch.randn(1, 2, H, W)
    with torch.no_grad():
        got = net.pose_vector(flow)
        x = flow / flow.new_tensor([W, H]).view(1, 2, 1, 1)
        for i in range(1, 8):
            x = getattr(net, f'conv{i}')(x)
        want = 0.01 * net.pose_pred(x).mean(dim=(2, 3))
    torch.testing.assert_close(got, want)
