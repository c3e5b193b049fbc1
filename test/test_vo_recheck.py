"""
The second E-RANSAC of the VO (``vo.pose_recheck``, on by default) on a real short-baseline pair.

The TUM fr1_xyz pair (3.7 cm at ~1.5 m, 2.2 deg) at the aspect-kept working size (400x533,
the default 'auto' for a 4:3 camera): with RANSAC seed 4 the adaptive stop returns the
rotation-translation ambiguity (measured without the recheck on 2026-12-08: rotation error 2.0
deg, translation direction 41 deg against the ground truth; seeds 0-23 otherwise 0.53-0.61 deg
and 6.8-9.9 deg, and 0.74 / 12.1 deg for seed 1, which the recheck leaves: its translation is
near the axis). Session 7's code failed on seeds 0 and 3 instead: which draws fail moves with
any change upstream, hence the check that seed 4 still fails without the recheck. The
ambiguity's translation lies far from the optical axis, so the recheck runs
(``vo.pose_recheck_min_angle_deg``); a forward motion skips it.
"""

import argparse

import numpy as np
import pytest

from trianflow_ros.config import Config
from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.vo import VisualOdometry
from trianflow_ros.vo.cli import tum_source


def _angle_deg(R):
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def _pair_errors(src, cfg):
    with VisualOdometry(cfg) as vo:
        vo.output_depth = False
        assert vo.working_size((480, 640)) == (400, 533)
        poses = [vo.step(*src.frame(i)[:3], src.distortion).T_world_cam for i in range(2)]
    est = np.linalg.inv(poses[0]) @ poses[1]
    gt = np.linalg.inv(src.gt[0]) @ src.gt[1]
    cos = float(est[:3, 3] @ gt[:3, 3] / (np.linalg.norm(est[:3, 3]) * np.linalg.norm(gt[:3, 3])))
    return (_angle_deg(est[:3, :3].T @ gt[:3, :3]),
            float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))))


@pytest.mark.parametrize('seed', [4])
def test_short_baseline_pair_gets_the_pose_not_the_ambiguity(shared_data, seed):
    folder = shared_data / 'tum_rgbd_pairs' / 'rgbd_dataset_freiburg1_xyz'
    src = tum_source(argparse.Namespace(path=str(folder), distortion=None))
    cfg = Config()
    cfg.vo.device = 'cpu'
    cfg.vo.flow_provider = 'dis'
    cfg.geometry.ransac.seed = seed
    assert cfg.vo.pose_recheck and cfg.vo.resolution == 'auto'      # the defaults
    rot, direction = _pair_errors(src, cfg)
    assert rot < 1.0                                               # measured 0.58 deg
    assert direction < 15.0                                        # measured 8.9 deg
    cfg.vo.pose_recheck = False                                    # the failure it prevents
    rot, direction = _pair_errors(src, cfg)
    assert rot > 1.5 and direction > 30.0                          # measured 2.0 / 41 deg


def test_forward_motion_skips_the_recheck(monkeypatch):
    """A forward drive (translation along the optical axis) never pays for the second RANSAC."""
    from trianflow_ros.vo import odometry
    calls = []
    original = odometry.ransac_essential

    def counted(*args, **kwargs):
        if kwargs.get('min_hypotheses'):                           # the second RANSAC only
            calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(odometry, 'ransac_essential', counted)
    seq = make_sequence('forward', 6, 96, 320, seed=0)
    cfg = Config()
    cfg.vo.device = 'cpu'
    cfg.data.img_height, cfg.data.img_width = 96, 320
    with VisualOdometry(cfg) as vo:
        vo.output_depth = False
        for i in range(6):
            vo.step(float(i), seq.images[i], seq.K)
    assert calls == []
    seq = make_sequence('handheld', 6, 96, 320, seed=0)             # sideways sway: it runs
    with VisualOdometry(cfg) as vo:
        vo.output_depth = False
        for i in range(6):
            vo.step(float(i), seq.images[i], seq.K)
    assert len(calls) >= 3
