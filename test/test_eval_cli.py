"""``trianflow-eval depth|flow`` end to end on tiny fake folders."""

import json
import subprocess
import sys

import numpy as np
import pytest

from trianflow_ros.eval import cli
from trianflow_ros.eval.depth_metrics import DepthEvaluator
from trianflow_ros.eval.kitti_flow_io import write_depth_png, write_kitti_flow


def _run(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def _depth_maps(n=3, h=30, w=50, seed=0):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(n):
        gt = np.round(rng.uniform(2.0, 70.0, size=(h, w)) * 256) / 256   # PNG-exact values
        gt[rng.random((h, w)) < 0.2] = 0.0
        gts.append(gt)
        preds.append(gt * rng.uniform(0.8, 1.25, size=(h, w)) + (gt == 0) * 3.0)
    return gts, preds


def _write_depth_folders(tmp_path, gts, preds, names=None):
    gt_dir, pred_dir = tmp_path / 'gt', tmp_path / 'pred'
    gt_dir.mkdir()
    pred_dir.mkdir()
    names = names or [f'{i:06d}' for i in range(len(gts))]
    for name, gt, pred in zip(names, gts, preds):
        write_depth_png(gt_dir / f'{name}.png', gt)
        np.save(pred_dir / f'{name}.npy', pred.astype(np.float32))
    return gt_dir, pred_dir


def test_depth_folders_match_library(tmp_path, capsys):
    gts, preds = _depth_maps()
    preds = [p * 3.0 for p in preds]      # an unknown global scale
    gt_dir, pred_dir = _write_depth_folders(tmp_path, gts, preds)
    rc, out, _ = _run(capsys, ['depth', '--gt', gt_dir, '--pred', pred_dir])
    assert rc == 0
    res = _last_json(out)
    ev = DepthEvaluator(crop='garg')
    for g, p in zip(gts, preds):
        ev.add(g, p.astype(np.float32))
    want = ev.summary().as_dict()
    assert res['count'] == 3
    for k in ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3', 'scale_mean'):
        assert res[k] == pytest.approx(want[k], rel=1e-9)
    assert res['abs_rel'] > 0.02
    header = out.splitlines()[1].split()
    assert header == ['abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3']


def test_depth_perfect_up_to_scale_and_no_median_scaling(tmp_path, capsys):
    gts, _ = _depth_maps(n=2)
    gt_dir, pred_dir = _write_depth_folders(tmp_path, gts, [g * 2.5 + (g == 0) for g in gts])
    rc, out, _ = _run(capsys, ['depth', '--gt', gt_dir, '--pred', pred_dir])
    res = _last_json(out)
    assert rc == 0 and res['abs_rel'] == pytest.approx(0, abs=1e-6) and res['a1'] == 1.0
    assert res['scale_mean'] == pytest.approx(0.4) and res['scale_std'] == pytest.approx(0)
    rc, out, _ = _run(capsys, ['depth', '--gt', gt_dir, '--pred', pred_dir,
                               '--no-median-scaling', '--max-depth', '200'])
    assert _last_json(out)['abs_rel'] == pytest.approx(1.5, rel=1e-6)


def test_depth_npz_object_array_and_order_matching(tmp_path, capsys):
    gts, preds = _depth_maps(n=2)
    gts.append(np.full((20, 40), 10.0))        # a different size, as in gt_depths.npz
    preds.append(np.full((20, 40), 5.0))
    gt_arr = np.empty(3, dtype=object)
    gt_arr[:] = gts
    np.savez(tmp_path / 'gt_depths.npz', data=gt_arr)
    pred_dir = tmp_path / 'pred'
    pred_dir.mkdir()
    for i, p in enumerate(preds):
        np.save(pred_dir / f'img_{i}.npy', p)
    # object arrays are pickled: refused unless the user opts in
    rc, out, err = _run(capsys, ['depth', '--gt', tmp_path / 'gt_depths.npz',
                                 '--pred', pred_dir, '--crop', 'none'])
    assert rc != 0 and '--allow-pickle' in err
    rc, out, err = _run(capsys, ['depth', '--gt', tmp_path / 'gt_depths.npz', '--allow-pickle',
                                 '--pred', pred_dir, '--crop', 'none'])
    assert rc == 0, err
    res = _last_json(out)
    ev = DepthEvaluator(crop=None)
    for g, p in zip(gts, preds):
        ev.add(g, p)
    assert res['count'] == 3 and res['abs_rel'] == pytest.approx(ev.summary().means['abs_rel'])
    # predictions as one (N, H, W) .npz under the key 'gt_depths' also work (order matching)
    np.savez(tmp_path / 'pred.npz', gt_depths=np.stack(preds[:2]))
    np.savez(tmp_path / 'gt2.npz', data=np.stack(gts[:2]))
    rc, out, _ = _run(capsys, ['depth', '--gt', tmp_path / 'gt2.npz',
                               '--pred', tmp_path / 'pred.npz'])
    assert rc == 0 and _last_json(out)['count'] == 2


def test_depth_unmatched_files_are_named(tmp_path, capsys):
    gts, preds = _depth_maps(n=2)
    gt_dir, pred_dir = _write_depth_folders(tmp_path, gts, preds, names=['a', 'b'])
    (pred_dir / 'b.npy').rename(pred_dir / 'c.npy')
    rc, out, err = _run(capsys, ['depth', '--gt', gt_dir, '--pred', pred_dir])
    assert rc == 1 and out == ''
    assert 'b.png' in err and 'c.npy' in err and '--match order' in err
    rc, out, err = _run(capsys, ['depth', '--gt', gt_dir, '--pred', pred_dir,
                                 '--match', 'order'])
    assert rc == 0 and _last_json(out)['count'] == 2
    rc, out, err = _run(capsys, ['depth', '--gt', tmp_path / 'nope', '--pred', pred_dir])
    assert rc == 1 and 'ground truth not found' in err and 'nope' in err


def test_depth_bad_prediction_names_file(tmp_path, capsys):
    gts, preds = _depth_maps(n=2)
    preds[1][5, 5] = np.nan
    gts[1][5, 5] = 10.0
    gt_dir, pred_dir = _write_depth_folders(tmp_path, gts, preds)
    rc, _, err = _run(capsys, ['depth', '--gt', gt_dir, '--pred', pred_dir, '--crop', 'none'])
    assert rc == 1 and '000001.npy' in err and 'non-finite' in err


def test_depth_nyu_protocol(tmp_path, capsys):
    gt = np.full((480, 640), 3.0)
    gt[:45] = 50.0                             # outside the crop: must not count
    pred = np.full((480, 640), 1.5)
    pred[100, 100] = 3.0                       # one wrong pixel inside the crop
    gt_dir, pred_dir = _write_depth_folders(tmp_path, [gt], [pred])
    rc, out, _ = _run(capsys, ['depth', '--gt', gt_dir, '--pred', pred_dir,
                               '--protocol', 'nyu'])
    assert rc == 0
    assert out.splitlines()[1].split() == ['abs_rel', 'sq_rel', 'rmse', 'log10', 'a1', 'a2',
                                           'a3']
    res = _last_json(out)
    assert res['abs_rel'] == pytest.approx(1.0 / (427 * 561))
    assert res['log10'] == pytest.approx(np.log10(2) / (427 * 561))
    rc, _, err = _run(capsys, ['depth', '--gt', tmp_path / 'gt', '--pred', pred_dir,
                               '--protocol', 'nyu', '--crop', 'nyu', '--max-depth', '1'])
    assert rc == 1 and 'no ground-truth depth' in err


def _flow_folders(tmp_path):
    gt_dir, noc_dir, pred_dir = tmp_path / 'flow_occ', tmp_path / 'flow_noc', tmp_path / 'pred'
    for d in (gt_dir, noc_dir, pred_dir):
        d.mkdir()
    # image 000000_10: 2x3, gt (10, 0) everywhere, pred off by 4 px in v on one pixel
    gt = np.zeros((2, 3, 2))
    gt[..., 0] = 10.0
    pred = gt.copy()
    pred[0, 0, 1] = 4.0                        # EPE 4 > 3 and > 0.5: outlier
    valid = np.ones((2, 3), bool)
    noc = valid.copy()
    noc[0, 0] = False                          # the bad pixel is occluded
    write_kitti_flow(gt_dir / '000000_10.png', gt, valid)
    write_kitti_flow(noc_dir / '000000_10.png', gt, noc)
    np.save(pred_dir / '000000_10.npy', pred.transpose(2, 0, 1))      # (2, H, W) layout
    # image 000001_10: 4x4 gt, prediction at half size with zero error after resizing
    gt2 = np.zeros((4, 4, 2))
    gt2[..., 1] = 2.0
    write_kitti_flow(gt_dir / '000001_10.png', gt2)
    write_kitti_flow(noc_dir / '000001_10.png', gt2)
    small = np.zeros((2, 2, 2))
    small[..., 1] = 1.0
    write_kitti_flow(pred_dir / '000001_10.png', small)
    return gt_dir, noc_dir, pred_dir


def test_flow_end_to_end(tmp_path, capsys):
    gt_dir, noc_dir, pred_dir = _flow_folders(tmp_path)
    rc, out, err = _run(capsys, ['flow', '--gt', gt_dir, '--pred', pred_dir,
                                 '--gt-noc', noc_dir])
    assert rc == 0, err
    res = _last_json(out)
    assert res['count'] == 2
    assert res['epe'] == pytest.approx((4 / 6 + 0) / 2)
    assert res['fl'] == pytest.approx((100 / 6 + 0) / 2)
    assert res['epe_noc'] == pytest.approx(0.0)
    assert res['epe_pooled'] == pytest.approx(4 / 22)
    assert res['fl_pooled'] == pytest.approx(100 / 22)
    rc, out, _ = _run(capsys, ['flow', '--gt', gt_dir, '--pred', pred_dir])
    res = _last_json(out)
    assert res['epe_noc'] is None and res['epe'] == pytest.approx(1 / 3)


def test_flow_missing_prediction_named(tmp_path, capsys):
    gt_dir, _, pred_dir = _flow_folders(tmp_path)
    (pred_dir / '000001_10.png').unlink()
    rc, _, err = _run(capsys, ['flow', '--gt', gt_dir, '--pred', pred_dir])
    assert rc == 1 and '000001_10.png' in err


def test_help_and_subcommand_registry(capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        cli.main(['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert 'depth' in out and 'flow' in out and '--checkpoint' in out
    with pytest.raises(SystemExit):
        cli.main(['depth', '--help'])
    assert 'disp_to_depth_affine' in capsys.readouterr().out

    def add_fake_parser(subparsers):
        p = subparsers.add_parser('fake', help='added by one function')
        p.set_defaults(run=lambda args: print(json.dumps({'count': 0})) or 0)
    monkeypatch.setattr(cli, 'SUBCOMMANDS', cli.SUBCOMMANDS + (add_fake_parser,))
    rc, out, _ = _run(capsys, ['fake'])
    assert rc == 0 and _last_json(out) == {'count': 0}


def test_module_entry_point_prints_json_last(tmp_path):
    gts, preds = _depth_maps(n=1)
    gt_dir, pred_dir = _write_depth_folders(tmp_path, gts, preds)
    out = subprocess.run([sys.executable, '-m', 'trianflow_ros.eval.cli', 'depth', '--gt',
                          str(gt_dir), '--pred', str(pred_dir)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert _last_json(out.stdout)['count'] == 1
