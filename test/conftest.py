"""Shared fixtures: the shared data folder and isolated ROS 2 environments."""

import atexit
import itertools
import os
from pathlib import Path
import shutil
import tempfile

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# DDS must never leave this machine (the Kilted wheels ignore ROS_LOCALHOST_ONLY).
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ['ROS_LOCALHOST_ONLY'] = '1'
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                      str(REPO / 'test' / 'fastdds_fast_discovery.xml'))

# Exported ONNX models of the networks (vo.net_backend) go to a folder of this test session,
# not to the user's ~/.cache (subprocesses inherit it).
if not os.environ.get('TRIANFLOW_CACHE_DIR'):
    os.environ['TRIANFLOW_CACHE_DIR'] = tempfile.mkdtemp(prefix='trianflow-test-cache-')
    atexit.register(shutil.rmtree, os.environ['TRIANFLOW_CACHE_DIR'], ignore_errors=True)

_domain_ids = itertools.count()


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data; skipped with a clear message only where the folder is absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get('CI'):
            pytest.fail(f'shared data folder missing in CI: {SHARED_DATA}')
        pytest.skip(f'shared data folder not found at {SHARED_DATA}')
    return SHARED_DATA


@pytest.fixture(scope='session')
def write_image_folder():
    """
    Return ``write(root, frames, height, width, seed)``, a writer of image folders.

    It writes a synthetic 'forward' sequence as ``frame_NNN.png`` (RGB saved as BGR) plus
    ``K.txt`` (fx fy cx cy), the input of ``trianflow-vo images``, and returns the sequence.
    """
    import cv2
    from trianflow_ros.data.synthetic import make_sequence

    def write(root: Path, frames: int, height: int, width: int, seed: int):
        seq = make_sequence('forward', frames, height, width, seed=seed)
        for i, image in enumerate(seq.images_uint8()):
            cv2.imwrite(str(root / f'frame_{i:03d}.png'), image[:, :, ::-1])
        K = seq.K.numpy()
        (root / 'K.txt').write_text(f'{K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n')
        return seq
    return write


@pytest.fixture
def ros_env():
    """
    Environment for one ROS test: its own domain id (parallel runs do not cross-talk).

    Returns a dict for subprocesses; rclpy in this process is initialised by the test with the
    same ``domain_id``. rclpy must be importable: in CI a missing rclpy fails, never skips.
    """
    try:
        import rclpy  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the machine
        if os.environ.get('CI'):
            pytest.fail(f'rclpy is not importable in CI: {e}')
        pytest.skip(f'rclpy not importable ({e}); run `make test` to build the environment')
    base = int(os.environ.get('TRIANFLOW_TEST_DOMAIN_BASE', 20 + os.getpid() % 60))
    domain_id = base + next(_domain_ids) % 40
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    env['PYTHONUNBUFFERED'] = '1'
    return env
