"""
Visual odometry on synthetic sequences with exact ground truth (trianflow_ros.vo).

Every trajectory kind of the generator (forward, handheld, pure_rotation, standstill, and
forward at stride 3) runs at 96x320 through three provider set-ups:

- oracle flow + oracle depth: exact input, so the trajectory must be exact (metric, no
  alignment);
- DIS flow + oracle depth: real flow errors, metric scale from the depth;
- DIS flow, no depth (classical): scale from the first baseline, propagated by triangulation;
  compared after Sim(3) alignment.

Tolerances are stated at each check; ``ATE`` is the RMSE of the camera positions.
"""

import numpy as np
import pytest
import torch
from trianflow_ros.config import Config
from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.eval.alignment import align_poses
from trianflow_ros.geometry.degeneracy import MotionType
from trianflow_ros.nets.flow_net import FlowNet
from trianflow_ros.vo import covariance as C
from trianflow_ros.vo import (DISFlowProvider, FrameResult, NetworkFlowProvider,
                              OracleDepthProvider, OracleFlowProvider, TrackingState,
                              VisualOdometry)
from trianflow_ros.vo.covariance import BAD_VARIANCE

H, W, N = 96, 320, 10
_SEQUENCES = {}


def sequence(kind: str, stride: int = 1, frames: int = N):
    """Render (once per test session) a synthetic sequence."""
    key = (kind, stride, frames)
    if key not in _SEQUENCES:
        _SEQUENCES[key] = make_sequence(kind, frames, H, W, seed=0, stride=stride)
    return _SEQUENCES[key]


def small_config() -> Config:
    cfg = Config()
    cfg.data.img_height, cfg.data.img_width = H, W
    cfg.vo.num_matches = 2000
    cfg.vo.device = 'cpu'
    return cfg


def gt_poses(seq) -> np.ndarray:
    """Ground truth in the odometry frame (camera of frame 0)."""
    poses = seq.poses.numpy()
    return np.linalg.inv(poses[0]) @ poses


def run(seq, flow: str, depth: str, frames=None):
    """Run the odometry over a sequence; return the results and the estimated poses."""
    fp = OracleFlowProvider(seq) if flow == 'oracle' else DISFlowProvider('medium')
    dp = OracleDepthProvider(seq) if depth == 'oracle' else None
    vo = VisualOdometry(small_config(), fp, dp)
    images = seq.images_uint8() if frames is None else frames
    results = [vo.step(float(i), im, seq.K.numpy()) for i, im in enumerate(images)]
    return results, np.stack([r.T_world_cam for r in results])


def rotation_error_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    c = (np.trace(Ra.T @ Rb) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def ate(est: np.ndarray, gt: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((est[:, :3, 3] - gt[:, :3, 3]) ** 2, axis=1))))


def path_length(gt: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1).sum())


def check_sane(results, n_lost: int = 0):
    """Finite poses and SPD covariances everywhere; the expected number of LOST frames."""
    assert results[0].state == TrackingState.INITIALIZING
    for r in results:
        assert isinstance(r, FrameResult)
        assert r.T_world_cam.shape == (4, 4) and np.all(np.isfinite(r.T_world_cam))
        assert np.allclose(r.T_world_cam[:3, :3] @ r.T_world_cam[:3, :3].T, np.eye(3),
                           atol=1e-6)
        for c in (r.covariance, r.relative_covariance):
            assert c.shape == (6, 6) and np.all(np.isfinite(c))
            assert np.allclose(c, c.T)
            assert np.linalg.eigvalsh(c).min() > 0
        for stage in ('flow', 'depth', 'select', 'solver', 'scale', 'total'):
            assert stage in r.timings and np.isfinite(r.timings[stage])
    assert sum(r.state == TrackingState.LOST for r in results) == n_lost, \
        [(r.index, r.state.name, r.message) for r in results]


# ---------------------------------------------------------------------------------------------
# oracle flow + oracle depth: exact
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind,stride', [('forward', 1), ('handheld', 1), ('forward', 3)])
def test_oracle_is_exact_for_moving_cameras(kind, stride):
    seq = sequence(kind, stride)
    results, est = run(seq, 'oracle', 'oracle')
    check_sane(results)
    gt = gt_poses(seq)
    length = path_length(gt)
    # metric (depth from the oracle): no alignment; ATE < 0.5 % of the path
    assert ate(est, gt) < 0.005 * length, (ate(est, gt), length)
    assert rotation_error_deg(est[-1, :3, :3], gt[-1, :3, :3]) < 0.1
    assert all(r.method in ('essential', 'pnp') for r in results[1:])
    assert all(r.num_inliers > 0.5 * r.num_matches for r in results[1:])


def test_oracle_pure_rotation_tracks_rotation_without_translation():
    seq = sequence('pure_rotation')
    results, est = run(seq, 'oracle', 'oracle')
    check_sane(results)
    gt = gt_poses(seq)
    assert rotation_error_deg(gt[-1, :3, :3], np.eye(3)) > 5.0      # it really rotates
    assert max(rotation_error_deg(e[:3, :3], g[:3, :3]) for e, g in zip(est, gt)) < 0.1
    assert np.abs(est[:, :3, 3]).max() < 1e-3                       # metres, room scene
    assert all(r.motion == MotionType.PURE_ROTATION for r in results[1:])


def test_oracle_standstill_holds_identity():
    seq = sequence('standstill')
    results, est = run(seq, 'oracle', 'oracle')
    check_sane(results)
    assert np.abs(est - np.eye(4)).max() < 1e-9
    assert all(r.method == 'hold' and r.motion == MotionType.STANDSTILL for r in results[1:])
    assert all(r.reference_index == 0 for r in results[1:])        # the keyframe is kept


# ---------------------------------------------------------------------------------------------
# DIS flow + oracle depth: metric, real flow errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind,stride,tol', [('forward', 1, 0.03), ('handheld', 1, 0.10),
                                             ('forward', 3, 0.03)])
def test_dis_flow_with_depth(kind, stride, tol):
    seq = sequence(kind, stride)
    results, est = run(seq, 'dis', 'oracle')
    check_sane(results)
    gt = gt_poses(seq)
    length = path_length(gt)
    # metric, no alignment: ATE below ``tol`` of the path length (3 % driving; 10 % for the
    # hand-held camera, whose 2-5 cm steps are a few pixels of parallax at 96x320)
    assert ate(est, gt) < tol * length, (ate(est, gt), length)
    assert rotation_error_deg(est[-1, :3, :3], gt[-1, :3, :3]) < 1.0


def test_dis_flow_pure_rotation_and_standstill_with_depth():
    seq = sequence('pure_rotation')
    results, est = run(seq, 'dis', 'oracle')
    check_sane(results)
    gt = gt_poses(seq)
    assert max(rotation_error_deg(e[:3, :3], g[:3, :3]) for e, g in zip(est, gt)) < 0.5
    assert np.abs(est[:, :3, 3]).max() < 0.02                      # < 2 cm in a room
    still = sequence('standstill')
    results, est = run(still, 'dis', 'oracle')
    check_sane(results)
    assert np.abs(est - np.eye(4)).max() < 1e-9                    # no drift at all


# ---------------------------------------------------------------------------------------------
# DIS flow, no depth (classical monocular): up to one global scale
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind,stride', [('forward', 1), ('forward', 3)])
def test_classical_mode_is_consistent_up_to_scale(kind, stride):
    seq = sequence(kind, stride)
    results, est = run(seq, 'dis', 'none')
    check_sane(results)
    gt = gt_poses(seq)
    assert results[1].scale_source == 'initial'
    assert np.linalg.norm(est[1, :3, 3]) == pytest.approx(1.0, rel=1e-6)   # vo.initial_scale
    assert all(r.scale_source == 'propagated' for r in results[2:])
    assert all(r.depth is not None and (r.depth > 0).mean() > 0.2 for r in results[1:])
    aligned, _ = align_poses(est, gt, 'sim3')
    # Sim(3)-aligned ATE below 3 % of the path (DIS's flow bias gives ~1 %/frame scale drift)
    assert ate(aligned, gt) < 0.03 * path_length(gt), (ate(aligned, gt), path_length(gt))
    assert rotation_error_deg(est[-1, :3, :3], gt[-1, :3, :3]) < 1.0


@pytest.mark.parametrize('kind', ['forward', 'handheld'])
def test_depth_output_off_gives_the_same_poses(kind):
    """Without the depth output the classical pipeline skips its dense maps, poses unchanged."""
    seq = sequence(kind, 1, 8)
    runs = {}
    for output in (True, False):
        vo = VisualOdometry(small_config(), DISFlowProvider('medium'), None)
        vo.output_depth = output
        runs[output] = [vo.step(float(i), im, seq.K.numpy())
                        for i, im in enumerate(seq.images_uint8())]
    check_sane(runs[False])
    assert any(r.depth is not None for r in runs[True])
    assert all(r.depth is None for r in runs[False])
    for a, b in zip(runs[True], runs[False]):
        assert np.array_equal(a.T_world_cam, b.T_world_cam), (a.index, a.method, b.method)
        assert np.allclose(a.covariance, b.covariance, rtol=1e-12, atol=0.0)


def test_classical_mode_rotation_standstill_and_handheld():
    seq = sequence('pure_rotation')
    results, est = run(seq, 'dis', 'none')
    check_sane(results)
    gt = gt_poses(seq)
    assert all(r.method == 'rotation' for r in results[1:])
    assert np.abs(est[:, :3, 3]).max() == 0.0
    assert max(rotation_error_deg(e[:3, :3], g[:3, :3]) for e, g in zip(est, gt)) < 0.5
    results, est = run(sequence('standstill'), 'dis', 'none')
    check_sane(results)
    assert np.abs(est - np.eye(4)).max() < 1e-9
    seq = sequence('handheld')
    results, est = run(seq, 'dis', 'none')
    check_sane(results)
    gt = gt_poses(seq)
    # translation is mostly unobservable here (2-5 cm steps in a room at 96x320 are reported
    # as rotations): only the rotation is checked
    assert rotation_error_deg(est[-1, :3, :3], gt[-1, :3, :3]) < 1.0


# ---------------------------------------------------------------------------------------------
# tracking loss and recovery
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('bad', ['black', 'other_sequence'])
@pytest.mark.parametrize('depth', ['oracle', 'none'])
def test_loss_is_reported_and_recovered(bad, depth):
    seq = sequence('forward', 1, 8)
    images = list(seq.images_uint8())
    junk = (np.zeros_like(images[0]) if bad == 'black'
            else sequence('handheld').images_uint8()[5])
    frames = images[:4] + [junk] + images[4:]
    results, est = run(seq, 'dis', depth, frames)
    check_sane(results, n_lost=1)
    lost = results[4]
    assert lost.state == TrackingState.LOST and lost.method == 'lost' and lost.message
    assert np.array_equal(lost.T_world_cam, results[3].T_world_cam)        # pose held
    assert np.array_equal(lost.T_prev_cur, np.eye(4))
    assert np.all(np.diag(lost.covariance) == BAD_VARIANCE)
    assert np.diag(results[3].covariance).max() < 1.0
    assert results[5].state == TrackingState.RECOVERED
    assert results[5].reference_index == 3                                 # last good frame
    assert all(r.state == TrackingState.TRACKING for r in results[6:])
    good = [r.T_world_cam for i, r in enumerate(results) if i != 4]
    gt = gt_poses(seq)
    est = np.stack(good)
    if depth == 'none':
        est, _ = align_poses(est, gt, 'sim3')
    assert ate(est, gt) < 0.03 * path_length(gt)


def test_a_change_of_the_input_size_reanchors_at_the_held_pose():
    """
    A camera that switches resolution mid-stream keeps going.

    With the working size following the input ('auto' at another aspect ratio, 'aspect',
    'native') nothing matches across the change: the first frame of the new size is LOST and
    the new keyframe at the held pose; the frames after it are tracked from there.
    """
    import cv2
    seq = sequence('forward', 1, 8)
    frames = list(seq.images_uint8())
    K = seq.K.numpy()
    cfg = small_config()
    cfg.vo.resolution = 'native'
    vo = VisualOdometry(cfg, DISFlowProvider('medium'))
    results = [vo.step(float(i), im, K) for i, im in enumerate(frames[:4])]
    h, w = frames[0].shape[:2]
    K2 = K.copy()
    K2[:2] *= 1.5                                            # the same camera, 1.5x the pixels
    for i, im in enumerate(frames[4:], start=4):
        big = cv2.resize(im, (int(w * 1.5), int(h * 1.5)), interpolation=cv2.INTER_LINEAR)
        results.append(vo.step(float(i), big, K2))
    states = [r.state for r in results]
    assert states[1:4] == [TrackingState.TRACKING] * 3
    assert states[4] == TrackingState.LOST
    assert 'working size changed from (96, 320) to (144, 480)' in results[4].message
    assert 're-anchored because the working size changed: frame 4' in results[4].message
    assert np.array_equal(results[4].T_world_cam, results[3].T_world_cam)  # held pose
    assert states[5] == TrackingState.RECOVERED and results[5].reference_index == 4
    assert all(s == TrackingState.TRACKING for s in states[6:])
    assert all(np.all(np.isfinite(r.T_world_cam)) for r in results)
    # forward again after the change: the camera keeps moving along +z
    step = np.linalg.inv(results[5].T_world_cam) @ results[7].T_world_cam
    assert step[2, 3] > 0.9 * np.linalg.norm(step[:3, 3])


@pytest.mark.parametrize('limit', [0, 3])
def test_a_new_view_after_a_run_of_lost_frames_becomes_the_keyframe(limit):
    """
    A view the keyframe does not share is tracked after a run of LOST frames.

    The camera turns into another scene: without re-anchoring every later frame is LOST; with
    it the third LOST frame becomes the keyframe at the held pose and the new scene is
    tracked from there.
    """
    a, b = sequence('forward', 1, 8), sequence('handheld', 1, 8)
    frames = list(a.images_uint8())[:4] + list(b.images_uint8())
    cfg = small_config()
    cfg.vo.reanchor_lost_frames = limit
    vo = VisualOdometry(cfg, DISFlowProvider('medium'))
    results = [vo.step(float(i), im, a.K.numpy()) for i, im in enumerate(frames)]
    states = [r.state for r in results]
    assert all(np.all(np.isfinite(r.T_world_cam)) for r in results)
    assert states[4] == TrackingState.LOST
    if limit == 0:
        assert all(s == TrackingState.LOST for s in states[4:])
        return
    assert states[4:7] == [TrackingState.LOST] * 3
    assert 're-anchored after 3 LOST frames' in results[6].message
    assert 're-anchored' not in results[5].message
    assert np.array_equal(results[6].T_world_cam, results[3].T_world_cam)  # held pose
    assert states[7] == TrackingState.RECOVERED and results[7].reference_index == 6
    assert all(s == TrackingState.TRACKING for s in states[8:])
    # the new scene's motion is tracked from the held pose (b's frames 2.. after b's 2)
    est = np.stack([np.linalg.inv(results[6].T_world_cam) @ r.T_world_cam for r in results[6:]])
    gt = gt_poses(b)[2:]
    gt = np.linalg.inv(gt[0]) @ gt
    est, _ = align_poses(est, gt, 'sim3')
    assert ate(est, gt) < 0.05 * path_length(gt)
    # the absolute pose is unknown after the gap: its covariance says so
    assert np.diag(results[8].covariance).min() > 1e3


def test_oracle_flow_unknown_image_is_lost_and_nan_free():
    seq = sequence('forward', 1, 8)
    images = list(seq.images_uint8())
    other = sequence('handheld').images_uint8()[2]
    results, est = run(seq, 'oracle', 'oracle', images[:3] + [other] + images[3:6])
    check_sane(results, n_lost=1)
    assert results[3].message.startswith('too few')
    assert results[4].state == TrackingState.RECOVERED
    gt = gt_poses(seq)[:6]
    assert ate(np.delete(est, 3, axis=0), gt) < 1e-3


def test_reset_starts_a_new_odometry_frame():
    seq = sequence('forward', 1, 8)
    vo = VisualOdometry(small_config(), OracleFlowProvider(seq), OracleDepthProvider(seq))
    images, K = seq.images_uint8(), seq.K.numpy()
    for i in range(3):
        r = vo.step(i, images[i], K)
    assert np.linalg.norm(r.T_world_cam[:3, 3]) > 1.0
    vo.reset()
    r = vo.step(3.0, images[3], K)
    assert r.state == TrackingState.INITIALIZING and r.index == 0
    assert np.array_equal(r.T_world_cam, np.eye(4))
    r = vo.step(4.0, images[4], K)
    T_34 = np.linalg.inv(seq.poses[3].numpy()) @ seq.poses[4].numpy()
    assert np.allclose(r.T_world_cam, T_34, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# inputs, outputs, covariance, providers
# ---------------------------------------------------------------------------------------------

def test_input_conventions_resize_bgr_tensor_and_errors():
    seq = sequence('forward', 1, 8)
    cfg = small_config()
    cfg.data.img_height, cfg.data.img_width = 64, 224
    cfg.vo.resolution = 'network'          # (the default 'auto' keeps the aspect without nets)
    vo = VisualOdometry(cfg, 'dis', None, bgr=True)
    images, K = seq.images_uint8(), seq.K.numpy()
    r = vo.step(0.0, np.ascontiguousarray(images[0][:, :, ::-1]), K)
    assert r.K[0, 0] == pytest.approx(K[0, 0] * 224 / W)
    r = vo.step(1.0, np.ascontiguousarray(images[1][:, :, ::-1]), K)
    assert r.state == TrackingState.TRACKING
    assert r.depth.shape == (64, 224) and r.depth.dtype == np.float32
    vo = VisualOdometry(small_config(), OracleFlowProvider(seq), OracleDepthProvider(seq))
    for i in range(3):
        r = vo.step(i, seq.images[i], seq.K)                       # float tensors
    assert r.state == TrackingState.TRACKING and r.scale_source == 'depth'
    assert np.allclose(r.depth, seq.depths[2, 0].numpy())
    with pytest.raises(ValueError, match='uint8'):
        vo.step(0.0, images[0].astype(np.float32), K)
    with pytest.raises(ValueError, match='K must'):
        vo.step(0.0, images[0], np.eye(4))
    nan = seq.images[3].clone()
    nan[0, 0, 0] = float('nan')
    r = vo.step(3.0, nan, seq.K)
    assert r.state == TrackingState.LOST and np.all(np.isfinite(r.T_world_cam))


def test_covariance_model():
    lost = C.lost_covariance()
    assert np.all(np.diag(lost) == BAD_VARIANCE)
    kw = {'focal_px': 500.0, 'sigma_px': 0.3, 'num_inliers': 2000, 'translation_norm': 1.0,
          'scene_depth': 15.0, 'scale_sigma': 0.01}
    e = C.relative_covariance('essential', **kw)
    p = C.relative_covariance('pnp', **kw)
    r = C.relative_covariance('rotation', last_speed=1.0, **kw)
    for c in (e, p, r):
        assert np.all(np.isfinite(c)) and np.linalg.eigvalsh(c).min() > 0
    assert np.all(np.diag(p) > np.diag(e))                  # PnP is inflated
    assert r[0, 0] >= 0.25                                   # translation not observed
    assert C.relative_covariance('essential', **{**kw, 'sigma_px': 1.0})[3, 3] > e[3, 3]
    T = np.eye(4)
    T[:3, 3] = [0.0, 0.0, 10.0]
    acc = C.propagate(e, T, e)
    assert np.all(np.diag(acc) >= np.diag(e))               # uncertainty grows
    nav = C.nav_from_left(acc, T)
    assert np.allclose(nav, nav.T) and np.linalg.eigvalsh(nav).min() > 0
    assert np.all(np.diag(C.make_spd(np.full((6, 6), np.nan))) == BAD_VARIANCE)


def test_covariance_grows_along_the_trajectory():
    seq = sequence('forward')
    results, _ = run(seq, 'oracle', 'oracle')
    traces = [np.trace(r.covariance[:3, :3]) for r in results]
    assert all(b > a for a, b in zip(traces, traces[1:]))


def test_network_flow_provider_smoke():
    torch.manual_seed(0)
    net = FlowNet()
    provider = NetworkFlowProvider(net, device='cpu', bgr=True)
    img = torch.rand(1, 3, 64, 128)
    f12, f21 = provider(img, img.roll(2, dims=-1))
    assert f12.shape == (1, 2, 64, 128) and f21.shape == (1, 2, 64, 128)
    assert torch.isfinite(f12).all() and torch.isfinite(f21).all()


def test_checkpoint_errors_are_clear(tmp_path):
    from trianflow_ros.nets.checkpoint import CheckpointError
    cfg = small_config()
    with pytest.raises(CheckpointError, match='not found'):
        VisualOdometry(cfg, flow=str(tmp_path / 'missing.pth'))
    cfg.vo.flow_provider = 'net'
    with pytest.raises(ValueError, match='needs a checkpoint'):
        VisualOdometry(cfg)
    path = tmp_path / 'ckpt.pth'
    net = FlowNet()
    torch.save({'format': 'trianflow_ros/1', 'model_state_dict': {
        'flow_net.' + k: v for k, v in net.state_dict().items()}}, path)
    vo = VisualOdometry(small_config(), flow=str(path))
    assert isinstance(vo.flow, NetworkFlowProvider)
    with pytest.raises(CheckpointError, match='depth_net'):
        VisualOdometry(small_config(), flow='dis', depth=str(path))


def test_resize_interpolation_is_a_config_field():
    """'area' (default) and 'linear' (the original's cv2 default) resize as cv2 does."""
    import cv2
    seq = sequence('forward', 1, 8)
    image = seq.images_uint8()[0]
    for name, flag in (('area', cv2.INTER_AREA), ('linear', cv2.INTER_LINEAR)):
        cfg = small_config()
        cfg.data.img_height, cfg.data.img_width = 48, 160
        cfg.vo.resolution = 'network'
        cfg.vo.resize_interpolation = name
        vo = VisualOdometry(cfg, DISFlowProvider('fast'))
        img, _ = vo._prepare(image, seq.K.numpy())
        ref = cv2.resize(image, (160, 48), interpolation=flag)
        assert np.allclose(img[0].permute(1, 2, 0).numpy() * 255.0, ref, atol=1e-3), name


@pytest.mark.parametrize('mode', ['aspect', 'network', 'native'])
def test_working_size_modes_and_intrinsics(mode):
    """
    The working size of each ``vo.resolution`` and K rescaled exactly once with the image.

    'aspect' keeps the camera's aspect ratio at about data.img_height x data.img_width
    pixels, up or down; a numpy image resized by cv2 must not get the rule applied a second
    time (it did: 840x254 became 839x254 with K unscaled).
    """
    from trianflow_ros.geometry.camera import resize_intrinsics
    from trianflow_ros.vo.odometry import working_size
    cfg = small_config()
    cfg.data.img_height, cfg.data.img_width = 256, 832
    cfg.vo.resolution = mode
    expected = {'aspect': (254, 840), 'network': (256, 832), 'native': (370, 1226)}[mode]
    assert working_size(cfg, (370, 1226)) == expected                  # KITTI
    if mode == 'aspect':
        assert working_size(cfg, (480, 640)) == (400, 533)             # TUM, scaled down
        assert working_size(cfg, (128, 416)) == (256, 832)             # small, scaled up
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (370, 1226, 3), dtype=np.uint8)
    K = np.array([[718.9, 0.0, 607.2], [0.0, 718.9, 185.2], [0.0, 0.0, 1.0]])
    vo = VisualOdometry(cfg, DISFlowProvider('fast'))
    img, Kw = vo._prepare(image, K)
    assert tuple(img.shape[-2:]) == expected
    ref = resize_intrinsics(torch.from_numpy(K)[None], (370, 1226), expected)[0]
    assert torch.allclose(Kw[0].double(), ref, atol=1e-4)
    timg, tK = vo._prepare(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0, K)
    assert tuple(timg.shape[-2:]) == expected and torch.allclose(tK, Kw)


def test_aspect_resolution_with_a_network_warns_and_uses_the_network_size():
    cfg = small_config()
    cfg.vo.resolution, cfg.vo.flow_provider = 'aspect', 'net'
    from trianflow_ros.vo.odometry import working_size
    assert working_size(cfg, (370, 1226)) == (cfg.data.img_height, cfg.data.img_width)
    # the providers decide: a flow that is not DIS / KLT (a network, an oracle) needs its size
    cfg.vo.flow_provider = 'dis'
    with pytest.warns(UserWarning, match="vo.resolution 'aspect'.*Fix: vo.resolution"):
        vo = VisualOdometry(cfg, OracleFlowProvider(sequence('forward', 1, 2)))
    assert not vo.classical
    assert vo.working_size((370, 1226)) == (cfg.data.img_height, cfg.data.img_width)


def test_auto_resolution_keeps_the_aspect_only_for_the_classical_pipeline():
    """
    The default, 'auto', keeps the camera's aspect ratio for the classical pipeline.

    DIS / KLT without a depth network; the network size where the ratios differ by at most
    5 % (KITTI) or with a network.
    """
    from trianflow_ros.vo.odometry import working_size
    cfg = small_config()
    cfg.data.img_height, cfg.data.img_width = 256, 832
    assert Config().vo.resolution == 'auto'
    cfg.vo.resolution = 'auto'
    assert working_size(cfg, (370, 1226)) == (256, 832)                 # KITTI: 3.31 vs 3.25
    assert working_size(cfg, (480, 640)) == (400, 533)                  # 4:3: aspect kept
    assert working_size(cfg, (360, 540)) == (377, 565)                  # 3:2
    assert working_size(cfg, (720, 1280)) == (346, 615)                 # 16:9
    assert working_size(cfg, (480, 640), classical=False) == (256, 832)
    for flow in ('dis', 'klt'):
        cfg.vo.flow_provider = flow
        assert working_size(cfg, (480, 640)) == (400, 533)
        cfg.vo.depth_provider = 'net'
        assert working_size(cfg, (480, 640)) == (256, 832)
        cfg.vo.depth_provider = 'none'
    cfg.vo.flow_provider = 'net'
    assert working_size(cfg, (480, 640)) == (256, 832)
    cfg.vo.flow_provider = 'dis'
    assert VisualOdometry(cfg, DISFlowProvider('fast')).working_size((480, 640)) == (400, 533)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                   # 'auto' never warns
        vo = VisualOdometry(cfg, OracleFlowProvider(sequence('forward', 1, 2)))
    assert vo.working_size((480, 640)) == (256, 832)


def test_dis_provider_backward_thread_gives_the_sequential_flows():
    """The backward flow runs in a worker thread (own DIS instance): same numbers as in a row."""
    import cv2
    from trianflow_ros.vo.providers import DIS_PRESETS, to_grey_uint8
    seq = sequence('forward', 1, 3)
    provider = DISFlowProvider('medium')
    for i in range(2):                                    # the pool is reused
        f12, f21 = provider(seq.images[i][None], seq.images[i + 1][None])
        g1, g2 = to_grey_uint8(seq.images[i][None]), to_grey_uint8(seq.images[i + 1][None])
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS['medium'])
        ref12, ref21 = dis.calc(g1, g2, None), dis.calc(g2, g1, None)
        assert np.array_equal(f12[0].permute(1, 2, 0).numpy(), ref12)
        assert np.array_equal(f21[0].permute(1, 2, 0).numpy(), ref21)
