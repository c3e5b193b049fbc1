"""
The scenes that made the first VO lose frames (issue 12), and the lens-distortion path.

- ``highway``: fast forward motion (2.5-3 m per frame) with most of the image far away (sky,
  facades 30-200 m, a backdrop at 5 km). The old rule "half of the E inliers in front of both
  cameras" LOST 4-12 of 30 frames here: far points have random cheirality signs. The parallax
  vote (``geometry.pose.choose_pose``) decides on the near points only.
- ``handheld30``: a hand-held camera at 30 Hz, 0.5-2 cm and 0.1-0.5 deg per frame: too little
  parallax per pair to fix t; keyframes by parallax let it accumulate.
- ``turns``: an urban drive through two 90-degree corners: the rotation through the turns and
  the scale after them.
- a lens with strong barrel distortion (``plumb_bob -0.3 0.08``): exact with oracle flow and
  depth when the distortion is given, far off when it is ignored.

Sizes are small (96x320) to keep the suite fast; ATE is the position RMSE, Sim(3)-aligned for
the classical (scale-free) mode and metric with oracle depth. Measured values at the time of
writing are in the comments; the bounds leave room for the randomness of DIS and RANSAC.
"""

import numpy as np
import pytest

from test_vo import ate, gt_poses, path_length, small_config
from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.data.synthetic.distorted import make_distorted_sequence
from trianflow_ros.eval.alignment import align_poses
from trianflow_ros.geometry.distortion import Distortion
from trianflow_ros.vo import (DISFlowProvider, OracleDepthProvider, OracleFlowProvider,
                              TrackingState, VisualOdometry)

H, W = 96, 320


def _run(seq, flow, depth, distortion=None, cfg=None):
    fp = OracleFlowProvider(seq) if flow == 'oracle' else DISFlowProvider('medium')
    dp = OracleDepthProvider(seq) if depth == 'oracle' else None
    vo = VisualOdometry(cfg or small_config(), fp, dp)
    res = [vo.step(float(i), im, seq.K.numpy(), distortion=distortion)
           for i, im in enumerate(seq.images_uint8())]
    return res, np.stack([r.T_world_cam for r in res])


def _relative_ate(res, est, seq, aligned):
    gt = gt_poses(seq)
    if aligned:
        est, _ = align_poses(est, gt, 'sim3')
    return ate(est, gt) / path_length(gt)


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('depth', ['none', 'oracle'])
def test_highway_far_field_tracks_every_frame(seed, depth):
    seq = make_sequence('highway', 20, H, W, seed=seed)
    res, est = _run(seq, 'dis', depth)
    assert all(r.state != TrackingState.LOST for r in res), [r.message for r in res]
    assert all(np.isfinite(r.T_world_cam).all() for r in res)
    # measured 0.1 % / 2.3 % (classical, seeds 0 / 1), 1.6 % / 3.8 % (oracle depth)
    assert _relative_ate(res, est, seq, depth == 'none') < 0.06
    # t observed (by E, or by PnP on the map where the road's flow is too large for DIS at
    # this size and only the far structure is matched), not a rotation or a hold. Was >= 15;
    # since vo.pose_min_vote_share (5 % of the E inliers must vote) two early pairs of seed 1,
    # where 3 % of the inliers have parallax at this size (35 of 1099, 42 of 1304), keep
    # their reference instead (measured 14 of 20 for both depth kinds; ATE 3.5 % vs 3.0 %)
    assert sum(r.method in ('essential', 'pnp') for r in res) >= 14


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('depth', ['none', 'oracle'])
def test_handheld_30hz_small_baseline_tracks_every_frame(seed, depth):
    seq = make_sequence('handheld30', 30, H, W, seed=seed)
    res, est = _run(seq, 'dis', depth)
    assert all(r.state != TrackingState.LOST for r in res), [r.message for r in res]
    # measured 2.9 % / 0.9 % (classical), 1.8 % / 0.6 % (oracle depth) of a 0.26-0.35 m path
    assert _relative_ate(res, est, seq, depth == 'none') < 0.08
    # keyframes are kept while the parallax is small: fewer keyframes than frames
    assert len({r.reference_index for r in res}) < 20


@pytest.mark.parametrize('seed', [0, 1])
def test_urban_drive_through_two_corners(seed):
    # two 90-degree corners (2-3.5 deg per frame for 30-45 frames each) in 110 frames of a
    # street: the rotation through the turns must not drift and the scale must survive them
    seq = make_sequence('turns', 110, H, W, seed=seed)
    res, est = _run(seq, 'dis', 'none')
    assert all(r.state != TrackingState.LOST for r in res), [r.message for r in res]
    gt = gt_poses(seq)
    turned = np.degrees(np.arccos(np.clip((np.trace(gt[-1, :3, :3]) - 1) / 2, -1, 1)))
    # the first corner is behind by frame 60 (the second turns back: the corners alternate)
    assert abs(np.degrees(np.arctan2(gt[60, 0, 2], gt[60, 2, 2]))) > 60 and turned < 30
    # measured 0.3 % / 0.4 % of a 109 / 84 m path (seeds 0 / 1)
    assert _relative_ate(res, est, seq, True) < 0.03
    R_err = est[-1, :3, :3].T @ gt[-1, :3, :3]
    # the heading after the corners: measured 0.5 / 1.5 deg (the 30-line baseline of
    # bench/baseline_vo.py on the same frames: 2.8 / 1.3 deg); one pixel at this size is 0.2 deg
    assert np.degrees(np.arccos(np.clip((np.trace(R_err) - 1) / 2, -1, 1))) < 3.0


@pytest.fixture(scope='module')
def distorted():
    return make_distorted_sequence('forward', 8, H, W, seed=0,
                                   distortion=Distortion('plumb_bob', (-0.3, 0.08)))


def test_distortion_path_is_exact_with_oracle_inputs(distorted):
    seq = distorted
    res, est = _run(seq, 'oracle', 'oracle', distortion=seq.distortion)
    gt = gt_poses(seq)
    length = path_length(gt)
    assert all(r.method == 'essential' for r in res[1:])
    assert ate(est, gt) < 1e-4 * length, (ate(est, gt), length)         # measured 2e-5
    # ignoring the lens: the same inputs give a wrong trajectory
    res0, est0 = _run(seq, 'oracle', 'oracle', distortion=None)
    assert ate(est0, gt) > 0.03 * length
    # the depth output stays on the raw (distorted) pixel grid, as the oracle's
    d = res[-1].depth
    assert d.shape == (H, W)


def test_distortion_with_dis_flow_and_as_camera_info_model(distorted):
    seq = distorted
    res, est = _run(seq, 'dis', 'none', distortion=('plumb_bob', [-0.3, 0.08, 0.0, 0.0, 0.0]))
    assert all(r.state != TrackingState.LOST for r in res)
    with_lens = _relative_ate(res, est, seq, True)
    res0, est0 = _run(seq, 'dis', 'none', distortion=None)
    without = _relative_ate(res0, est0, seq, True)
    assert with_lens < 0.01 and with_lens < without, (with_lens, without)
    with pytest.raises(ValueError, match='distortion model'):
        VisualOdometry(small_config(), DISFlowProvider('fast')).step(
            0.0, seq.images_uint8()[0], seq.K.numpy(), distortion=('kannala', [0.1]))
