"""
The shipped weights ``models/default.pth`` (see models/README.md, the model card).

Checks: the files fit the size budget; the file loads strictly into the networks its stored
configuration describes (the small variant, selected from the checkpoint, never from the
caller's defaults); the networks give finite outputs; and the visual odometry with the shipped
flow and depth networks (the learned pipeline, the node's default) on a held-out synthetic
sequence (seed 2000, never trained on) tracks every frame and stays within a stated ATE.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from trianflow_ros.config import Config, load_config
from trianflow_ros.data.synthetic import make_sequence
from trianflow_ros.eval.odometry_metrics import evaluate_odometry
from trianflow_ros.eval.trajectory_io import Trajectory
from trianflow_ros.nets import DepthNet, FlowNet
from trianflow_ros.nets.checkpoint import load_state_dict_strict
from trianflow_ros.vo import VisualOdometry
from trianflow_ros.vo.providers import load_networks, network_config, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / 'models'
WEIGHTS = MODELS / 'default.pth'
#: Size budget of all shipped weights (issue 7).
MAX_TOTAL_MIB = 60.0
#: Frames of the held-out VO sequence.
VO_FRAMES = 20
#: ATE bound (m, after Sim(3) alignment) of the learned pipeline (shipped flow + depth nets)
#: on the held-out 'forward' seed 2000, 20 frames (21.8 m of path). Measured 0.313 m (RPE 0.242
#: m; deterministic on this CPU; the weights before the parallax floor of the depth stage:
#: 1.358 m); the classical pipeline (DIS flow, no depth) at the same 64x192 gets 0.250 m on this
#: sequence (models/README.md). The bound leaves margin for float differences across machines.
MAX_ATE_M = 0.6
MEASURED_ATE_NOTE = 'measured 0.313 m on 2026-11-21 (models/README.md)'


@pytest.fixture(scope='module')
def networks():
    """Load the shipped networks once."""
    assert WEIGHTS.is_file(), f'{WEIGHTS} is missing: run scripts/train_default_weights.sh'
    return load_networks(WEIGHTS)


def test_size_budget():
    files = sorted(MODELS.glob('*.pth'))
    assert WEIGHTS in files
    total = sum(f.stat().st_size for f in files) / 2**20
    assert total <= MAX_TOTAL_MIB, f'shipped weights take {total:.1f} MiB'


def test_default_name_resolves_to_the_shipped_file():
    assert resolve_checkpoint('default').resolve() == WEIGHTS.resolve()


def test_trianflow_vo_default_is_classical_and_the_weights_one_option_away(tmp_path):
    """
    Check that the default pipeline is the classical one.

    Issue 12: it wins bench/vo_real.py on the real sequences; until then the shipped weights
    were the default, and this test said so.
    """
    from trianflow_ros.vo.cli import build_parser, resolve_config
    notes = []
    base = ['images', str(tmp_path), '--intrinsics', 'K.txt', '--out', str(tmp_path / 'o')]
    cfg = resolve_config(build_parser().parse_args(base), log=notes.append)
    assert (cfg.vo.flow_provider, cfg.vo.depth_provider, cfg.vo.checkpoint) == ('dis', 'none', '')
    assert any('--checkpoint default' in n for n in notes)
    # --flow net --checkpoint default asks for the shipped weights
    cfg = resolve_config(build_parser().parse_args(
        base + ['--flow', 'net', '--checkpoint', 'default']), log=notes.append)
    assert (cfg.vo.flow_provider, cfg.vo.depth_provider) == ('net', 'net')
    assert Path(cfg.vo.checkpoint).resolve() == WEIGHTS.resolve()
    assert (cfg.data.img_height, cfg.data.img_width, cfg.data.bgr) == (64, 192, True)


def test_stored_config_selects_the_small_variant(networks):
    flow_net, depth_net = networks
    stored = flow_net.stored_config
    assert stored is not None
    assert stored.flow_net.width_mult == 0.5 and stored.depth_net.width_mult == 0.5
    assert stored.flow_net.cost_volume_norm is True
    assert (stored.data.img_height, stored.data.img_width) == (64, 192)
    assert flow_net.width_mult == 0.5 and depth_net.width_mult == 0.5
    assert flow_net.pwc_model.cost_volume_norm
    # the caller's (paper) defaults do not override the checkpoint's architecture
    flow2, depth2 = load_networks(WEIGHTS, cfg=Config())
    assert flow2.width_mult == 0.5 and depth2.width_mult == 0.5
    cfg, notes = network_config(WEIGHTS, load_config(None, []))
    assert (cfg.data.img_height, cfg.data.img_width) == (64, 192) and notes


def test_strict_load_and_key_names():
    ckpt = torch.load(WEIGHTS, map_location='cpu', weights_only=True)
    assert ckpt['format'] == 'trianflow_ros/1'
    assert 'optimizer_state_dict' not in ckpt
    state = ckpt['model_state_dict']
    assert all(k.startswith(('flow_net.', 'depth_net.')) for k in state)
    cfg = load_config(REPO / 'config' / 'default_weights.yaml')
    for name, net in (('flow_net', FlowNet.from_config(cfg)),
                      ('depth_net', DepthNet.from_config(cfg))):
        sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + '.')}
        load_state_dict_strict(net, sub, str(WEIGHTS), key_prefix=name + '.')
        assert all(torch.isfinite(v).all() for v in sub.values() if v.is_floating_point())
    # same key names as the paper networks (minus the unused encoder fc)
    paper = set(FlowNet().state_dict())
    assert {k[len('flow_net.'):] for k in state if k.startswith('flow_net.')} == paper
    paper_depth = {k for k in DepthNet().state_dict() if not k.startswith('encoder.encoder.fc')}
    assert {k[len('depth_net.'):] for k in state if k.startswith('depth_net.')} == paper_depth


@torch.no_grad()
def test_finite_outputs(networks):
    flow_net, depth_net = networks
    seq = make_sequence('forward', 2, 64, 192, seed=2001)
    a, b = seq.images[0][None].float().flip(1), seq.images[1][None].float().flip(1)   # BGR
    f12, f21 = flow_net.forward_backward(a, b)
    assert f12[0].shape == (1, 2, 64, 192) and f21[0].shape == (1, 2, 64, 192)
    assert all(torch.isfinite(f).all() for f in f12 + f21)
    depth = depth_net.predict_depth(a)
    assert depth.shape == (1, 1, 64, 192)
    assert torch.isfinite(depth).all() and (depth > 0).all()


def test_learned_vo_on_a_held_out_sequence():
    cfg, _ = network_config(WEIGHTS, load_config(None, [
        f'vo.checkpoint={WEIGHTS}', 'vo.device=cpu', 'vo.flow_provider=net',
        'vo.depth_provider=net']))
    seq = make_sequence('forward', VO_FRAMES, cfg.data.img_height, cfg.data.img_width,
                        seed=2000)
    vo = VisualOdometry(cfg, device='cpu')
    results = [vo.step(i / 10.0, seq.images[i].float(), seq.K.double().numpy())
               for i in range(VO_FRAMES)]
    est = np.stack([r.T_world_cam for r in results])
    assert np.isfinite(est).all()
    lost = sum(r.state.name == 'LOST' for r in results)
    assert lost == 0, f'{lost} of {VO_FRAMES} frames lost'
    result = evaluate_odometry(Trajectory(seq.poses.numpy()), Trajectory(est))
    print(f'learned VO ATE {result.ate_sim3:.4f} m, RPE {result.rpe_trans:.4f} m')
    assert result.ate_sim3 < MAX_ATE_M, (result.ate_sim3, MEASURED_ATE_NOTE)
