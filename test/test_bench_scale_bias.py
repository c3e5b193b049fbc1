"""bench/scale_bias.py: exact on hand-made fits and on exact flow; the recorder of the VO."""

import json
import math

from bench_loader import load_bench
import numpy as np
import pytest
import torch
from trianflow_ros.vo.strategies import ScaleFitRecord


def _bench():
    return load_bench('scale_bias')


def _poses(steps):
    poses = np.repeat(np.eye(4)[None], len(steps) + 1, axis=0)
    poses[1:, 2, 3] = np.cumsum(steps)
    return poses


def _record(keyframe, frame, Z, t, unit, map_bias, pair_bias, scale, age):
    """Return a fit whose map is off by map_bias and its triangulation by pair_bias (log)."""
    n = Z.numel()
    u1 = torch.stack((torch.arange(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)),
                     -1)
    return ScaleFitRecord(keyframe=keyframe, frame=frame, u1=u1,
                          depth=Z / t * math.exp(pair_bias),
                          target=Z * unit * math.exp(map_bias),
                          weights=torch.linspace(0.5, 2.0, n, dtype=torch.float64),
                          used=torch.ones(n, dtype=torch.bool),
                          age=torch.full((n,), age, dtype=torch.int64), scale=scale)


def test_decompose_recovers_known_biases():
    bench = _bench()
    depths = torch.linspace(4.0, 20.0, 3 * 8, dtype=torch.float32).reshape(3, 1, 1, 8)
    steps = [0.8, 1.1]
    poses = _poses(steps)
    Z1, Z2 = depths[0, 0, 0].double(), depths[1, 0, 0].double()
    # pair 0 -> 1 sets the unit 2.0; pair 1 -> 2 has a map 1 % too shallow, a triangulation
    # 0.5 % too deep: its scale changes the unit by -1.5 %
    unit = 2.0
    s2 = unit * steps[1] * math.exp(-0.015)
    records = [_record(0, 1, Z1, steps[0], unit / 1.0, 0.0, 0.0, unit * steps[0], 0),
               _record(1, 2, Z2, steps[1], unit, -0.01, 0.005, s2, 3)]
    parts = bench.decompose(records, depths, poses)
    assert len(parts['delta']) == 1             # the first pair's keyframe unit is unknown
    assert parts['delta'][0] == pytest.approx(-0.015, abs=1e-12)
    assert parts['M'][0] == pytest.approx(-0.01, abs=1e-6)
    assert parts['P'][0] == pytest.approx(0.005, abs=1e-6)
    ages = parts['ages']
    assert ages.shape == (8, 3) and np.all(ages[:, 0] == 3)
    assert np.allclose(ages[:, 2], -0.01, atol=1e-6)


def test_exact_flow_has_no_bias_and_the_identity_holds(capsys):
    bench = _bench()
    assert bench.main(['--frames', '12', '--noise', '0']) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out['pairs'] >= 8 and out['flow'] == 'oracle'
    # delta is the odometry's own change of unit: none with exact flow
    assert abs(out['delta_pct_per_100']) < 0.5
    # M and P read the renderer's depth at the rounded pixel: a small floor, the same in both
    assert abs(out['M_pct_per_100']) < 2.0 and abs(out['P_pct_per_100']) < 2.0
    assert out['identity_error'] < 1e-9
    assert sum(row['weight_share'] for row in out['by_age']) == pytest.approx(1.0)


def test_usage_errors_exit_2(capsys):
    bench = _bench()
    assert bench.main(['--frames', '2']) == 2
    assert 'at least 4' in capsys.readouterr().err
    assert bench.main(['--noise', '-1']) == 2
    assert '--noise' in capsys.readouterr().err
    assert bench.main(['--kind', 'bogus']) == 2
    assert 'unknown kind' in capsys.readouterr().err


def test_recording_the_fits_does_not_change_the_odometry():
    from trianflow_ros.config import Config
    from trianflow_ros.data.synthetic import make_sequence
    from trianflow_ros.vo import VisualOdometry
    bench = _bench()
    seq = make_sequence('forward', 8, 128, 416, seed=bench.SEED)
    K = seq.K.double().numpy()
    poses = []
    for record in (False, True):
        cfg = Config()
        cfg.vo.device = 'cpu'
        cfg.vo.resolution = 'native'
        with VisualOdometry(cfg, bench.NoisyOracleFlow(seq, 0.3), None) as vo:
            vo.output_depth = False
            assert vo.scale_fits is None                     # off by default
            if record:
                vo.scale_fits = []
            poses.append(np.stack([vo.step(i / 10.0, im, K).T_world_cam
                                   for i, im in enumerate(seq.images_uint8())]))
            if record:
                assert len(vo.scale_fits) >= 5
                r = vo.scale_fits[-1]
                assert r.frame == 7 and r.keyframe < 7 and r.scale > 0
                n = r.u1.shape[0]
                assert r.u1.shape == (n, 2) and r.depth.shape == r.target.shape == (n,)
                assert r.used.dtype == torch.bool and int(r.used.sum()) > 20
    assert np.array_equal(poses[0], poses[1])
