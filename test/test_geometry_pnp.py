"""Tests of geometry.pnp: batched PnP + MSAC + Levenberg-Marquardt."""

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import project
from trianflow_ros.geometry.pnp import pnp_ransac
from trianflow_ros.geometry.se3 import rotation_error_deg, se3_exp, transform_points

W, H = 640.0, 480.0


def _K(b):
    K = torch.tensor([[520.0, 0.0, 318.0], [0.0, 515.0, 242.0], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    return K.expand(b, 3, 3).clone()


def _scene(xi, n=800, noise=0.0, outlier_ratio=0.0, seed=0, planar=False):
    """Points seen by camera 1 at 2-30 m, their pixels in camera 2 = se3_exp(xi) * camera 1."""
    xi = torch.as_tensor(xi, dtype=torch.float64).reshape(-1, 6)
    b = xi.shape[0]
    g = torch.Generator().manual_seed(seed)
    K = _K(b)
    px = torch.rand(b, n, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H])
    rays = torch.cat(((px - K[:, None, :2, 2]) / K[:, None, [0, 1], [0, 1]],
                      torch.ones(b, n, 1, dtype=torch.float64)), dim=-1)
    if planar:   # tilted plane n.X = 8
        z = 8.0 / (rays @ torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64))
    else:
        z = 2.0 + 28.0 * torch.rand(b, n, generator=g, dtype=torch.float64)
    X1 = rays * z[..., None]
    T = se3_exp(xi)
    x2, _ = project(transform_points(T, X1), K)
    x2 = x2 + noise * torch.randn(b, n, 2, generator=g, dtype=torch.float64)
    outlier = torch.zeros(b, n, dtype=torch.bool)
    k = int(round(outlier_ratio * n))
    for i in range(b):
        outlier[i, torch.randperm(n, generator=g)[:k]] = True
    # gross outliers: anywhere in the image, at least 10 px from the right place
    wrong = torch.rand(b, n, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H])
    far = (wrong - x2).norm(dim=-1, keepdim=True) > 10.0
    x2 = torch.where(outlier[..., None], torch.where(far, wrong, x2 + 25.0), x2)
    return X1, x2, K, T, outlier


def _errors(T_est, T_gt):
    rot = rotation_error_deg(T_est[:, :3, :3], T_gt[:, :3, :3])
    trans = (T_est[:, :3, 3] - T_gt[:, :3, 3]).norm(dim=-1)
    return rot, trans


GENERAL = [0.3, -0.1, 1.2, 0.03, -0.05, 0.02]
CASES = {
    'general': GENERAL,
    'zero_motion': [0.0] * 6,
    'pure_rotation': [0.0, 0.0, 0.0, 0.04, -0.08, 0.03],
    'small_forward': [0.0, 0.0, 0.05, 0.0, 0.002, 0.0],
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_exact_on_noise_free_data(case):
    X1, x2, K, T, _ = _scene(CASES[case])
    res = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(0))
    rot, trans = _errors(res.T_21, T)
    assert res.success.all() and res.num_inliers.item() == X1.shape[1]
    assert rot.item() < 1e-6 and trans.item() < 1e-8
    assert res.T_21.shape == (1, 4, 4) and res.inliers.shape == (1, X1.shape[1])


def test_forty_percent_outliers():
    X1, x2, K, T, outlier = _scene(GENERAL, n=1000, noise=0.3, outlier_ratio=0.4, seed=1)
    res = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(1))
    rot, trans = _errors(res.T_21, T)
    assert res.success.all()
    assert rot.item() < 0.05 and trans.item() < 0.01
    assert not (res.inliers & outlier).any()
    assert (res.inliers & ~outlier).sum() > 0.85 * (~outlier).sum()   # chi2(2) at 3.3 sigma


@pytest.mark.parametrize('planar', [False, True])
def test_many_points_ranked_on_a_subset_stay_exact(planar):
    """Above 2 x SCORE_POINTS the hypotheses are ranked on a weighted subset: still exact."""
    from trianflow_ros.geometry import pnp as pnp_module
    from trianflow_ros.geometry.pnp import _score_subset
    n = 3 * pnp_module.SCORE_POINTS
    X1, x2, K, T, outlier = _scene(GENERAL, n=n, outlier_ratio=0.4, seed=3, planar=planar)
    res = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(3))
    rot, trans = _errors(res.T_21, T)
    assert res.success.all() and rot.item() < 1e-6 and trans.item() < 1e-8
    assert torch.equal(res.inliers[0], ~outlier[0])              # final inliers over all points
    w = torch.ones(1, n, dtype=torch.float64)
    valid = torch.ones(1, n, dtype=torch.bool)
    valid[0, : n // 2] = False                                    # never drawn while enough
    sub = _score_subset(w, valid, 256, torch.Generator().manual_seed(0))
    assert sub.shape == (1, 256) and sub.unique().numel() == 256 and bool((sub >= n // 2).all())


@pytest.mark.parametrize('case', ['general', 'pure_rotation', 'small_forward'])
def test_planar_scene(case):
    # the 6-point DLT is degenerate for coplanar points: the homography hypotheses take over
    X1, x2, K, T, _ = _scene(CASES[case], planar=True, outlier_ratio=0.2, seed=2)
    res = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(2))
    rot, trans = _errors(res.T_21, T)
    assert res.success.all() and rot.item() < 1e-6 and trans.item() < 1e-8


def _cv2_errors(X1, x2, K, T):
    rot, trans = [], []
    for i in range(X1.shape[0]):
        ok, rvec, tvec, _ = cv2.solvePnPRansac(
            X1[i].numpy(), x2[i].numpy(), K[i].numpy(), None, iterationsCount=1000,
            reprojectionError=1.0, confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        R, _ = cv2.Rodrigues(rvec)
        rot.append(rotation_error_deg(torch.from_numpy(R)[None], T[i:i + 1, :3, :3]).item())
        trans.append(float(np.linalg.norm(tvec[:, 0] - T[i, :3, 3].numpy())))
    return np.array(rot), np.array(trans)


def test_accuracy_no_worse_than_cv2_solvepnpransac():
    # same noisy inputs (0.5 px noise, 30 % outliers), same 1 px threshold; tolerance: our mean
    # rotation and translation errors over 6 scenes are no larger than OpenCV's (measured here:
    # 0.3-0.5x OpenCV's)
    g = torch.Generator().manual_seed(5)
    xi = 0.1 * torch.randn(6, 6, generator=g, dtype=torch.float64)
    xi[:, 2] += 0.8
    X1, x2, K, T, _ = _scene(xi, n=1000, noise=0.5, outlier_ratio=0.3, seed=5)
    res = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(5))
    rot, trans = _errors(res.T_21, T)
    cv_rot, cv_trans = _cv2_errors(X1, x2, K, T)
    assert res.success.all()
    assert rot.mean().item() <= cv_rot.mean()
    assert trans.mean().item() <= cv_trans.mean()


def test_batch_of_different_motions_equals_per_element():
    xi = torch.tensor([GENERAL, CASES['zero_motion'], CASES['pure_rotation'],
                       [-0.5, 0.2, 0.3, -0.1, 0.1, 0.05]], dtype=torch.float64)
    X1, x2, K, T, _ = _scene(xi, n=600, noise=0.3, outlier_ratio=0.25, seed=3)
    valid = torch.ones(4, 600)
    valid[1, 300:] = 0.0                              # different point counts per element
    batched = pnp_ransac(X1, x2, K, valid, generator=torch.Generator().manual_seed(0),
                         refine_iters=20)
    for i in range(4):
        single = pnp_ransac(X1[i:i + 1], x2[i:i + 1], K[i:i + 1], valid[i:i + 1],
                            generator=torch.Generator().manual_seed(7), refine_iters=20)
        # different random minimal sets, same optimum of the truncated cost
        rot, trans = _errors(batched.T_21[i:i + 1], single.T_21)
        assert rot.item() < 1e-3 and trans.item() < 1e-4
        assert (batched.inliers[i] != single.inliers[0]).sum() <= 3
        rot, _ = _errors(batched.T_21[i:i + 1], T[i:i + 1])
        assert rot.item() < 0.05
    assert not batched.inliers[1, 300:].any()


def test_seed_determinism():
    X1, x2, K, _, _ = _scene(GENERAL, n=500, noise=0.5, outlier_ratio=0.3, seed=4)
    a = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(11), refine_iters=0)
    b = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(11), refine_iters=0)
    c = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(12), refine_iters=0)
    assert torch.equal(a.T_21, b.T_21) and torch.equal(a.inliers, b.inliers)
    assert not torch.equal(a.T_21, c.T_21)            # the seed does drive the sampling
    d = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(11))
    e = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(11))
    assert torch.equal(d.T_21, e.T_21) and torch.equal(d.inliers, e.inliers)


def test_degenerate_inputs_fail_cleanly():
    X1, x2, K, _, _ = _scene([GENERAL, GENERAL, GENERAL], n=40)
    X1[0, :, 2] = -X1[0, :, 2]                        # all behind camera 1
    X1[1, 5:] = float('nan')                          # only 5 finite points
    res = pnp_ransac(X1, x2, K, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.success, torch.tensor([False, False, True]))
    eye = torch.eye(4, dtype=torch.float64)
    assert torch.equal(res.T_21[0], eye) and torch.equal(res.T_21[1], eye)
    assert torch.isfinite(res.T_21).all()
    assert res.num_inliers[:2].sum() == 0 and res.num_inliers[2] == 40
    # fewer points than the minimal set
    tiny = pnp_ransac(X1[2:, :4], x2[2:, :4], K[2:])
    assert not tiny.success.any() and torch.equal(tiny.T_21[0], eye)


def test_zero_weights_exclude_points_and_float32():
    X1, x2, K, T, outlier = _scene(GENERAL, n=300, outlier_ratio=0.3, seed=6)
    w = (~outlier).float()
    res = pnp_ransac(X1.float(), x2.float(), K.float(), w,
                     generator=torch.Generator().manual_seed(0))
    assert res.T_21.dtype == torch.float32
    assert torch.equal(res.inliers[0], ~outlier[0])
    rot, trans = _errors(res.T_21.double(), T)
    assert rot.item() < 1e-3 and trans.item() < 1e-3


def test_shape_checks():
    with pytest.raises(ValueError, match='x2'):
        pnp_ransac(torch.ones(1, 10, 3), torch.ones(1, 9, 2), _K(1))
    with pytest.raises(ValueError, match='weights'):
        pnp_ransac(torch.ones(1, 10, 3), torch.ones(1, 10, 2), _K(1), torch.ones(10))
