"""Tests of geometry.ransac: batched LO-MSAC for F and E, weights, seeds, OpenCV comparison."""

import cv2
import pytest
import torch

from trianflow_ros.geometry.camera import project
from trianflow_ros.geometry.epipolar import essential_from_fundamental, sampson_distance
from trianflow_ros.geometry.pose import recover_pose
from trianflow_ros.geometry.ransac import ransac_essential, ransac_fundamental, RansacResult
from trianflow_ros.geometry.se3 import direction_error_deg, rotation_error_deg, skew, so3_exp

FX, CX, CY, WIDTH, HEIGHT = 718.9, 607.2, 185.2, 1241, 376
NOISE_PX = 0.3
OUTLIERS = 0.4
# tolerances for 0.3 px noise, 40 % outliers, 1500 points, KITTI-like camera
ROT_TOL_DEG = 0.05
TDIR_TOL_DEG = 1.0


def _K(b, dtype=torch.float64):
    K = torch.tensor([[FX, 0.0, CX], [0.0, FX, CY], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(b, 3, 3).clone()


def _scene(b, n, seed=0, noise=NOISE_PX, outliers=OUTLIERS, dtype=torch.float64):
    """Noisy matches of a KITTI-like scene with uniformly wrong matches (the outliers)."""
    g = torch.Generator().manual_seed(seed)
    R = so3_exp((torch.rand(b, 3, generator=g, dtype=dtype) - 0.5) * 0.1)
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.8, 0.0, 0.6], [0.2, -0.3, 0.9],
                         [-0.6, 0.1, 0.8]], dtype=dtype)
    t = dirs[torch.arange(b) % 4] + 0.1 * torch.randn(b, 3, generator=g, dtype=dtype)
    t = t / t.norm(dim=-1, keepdim=True)
    u = torch.rand(b, n, generator=g, dtype=dtype) * (WIDTH - 1)
    v = torch.rand(b, n, generator=g, dtype=dtype) * (HEIGHT - 1)
    d = 4.0 + torch.rand(b, n, generator=g, dtype=dtype) * 40.0
    X1 = torch.stack(((u - CX) / FX * d, (v - CY) / FX * d, d), dim=-1)
    K = _K(b, dtype)
    x1, _ = project(X1, K)
    x2, _ = project(X1 @ R.transpose(1, 2) + t[:, None], K)
    x1 = x1 + noise * torch.randn(x1.shape, generator=g, dtype=dtype)
    x2 = x2 + noise * torch.randn(x2.shape, generator=g, dtype=dtype)
    is_out = torch.rand(b, n, generator=g, dtype=dtype) < outliers
    shift = (torch.rand(x2.shape, generator=g, dtype=dtype) - 0.5) * 80.0
    x2 = torch.where(is_out[..., None], x2 + shift, x2)
    return x1, x2, K, R, t, is_out


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pose_errors(E, x1, x2, K, inliers, R, t):
    pose = recover_pose(E, x1, x2, K, K, inliers)
    return rotation_error_deg(pose.R, R), direction_error_deg(pose.t, t)


def _check_inliers(res, is_out):
    true_pos = (res.inliers & ~is_out).sum(1).double()
    precision = true_pos / res.num_inliers.double()
    recall = true_pos / (~is_out).sum(1).double()
    # 0.5 px threshold, 0.3 px noise: ~90 % of true inliers pass; a few outliers land near
    # their epipolar line by chance
    assert bool((precision > 0.97).all()), precision
    assert bool((recall > 0.8).all()), recall


def test_ransac_essential_recovers_motion_with_outliers():
    x1, x2, K, R, t, is_out = _scene(4, 1500, seed=1)
    res = ransac_essential(x1, x2, K, K, generator=_gen(0))
    assert isinstance(res, RansacResult)
    assert res.model.shape == (4, 3, 3) and res.inliers.shape == (4, 1500)
    assert res.inliers.dtype == torch.bool and res.num_inliers.dtype == torch.int64
    assert res.score.shape == (4,) and bool((res.score > 0).all())
    assert torch.equal(res.num_inliers, res.inliers.sum(1))
    s = torch.linalg.svdvals(res.model)                  # on the essential manifold
    assert torch.allclose(s[:, 0], s[:, 1], rtol=1e-6) and s[:, 2].max() < 1e-8
    _check_inliers(res, is_out)
    rot, tdir = _pose_errors(res.model, x1, x2, K, res.inliers, R, t)
    assert rot.max().item() < ROT_TOL_DEG, rot
    assert tdir.max().item() < TDIR_TOL_DEG, tdir


def test_ransac_fundamental_recovers_motion_with_outliers():
    x1, x2, K, R, t, is_out = _scene(4, 1500, seed=2)
    res = ransac_fundamental(x1, x2, generator=_gen(0))
    assert res.model.shape == (4, 3, 3)
    assert torch.allclose(res.model.flatten(1).norm(dim=1), torch.ones(4, dtype=x1.dtype))
    assert torch.linalg.svdvals(res.model)[:, 2].max() < 1e-10        # rank 2
    _check_inliers(res, is_out)
    d = sampson_distance(res.model, x1, x2)
    assert torch.equal(res.inliers, d < 0.5)
    # F is less constrained than E: looser pose tolerances
    E = essential_from_fundamental(res.model, K, K)
    rot, tdir = _pose_errors(E, x1, x2, K, res.inliers, R, t)
    assert rot.max().item() < 0.2, rot
    assert tdir.max().item() < 3.0, tdir


def test_ransac_is_reproducible_with_a_seed():
    x1, x2, K, _, _, _ = _scene(2, 800, seed=3)
    a = ransac_essential(x1, x2, K, K, generator=_gen(7))
    b = ransac_essential(x1, x2, K, K, generator=_gen(7))
    assert torch.equal(a.model, b.model) and torch.equal(a.inliers, b.inliers)
    assert torch.equal(a.score, b.score)
    c = ransac_fundamental(x1, x2, generator=_gen(7))
    d = ransac_fundamental(x1, x2, generator=_gen(7))
    assert torch.equal(c.model, d.model) and torch.equal(c.inliers, d.inliers)


def test_ransac_batch_of_different_motions_equals_single_runs_exactly():
    # noise-free inliers: every element must find its own exact motion, batched or not
    x1, x2, K, R, t, is_out = _scene(4, 600, seed=4, noise=0.0, outliers=0.2)
    batch = ransac_essential(x1, x2, K, K, generator=_gen(0))
    for i in range(4):
        single = ransac_essential(x1[i:i + 1], x2[i:i + 1], K[i:i + 1], K[i:i + 1],
                                  generator=_gen(0))
        sign = torch.sign((batch.model[i] * single.model[0]).sum())
        assert (batch.model[i] - sign * single.model[0]).abs().max().item() < 1e-6
        assert torch.equal(batch.inliers[i], single.inliers[0])
        assert bool((batch.inliers[i] | is_out[i]).all())   # every true inlier is found
    # (not 0: outliers that land within a pixel of their epipolar line enter the robust
    # refinement with a small Cauchy weight)
    rot, tdir = _pose_errors(batch.model, x1, x2, K, batch.inliers, R, t)
    assert rot.max().item() < 0.01 and tdir.max().item() < 0.05


def test_ransac_batch_of_different_motions_matches_single_runs():
    x1, x2, K, R, t, is_out = _scene(4, 1000, seed=4)
    batch = ransac_essential(x1, x2, K, K, generator=_gen(0))
    rot_b, tdir_b = _pose_errors(batch.model, x1, x2, K, batch.inliers, R, t)
    for i in range(4):
        single = ransac_essential(x1[i:i + 1], x2[i:i + 1], K[i:i + 1], K[i:i + 1],
                                  generator=_gen(0))
        # the random sets differ between the calls; the solutions agree to noise level
        rot_s, tdir_s = _pose_errors(single.model, x1[i:i + 1], x2[i:i + 1], K[i:i + 1],
                                     single.inliers, R[i:i + 1], t[i:i + 1])
        assert abs(rot_s.item() - rot_b[i].item()) < 0.02
        assert abs(tdir_s.item() - tdir_b[i].item()) < 0.5
        agree = (batch.inliers[i] == single.inliers[0]).double().mean().item()
        assert agree > 0.98
    # every element recovers its own motion (forward, sideways, oblique)
    assert rot_b.max().item() < ROT_TOL_DEG and tdir_b.max().item() < TDIR_TOL_DEG


def test_ransac_weights_and_too_few_points():
    x1, x2, K, R, t, is_out = _scene(3, 600, seed=5, outliers=0.0)
    w = torch.ones(3, 600, dtype=x1.dtype)
    x2 = x2.clone()
    x2[0, 300:] += 30.0                                  # element 0: half corrupted ...
    w[0, 300:] = 0.0                                     # ... and masked out
    w[1, 5:] = 0.0                                       # element 1: only 5 valid points
    res_e = ransac_essential(x1, x2, K, K, w, generator=_gen(0))
    for res in (res_e, ransac_fundamental(x1, x2, w, generator=_gen(0))):
        assert bool(torch.isfinite(res.model).all()) and bool(torch.isfinite(res.score).all())
        assert not bool(res.inliers[0, 300:].any())      # masked points are never inliers
        assert res.num_inliers[0] > 250
        assert res.num_inliers[1] == 0 and res.score[1] == 0.0
        assert not bool(res.inliers[1].any()) and bool((res.model[1] == 0).all())
        assert res.num_inliers[2] > 500 and res.score[2] > 0
    rot, tdir = _pose_errors(res_e.model[[0, 2]], x1[[0, 2]], x2[[0, 2]], K[[0, 2]],
                             res_e.inliers[[0, 2]], R[[0, 2]], t[[0, 2]])
    assert rot.max().item() < ROT_TOL_DEG and tdir.max().item() < TDIR_TOL_DEG


def test_ransac_input_errors_and_tiny_inputs():
    x1, x2, K, _, _, _ = _scene(2, 50, seed=6)
    with pytest.raises(ValueError, match='x2'):
        ransac_essential(x1, x2[:, :40], K, K)
    with pytest.raises(ValueError, match='K1'):
        ransac_essential(x1, x2, K[:1], K)
    with pytest.raises(ValueError, match='weights'):
        ransac_fundamental(x1, x2, torch.ones(2, 49))
    with pytest.raises(ValueError, match='non-negative'):
        ransac_fundamental(x1, x2, -torch.ones(2, 50))
    with pytest.raises(ValueError, match='threshold_px'):
        ransac_fundamental(x1, x2, threshold_px=0.0)
    res = ransac_essential(x1[:, :5], x2[:, :5], K, K)   # fewer than 8 points: flagged
    assert res.inliers.shape == (2, 5) and not bool(res.inliers.any())
    assert bool((res.score == 0).all()) and bool((res.num_inliers == 0).all())


def test_ransac_float32_inputs():
    x1, x2, K, R, t, _ = _scene(2, 1000, seed=7)
    res = ransac_essential(x1.float(), x2.float(), K.float(), K.float(), generator=_gen(0))
    assert res.model.dtype == torch.float32 and res.score.dtype == torch.float32
    rot, tdir = _pose_errors(res.model.double(), x1, x2, K, res.inliers, R, t)
    assert rot.max().item() < ROT_TOL_DEG and tdir.max().item() < TDIR_TOL_DEG


def test_ransac_essential_not_worse_than_opencv():
    x1, x2, K, R, t, _ = _scene(4, 1500, seed=8)
    res = ransac_essential(x1, x2, K, K, generator=_gen(0))
    rot, tdir = _pose_errors(res.model, x1, x2, K, res.inliers, R, t)
    cv2.setRNGSeed(0)
    for i in range(4):
        a, b, k = x1[i].numpy(), x2[i].numpy(), K[i].numpy()
        E, mask = cv2.findEssentialMat(a, b, k, cv2.RANSAC, 0.999, 0.5)
        _, R_cv, t_cv, _ = cv2.recoverPose(E[:3], a, b, k, mask=mask)
        rot_cv = rotation_error_deg(torch.from_numpy(R_cv)[None], R[i:i + 1]).item()
        tdir_cv = direction_error_deg(torch.from_numpy(t_cv[:, 0])[None], t[i:i + 1]).item()
        assert rot[i].item() <= max(1.5 * rot_cv, 0.01), (i, rot[i], rot_cv)
        assert tdir[i].item() <= max(1.5 * tdir_cv, 0.1), (i, tdir[i], tdir_cv)
        # most of OpenCV's inliers are ours too (same 0.5 px threshold)
        cv_in = torch.from_numpy(mask[:, 0].astype(bool))
        assert (res.inliers[i] & cv_in).sum() > 0.9 * cv_in.sum()


def test_ransac_fundamental_agrees_with_opencv():
    x1, x2, K, R, t, _ = _scene(2, 1500, seed=9)
    res = ransac_fundamental(x1, x2, generator=_gen(0))
    # the same scene without noise and outliers measures how well F fits the true geometry
    c1, c2, _, _, _, _ = _scene(2, 1500, seed=9, noise=0.0, outliers=0.0)
    cv2.setRNGSeed(0)
    for i in range(2):
        F_cv, mask = cv2.findFundamentalMat(x1[i].numpy(), x2[i].numpy(), cv2.FM_RANSAC, 0.5,
                                            0.999)
        F_cv = torch.from_numpy(F_cv)[None]
        ours = sampson_distance(res.model[i:i + 1], c1[i:i + 1], c2[i:i + 1])
        theirs = sampson_distance(F_cv, c1[i:i + 1], c2[i:i + 1])
        rms_ours, rms_cv = ours.square().mean().sqrt(), theirs.square().mean().sqrt()
        assert rms_ours <= 1.2 * rms_cv + 0.02, (i, rms_ours, rms_cv)
        cv_in = torch.from_numpy(mask[:, 0].astype(bool))
        assert res.num_inliers[i] >= 0.95 * cv_in.sum()


def test_ransac_leaves_the_global_rng_alone():
    # all randomness comes from the generator argument
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    x1, x2, K, _, _, _ = _scene(1, 200, seed=10)
    ransac_essential(x1, x2, K, K, generator=_gen(0))
    assert torch.equal(torch.rand(1), before)


def test_ransac_restores_the_thread_count():
    x1, x2, K, _, _, _ = _scene(1, 300, seed=11)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ransac_essential(x1, x2, K, K, generator=_gen(0))
        ransac_fundamental(x1, x2, generator=_gen(0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _rays(x, K):
    """Channels-first rays K^-1 [x, 1] (B, 3, N)."""
    return torch.linalg.solve(K, torch.cat((x, torch.ones_like(x[..., :1])), -1).transpose(1, 2))


def test_sampson_terms_equal_the_pixel_sampson_distance():
    from trianflow_ros.geometry.ransac import _model_terms, _sampson_features
    x1, x2, K, R, t, _ = _scene(2, 300, seed=12)
    K2 = K.clone()
    K2[:, 0, 0] *= 1.1                                   # fx != fy, different cameras
    K2[:, 0, 1] = 2.0                                    # skew
    y1, y2 = _rays(x1, K), _rays(x2, K2)
    L1 = torch.linalg.inv(K)[:, :2, :2].transpose(1, 2)
    L2 = torch.linalg.inv(K2)[:, :2, :2].transpose(1, 2)
    g = torch.Generator().manual_seed(0)
    M = torch.randn(2, 3, 3, 3, generator=g, dtype=x1.dtype)           # 3 models per pair
    W = _sampson_features(y1, y2)
    assert W.shape == (2, 17, 300)
    e, den = _model_terms(M, W, L1, L2)
    assert e.shape == den.shape == (2, 3, 300)
    h1 = torch.cat((x1, torch.ones_like(x1[..., :1])), -1)
    h2 = torch.cat((x2, torch.ones_like(x2[..., :1])), -1)
    for k in range(3):
        # H&Z eq. 11.9 in pixels (sampson_distance adds an epsilon to the denominator)
        F = torch.linalg.inv(K2).transpose(1, 2) @ M[:, k] @ torch.linalg.inv(K)
        l2, l1 = h1 @ F.transpose(1, 2), h2 @ F
        ref = (h2 * l2).sum(-1).abs() / (l2[..., :2].square().sum(-1)
                                         + l1[..., :2].square().sum(-1)).sqrt()
        assert torch.allclose(e[:, k].abs() / den[:, k].sqrt(), ref, rtol=1e-10)


def test_sampson_rt_gradient_matches_finite_differences():
    from trianflow_ros.geometry.ransac import (_cayley, _sampson_features, _sampson_rt,
                                               _STEP_MAP, _tangent_frame)
    x1, x2, K, R, t, _ = _scene(1, 400, seed=13, outliers=0.0)
    y1, y2 = _rays(x1, K), _rays(x2, K)
    L = torch.linalg.inv(K)[:, :2, :2].transpose(1, 2)
    W = _sampson_features(y1, y2)
    w = torch.rand(1, 400, generator=torch.Generator().manual_seed(1), dtype=x1.dtype)
    # a perturbed model, so that the residuals and the gradient are not zero
    RF = torch.stack((R @ so3_exp(torch.tensor([[1e-3, -2e-3, 1e-3]], dtype=x1.dtype)),
                      _tangent_frame(t + 0.02)), dim=1)
    RF[:, 1] = _tangent_frame(RF[:, 1, :, 2] / RF[:, 1, :, 2].norm(dim=-1, keepdim=True))
    c2 = 0.3 ** 2
    cost, H, g, r = _sampson_rt(RF, W, L, L, c2, w)
    assert H.shape == (1, 5, 5) and g.shape == (1, 5) and r.shape == (1, 400)
    assert torch.allclose(H, H.transpose(1, 2)) and torch.linalg.eigvalsh(H).min() >= -1e-9
    # g = sum_i w_i r_i dr_i / (1 + r_i^2 / c2) = c2 / 2 * d cost, along the LM step directions
    eps = 1e-7
    for k in range(5):
        step = torch.zeros(1, 5, dtype=x1.dtype)
        step[0, k] = eps
        inc = _cayley((step @ _STEP_MAP).reshape(1, 2, 3))
        cp = _sampson_rt(RF @ inc, W, L, L, c2, w)[0]
        inc = _cayley((-step @ _STEP_MAP).reshape(1, 2, 3))
        cm = _sampson_rt(RF @ inc, W, L, L, c2, w)[0]
        numeric = c2 / 2 * (cp - cm) / (2 * eps)
        assert abs(numeric.item() - g[0, k].item()) < 1e-5 * g.abs().max().item() + 1e-9, k


def test_cayley_rotations():
    from trianflow_ros.geometry.ransac import _cayley
    phi = torch.tensor([[0.0, 0.0, 0.0], [1e-3, -2e-3, 5e-4], [0.3, 0.2, -0.1]],
                       dtype=torch.float64)
    Rc = _cayley(phi)
    eye = torch.eye(3, dtype=phi.dtype).expand(3, 3, 3)
    assert torch.allclose(Rc @ Rc.transpose(1, 2), eye, atol=1e-14)
    assert torch.allclose(torch.linalg.det(Rc), torch.ones(3, dtype=phi.dtype))
    assert torch.equal(Rc[0], torch.eye(3, dtype=phi.dtype))
    # second-order agreement with the exponential map: error O(|phi|^3)
    assert (Rc[1] - so3_exp(phi[1:2])[0]).abs().max() < 1e-8


def test_ransac_essential_large_point_sets():
    # more than 2 * REFINE_POINTS points: the refinement iterates on a subset, then one step on
    # all points; exact without noise (also batched), reproducible, accurate with noise
    from trianflow_ros.geometry.ransac import REFINE_POINTS
    n = 2 * REFINE_POINTS + 500
    x1, x2, K, R, t, is_out = _scene(3, n, seed=14, noise=0.0, outliers=0.3)
    res = ransac_essential(x1, x2, K, K, generator=_gen(0))
    assert res.model.shape == (3, 3, 3) and res.inliers.shape == (3, n)
    assert bool((res.inliers | is_out).all())
    # (not 0: outliers that land within a pixel of their epipolar line enter the robust
    # refinement with a small Cauchy weight)
    rot, tdir = _pose_errors(res.model, x1, x2, K, res.inliers, R, t)
    assert rot.max().item() < 1e-3 and tdir.max().item() < 1e-2
    single = ransac_essential(x1[1:2], x2[1:2], K[1:2], K[1:2], generator=_gen(0))
    sign = torch.sign((res.model[1] * single.model[0]).sum())
    assert (res.model[1] - sign * single.model[0]).abs().max().item() < 1e-8
    again = ransac_essential(x1, x2, K, K, generator=_gen(0))
    assert torch.equal(again.model, res.model) and torch.equal(again.inliers, res.inliers)
    x1, x2, K, R, t, is_out = _scene(3, n, seed=15)
    res = ransac_essential(x1, x2, K, K, generator=_gen(0))
    _check_inliers(res, is_out)
    rot, tdir = _pose_errors(res.model, x1, x2, K, res.inliers, R, t)
    assert rot.max().item() < ROT_TOL_DEG and tdir.max().item() < TDIR_TOL_DEG


def test_refine_essential_noise_scale():
    from trianflow_ros.geometry.ransac import refine_essential
    x1, x2, K, R, t, _ = _scene(2, 800, seed=16, outliers=0.0)
    y1, y2 = _rays(x1, K), _rays(x2, K)
    L = torch.linalg.inv(K)[:, :2, :2].transpose(1, 2)
    E0 = skew(t) @ R @ so3_exp(torch.tensor([[2e-3, 0.0, -1e-3]], dtype=x1.dtype))
    w = torch.ones(2, 800, dtype=x1.dtype)
    for noise_scale in (0.0, 2.0):
        E = refine_essential(E0, y1, y2, L, L, w, 0.5, noise_scale=noise_scale)
        assert E.shape == (2, 3, 3)
        assert torch.allclose(E.flatten(1).norm(dim=1), torch.ones(2, dtype=E.dtype))
        rot, tdir = _pose_errors(E, x1, x2, K, w > 0, R, t)
        assert rot.max().item() < ROT_TOL_DEG and tdir.max().item() < TDIR_TOL_DEG


def test_min_hypotheses_draws_every_set_and_stays_exact():
    """With min_hypotheses = 256 (no early stop: all 64 five-point sets) E is still exact."""
    x1, x2, K, R, t, is_out = _scene(2, 600, seed=21, noise=0.0, outliers=0.2)
    for floor in (0, 256):
        res = ransac_essential(x1, x2, K, K, generator=_gen(0), min_hypotheses=floor)
        assert bool((res.inliers | is_out).all())
        rot, tdir = _pose_errors(res.model, x1, x2, K, res.inliers, R, t)
        assert rot.max().item() < 1e-3 and tdir.max().item() < 1e-2


def test_msac_score_is_the_truncated_quadratic():
    from trianflow_ros.geometry.sampling import msac_score
    r2 = torch.tensor([[0.0, 0.25, 1.0, 4.0]], dtype=torch.float64)
    assert msac_score(r2, 1.0).tolist() == [1.0 + 0.75 + 0.0 + 0.0]
    w = torch.tensor([[2.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    assert msac_score(r2, 1.0, w).tolist() == [2.0 + 0.75]
    # per-batch thresholds and another point dimension
    thr2 = torch.tensor([1.0, 4.0], dtype=torch.float64)[:, None]
    r2b = torch.cat((r2, r2)).T                                            # (N, B)
    assert msac_score(r2b, thr2.T, dim=0).tolist() == [1.75, 1.0 + 15 / 16 + 0.75 + 0.0]


def test_arguments_default_to_the_params_fields():
    # the tuning arguments are the fields of ``params`` unless given: the same result either way
    from trianflow_ros.config import RansacConfig
    g = torch.Generator().manual_seed(3)
    x1 = torch.rand(1, 300, 2, generator=g, dtype=torch.float64) * 500
    x2 = x1 + torch.randn(1, 300, 2, generator=g, dtype=torch.float64)
    K = torch.tensor([[[500.0, 0, 250], [0, 500.0, 250], [0, 0, 1]]], dtype=torch.float64)
    p = RansacConfig(threshold_px=0.8, num_hypotheses=64, lo_iters=1, refine_iters=2)
    for fn, args in ((ransac_essential, (x1, x2, K, K)), (ransac_fundamental, (x1, x2))):
        a = fn(*args, generator=torch.Generator().manual_seed(0), params=p)
        kw = {'threshold_px': 0.8, 'num_hypotheses': 64, 'lo_iters': 1}
        if fn is ransac_essential:
            kw.update(refine_iters=2, min_hypotheses=0)
        b = fn(*args, generator=torch.Generator().manual_seed(0), **kw, params=p)
        c = fn(*args, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(a.model, b.model) and torch.equal(a.inliers, b.inliers)
        assert torch.equal(a.model, c.model)
        # an argument given wins over the field
        d = fn(*args, generator=torch.Generator().manual_seed(0), threshold_px=3.0, params=p)
        assert int(d.num_inliers[0]) > int(a.num_inliers[0])


def test_essential_quality_is_the_score_ransac_reports():
    from trianflow_ros.geometry.ransac import essential_quality
    x1, x2, K, R, t, is_out = _scene(3, 400, seed=5)
    res = ransac_essential(x1, x2, K, K, generator=_gen(5), threshold_px=0.5)
    q = essential_quality(res.model, x1, x2, K, K, 0.5)
    # the same sum, computed along another path (RANSAC reads its refinement's distances)
    assert q.shape == (3,) and torch.allclose(q, res.score.double(), rtol=1e-5)
    # the true model scores at least as well as a wrong one, and weights select the points
    E_true = skew(t) @ R
    wrong = skew(t) @ so3_exp(torch.tensor([[0.0, 0.02, 0.0]], dtype=R.dtype)).expand(3, 3, 3) @ R
    assert bool((essential_quality(E_true, x1, x2, K, K, 0.5)
                 > essential_quality(wrong, x1, x2, K, K, 0.5)).all())
    half = torch.zeros(3, 400, dtype=torch.float64)
    half[:, :200] = 1.0
    assert torch.allclose(essential_quality(res.model, x1[:, :200], x2[:, :200], K, K, 0.5),
                          essential_quality(res.model, x1, x2, K, K, 0.5, half))
    with pytest.raises(ValueError, match='threshold_px'):
        essential_quality(res.model, x1, x2, K, K, 0.0)
