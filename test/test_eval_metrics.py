"""Depth and flow metrics on hand-computed cases, KITTI PNG codecs, a real Middlebury check."""

import math
from pathlib import Path
import struct
import zlib

import cv2
import numpy as np
import pytest

from trianflow_ros.eval.depth_metrics import (
    compute_depth_errors, crop_mask, DepthEvaluator, disp_to_depth_affine,
    disp_to_depth_eval_original, eigen_crop_mask, eval_depth_image, garg_crop_mask,
    METRIC_NAMES, nyu_crop_mask)
from trianflow_ros.eval.flow_metrics import (
    epe_map, eval_flow_image, FlowEvaluator, image_metrics, outlier_map, resize_flow)
from trianflow_ros.eval.kitti_flow_io import (
    decode_flow, encode_flow, read_depth_png, read_kitti_disparity, read_kitti_flow,
    write_depth_png, write_kitti_disparity, write_kitti_flow)


# --------------------------------------------------------------------------------------------
# Depth metrics
# --------------------------------------------------------------------------------------------

def test_depth_errors_hand_computed():
    e = compute_depth_errors(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 2.0]))
    assert e['abs_rel'] == pytest.approx((0 + 0 + 2 / 4) / 3)
    assert e['sq_rel'] == pytest.approx((0 + 0 + 2 ** 2 / 4) / 3)
    assert e['rmse'] == pytest.approx(math.sqrt(4 / 3))
    assert e['rmse_log'] == pytest.approx(math.sqrt(math.log(2) ** 2 / 3))
    assert e['log10'] == pytest.approx(math.log10(2) / 3)
    # The third pixel is off by a factor 2 > 1.25^3 = 1.953: outside every threshold.
    assert e['a1'] == e['a2'] == e['a3'] == pytest.approx(2 / 3)
    assert set(e) == set(METRIC_NAMES)


def test_depth_thresholds_separate():
    # ratios 1.2 | 1.5 | 1.9 | 2.5 against 1.25, 1.5625, 1.953125
    e = compute_depth_errors(np.ones(4), np.array([1.2, 1.5, 1.9, 2.5]))
    assert (e['a1'], e['a2'], e['a3']) == (0.25, 0.5, 0.75)
    # the ratio is symmetric: under-estimation by the same factor counts the same
    e2 = compute_depth_errors(np.array([1.2, 1.5, 1.9, 2.5]), np.ones(4))
    assert (e2['a1'], e2['a2'], e2['a3']) == (0.25, 0.5, 0.75)


def test_depth_errors_reject_bad_input():
    with pytest.raises(ValueError, match='finite and > 0'):
        compute_depth_errors(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match='equal length'):
        compute_depth_errors(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match='no valid depth'):
        compute_depth_errors(np.ones(0), np.ones(0))


def test_garg_crop_kitti_size():
    m = garg_crop_mask(375, 1242)
    # int(153.04)=153, int(371.96)=371, int(44.65)=44, int(1197.35)=1197, ends exclusive
    assert m.sum() == (371 - 153) * (1197 - 44)
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (153, 370, 44, 1196)


def test_crops_480x640():
    m = garg_crop_mask(480, 640)
    rows, cols = np.nonzero(m)
    # int(195.89)=195, int(476.11)=476, int(23.006)=23, int(616.99)=616
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (195, 476, 23, 616)
    n = nyu_crop_mask(480, 640)
    rows, cols = np.nonzero(n)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (45, 472, 41, 602)
    assert n.sum() == 427 * 561
    assert np.array_equal(crop_mask('nyu', 480, 640), n)
    with pytest.raises(ValueError, match='already cropped'):
        nyu_crop_mask(427, 561)


def test_eigen_crop_kitti_size():
    rows, cols = np.nonzero(eigen_crop_mask(375, 1242))
    # int(124.66)=124, int(342.57)=342, int(44.65)=44, int(1197.35)=1197
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (124, 342, 44, 1197)
    assert crop_mask(None, 5, 7).all()


def _random_depth(rng, h=60, w=80):
    gt = rng.uniform(2.0, 60.0, size=(h, w))
    gt[rng.random((h, w)) < 0.3] = 0.0          # sparse like velodyne
    pred = gt * rng.uniform(0.7, 1.4, size=(h, w)) + (gt == 0) * 5.0
    return gt, pred


def test_median_scaling_invariance():
    rng = np.random.default_rng(0)
    gt, pred = _random_depth(rng)
    e1, s1 = eval_depth_image(gt, pred, crop='garg')
    e7, s7 = eval_depth_image(gt, pred * 7.0, crop='garg')
    for k in METRIC_NAMES:
        assert e7[k] == pytest.approx(e1[k], rel=1e-12, abs=1e-15)
    assert s7 == pytest.approx(s1 / 7.0)
    assert e1['abs_rel'] > 0.05                     # not vacuous
    # an exact prediction up to scale is perfect after median scaling
    e, s = eval_depth_image(gt, gt / 3.0, crop=None)
    assert s == pytest.approx(3.0)
    assert e['abs_rel'] == pytest.approx(0, abs=1e-12) and e['a1'] == 1.0
    # without median scaling the factor shows
    e, s = eval_depth_image(gt, gt / 2.0, crop=None, median_scaling=False)
    assert s == 1.0 and e['abs_rel'] == pytest.approx(0.5)


def test_min_max_mask_and_clamp():
    gt = np.array([[0.0, 5.0, 90.0], [10.0, 20.0, 40.0]])
    pred = np.array([[1000.0, 0.5, 1.0], [10.0, 20.0, 200.0]])
    e, _ = eval_depth_image(gt, pred, min_depth=1.0, max_depth=80.0, crop=None,
                            median_scaling=False)
    # gt 0 and 90 are excluded; pred 0.5 -> 1 (|5-1|/5 = 0.8), pred 200 -> 80 (|40-80|/40 = 1)
    assert e['abs_rel'] == pytest.approx((0.8 + 0 + 0 + 1.0) / 4)
    assert e['rmse'] == pytest.approx(math.sqrt((4 ** 2 + 40 ** 2) / 4))
    # the bounds are strict: gt == max_depth is invalid
    gt2 = np.array([[80.0, 10.0]])
    e2, _ = eval_depth_image(gt2, np.array([[1.0, 10.0]]), crop=None, median_scaling=False)
    assert e2['abs_rel'] == 0.0


def test_prediction_resized_to_gt():
    gt = np.full((40, 60), 8.0)
    e, s = eval_depth_image(gt, np.full((10, 15), 2.0), crop=None)
    assert s == pytest.approx(4.0) and e['rmse'] == pytest.approx(0.0)
    # a horizontal ramp stays a ramp after bilinear up-sampling: small but non-zero error
    ramp = np.tile(np.linspace(2.0, 20.0, 60), (40, 1))
    small = cv2.resize(ramp, (30, 20), interpolation=cv2.INTER_AREA)
    e, _ = eval_depth_image(ramp, small, crop=None, median_scaling=False)
    assert 0 < e['abs_rel'] < 0.01


def test_eval_depth_image_errors():
    gt = np.full((4, 4), 5.0)
    with pytest.raises(ValueError, match='no ground-truth depth'):
        eval_depth_image(np.zeros((4, 4)), gt, crop=None)
    bad = gt.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match='non-finite'):
        eval_depth_image(gt, bad, crop=None)
    with pytest.raises(ValueError, match='median predicted depth'):
        eval_depth_image(gt, -gt, crop=None)
    with pytest.raises(ValueError, match='2-D depth map'):
        eval_depth_image(gt, np.ones((2, 4, 4)), crop=None)


def test_depth_evaluator_means_and_scales():
    rng = np.random.default_rng(1)
    ev = DepthEvaluator(crop=None)
    gt1, p1 = _random_depth(rng)
    gt2, p2 = _random_depth(rng, 30, 50)
    r1 = ev.add(gt1, p1 * 0.5, name='a')
    r2 = ev.add(gt2, p2 * 2.0, name='b')
    s = ev.summary()
    assert s.count == 2 and len(ev) == 2 and s.names == ['a', 'b']
    for k in METRIC_NAMES:
        assert s.means[k] == pytest.approx((r1[k] + r2[k]) / 2)
    _, sc1 = eval_depth_image(gt1, p1 * 0.5, crop=None)
    _, sc2 = eval_depth_image(gt2, p2 * 2.0, crop=None)
    assert np.allclose(s.scales, [sc1, sc2])
    assert s.scale_std == pytest.approx(abs(sc1 - sc2) / 2)
    d = s.as_dict()
    assert d['count'] == 2 and d['scale_mean'] == pytest.approx((sc1 + sc2) / 2)
    with pytest.raises(ValueError, match='^c: no ground-truth'):
        ev.add(np.zeros((3, 3)), np.ones((3, 3)), name='c')
    assert len(ev) == 2


def test_disparity_mappings():
    d = disp_to_depth_affine(np.array([0.0, 1.0, 0.5]), 0.1, 100.0)
    assert d[0] == pytest.approx(100.0) and d[1] == pytest.approx(0.1)
    assert d[2] == pytest.approx(1.0 / (0.01 + 0.5 * (10.0 - 0.01)))
    assert disp_to_depth_eval_original(np.array([0.5]))[0] == pytest.approx(1 / 0.5001)
    assert disp_to_depth_eval_original(np.array([0.5]), eps=0.0)[0] == 2.0


def _middlebury_depth(folder: Path) -> np.ndarray:
    calib = {}
    for line in (folder / 'DERIVED_calib.txt').read_text().splitlines():
        line = line.split('#')[0].strip()
        if ':' in line:
            key, value = line.split(':')
            calib[key.strip()] = float(value)
    disp = np.load(folder / 'motorcycle_disp.npz')['arr_0'].astype(np.float64)
    valid = np.isfinite(disp)
    depth_mm = calib['baseline_mm'] * calib['focal_length_px'] / (
        np.where(valid, disp, 1.0) + calib['principal_point_dx_px'])
    return np.where(valid, depth_mm / 1000.0, 0.0)


def test_middlebury_depth_against_itself(shared_data):
    gt = _middlebury_depth(shared_data / 'middlebury2014_motorcycle')
    assert gt.shape == (500, 741)
    assert 0.85 < (gt > 0).mean() < 0.99 and 2.0 < gt[gt > 0].min() and gt.max() < 5.1
    for crop in (None, 'garg'):
        e, s = eval_depth_image(gt, np.where(gt > 0, gt, 1.0), crop=crop)
        assert e['abs_rel'] == 0.0 and e['rmse'] == 0.0 and e['a1'] == 1.0 and s == 1.0
        e, s = eval_depth_image(gt, gt * 1.1 + (gt == 0), crop=crop)
        assert s == pytest.approx(1 / 1.1)
        for k in ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'log10'):
            assert e[k] == pytest.approx(0.0, abs=1e-12)
        assert e['a1'] == 1.0
        e, s = eval_depth_image(gt, gt * 1.1 + (gt == 0), crop=crop, median_scaling=False)
        assert e['abs_rel'] == pytest.approx(0.1) and e['a1'] == 1.0


# --------------------------------------------------------------------------------------------
# Flow metrics
# --------------------------------------------------------------------------------------------

def _flow(*vectors):
    return np.array([list(vectors)], dtype=np.float64)       # (1, N, 2)


def test_epe_and_fl_hand_computed():
    gt = _flow((100, 0), (10, 0), (0, 0), (1, 0), (5, 5))
    pred = _flow((104, 0), (10, 4), (0, 2), (4, 0), (200, 5))
    valid = np.array([[True, True, True, True, False]])
    assert np.allclose(epe_map(pred, gt), [[4, 4, 2, 3, 195]])
    # EPE 4 vs |gt| 100: 4 < 5 % -> no; EPE 4 vs |gt| 10: outlier; EPE 2 < 3 -> no;
    # EPE exactly 3 -> no (strict)
    assert outlier_map(pred, gt).tolist() == [[False, True, False, False, True]]
    s = eval_flow_image(pred, gt, valid)
    assert s['all'].count == 4 and s['all'].outliers == 1
    m = image_metrics(s)
    assert m['epe'] == pytest.approx((4 + 4 + 2 + 3) / 4)
    assert m['fl'] == pytest.approx(25.0)


def test_noc_occ_move_static():
    gt = _flow((10, 0), (10, 0), (20, 0), (0, 0))
    pred = _flow((10, 0), (16, 0), (20, 8), (0, 1))          # EPE 0, 6, 8, 1
    valid = np.array([[True, True, True, True]])
    valid_noc = np.array([[True, False, True, True]])
    obj = np.array([[0, 1, 2, 0]])
    s = eval_flow_image(pred, gt, valid, gt_noc=gt, valid_noc=valid_noc, obj_map=obj)
    m = image_metrics(s)
    assert m['epe'] == pytest.approx(15 / 4) and m['fl'] == pytest.approx(50.0)
    assert m['epe_noc'] == pytest.approx(9 / 3) and m['fl_noc'] == pytest.approx(100 / 3)
    assert m['epe_occ'] == pytest.approx(6.0) and m['fl_occ'] == pytest.approx(100.0)
    assert m['epe_move'] == pytest.approx(7.0) and m['fl_move'] == pytest.approx(100.0)
    assert m['epe_static'] == pytest.approx(0.5) and m['fl_static'] == 0.0
    with pytest.raises(ValueError, match='go together'):
        eval_flow_image(pred, gt, valid, gt_noc=gt)


def test_per_image_average_differs_from_pooling():
    ev = FlowEvaluator()
    # image 1: one valid pixel with EPE 10 (outlier); image 2: three perfect pixels
    ev.add(_flow((10, 0)), _flow((0, 0)), np.array([[True]]), name='one')
    gt2 = _flow((1, 1), (2, 2), (3, 3))
    ev.add(gt2.copy(), gt2, np.ones((1, 3), bool), name='two')
    s = ev.summary()
    assert s.count == 2 and s.names == ['one', 'two']
    assert s.means['epe'] == pytest.approx((10 + 0) / 2)
    assert s.pooled['epe'] == pytest.approx(10 / 4)
    assert s.means['fl'] == pytest.approx((100 + 0) / 2)
    assert s.pooled['fl'] == pytest.approx(100 / 4)
    d = s.as_dict()
    assert d['epe'] == 5.0 and d['epe_pooled'] == 2.5 and d['epe_noc'] is None
    assert d['count'] == 2


def test_evaluator_skips_empty_regions_in_means():
    ev = FlowEvaluator()
    obj_static = np.zeros((1, 2), int)
    ev.add(_flow((0, 0), (0, 4)), _flow((0, 0), (0, 0)), np.ones((1, 2), bool),
           obj_map=obj_static)
    ev.add(_flow((0, 0), (0, 0)), _flow((0, 0), (0, 0)), np.ones((1, 2), bool),
           obj_map=np.array([[1, 0]]))
    s = ev.summary()
    assert s.region_counts['move'] == 1 and s.means['epe_move'] == 0.0
    assert s.means['epe_static'] == pytest.approx((2.0 + 0.0) / 2)


def test_resize_flow_scales_vectors():
    flow = np.zeros((4, 8, 2), np.float32)
    flow[..., 0], flow[..., 1] = 1.0, 2.0
    out = resize_flow(flow, (8, 32))
    assert out.shape == (8, 32, 2)
    assert np.allclose(out[..., 0], 4.0) and np.allclose(out[..., 1], 4.0)
    # eval_flow_image resizes a prediction of another size the same way
    gt = np.zeros((8, 32, 2))
    gt[..., 0], gt[..., 1] = 4.0, 4.0
    s = eval_flow_image(flow, gt, np.ones((8, 32), bool))
    assert s['all'].epe == pytest.approx(0.0, abs=1e-6)
    s = eval_flow_image(flow, gt * 2, np.ones((8, 32), bool))
    assert s['all'].epe == pytest.approx(math.hypot(4, 4), rel=1e-6)


def test_flow_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r'\(H, W, 2\)'):
        epe_map(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match='non-finite'):
        eval_flow_image(np.full((1, 1, 2), np.nan), np.zeros((1, 1, 2)), np.ones((1, 1), bool))


# --------------------------------------------------------------------------------------------
# KITTI PNG codecs
# --------------------------------------------------------------------------------------------

def test_flow_png_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    flow = rng.integers(0, 65536, size=(7, 11, 2)).astype(np.float64)
    flow = (flow - 2 ** 15) / 64.0                # every code, including both ends
    flow[0, 0] = (-512.0, 65535 / 64.0 - 512.0)
    valid = rng.random((7, 11)) < 0.7
    write_kitti_flow(tmp_path / 'f.png', flow, valid)
    back, back_valid = read_kitti_flow(tmp_path / 'f.png')
    assert back.dtype == np.float32 and np.array_equal(back, flow.astype(np.float32))
    assert np.array_equal(back_valid, valid)


def _png16_rgb(path: Path, rgb: np.ndarray) -> None:
    """Write a 16-bit RGB PNG byte by byte (no OpenCV: checks the channel order independently)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack('>I', len(data)) + tag + data
                + struct.pack('>I', zlib.crc32(tag + data) & 0xffffffff))
    h, w, _ = rgb.shape
    raw = b''.join(b'\x00' + rgb[r].astype('>u2').tobytes() for r in range(h))
    header = struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0)      # 16-bit RGB, no interlace
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header)
                     + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


def test_flow_png_channel_order(tmp_path):
    # file order is R = u, G = v, B = valid
    rgb = np.array([[[2 ** 15 + 64 * 3, 2 ** 15 - 64 * 2, 1],
                     [2 ** 15 - 32, 2 ** 15 + 1, 0]]], dtype=np.uint16)
    _png16_rgb(tmp_path / 'k.png', rgb)
    flow, valid = read_kitti_flow(tmp_path / 'k.png')
    assert flow[0, 0].tolist() == [3.0, -2.0] and flow[0, 1].tolist() == [-0.5, 1 / 64]
    assert valid.tolist() == [[True, False]]
    # and the encoder produces the same layout in OpenCV's BGR order
    assert np.array_equal(encode_flow(flow, valid), rgb[..., ::-1])
    assert np.array_equal(decode_flow(rgb[..., ::-1])[0], flow)


def test_flow_png_clipping_and_nan(tmp_path):
    flow = np.array([[[600.0, -600.0], [np.nan, 1.0]]])
    write_kitti_flow(tmp_path / 'c.png', flow)
    back, valid = read_kitti_flow(tmp_path / 'c.png')
    assert back[0, 0, 0] == pytest.approx(65535 / 64 - 512) and back[0, 0, 1] == -512.0
    assert valid.tolist() == [[True, False]] and back[0, 1].tolist() == [0.0, 0.0]


def test_disparity_and_depth_png_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 65536, size=(6, 9))
    codes[0, :3] = (0, 1, 65535)
    values = codes / 256.0
    write_kitti_disparity(tmp_path / 'd.png', values)
    disp, valid = read_kitti_disparity(tmp_path / 'd.png')
    assert np.array_equal(disp, values.astype(np.float32)) and np.array_equal(valid, codes > 0)
    write_depth_png(tmp_path / 'z.png', np.where(codes > 0, values, np.nan))
    depth, valid = read_depth_png(tmp_path / 'z.png')
    assert np.array_equal(depth, values.astype(np.float32)) and np.array_equal(valid, codes > 0)
    assert cv2.imread(str(tmp_path / 'z.png'), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_png_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.png'):
        read_kitti_flow(tmp_path / 'missing.png')
    cv2.imwrite(str(tmp_path / 'u8.png'), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match='u8.png: expected a 16-bit PNG'):
        read_kitti_flow(tmp_path / 'u8.png')
    write_depth_png(tmp_path / 'one.png', np.ones((2, 2)))
    with pytest.raises(ValueError, match='one.png: expected 3 channel'):
        read_kitti_flow(tmp_path / 'one.png')
