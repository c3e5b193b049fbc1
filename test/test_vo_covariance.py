"""
The pose covariance of the odometry (trianflow_ros.vo.covariance): anisotropy, never zero.

Monocular VO knows the direction of travel far better than its length, so the relative
covariance puts the scale error along the translation; the origin and the unknown twist get
stated, non-zero values. The end-to-end check runs the odometry with DIS flow and exact
(oracle) depth on a synthetic forward drive.
"""

import numpy as np
from trianflow_ros.config import Config
from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.vo import covariance as C
from trianflow_ros.vo import DISFlowProvider, OracleDepthProvider, VisualOdometry

KW = {'focal_px': 500.0, 'sigma_px': 0.3, 'num_inliers': 2000, 'translation_norm': 1.0,
      'scene_depth': 15.0, 'scale_sigma': 0.05}


def _axes(cov3: np.ndarray):
    w, V = np.linalg.eigh(cov3)
    return w, V


def test_isotropic_without_a_translation_as_before():
    cov = C.relative_covariance('essential', **KW)
    sigma_phi = 0.3 / (500.0 * np.sqrt(C.MAX_EFFECTIVE_POINTS))
    expected = (1.0 * 0.05) ** 2 + 2.0 * (sigma_phi * 15.0) ** 2
    assert np.allclose(np.diag(cov)[:3], expected, rtol=1e-9)
    assert np.allclose(np.diag(cov)[3:], sigma_phi ** 2, rtol=1e-9)


def test_scale_error_lies_along_the_direction_of_travel():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.normal(size=3)
        t *= 1.0 / np.linalg.norm(t)
        cov = C.relative_covariance('essential', **KW, translation=t)
        w, V = _axes(cov[:3, :3])
        along = V[:, -1]
        assert abs(abs(along @ t) - 1.0) < 1e-9, (along, t)      # largest axis = travel
        assert w[-1] > 10.0 * w[1]                                  # clearly anisotropic
        assert np.isclose(w[0], w[1])                               # lateral: isotropic
        assert np.linalg.eigvalsh(cov).min() > 0
        iso = C.relative_covariance('essential', **KW)
        assert np.isclose(t @ cov[:3, :3] @ t, iso[0, 0])          # same error along t
        assert np.trace(cov[:3, :3]) < np.trace(iso[:3, :3])        # less across it


def test_unobserved_translation_stays_isotropic():
    for method in ('rotation', 'hold'):
        cov = C.relative_covariance(method, **KW, last_speed=1.0,
                                    translation=np.array([0.0, 0.0, 1.0]))
        assert np.allclose(cov[:3, :3], np.eye(3) * cov[0, 0])
    tiny = C.relative_covariance('essential', **KW, translation=np.zeros(3))
    assert np.allclose(tiny[:3, :3], np.eye(3) * tiny[0, 0])
    bad = C.relative_covariance('essential', **KW, translation=[np.nan, 0.0, 1.0])
    assert np.all(np.isfinite(bad))


def test_origin_and_unknown_twist_are_never_zero():
    origin = C.initial_covariance()
    assert np.allclose(np.diag(origin), C.ORIGIN_VARIANCE) and C.ORIGIN_VARIANCE >= 1e-9
    assert np.linalg.eigvalsh(origin).min() > 0
    twist = C.unknown_twist_covariance(2.0, 0.5)
    assert np.allclose(np.diag(twist), [4.0] * 3 + [0.25] * 3)
    assert np.all(np.diag(C.unknown_twist_covariance()) < C.BAD_VARIANCE)


def test_odometry_first_frame_and_forward_drive_covariances():
    """DIS flow, exact depth, a forward drive: origin covariance, then largest along z."""
    seq = make_sequence('forward', 6, 96, 320, seed=0)
    cfg = Config()
    cfg.data.img_height, cfg.data.img_width = 96, 320
    cfg.vo.num_matches = 2000
    cfg.vo.device = 'cpu'
    vo = VisualOdometry(cfg, DISFlowProvider('medium'), OracleDepthProvider(seq))
    results = [vo.step(float(i), im, seq.K.numpy())
               for i, im in enumerate(seq.images_uint8())]
    first = results[0].covariance
    assert np.allclose(np.diag(first), C.ORIGIN_VARIANCE), np.diag(first)
    for r in results[1:]:
        assert r.method == 'essential', r.method
        # the camera drives along its optical axis (z): the scale error of each step lies
        # along z (the accumulated covariance also grows across z: heading error x distance)
        w, V = _axes(r.relative_covariance[:3, :3])
        assert abs(V[2, -1]) > 0.99 and w[-1] > 3.0 * w[1], (r.index, w, V[:, -1])
        assert np.all(np.diag(r.covariance) >= C.ORIGIN_VARIANCE)
    w, V = _axes(results[1].covariance[:3, :3])
    assert abs(V[2, -1]) > 0.99 and w[-1] > 2.0 * w[1], (w, V[:, -1])
