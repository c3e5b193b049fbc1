"""Tests of geometry.pose: essential decomposition and the batched cheirality test."""

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import project
from trianflow_ros.geometry.pose import (decompose_essential, PoseResult, recover_pose,
                                         translation_axis_angle_deg)
from trianflow_ros.geometry.se3 import (direction_error_deg, make_pose, rotation_error_deg,
                                        skew, so3_exp)
from trianflow_ros.geometry.threads import all_cpu_threads, one_cpu_thread

FX, CX, CY, WIDTH, HEIGHT = 718.9, 607.2, 185.2, 1241, 376


def _K(b, dtype=torch.float64):
    K = torch.tensor([[FX, 0.0, CX], [0.0, FX, CY], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(b, 3, 3).clone()


def _motions(b, seed=0, dtype=torch.float64):
    """Different motions: forward, sideways, backward, up, with rotations up to ~6 degrees."""
    g = torch.Generator().manual_seed(seed)
    R = so3_exp((torch.rand(b, 3, generator=g, dtype=dtype) - 0.5) * 0.2)
    dirs = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.2], [0.1, 0.0, -1.0], [0.0, -1.0, 0.3],
                         [-0.7, 0.1, 0.7], [0.3, 0.3, 1.0], [-1.0, 0.0, -0.2],
                         [0.0, 0.5, 1.0]], dtype=dtype)
    t = dirs[torch.arange(b) % 8] + 0.05 * torch.randn(b, 3, generator=g, dtype=dtype)
    return R, t / t.norm(dim=-1, keepdim=True)


def _scene(R, t, n, seed=0, noise=0.0):
    b, dtype = R.shape[0], R.dtype
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(b, n, generator=g, dtype=dtype) * (WIDTH - 1)
    v = torch.rand(b, n, generator=g, dtype=dtype) * (HEIGHT - 1)
    d = 5.0 + torch.rand(b, n, generator=g, dtype=dtype) * 30.0
    X1 = torch.stack(((u - CX) / FX * d, (v - CY) / FX * d, d), dim=-1)
    K = _K(b, dtype)
    x1, _ = project(X1, K)
    X2 = X1 @ R.transpose(1, 2) + t[:, None]
    x2, z2 = project(X2, K)
    keep = z2 > 0.5                                       # in front of camera 2 as well
    x1 = x1 + noise * torch.randn(x1.shape, generator=g, dtype=dtype)
    x2 = x2 + noise * torch.randn(x2.shape, generator=g, dtype=dtype)
    return x1, x2, K, keep


def test_decompose_essential_candidates():
    R, t = _motions(5, seed=1)
    E = skew(t) @ R
    Rc, tc = decompose_essential(E)
    assert Rc.shape == (5, 4, 3, 3) and tc.shape == (5, 4, 3)
    eye = torch.eye(3, dtype=E.dtype).expand(5, 4, 3, 3)
    assert torch.allclose(Rc @ Rc.transpose(-1, -2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(Rc), torch.ones(5, 4, dtype=E.dtype))
    assert torch.allclose(tc.norm(dim=-1), torch.ones(5, 4, dtype=E.dtype))
    for k in range(4):                                   # every candidate explains E
        Ek = skew(tc[:, k]) @ Rc[:, k]
        sign = torch.sign((Ek * E).flatten(1).sum(1))[:, None, None]
        assert torch.allclose(sign * Ek, E, atol=1e-10)
    # the true (R, t) is among the candidates
    rot = torch.stack([rotation_error_deg(Rc[:, k], R) for k in range(4)], 1)
    tdir = torch.stack([direction_error_deg(tc[:, k], t) for k in range(4)], 1)
    assert bool(((rot < 1e-6) & (tdir < 1e-6)).any(dim=1).all())


def test_translation_axis_angle_is_exact_and_ignores_sign_and_scale():
    R, t = _motions(8, seed=2)
    E = skew(t) @ R
    angle = translation_axis_angle_deg(E)
    assert angle.shape == (8,) and angle.dtype == E.dtype
    expected = torch.rad2deg(torch.acos(t[:, 2].abs() / t.norm(dim=-1)))
    assert torch.allclose(angle, expected, atol=1e-9)
    # -E and 3 E are the same epipolar geometry; -t the same axis
    assert torch.allclose(translation_axis_angle_deg(-3.0 * E), expected, atol=1e-9)
    assert torch.allclose(translation_axis_angle_deg(skew(-t) @ R), expected, atol=1e-9)
    # along the axis: 0; sideways: 90; at 45 deg: 45
    axes = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=E.dtype)
    got = translation_axis_angle_deg(skew(axes) @ R[:3])
    assert torch.allclose(got, torch.tensor([0.0, 90.0, 45.0], dtype=E.dtype), atol=1e-6)
    with pytest.raises(ValueError):
        translation_axis_angle_deg(E[0])


def test_recover_pose_exact_on_noise_free_scene():
    R, t = _motions(1, seed=2)
    x1, x2, K, keep = _scene(R, t, 300, seed=2)
    res = recover_pose(skew(t) @ R, x1, x2, K, K, keep)
    assert isinstance(res, PoseResult)
    assert res.R.shape == (1, 3, 3) and res.t.shape == (1, 3) and res.T_21.shape == (1, 4, 4)
    assert res.positive.shape == (1, 300) and res.positive.dtype == torch.bool
    assert res.num_positive.dtype == torch.int64
    assert rotation_error_deg(res.R, R).item() < 1e-6
    assert direction_error_deg(res.t, t).item() < 1e-6
    assert torch.allclose(res.T_21, make_pose(res.R, res.t))
    assert res.num_positive.item() == int(keep.sum())
    assert torch.equal(res.positive, keep)


def test_recover_pose_float32_rotation_is_orthonormal():
    # the decomposition runs in float64: float32 results are orthonormal to float32 rounding,
    # so that a VO chaining many relative poses does not accumulate a drift
    R, t = _motions(4, seed=5)
    x1, x2, K, keep = _scene(R, t, 300, seed=5, noise=0.3)
    E = (skew(t) @ R).float()
    res = recover_pose(E, x1.float(), x2.float(), K.float(), K.float(), keep)
    assert res.R.dtype == torch.float32 and res.t.dtype == torch.float32
    eye = torch.eye(3, dtype=torch.float64)
    err = (res.R.double() @ res.R.double().transpose(1, 2) - eye).abs().max().item()
    assert err < 2e-7, err
    assert rotation_error_deg(res.R.double(), R).max().item() < 1e-3


def test_recover_pose_batch_of_different_motions_equals_single():
    # the original TrianFlow paired points with another element's camera when B > 1
    b = 8
    R, t = _motions(b, seed=3)
    K = _K(b)
    K[1::2, 0, 0] = 700.0                                 # different cameras per element
    K[1::2, 1, 1] = 705.0
    g = torch.Generator().manual_seed(3)
    u = torch.rand(b, 400, generator=g, dtype=R.dtype) * (WIDTH - 1)
    v = torch.rand(b, 400, generator=g, dtype=R.dtype) * (HEIGHT - 1)
    d = 5.0 + torch.rand(b, 400, generator=g, dtype=R.dtype) * 30.0
    rays = torch.linalg.solve(K, torch.stack((u, v, torch.ones_like(u)), 1)).transpose(1, 2)
    X1 = rays * d[..., None]
    x1, _ = project(X1, K)
    x2, z2 = project(X1 @ R.transpose(1, 2) + t[:, None], K)
    keep = z2 > 0.5
    E = skew(t) @ R
    res = recover_pose(E, x1, x2, K, K, keep)
    assert rotation_error_deg(res.R, R).max().item() < 1e-6
    assert direction_error_deg(res.t, t).max().item() < 1e-6
    for i in range(b):
        single = recover_pose(E[i:i + 1], x1[i:i + 1], x2[i:i + 1], K[i:i + 1], K[i:i + 1],
                              keep[i:i + 1])
        assert torch.allclose(single.T_21, res.T_21[i:i + 1], atol=1e-12)
        assert torch.equal(single.positive, res.positive[i:i + 1])
        assert single.num_positive.item() == res.num_positive[i].item()


def test_recover_pose_matches_opencv():
    R, t = _motions(6, seed=4)
    x1, x2, K, keep = _scene(R, t, 500, seed=4, noise=0.3)
    E = skew(t) @ R
    res = recover_pose(E, x1, x2, K, K, keep)
    for i in range(6):
        mask = keep[i].numpy().astype(np.uint8)[:, None]
        _, R_cv, t_cv, _ = cv2.recoverPose(E[i].numpy(), x1[i].numpy(), x2[i].numpy(),
                                           K[i].numpy(), mask=mask.copy())
        assert rotation_error_deg(res.R[i:i + 1], torch.from_numpy(R_cv)[None]).item() < 1e-6
        assert direction_error_deg(res.t[i:i + 1],
                                   torch.from_numpy(t_cv[:, 0])[None]).item() < 1e-6


def test_recover_pose_mask_and_errors():
    R, t = _motions(2, seed=5)
    x1, x2, K, keep = _scene(R, t, 100, seed=5)
    mask = torch.zeros(2, 100, dtype=torch.bool)
    mask[:, :30] = True
    res = recover_pose(skew(t) @ R, x1, x2, K, K, mask & keep)
    assert bool((res.num_positive <= 30).all())
    assert not bool(res.positive[:, 30:].any())
    with pytest.raises(ValueError, match='E'):
        recover_pose(torch.zeros(2, 3, 4), x1, x2, K, K)
    with pytest.raises(ValueError, match='mask'):
        recover_pose(skew(t) @ R, x1, x2, K, K, mask[:, :50])


def test_one_cpu_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_cpu_thread(torch.device('cpu')):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        R, t = _motions(1, seed=6)
        x1, x2, K, keep = _scene(R, t, 50, seed=6)
        recover_pose(skew(t) @ R, x1, x2, K, K, keep)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_all_cpu_threads_inside_one_cpu_thread_gives_the_saved_count_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with all_cpu_threads():                          # outside: nothing changes
            assert torch.get_num_threads() == 2
        with one_cpu_thread(torch.device('cpu')):
            with all_cpu_threads():                      # a network inside the VO step
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_recover_pose_depths_agree_with_triangulation():
    # the closed-form depths of the cheirality vote against mid-point triangulation: same
    # signs and depth cut for all but (nearly) parallel rays, with noise
    from trianflow_ros.geometry.triangulation import midpoint_channels_first
    R, t = _motions(4, seed=6)
    x1, x2, K, keep = _scene(R, t, 2000, seed=6, noise=0.5)
    res = recover_pose(skew(t) @ R, x1, x2, K, K, keep)
    Ki = torch.linalg.inv(K)
    y1 = Ki @ torch.cat((x1, torch.ones_like(x1[..., :1])), -1).transpose(1, 2)
    y2 = Ki @ torch.cat((x2, torch.ones_like(x2[..., :1])), -1).transpose(1, 2)
    Rt = res.R.transpose(1, 2)
    X = midpoint_channels_first(y1, Rt @ y2, -(Rt @ res.t.unsqueeze(-1)))
    z1 = X[:, 2]
    z2 = (res.R[:, 2:3] @ X)[:, 0] + res.t[:, 2:3]
    ok = (z1 > 0) & (z2 > 0) & (z1 < 50.0) & (z2 < 50.0) & keep
    agree = (ok == res.positive).double().mean().item()
    assert agree > 0.999, agree
    assert torch.equal(res.num_positive, res.positive.sum(1))


# ---------------------------------------------------------------------------------------------
# choose_pose: the parallax vote
# ---------------------------------------------------------------------------------------------

def _far_scene(R, t, n_near, n_far, baseline, noise, seed=0):
    """Points at 5-35 m (near) and 2-5 km (far) seen across a baseline of ``baseline`` m."""
    b, dtype = R.shape[0], R.dtype
    g = torch.Generator().manual_seed(seed)
    n = n_near + n_far
    u = torch.rand(b, n, generator=g, dtype=dtype) * (WIDTH - 1)
    v = torch.rand(b, n, generator=g, dtype=dtype) * (HEIGHT - 1)
    d = torch.cat((5.0 + torch.rand(b, n_near, generator=g, dtype=dtype) * 30.0,
                   2000.0 + torch.rand(b, n_far, generator=g, dtype=dtype) * 3000.0), 1)
    X1 = torch.stack(((u - CX) / FX * d, (v - CY) / FX * d, d), dim=-1)
    K = _K(b, dtype)
    x1, _ = project(X1, K)
    x2, _ = project(X1 @ R.transpose(1, 2) + baseline * t[:, None], K)
    x1 = x1 + noise * torch.randn(x1.shape, generator=g, dtype=dtype)
    x2 = x2 + noise * torch.randn(x2.shape, generator=g, dtype=dtype)
    return x1, x2, K


def test_choose_pose_exact_and_shapes():
    from trianflow_ros.geometry.pose import choose_pose, PoseChoice
    R, t = _motions(6, seed=3)
    x1, x2, K, keep = _scene(R, t, 300, seed=3)
    res = choose_pose(skew(t) @ R, x1, x2, K, K, keep)
    assert isinstance(res, PoseChoice)
    assert res.R.shape == (6, 3, 3) and res.t.shape == (6, 3) and res.T_21.shape == (6, 4, 4)
    assert res.votes.shape == (6, 4) and res.decided.shape == (6,)
    assert res.parallax_px.shape == (6, 300) and res.positive.shape == (6, 300)
    assert bool(res.decided.all())
    assert float(rotation_error_deg(res.R, R).max()) < 1e-6
    assert float(direction_error_deg(res.t, t).max()) < 1e-6
    # the winner has all its (visible, parallax) points; no other candidate comes close
    second = res.votes.sort(dim=1, descending=True).values[:, 1]
    assert bool((second <= 0.7 * res.votes.max(dim=1).values).all())
    # parallax = focal x ray angle: compare with the triangulation module
    from trianflow_ros.geometry.triangulation import ray_angle
    angle = ray_angle(x1, x2, K, K, make_pose(R, t))
    assert torch.allclose(res.parallax_px[keep], (angle * FX)[keep], rtol=1e-9, atol=1e-9)


def test_choose_pose_decides_where_most_points_are_far():
    """85 % of the points at kilometres: the old majority rule fails, the vote does not."""
    from trianflow_ros.geometry.pose import choose_pose
    R, t = _motions(4, seed=5)
    x1, x2, K = _far_scene(R, t, 150, 850, baseline=1.0, noise=0.3, seed=5)
    E = skew(t) @ R
    old = recover_pose(E, x1, x2, K, K)
    assert bool((old.num_positive < 0.5 * x1.shape[1]).any())   # what LOST the frames
    res = choose_pose(E, x1, x2, K, K, min_parallax_px=2.0)
    assert bool(res.decided.all())
    assert float(rotation_error_deg(res.R, R).max()) < 1e-6
    assert float(direction_error_deg(res.t, t).max()) < 1e-6


def test_choose_pose_undecided_without_parallax():
    """A 1 cm baseline to a scene 2-5 km away: the sign of t cannot be told."""
    from trianflow_ros.geometry.pose import choose_pose
    R, t = _motions(3, seed=7)
    x1, x2, K = _far_scene(R, t, 0, 500, baseline=0.01, noise=0.3, seed=7)
    res = choose_pose(skew(t) @ R, x1, x2, K, K, min_parallax_px=2.0)
    assert not bool(res.decided.any())
    assert int(res.num_parallax.max()) == 0
    assert bool(res.positive.all())                  # no point contradicts any candidate


def test_choose_pose_mask_and_errors():
    from trianflow_ros.geometry.pose import choose_pose
    R, t = _motions(2, seed=9)
    x1, x2, K, keep = _scene(R, t, 100, seed=9)
    mask = torch.zeros(2, 100, dtype=torch.bool)
    res = choose_pose(skew(t) @ R, x1, x2, K, K, mask)
    assert not bool(res.decided.any()) and int(res.votes.sum()) == 0
    assert not bool(res.positive.any())
    with pytest.raises(ValueError, match='x2 must have shape'):
        choose_pose(skew(t) @ R, x1, x2[:, :5], K, K)


def test_choose_pose_needs_a_share_of_the_points_to_vote():
    """A few dozen parallax points among thousands without: undecided at a 5 % share."""
    from trianflow_ros.geometry.pose import choose_pose
    R, t = _motions(3, seed=11)
    # 40 near points (parallax) among 1960 at kilometres (none): 2 % of the points vote
    x1, x2, K = _far_scene(R, t, 40, 1960, baseline=1.0, noise=0.3, seed=11)
    E = skew(t) @ R
    res = choose_pose(E, x1, x2, K, K, min_parallax_px=2.0)
    assert bool(res.decided.all())                           # the count alone: decided
    share = res.votes.max(dim=1).values.double() / x1.shape[1]
    assert bool((share < 0.05).all()) and bool((res.votes.max(dim=1).values >= 30).all())
    few = choose_pose(E, x1, x2, K, K, min_parallax_px=2.0, min_vote_share=0.05)
    assert not bool(few.decided.any())
    assert torch.equal(few.votes, res.votes) and torch.equal(few.R, res.R)
    # the share counts the used points (mask), not all: the near points alone decide
    near = torch.zeros(x1.shape[:2], dtype=torch.bool)
    near[:, :40] = True
    res = choose_pose(E, x1, x2, K, K, near, min_parallax_px=2.0, min_vote_share=0.05)
    assert bool(res.decided.all())
    # 150 near among 850 far (15 %, the far-field case above): decided at 5 %
    x1, x2, K = _far_scene(R, t, 150, 850, baseline=1.0, noise=0.3, seed=5)
    res = choose_pose(E, x1, x2, K, K, min_parallax_px=2.0, min_vote_share=0.05)
    assert bool(res.decided.all())


def test_rotation_parallax_is_the_translation_s_share_of_the_displacement():
    from trianflow_ros.geometry.pose import rotation_parallax_px
    R, t = _motions(4, seed=3)
    x1, x2, K, keep = _scene(R, t, 200, seed=3)
    E = skew(t) @ R
    par = rotation_parallax_px(E, x1, x2, K, K)
    assert par.shape == (4, 200) and par.dtype == torch.float64
    # exact: the match minus x1 moved by the true rotation alone (the infinite homography)
    H = K @ R @ torch.linalg.inv(K)
    h = torch.cat((x1, torch.ones_like(x1[..., :1])), -1) @ H.transpose(1, 2)
    expected = (h[..., :2] / h[..., 2:] - x2).norm(dim=-1)
    assert torch.allclose(par[keep], expected[keep], atol=1e-8)
    assert bool((par[keep] > 0).all())
    # a pure rotation (E of the same R with a tiny t: points at infinity) leaves no parallax
    X1 = torch.cat((x1, torch.ones_like(x1[..., :1])), -1) @ torch.linalg.inv(K).transpose(1, 2)
    x2r, _ = project(X1 @ R.transpose(1, 2), K)
    par_r = rotation_parallax_px(E, x1, x2r, K, K)
    assert float(par_r.abs().max()) < 1e-8
    # the sign of E and the choice among its decompositions do not matter
    assert torch.allclose(rotation_parallax_px(-3.0 * E, x1, x2, K, K), par, atol=1e-8)
