"""
Tests of geometry/degeneracy.py: GRIC and the motion classification on synthetic scenes.

Scenes: random 3D points at 2-50 m seen by a KITTI-like camera (f = 718 px, 1241 x 376),
0.3-0.5 px noise on both images, 10 % of the matches replaced by random displacements of up to
40 px (flow failures). The caller's epipolar residuals are the Sampson distances of an essential
matrix estimated robustly by OpenCV (USAC_ACCURATE), as the VO passes those of its own E-RANSAC.
"""

import math

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.camera import project, unproject
from trianflow_ros.geometry.degeneracy import (classify_motion, DEFAULT_SIGMA_PX,
                                               estimate_sigma, gric, GRIC_LAMBDA3,
                                               MotionClassification, MotionType,
                                               off_plane_share)
from trianflow_ros.geometry.epipolar import fundamental_from_essential, sampson_distance
from trianflow_ros.geometry.se3 import rotation_error_deg, so3_exp

WIDTH, HEIGHT = 1241, 376
K0 = torch.tensor([[718.0, 0.0, 607.0], [0.0, 718.0, 185.0], [0.0, 0.0, 1.0]],
                  dtype=torch.float64)
GENERAL, ROTATION, STANDSTILL = MotionType.GENERAL, MotionType.PURE_ROTATION, MotionType.STANDSTILL


@pytest.fixture(autouse=True)
def single_thread():
    """
    Run these tests on one intra-op thread, then restore the setting.

    The many tiny matrix products of batched RANSAC were 5-10x slower with two OpenMP threads
    on a shared 2-core machine; results do not depend on the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_scene(g, rot_deg=0.0, forward_m=0.0, n=600, noise_px=0.4, outliers=0.1,
               depth=(2.0, 50.0), wall=None):
    """
    One view pair (B = 1): camera 2 is rotated by rot_deg and moved forward_m along camera 1's z.

    Points lie at uniform depths in ``depth`` or, with ``wall = (normal, d)``, on the plane
    ``normal . X = d`` of camera 1's frame.

    :return: x1, x2 (1, n, 2) float64 and the true R_21 (1, 3, 3).
    """
    axis = torch.randn(3, generator=g, dtype=torch.float64)
    R = so3_exp((math.radians(rot_deg) * axis / axis.norm())[None])
    t = -R[0] @ torch.tensor([0.0, 0.0, forward_m], dtype=torch.float64)     # X2 = R (X1 - C)
    m = 4 * n
    scale = torch.tensor([WIDTH - 1.0, HEIGHT - 1.0], dtype=torch.float64)
    uv = torch.rand(1, m, 2, generator=g, dtype=torch.float64) * scale
    z = depth[0] + (depth[1] - depth[0]) * torch.rand(1, m, generator=g, dtype=torch.float64)
    rays = unproject(uv, K0[None])
    if wall is not None:
        z = wall[1] / (rays @ torch.tensor(wall[0], dtype=torch.float64))
    X2 = (rays * z[..., None]) @ R.transpose(1, 2) + t
    x2, z2 = project(X2, K0[None])
    visible = (z2 > 0.5) & (x2 >= 0).all(-1) & (x2 <= scale).all(-1)
    idx = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)[:, :n]
    assert bool(visible.gather(1, idx).all()), 'too few visible points'
    pick = idx[..., None].expand(-1, -1, 2)
    x1 = uv.gather(1, pick) + noise_px * torch.randn(1, n, 2, generator=g, dtype=torch.float64)
    x2 = x2.gather(1, pick) + noise_px * torch.randn(1, n, 2, generator=g, dtype=torch.float64)
    bad = torch.rand(1, n, 1, generator=g, dtype=torch.float64) < outliers
    jump = (torch.rand(1, n, 2, generator=g, dtype=torch.float64) - 0.5) * 80.0
    return x1, torch.where(bad, x1 + jump, x2), R


def essential_residuals(x1, x2):
    """Sampson distances (B, N) of an essential matrix fitted robustly by OpenCV per element."""
    cv2.setRNGSeed(0)
    out = []
    for b in range(x1.shape[0]):
        E, _ = cv2.findEssentialMat(x1[b].numpy(), x2[b].numpy(), K0.numpy(),
                                    method=cv2.USAC_ACCURATE, prob=0.999, threshold=1.0)
        E = torch.from_numpy(np.ascontiguousarray(E[:3]))[None]
        F = fundamental_from_essential(E, K0[None], K0[None])
        out.append(sampson_distance(F, x1[b:b + 1], x2[b:b + 1]))
    return torch.cat(out)


def classify(x1, x2, seed=0, e=None, **kwargs):
    """Classify a batch of scenes in float32 with the default thresholds."""
    b = x1.shape[0]
    K = K0.float().expand(b, 3, 3)
    e = essential_residuals(x1, x2) if e is None else e
    return classify_motion(x1.float(), x2.float(), K, K, e.float(),
                           generator=torch.Generator().manual_seed(seed), **kwargs)


# ---------------------------------------------------------------------------------------------
# gric
# ---------------------------------------------------------------------------------------------

def test_gric_hand_computed():
    e2 = torch.tensor([[0.0, 1.0, 100.0], [0.25, 0.25, 0.25]], dtype=torch.float64)
    got = gric(e2, 1.0, data_dim=2, model_dof=3)
    rho = torch.tensor([0.0 + 1.0 + 4.0, 0.75], dtype=torch.float64)  # cap 2 * (4 - 2) = 4
    expected = rho + math.log(4.0) * 2 * 3 + math.log(4.0 * 3) * 3
    assert torch.allclose(got, expected)
    # sigma scales the residuals; the cap follows d: 2 * (4 - 3) = 2 for an epipolar relation
    got = gric(e2, 0.5, data_dim=3, model_dof=5)
    rho = torch.tensor([0.0 + 2.0 + 2.0, 3.0], dtype=torch.float64)
    assert torch.allclose(got, rho + math.log(4.0) * 3 * 3 + math.log(12.0) * 5)
    assert GRIC_LAMBDA3 == 2.0


def test_gric_mask_sigma_tensor_and_shapes():
    e2 = torch.tensor([[0.5, float('inf'), 0.5], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[True, False, True], [True, True, True]])
    got = gric(e2, torch.tensor([1.0, 1.0]), data_dim=2, model_dof=0, mask=mask)
    assert got.shape == (2,)
    assert torch.allclose(got, torch.tensor([1.0 + math.log(4.0) * 4, 1.5 + math.log(4.0) * 6]))
    # an unmasked infinite (or NaN) residual costs the cap, never inf
    assert torch.isfinite(gric(e2.nan_to_num(nan=0.0), 1.0, data_dim=2, model_dof=3)).all()
    with pytest.raises(ValueError, match='data_dim'):
        gric(e2, 1.0, data_dim=4, model_dof=3)
    with pytest.raises(ValueError, match='mask'):
        gric(e2, 1.0, data_dim=2, model_dof=3, mask=mask[:, :2])
    with pytest.raises(ValueError, match='sigma'):
        gric(e2, 0.0, data_dim=2, model_dof=3)


# ---------------------------------------------------------------------------------------------
# classify_motion
# ---------------------------------------------------------------------------------------------

def _mixed_batch():
    g = torch.Generator().manual_seed(0)
    specs = [(ROTATION, {'rot_deg': 1.0}), (ROTATION, {'rot_deg': 3.0, 'noise_px': 0.5}),
             (ROTATION, {'rot_deg': 5.0, 'noise_px': 0.3}),
             (STANDSTILL, {'noise_px': 0.3}), (STANDSTILL, {'noise_px': 0.5}),
             (GENERAL, {'forward_m': 0.5}), (GENERAL, {'forward_m': 1.0, 'noise_px': 0.5}),
             (GENERAL, {'rot_deg': 3.0, 'forward_m': 0.7, 'noise_px': 0.3})]
    scenes = [make_scene(g, **kw) for _, kw in specs]
    x1, x2, R = (torch.cat(parts) for parts in zip(*scenes))
    return [kind for kind, _ in specs], x1, x2, R


def test_classify_mixed_batch_each_as_alone():
    expected, x1, x2, R = _mixed_batch()
    e = essential_residuals(x1, x2)
    c = classify(x1, x2, e=e)
    assert isinstance(c, MotionClassification)
    assert c.types() == expected
    b = len(expected)
    for field in ('flow_px', 'gric_identity', 'gric_rotation', 'gric_homography',
                  'gric_epipolar', 'num_points'):
        assert getattr(c, field).shape == (b,), field
    assert c.motion.dtype == torch.int64 and c.R_21.shape == (b, 3, 3)
    assert c.rotation_inliers.shape == x1.shape[:2]
    # the estimated noise (0.3-0.5 px) times sigma_scale = 2
    assert bool((c.sigma_px > 0.5).all()) and bool((c.sigma_px < 1.2).all())
    for i in range(b):                                    # the same answer for each alone
        alone = classify(x1[i:i + 1], x2[i:i + 1], seed=i + 1, e=e[i:i + 1])
        assert alone.types() == [expected[i]], i
    rot = torch.tensor([k == ROTATION for k in expected])
    still = torch.tensor([k == STANDSTILL for k in expected])
    # pure rotation: R recovered to a few thousandths of a degree; the rotation model wins GRIC
    assert float(rotation_error_deg(c.R_21[rot].double(), R[rot]).max()) < 0.03
    assert bool((c.gric_rotation[rot] < c.gric_epipolar[rot]).all())
    # standstill: R = I exactly, median flow below the default 2 px
    assert torch.equal(c.R_21[still], torch.eye(3).expand(int(still.sum()), 3, 3))
    assert bool((c.flow_px[still] < 2.0).all()) and bool((c.flow_px[~still] > 5.0).all())
    # general motion: the epipolar model wins GRIC by a wide margin (hundreds)
    gen = ~rot & ~still
    assert bool((c.gric_epipolar[gen] + 100.0 < c.gric_rotation[gen]).all())
    # the gate drops the 10 % junk matches, and not much more
    assert bool((c.num_points > 0.85 * x1.shape[1]).all())
    assert bool((c.num_points < 0.95 * x1.shape[1]).all())


def test_classify_seed_determinism():
    _, x1, x2, _ = _mixed_batch()
    x1, x2 = x1[::3], x2[::3]
    a, b = classify(x1, x2, seed=7), classify(x1, x2, seed=7)
    for field in ('motion', 'R_21', 'flow_px', 'gric_rotation', 'gric_homography',
                  'gric_epipolar', 'rotation_inliers'):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_classify_float64_inputs_keep_their_dtype_and_classes():
    # the two RANSACs run in float32 (faster on CPU), the GRIC in the caller's dtype: float64
    # input gives float64 outputs and the same classes as float32 input
    expected, x1, x2, R = _mixed_batch()
    e = essential_residuals(x1, x2)
    b = x1.shape[0]
    K = K0.expand(b, 3, 3)
    c = classify_motion(x1, x2, K, K, e, generator=torch.Generator().manual_seed(0))
    assert c.types() == expected
    assert c.R_21.dtype == torch.float64 and c.gric_epipolar.dtype == torch.float64
    assert c.flow_px.dtype == torch.float64 and c.off_plane_share.dtype == torch.float64
    rot = torch.tensor([k == ROTATION for k in expected])
    assert float(rotation_error_deg(c.R_21[rot], R[rot]).max()) < 0.03


def test_estimate_sigma():
    g = torch.Generator().manual_seed(6)
    e = 0.7 * torch.randn(2, 4000, generator=g, dtype=torch.float64)
    junk = torch.rand(2, 4000, generator=g, dtype=torch.float64) < 0.4
    e = torch.where(junk, 5.0 + 50.0 * torch.rand(2, 4000, generator=g, dtype=torch.float64), e)
    e[1] = float('inf')                                   # a failed epipolar fit
    sigma = estimate_sigma(e.abs())
    assert abs(float(sigma[0]) - 0.7) < 0.05               # 40 % junk trimmed away
    assert float(sigma[1]) == DEFAULT_SIGMA_PX
    mask = torch.zeros(2, 4000, dtype=torch.bool)
    mask[:, :100] = True
    assert sigma.shape == estimate_sigma(e, mask).shape == (2,)


def test_noisy_flow_needs_the_estimated_sigma():
    """1.5 px of noise: the estimate keeps the classes; a fixed, too small sigma does not."""
    g = torch.Generator().manual_seed(7)
    kinds = [ROTATION, STANDSTILL, GENERAL]
    scenes = [make_scene(g, rot_deg=3.0, noise_px=1.5), make_scene(g, noise_px=1.5),
              make_scene(g, forward_m=0.7, noise_px=1.5)]
    x1, x2, R = (torch.cat(p) for p in zip(*scenes))
    assert classify(x1, x2).types() == kinds
    # GRIC with sigma below the noise truncates everything and prefers E (see the docstring)
    assert classify(x1, x2, sigma_px=0.8).types() == [GENERAL, GENERAL, GENERAL]


def test_small_rotation_below_standstill_flow_is_kept():
    """0.1 deg moves points about 1.25 px, below standstill_px, but the rotation is measurable."""
    g = torch.Generator().manual_seed(1)
    x1, x2, R = make_scene(g, rot_deg=0.1, noise_px=0.3)
    c = classify(x1, x2)
    assert float(c.flow_px) < 2.0
    assert c.types() == [ROTATION]
    assert float(rotation_error_deg(c.R_21.double(), R)) < 0.01


def test_pure_rotation_with_40_percent_outliers():
    """The inlier gate keeps GRIC from charging the junk matches more to the smaller models."""
    g = torch.Generator().manual_seed(2)
    scenes = [make_scene(g, rot_deg=d, outliers=0.4) for d in (1.0, 4.0)]
    x1, x2, R = (torch.cat(p) for p in zip(*scenes))
    c = classify(x1, x2)
    assert c.types() == [ROTATION, ROTATION]
    assert float(rotation_error_deg(c.R_21.double(), R).max()) < 0.03


def test_small_translation_far_scene_is_reported_as_rotation():
    """
    Document what happens when the baseline is too small for the scene depth.

    10 cm forward with everything 30-50 m away leaves about 1 px of parallax at the image
    borders: the rotation model explains the flow to within (twice) the noise and wins GRIC, so
    the pair is reported PURE_ROTATION - honestly: an E fitted to it gives a translation
    direction off by 148 deg (median of 10 pairs; the sign of t flips), while the rotation
    estimate stays accurate. The same holds for 5 cm in a 2-50 m scene (E direction error:
    median 5 deg, worst 19 deg). Half a metre in the far scene, or 15 cm in the 2-50 m scene,
    is GENERAL.
    """
    g = torch.Generator().manual_seed(3)
    scenes = [make_scene(g, rot_deg=2.0, forward_m=0.1, depth=(30.0, 50.0)),
              make_scene(g, rot_deg=2.0, forward_m=0.05, depth=(2.0, 50.0)),
              make_scene(g, rot_deg=2.0, forward_m=0.5, depth=(30.0, 50.0)),
              make_scene(g, rot_deg=2.0, forward_m=0.15, depth=(2.0, 50.0))]
    x1, x2, R = (torch.cat(p) for p in zip(*scenes))
    c = classify(x1, x2)
    assert c.types() == [ROTATION, ROTATION, GENERAL, GENERAL]
    assert float(rotation_error_deg(c.R_21[:2].double(), R[:2]).max()) < 0.05


def test_planar_scene_is_general_or_planar():
    """A wall 8-15 m away seen while moving 1 m: H explains it, a rotation does not."""
    g = torch.Generator().manual_seed(5)
    x1, x2, _ = make_scene(g, rot_deg=2.0, forward_m=1.0, wall=((0.3, 0.0, 1.0), 12.0))
    c = classify(x1, x2)
    assert c.types() == [GENERAL]
    assert float(c.gric_homography) < float(c.gric_epipolar) < float(c.gric_rotation)
    assert classify(x1, x2, detect_planar=True).types() == [MotionType.PLANAR]
    # a general scene is never PLANAR
    x1, x2, _ = make_scene(g, rot_deg=2.0, forward_m=1.0)
    assert classify(x1, x2, detect_planar=True).types() == [GENERAL]


def test_off_plane_share_tells_one_plane_from_a_plane_with_structure():
    """The share of E inliers the homography leaves out: ~0 on a wall, large off it."""
    g = torch.Generator().manual_seed(5)
    x1, x2, _ = make_scene(g, rot_deg=2.0, forward_m=1.0, wall=((0.3, 0.0, 1.0), 12.0))
    wall = classify(x1, x2, detect_planar=True)
    assert wall.off_plane_share.shape == (1,)
    assert float(wall.off_plane_share[0]) < 0.05
    x1g, x2g, _ = make_scene(g, rot_deg=2.0, forward_m=1.0)
    general = classify(x1g, x2g, detect_planar=True)
    assert float(general.off_plane_share[0]) > 0.3


def test_quick_off_plane_share_agrees_with_the_classification():
    """The quick plane test: the share of classify_motion, from a shorter homography search."""
    g = torch.Generator().manual_seed(5)
    scenes = [make_scene(g, rot_deg=2.0, forward_m=1.0, wall=((0.3, 0.0, 1.0), 12.0)),
              make_scene(g, rot_deg=2.0, forward_m=1.0)]
    for x1, x2, _ in scenes:
        e = essential_residuals(x1, x2)
        full = classify(x1, x2, e=e, detect_planar=True).off_plane_share
        quick = off_plane_share(x1, x2, e, generator=torch.Generator().manual_seed(1))
        assert quick.shape == (1,) and quick.dtype == x1.dtype
        assert float(quick[0]) == pytest.approx(float(full[0]), abs=0.05)
    # noise-free wall: every E inlier is on the homography, exactly
    x1, x2, _ = make_scene(g, rot_deg=2.0, forward_m=1.0, wall=((0.3, 0.0, 1.0), 12.0),
                           noise_px=0.0, outliers=0.0)
    e = essential_residuals(x1, x2)
    assert float(off_plane_share(x1, x2, e, sigma_px=0.5)[0]) == 0.0
    # no epipolar inlier (a failed E): share 0, no division by zero
    inf = torch.full_like(e, float('inf'))
    assert float(off_plane_share(x1, x2, inf)[0]) == 0.0
    with pytest.raises(ValueError, match='x2'):
        off_plane_share(x1, x2[:, :10], e)


def test_weights_exclude_points():
    g = torch.Generator().manual_seed(4)
    x1, x2, R = make_scene(g, rot_deg=2.0, outliers=0.0)
    # corrupt 60 % of the matches with a forward-motion-like field, then mask them out
    bad = torch.arange(x1.shape[1]) < int(0.6 * x1.shape[1])
    radial = (x1 - torch.tensor([607.0, 185.0], dtype=x1.dtype)) * 0.05
    x2b = torch.where(bad[None, :, None], x2 + radial, x2)
    w = (~bad).to(torch.float32)[None]
    c = classify(x1, x2b, weights=w)
    assert c.types() == [ROTATION]
    assert int(c.num_points) <= int((~bad).sum())
    assert not bool(c.rotation_inliers[0, bad].any())
    assert float(rotation_error_deg(c.R_21.double(), R)) < 0.03
    assert classify(x1, x2b).types() == [GENERAL]         # the corrupted matches do matter


def test_with_the_projects_essential_ransac():
    """The VO path: ransac_essential once, its Sampson distances passed in."""
    from trianflow_ros.geometry.ransac import ransac_essential
    expected, x1, x2, R = _mixed_batch()
    x1, x2 = x1.float(), x2.float()
    K = K0.float().expand(x1.shape[0], 3, 3)
    fit = ransac_essential(x1, x2, K, K, threshold_px=1.0,
                           generator=torch.Generator().manual_seed(0))
    e = sampson_distance(fundamental_from_essential(fit.model, K, K), x1, x2)
    c = classify_motion(x1, x2, K, K, e, generator=torch.Generator().manual_seed(0))
    assert c.types() == expected


def test_bad_inputs_raise():
    x = torch.zeros(2, 10, 2)
    K = torch.eye(3).expand(2, 3, 3)
    e = torch.zeros(2, 10)
    with pytest.raises(ValueError, match='epipolar_residuals'):
        classify_motion(x, x, K, K, e[:, :9])
    with pytest.raises(ValueError, match='K1'):
        classify_motion(x, x, torch.eye(3), K, e)
    with pytest.raises(ValueError, match='epipolar_dof'):
        classify_motion(x, x, K, K, e, epipolar_dof=6)
    with pytest.raises(ValueError, match='sigma_px'):
        classify_motion(x, x, K, K, e, sigma_px=0.0)
