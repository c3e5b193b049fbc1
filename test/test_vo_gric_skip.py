"""
GRIC runs only where it can change the pose (``VisualOdometry._solve``).

An observable pair without a dominant plane goes to E without the motion classification
(~12 ms a pair); a pair whose translation is not observable (a pure rotation) and a pair over
one plane (the quick plane test) still get it, and the plane still goes to PnP.
"""

import numpy as np
import pytest
from trianflow_ros.config import Config
from trianflow_ros.data.kitti_odometry import KittiOdometrySequence
from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.vo import TrackingState, VisualOdometry
import trianflow_ros.vo.odometry as odometry


@pytest.fixture
def calls(monkeypatch):
    """Count the calls of the classification and of the quick plane test."""
    counts = {'classify': 0, 'plane': 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(odometry, 'classify_motion',
                        counted('classify', odometry.classify_motion))
    monkeypatch.setattr(odometry, 'off_plane_share', counted('plane', odometry.off_plane_share))
    return counts


def _config(flow='dis', h=256, w=832):
    cfg = Config()
    cfg.vo.device = 'cpu'
    cfg.vo.flow_provider = flow
    cfg.data.img_height, cfg.data.img_width = h, w
    return cfg


@pytest.mark.parametrize('flow', ['dis', 'klt'])
def test_kitti_forward_pairs_skip_gric(shared_data, calls, flow):
    seq = KittiOdometrySequence(shared_data / 'kitti_odometry_seq06', '06', camera=0)
    with VisualOdometry(_config(flow)) as vo:
        vo.output_depth = False
        results = [vo.step(float(i), seq.load_image(i), seq.K) for i in range(5)]
    assert all(r.state == TrackingState.TRACKING for r in results[1:])
    assert [r.method for r in results[1:]] == ['essential'] * 4
    # the first pair has no structure (no PnP, no plane test); the next ones test the plane:
    # a street is far from one plane, so GRIC never runs
    assert calls == {'classify': 0, 'plane': 3}
    assert [r.motion.name for r in results[1:]] == ['GENERAL'] * 4


def test_pure_rotation_still_classified(calls):
    seq = make_sequence('pure_rotation', 4, 96, 320, seed=0, stride=1)
    with VisualOdometry(_config('dis', 96, 320)) as vo:
        vo.output_depth = False
        results = [vo.step(float(i), im, seq.K.numpy()) for i, im in enumerate(seq.images)]
    assert calls['classify'] >= 1
    assert all(np.isfinite(r.T_world_cam).all() for r in results)
    assert any(r.motion is not None and r.motion.name == 'PURE_ROTATION' for r in results[1:])


def test_plane_test_sends_a_plane_to_gric(shared_data, calls):
    """On the checkerboard (one plane) the quick test passes and GRIC decides PLANAR."""
    from trianflow_ros.data.tum import TumRgbdSequence
    seq = TumRgbdSequence(shared_data / 'vamr_checkerboard', use_depth=False)
    with VisualOdometry(_config('dis')) as vo:
        vo.output_depth = False
        results = []
        for i in range(0, 24, 4):
            stamp, image, K = seq.frame(i)
            results.append(vo.step(stamp, image, K, seq.distortion))
    assert calls['plane'] >= 1 and calls['classify'] >= calls['plane']
    assert sum(r.method == 'pnp' for r in results) >= 3, [r.method for r in results]
    assert all(r.state != TrackingState.LOST for r in results)
