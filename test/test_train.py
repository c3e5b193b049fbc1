"""Tests of the training script: run files, exact resume, checkpoints, stages, DDP sharding."""

import json
import os
from pathlib import Path
import socket

import pytest
import torch
from torch.utils.data import Subset

from trianflow_ros.config import load_config
from trianflow_ros.data.synthetic_dataset import SyntheticPairDataset
from trianflow_ros.model import build_model
from trianflow_ros.nets.checkpoint import CheckpointError
from trianflow_ros.train import checkpoints as ckpt_io
from trianflow_ros.train.cli import main as train_main
from trianflow_ros.train.distributed import step_indices, StepBatchSampler
from trianflow_ros.train.trainer import flow_to_rgb, run_training, Trainer

H, W = 64, 128


def tiny_cfg(mode='flow', **train):
    """Return the configuration of a tiny CPU run (64x128, batch 2, no workers)."""
    values = {'mode': mode, 'batch_size': 2, 'num_iterations': 2, 'num_workers': 0,
              'log_interval': 1, 'val_interval': 2, 'save_interval': 1, 'seed': 3}
    values.update(train)
    overrides = ['data.dataset=synthetic', f'data.img_height={H}', f'data.img_width={W}',
                 'data.bgr=false'] + [f'train.{k}={v}' for k, v in values.items()]
    return load_config(None, overrides)


@pytest.fixture(scope='module')
def data():
    """Tiny training set (3 pairs) and held-out set (1 pair, another seed)."""
    train = SyntheticPairDataset(kinds=('forward',), seeds=(0,), num_frames=4, height=H,
                                 width=W)
    val = SyntheticPairDataset(kinds=('forward',), seeds=(1000,), num_frames=2, height=H,
                               width=W)
    return train, val


def run(cfg, out, data, **kwargs):
    """Train with the tiny data sets."""
    train, val = data
    return run_training(cfg, out, device='cpu', quiet=True, train_dataset=train,
                        val_dataset=val, log=lambda msg: None, **kwargs)


@pytest.fixture(scope='module')
def flow_run(tmp_path_factory, data):
    """Train a 2-step flow-stage run (checkpoint every step, validation at step 2)."""
    out = tmp_path_factory.mktemp('runs') / 'flow'
    result = run(tiny_cfg(), out, data)
    return out, result


def test_flow_run_writes_checkpoints_config_events_and_metrics(flow_run):
    out, result = flow_run
    assert result.step == 2 and result.start_step == 0
    assert result.last_checkpoint == out / 'last.pth'
    for name in ('last.pth', 'step_0000001.pth', 'step_0000002.pth', 'config.yaml',
                 'metrics.jsonl'):
        assert (out / name).is_file(), name
    assert load_config(out / 'config.yaml') == tiny_cfg()
    lines = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [m['step'] for m in lines] == [2]
    assert 0.0 < lines[0]['flow_epe'] < 100.0 and lines[0]['samples'] == 1
    assert lines[0]['loss/loss_pixel'] > 0.0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = list(out.glob('events.out.tfevents.*'))
    assert events
    acc = EventAccumulator(str(out), size_guidance={'images': 0, 'scalars': 0})
    acc.Reload()
    scalars = set(acc.Tags()['scalars'])
    assert {'loss/total', 'loss/loss_pixel', 'loss/loss_ssim', 'diag/valid_ratio',
            'val/flow_epe', 'val/loss/total'} <= scalars
    assert [e.step for e in acc.Scalars('loss/total')] == [1, 2]
    assert {'val/image1', 'val/flow', 'val/flow_gt', 'val/valid_mask'} <= set(
        acc.Tags()['images'])


def test_checkpoint_loads_with_weights_only(flow_run):
    out, _ = flow_run
    ckpt = torch.load(out / 'last.pth', map_location='cpu', weights_only=True)
    assert ckpt['format'] == ckpt_io.FORMAT and ckpt['stage'] == 'flow' and ckpt['step'] == 2
    assert set(ckpt) >= {'model_state_dict', 'optimizer_state_dict', 'scaler_state_dict',
                         'config', 'rng'}
    assert not any(k.startswith('module.') for k in ckpt['model_state_dict'])
    assert ckpt_io.config_from_checkpoint(ckpt) == tiny_cfg()
    rank0 = ckpt['rng']['ranks'][0]
    assert isinstance(rank0['torch'], torch.Tensor)
    assert rank0['numpy']['keys'].shape == (624,)
    assert ckpt['rng']['sampler'] == {'kind': 'step_indexed', 'seed': 3, 'step': 2}
    assert len(ckpt['optimizer_state_dict']['state']) > 0


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    import random

    import numpy as np
    g = torch.Generator().manual_seed(5)
    state = ckpt_io.capture_rng_state({'g': g})
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=g))
    torch.save(state, tmp_path / 's.pth')
    ckpt_io.restore_rng_state(torch.load(tmp_path / 's.pth', weights_only=True), {'g': g})
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=g))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])


def test_resume_continues_exactly(flow_run, tmp_path, data):
    full, _ = flow_run
    out = tmp_path / 'split'
    first = run(tiny_cfg(), out, data, max_steps=1)
    assert first.step == 1 and not (out / 'step_0000002.pth').exists()
    second = run(tiny_cfg(), out, data, resume=out / 'last.pth')
    assert second.start_step == 1 and second.step == 2
    a = torch.load(full / 'last.pth', weights_only=True)
    b = torch.load(out / 'last.pth', weights_only=True)
    one = torch.load(full / 'step_0000001.pth', weights_only=True)
    moved = [k for k in a['model_state_dict']
             if not torch.equal(a['model_state_dict'][k], one['model_state_dict'][k])]
    assert moved, 'the second step changed no parameter'
    for key, value in a['model_state_dict'].items():
        assert torch.equal(value, b['model_state_dict'][key]), key
    for pid, state in a['optimizer_state_dict']['state'].items():
        other = b['optimizer_state_dict']['state'][pid]
        assert all(torch.equal(state[k], other[k]) for k in state), pid
    steps = [json.loads(line)['step'] for line in (out / 'metrics.jsonl').read_text()
             .splitlines()]
    assert steps == [1, 2]                    # end-of-run validation of the first part + step 2


def test_resume_continues_exactly_in_the_depth_stage(flow_run, tmp_path, data):
    # the depth stage samples correspondences with a generator seeded from the model's call
    # counter; the validation at the end of the first part must not disturb it
    src, _ = flow_run
    cfg = tiny_cfg('depth')
    run(cfg, tmp_path / 'full', data, init_flow=src / 'last.pth')
    run(cfg, tmp_path / 'split', data, init_flow=src / 'last.pth', max_steps=1)
    run(cfg, tmp_path / 'split', data, resume=tmp_path / 'split' / 'last.pth')
    a = torch.load(tmp_path / 'full' / 'last.pth', weights_only=True)
    b = torch.load(tmp_path / 'split' / 'last.pth', weights_only=True)
    assert a['rng']['ranks'][0]['counters'] == {'geometry_calls': 2}
    assert b['rng']['ranks'][0]['counters'] == {'geometry_calls': 2}
    for key, value in a['model_state_dict'].items():
        assert torch.equal(value, b['model_state_dict'][key]), key


def test_refuses_to_write_into_an_existing_run(flow_run, capsys):
    out, _ = flow_run
    before = (out / 'last.pth').stat().st_mtime_ns
    with pytest.raises(SystemExit) as exc:
        train_main(['--set', 'data.dataset=synthetic', '--out', str(out), '--device', 'cpu'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert 'already holds a run' in err and '--resume' in err and '--overwrite' in err
    assert (out / 'last.pth').stat().st_mtime_ns == before


def test_overwrite_deletes_only_run_files(tmp_path):
    (tmp_path / 'last.pth').write_bytes(b'x')
    (tmp_path / 'step_0000010.pth').write_bytes(b'x')
    (tmp_path / 'metrics.jsonl').write_text('{}\n')
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(ckpt_io.RunDirError):
        ckpt_io.prepare_run_dir(tmp_path)
    deleted = ckpt_io.prepare_run_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in deleted) == ['last.pth', 'metrics.jsonl', 'step_0000010.pth']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']


def test_init_flow_into_depth_stage_keeps_flow_frozen(flow_run, tmp_path, data):
    src, _ = flow_run
    flow_state = torch.load(src / 'last.pth', weights_only=True)['model_state_dict']
    cfg = tiny_cfg('depth', num_iterations=1, val_interval=100)
    train, val = data
    trainer = Trainer(cfg, tmp_path / 'depth', device='cpu', quiet=True, init_flow=src /
                      'last.pth', train_dataset=train, val_dataset=val, log=lambda m: None)
    before = {k: v.clone() for k, v in trainer.model.depth_net.state_dict().items()}
    for key, value in trainer.model.flow_net.state_dict().items():
        assert torch.equal(value, flow_state['flow_net.' + key]), key
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    assert result.step == 1
    assert not any(p.requires_grad for p in trainer.model.flow_net.parameters())
    for key, value in trainer.model.flow_net.state_dict().items():
        assert torch.equal(value, flow_state['flow_net.' + key]), key
    after = trainer.model.depth_net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), 'depth net not trained'
    saved = torch.load(tmp_path / 'depth' / 'last.pth', weights_only=True)
    assert saved['stage'] == 'depth'
    assert len(saved['optimizer_state_dict']['param_groups'][0]['params']) == len(
        list(trainer.model.depth_net.parameters()))


def test_init_flow_from_original_multi_gpu_layout(tmp_path):
    cfg = tiny_cfg('depth')
    source = build_model(cfg)
    state = {'module.' + k: v for k, v in source.flow_net.state_dict().items()}   # Model_flow
    torch.save({'model_state_dict': state, 'iteration': 7}, tmp_path / 'orig.pth')
    model = build_model(cfg)
    message = ckpt_io.init_flow(model, tmp_path / 'orig.pth')
    assert 'Model_flow' in message
    for key, value in model.flow_net.state_dict().items():
        assert torch.equal(value, source.flow_net.state_dict()[key]), key


def test_init_depth_strict_and_clear_errors(flow_run, tmp_path):
    src, _ = flow_run
    model = build_model(tiny_cfg('depth_pose'))
    assert 'whole model' in ckpt_io.init_depth(model, src / 'last.pth')
    ckpt = torch.load(src / 'last.pth', weights_only=True)
    del ckpt['model_state_dict']['depth_net.decoder.dispconvs.0.conv.weight']
    torch.save(ckpt, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match='missing.*dispconvs'):
        ckpt_io.init_depth(model, tmp_path / 'partial.pth')


def test_corrupt_checkpoint_gives_a_clear_error(flow_run, tmp_path, capsys):
    src, _ = flow_run
    bad = tmp_path / 'last.pth'
    bad.write_bytes((src / 'last.pth').read_bytes()[:4096])
    with pytest.raises(CheckpointError, match='cannot read checkpoint .*corrupt'):
        ckpt_io.read_training_checkpoint(bad)
    with pytest.raises(SystemExit) as exc:
        train_main(['--resume', str(bad), '--device', 'cpu'])
    assert exc.value.code == 2
    assert 'cannot read checkpoint' in capsys.readouterr().err
    with pytest.raises(CheckpointError, match='cannot read checkpoint'):
        ckpt_io.init_flow(build_model(tiny_cfg('depth')), bad)


def test_resume_refuses_another_stage(flow_run, tmp_path, data):
    src, _ = flow_run
    with pytest.raises(CheckpointError, match="'flow'-stage checkpoint.*--init-flow"):
        run(tiny_cfg('depth'), src, data, resume=src / 'last.pth')


def test_losses_fall_on_a_fixed_batch(tmp_path):
    pair = SyntheticPairDataset(kinds=('forward',), seeds=(0,), num_frames=4, height=H,
                                width=W, stride=3)
    cfg = tiny_cfg(num_iterations=20, lr=1e-3, batch_size=1, save_interval=100,
                   val_interval=100)
    result = run_training(cfg, tmp_path / 'overfit', device='cpu', quiet=True,
                          train_dataset=Subset(pair, [0]), val_dataset=None,
                          tensorboard=False, log=lambda m: None)
    losses = [v for _, v in result.losses]
    assert len(losses) == 20 and result.skipped_steps == 0
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses


def test_step_indices_are_deterministic_and_shard_one_draw():
    a = step_indices(7, 5, 100, 4)
    assert a == step_indices(7, 5, 100, 4) and a != step_indices(7, 6, 100, 4)
    whole = step_indices(7, 5, 100, 6, world_size=1)
    shards = [step_indices(7, 5, 100, 3, world_size=2, rank=r) for r in (0, 1)]
    assert shards[0] + shards[1] == whole
    sampler = StepBatchSampler(100, 3, 7, start_step=4, end_step=6, world_size=2, rank=1)
    assert list(sampler) == [step_indices(7, k, 100, 3, 2, 1) for k in (5, 6)]
    assert len(sampler) == 2


def test_flow_colour_coding():
    rgb = flow_to_rgb(torch.zeros(2, 4, 5))
    assert rgb.shape == (3, 4, 5) and torch.allclose(rgb, torch.ones_like(rgb))
    right = flow_to_rgb(torch.tensor([1.0, 0.0]).view(2, 1, 1).expand(2, 2, 2))
    assert torch.allclose(right[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str, result_dir: str) -> None:
    os.environ.update({'RANK': str(rank), 'WORLD_SIZE': '2', 'LOCAL_RANK': str(rank),
                       'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)})
    torch.set_num_threads(1)
    train = SyntheticPairDataset(kinds=('forward',), seeds=(0,), num_frames=3, height=H,
                                 width=W)
    cfg = tiny_cfg(batch_size=1, num_iterations=1, val_interval=100)
    trainer = Trainer(cfg, out, device='cpu', quiet=True, train_dataset=train,
                      val_dataset=None, tensorboard=False, log=lambda m: None)
    initial = {k: v.clone() for k, v in trainer.model.flow_net.state_dict().items()}
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    torch.save({'initial': initial, 'final': trainer.model.flow_net.state_dict(),
                'last': str(result.last_checkpoint)}, Path(result_dir) / f'rank{rank}.pth')


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path):
    import torch.multiprocessing as mp
    out = tmp_path / 'ddp'
    mp.spawn(_ddp_worker, args=(_free_port(), str(out), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / 'rank0.pth', weights_only=True)
    r1 = torch.load(tmp_path / 'rank1.pth', weights_only=True)
    assert r0['last'] == str(out / 'last.pth') and r1['last'] == 'None'
    changed = [k for k in r0['final'] if not torch.equal(r0['final'][k], r0['initial'][k])]
    assert changed, 'no parameter moved'
    for key in r0['final']:                          # gradients were averaged over the ranks
        assert torch.equal(r0['final'][key], r1['final'][key]), key
    ckpt = torch.load(out / 'last.pth', weights_only=True)
    assert ckpt['rng']['world_size'] == 2 and len(ckpt['rng']['ranks']) == 2
    assert not torch.equal(ckpt['rng']['ranks'][0]['torch'], ckpt['rng']['ranks'][1]['torch'])
    assert len(list(out.glob('*.pth'))) == 2        # last + step_0000001, written once
