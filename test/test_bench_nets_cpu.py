"""Smoke test of bench/nets_cpu.py (--quick): every backend runs and the last line is JSON."""

import importlib.util
import json
from pathlib import Path
import subprocess
import sys

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_prints_one_json_line(tmp_path):
    """--quick at 64x192, one thread: rows for each backend, within 1e-4 of eager."""
    backends = ['eager', 'inference_mode', 'channels_last']
    if importlib.util.find_spec('onnxruntime') is not None:
        backends += ['onnx', 'onnx_spin']
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'bench' / 'nets_cpu.py'), '--quick', '--sizes',
         'default', '--threads', '1', '--backends', ','.join(backends)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = result['rows']
    assert sorted({(r['net'], r['backend']) for r in rows}) == sorted(
        (net, b) for net in ('flow', 'depth') for b in backends)
    for row in rows:
        assert 'error' not in row, row
        assert row['ms'] > 0 and row['hw'] == [64, 192] and row['threads'] == 1
        assert row['max_abs_diff'] <= 1e-4
    assert set(result['fastest_vo_backend']) == {'default_flow_1thr', 'default_depth_1thr'}
