"""bench/cuda_all.sh: syntax, the no-GPU result, and a CPU smoke run of every part."""

import json
import os
from pathlib import Path
import subprocess
import sys

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / 'bench' / 'cuda_all.sh'
PARTS = ('pose_solver', 'nets', 'vo', 'train')


def _run(args, tmp_path, timeout, **env):
    out = tmp_path / 'cuda_all.json'
    proc = subprocess.run(['bash', str(SCRIPT), *args, '--out', str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHON=sys.executable, **env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == last
    return last, proc


def test_syntax():
    """The script parses (bash -n); --help prints its header."""
    subprocess.run(['bash', '-n', str(SCRIPT)], check=True)
    text = subprocess.run(['bash', str(SCRIPT), '--help'], capture_output=True, text=True,
                          check=True).stdout
    assert 'pose_solver' in text and '--cpu-smoke' in text


def test_unknown_option_is_an_error():
    """A typo is exit code 2 with a message, not a silent run."""
    proc = subprocess.run(['bash', str(SCRIPT), '--gpu'], capture_output=True, text=True)
    assert proc.returncode == 2 and 'unknown option --gpu' in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA GPU is here: a plain run would '
                    'be the full 8-minute benchmark (the smoke test below still runs)')
def test_without_cuda_reports_cuda_false(tmp_path):
    """On a CPU machine: {"cuda": false, ...} at once, exit 0, the file written."""
    result, _ = _run([], tmp_path, timeout=120)
    assert result['cuda'] is False
    assert result['parts'] == {} and result['errors'] == {}
    assert 'is_available() is False' in result['reason']
    assert result['torch'] == torch.__version__


def test_cpu_smoke_runs_every_part(tmp_path, shared_data):
    """--cpu-smoke runs the four parts at tiny sizes: each reports figures, no error."""
    result, proc = _run(['--cpu-smoke'], tmp_path, timeout=400)
    assert result['mode'] == 'cpu-smoke' and result['cuda'] is False
    assert result['errors'] == {}, (result['errors'], proc.stderr[-3000:])
    parts = result['parts']
    assert sorted(parts) == sorted(PARTS)
    assert parts['pose_solver']['ms_ours'] > 0 and parts['pose_solver']['ms_ours_batch'] > 0
    for net in ('flow', 'depth'):
        assert parts['nets'][f'{net}_fp32']['ms'] > 0
        assert parts['nets'][f'{net}_fp32']['max_abs_diff_vs_fp32'] == 0.0
        assert parts['nets'][f'{net}_bf16']['ms'] > 0
    for run in ('kitti', 'oracle'):
        assert parts['vo'][run]['fps'] > 0 and parts['vo'][run]['frames'] == 3
    assert parts['vo']['oracle']['lost'] == 0
    for stage in ('flow', 'depth_pose'):
        assert parts['train'][stage]['it_per_s'] > 0
    assert result['total_s'] <= result['budget_s']


def test_a_failing_part_does_not_lose_the_others(tmp_path, shared_data):
    """A part past its timeout is recorded as such; the next part still runs and reports."""
    result, _ = _run(['--cpu-smoke'], tmp_path, timeout=300, CUDA_ALL_PARTS='nets,vo',
                     CUDA_ALL_TIMEOUT_NETS='1')
    assert result['errors'] == {'nets': 'timed out after 1 s'}
    assert result['parts']['vo']['oracle']['fps'] > 0
