"""Lens distortion (geometry/distortion.py): models, exact inversion, OpenCV agreement."""

import cv2
import numpy as np
import pytest
import torch

from trianflow_ros.geometry.distortion import (as_distortion, DENSE_LOOKUP_POINTS,
                                               distort_normalized, distort_pixels, Distortion,
                                               PixelUndistorter, undistort_normalized,
                                               undistort_pixels)

K_NP = np.array([[420.0, 0.0, 376.0], [0.0, 415.0, 240.0], [0.0, 0.0, 1.0]])
MODELS = {
    'plumb_bob': Distortion('plumb_bob', (-0.296609, 0.080818)),          # vamr_checkerboard
    'plumb_bob_tangential': Distortion('plumb_bob', (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    'rational_polynomial': Distortion('rational_polynomial',
                                      (0.3, -0.1, 0.001, -0.002, 0.01, 0.2, -0.05, 0.01)),
    'equidistant': Distortion('equidistant', (-0.01, 0.02, -0.005, 0.001)),
}


def _pixels(n=500, seed=0, w=752, h=480, margin=20):
    rng = np.random.default_rng(seed)
    return np.stack((rng.uniform(margin, w - margin, n), rng.uniform(margin, h - margin, n)), -1)


def test_model_names_and_padding():
    d = Distortion('plumb_bob', (-0.3, 0.08))
    assert d.coeffs == (-0.3, 0.08, 0.0, 0.0, 0.0)
    assert Distortion('fisheye', (0.1, 0, 0, 0)).model == 'equidistant'
    assert Distortion('none').is_identity and Distortion('plumb_bob', (0,) * 5).is_identity
    assert Distortion.from_camera_info('', [0.0] * 5).is_identity
    assert Distortion.from_camera_info('', [0.1, 0, 0, 0, 0]).model == 'plumb_bob'
    assert Distortion.from_camera_info('rational_polynomial', [0.1] * 8).model == \
        'rational_polynomial'
    assert Distortion.parse('# k1 k2\n-0.296609 0.080818').coeffs[:2] == (-0.296609, 0.080818)
    assert Distortion.parse('equidistant 0.1, 0.2, 0.3, 0.4').model == 'equidistant'
    assert as_distortion(None) is None and as_distortion(Distortion()) is None
    assert as_distortion(('plumb_bob', [0.1])).model == 'plumb_bob'
    assert hash(d) == hash(Distortion('plumb_bob', (-0.3, 0.08, 0, 0, 0)))


@pytest.mark.parametrize('bad', [('kannala', (0.1,)), ('plumb_bob', (0.1,) * 6),
                                 ('plumb_bob', (float('nan'),))])
def test_bad_models_name_the_fix(bad):
    with pytest.raises(ValueError, match='distortion|coefficients'):
        Distortion(*bad)
    with pytest.raises(ValueError, match='distortion_model'):
        Distortion.from_camera_info('', [0.1] * 6)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_distort_matches_opencv(name):
    dist = MODELS[name]
    x = _pixels()
    pts = np.concatenate((_normalize_np(x), np.ones((len(x), 1))), 1)
    kind, coeffs = dist.to_opencv()
    if kind == 'fisheye':
        ref = cv2.fisheye.projectPoints(pts[:, None], np.zeros(3), np.zeros(3), K_NP,
                                        np.array(coeffs))[0][:, 0]
    else:
        ref = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K_NP, np.array(coeffs))[0][:, 0]
    ours = distort_pixels(torch.from_numpy(x)[None], torch.from_numpy(K_NP)[None], dist)[0]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)


def _normalize_np(x):
    return np.stack(((x[:, 0] - K_NP[0, 2]) / K_NP[0, 0], (x[:, 1] - K_NP[1, 2]) / K_NP[1, 1]), -1)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_undistort_is_exact_inverse(name):
    dist = MODELS[name]
    K = torch.from_numpy(K_NP)[None]
    x = torch.from_numpy(_pixels(2000, seed=1))[None]
    raw = distort_pixels(x, K, dist)
    back = undistort_pixels(raw, K, dist)
    assert back.shape == x.shape and back.dtype == x.dtype
    assert float((back - x).abs().max()) < 1e-8


@pytest.mark.parametrize('name', ['plumb_bob', 'equidistant'])
def test_undistort_agrees_with_opencv(name):
    """The iterative undistortion of OpenCV (many iterations) gives the same points."""
    dist = MODELS[name]
    raw = _pixels(300, seed=2).reshape(-1, 1, 2)
    kind, coeffs = dist.to_opencv()
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-14)
    if kind == 'fisheye':
        ref = cv2.fisheye.undistortPoints(raw, K_NP, np.array(coeffs), P=K_NP,
                                          criteria=crit)[:, 0]
    else:
        ref = cv2.undistortPointsIter(raw, K_NP, np.array(coeffs), None, K_NP, crit)[:, 0]
    ours = undistort_pixels(torch.from_numpy(raw[:, 0])[None], torch.from_numpy(K_NP)[None],
                            dist)[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_identity_and_batch_shapes():
    x = torch.rand(3, 7, 2, dtype=torch.float64) * 100
    K = torch.from_numpy(K_NP)[None].expand(3, 3, 3)
    assert undistort_pixels(x, K, None) is x
    assert distort_pixels(x, K, Distortion()) is x
    y = distort_pixels(x, K, MODELS['plumb_bob'])
    assert y.shape == (3, 7, 2)
    with pytest.raises(ValueError, match='x must have shape'):
        undistort_pixels(x[0], K, MODELS['plumb_bob'])


def test_not_invertible_gives_nan():
    """Beyond the fold of a strong barrel model no undistorted point exists: NaN, not garbage."""
    dist = Distortion('plumb_bob', (-0.6, 0.0))
    # the radial factor r (1 - 0.6 r^2) peaks at r = 0.745 (value 0.497): larger is unreachable
    q = torch.tensor([[0.6, 0.0], [0.3, 0.1]], dtype=torch.float64)
    out = undistort_normalized(q, dist)
    assert bool(torch.isnan(out[0]).all()) and bool(torch.isfinite(out[1]).all())


def test_distort_gradcheck():
    for dist in MODELS.values():
        p = (torch.rand(1, 5, 2, dtype=torch.float64) - 0.5).requires_grad_()
        assert torch.autograd.gradcheck(lambda q: distort_normalized(q, dist), (p,))


@pytest.mark.parametrize('name', ['plumb_bob', 'plumb_bob_tangential', 'equidistant'])
def test_pixel_undistorter_exact_for_matches_and_close_for_dense_maps(name):
    """Matches are inverted exactly; a dense input is read from the table (<< flow noise)."""
    dist = MODELS[name]
    K = torch.from_numpy(K_NP)[None]
    und = PixelUndistorter(K, dist, (480, 752))
    assert und.grid.shape == (1, 480 * 752, 2) and und.grid.dtype == torch.float64
    x = torch.from_numpy(_pixels(500))[None]
    assert torch.equal(und(x), undistort_pixels(x, K, dist))           # few points: Newton
    rng = np.random.default_rng(1)
    n = DENSE_LOOKUP_POINTS + 100
    dense = np.stack((rng.uniform(0, 751, n), rng.uniform(0, 479, n)), -1)
    dense[:50] = rng.uniform(-30, -1, (50, 2))                         # outside: exact too
    xd = torch.from_numpy(dense)[None]
    ref = undistort_pixels(xd, K, dist)
    out = und(xd)
    assert out.shape == (1, n, 2) and out.dtype == torch.float64
    assert torch.equal(out[:, :50], ref[:, :50])
    err = (out - ref).norm(dim=-1)
    assert float(err.max()) < 5e-3, float(err.max())                  # measured <= 2e-3 px
    assert float(err.max()) > 0.0                                     # it did interpolate
    # the grid nodes themselves are exact
    nodes = torch.tensor([[[0.0, 0.0], [751.0, 479.0], [300.0, 200.0]]], dtype=torch.float64)
    nodes = torch.cat((nodes, xd[:, 50:]), 1)
    assert torch.allclose(und(nodes)[:, :3], undistort_pixels(nodes[:, :3], K, dist),
                          atol=1e-9)
