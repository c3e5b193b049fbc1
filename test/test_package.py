"""The ROS 2 package layout: package.xml, colcon discovery, install and the ament index."""

import os
from pathlib import Path
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_package_xml_declares_what_users_need():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'trianflow_ros'
    exec_deps = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'nav_msgs', 'geometry_msgs', 'std_srvs', 'tf2_ros',
            'cv_bridge', 'message_filters', 'python3-numpy', 'python3-opencv',
            'python3-yaml'} <= exec_deps
    test_deps = {e.text for e in root.findall('test_depend')}
    assert {'ament_flake8', 'ament_pep257', 'python3-pytest'} <= test_deps
    assert root.find('export/build_type').text == 'ament_python'
    assert (REPO / 'resource' / 'trianflow_ros').is_file()


def _colcon(args, cwd, env, timeout=300):
    exe = Path(sys.executable).with_name('colcon')
    if not exe.exists():
        pytest.fail(f'colcon not installed next to {sys.executable}; run `make test`')
    return subprocess.run([str(exe)] + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def colcon_env():
    env = dict(os.environ)
    env.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    env['COLCON_HOME'] = str(REPO / 'build' / '.colcon_home')
    return env


def test_colcon_sees_an_ament_python_package(colcon_env):
    out = _colcon(['list', '--paths', str(REPO)], REPO, colcon_env)
    assert out.returncode == 0, out.stderr
    assert 'trianflow_ros' in out.stdout and '(ros.ament_python)' in out.stdout, out.stdout


def test_colcon_build_installs_share_files(colcon_env, tmp_path):
    out = _colcon(['--log-base', str(tmp_path / 'log'), 'build', '--paths', str(REPO),
                   '--build-base', str(tmp_path / 'build'),
                   '--install-base', str(tmp_path / 'install')], tmp_path, colcon_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    prefix = tmp_path / 'install' / 'trianflow_ros'
    # What `source install/setup.bash` does for the ament index: prepend the package prefix.
    code = ('from ament_index_python.packages import get_package_share_directory as g; '
            'print(g("trianflow_ros"))')
    env = dict(colcon_env)
    env['AMENT_PREFIX_PATH'] = str(prefix) + os.pathsep + env['AMENT_PREFIX_PATH']
    found = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True,
                           text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    share = Path(found.stdout.strip())
    assert share == prefix / 'share' / 'trianflow_ros'
    assert (share / 'package.xml').is_file()
    for name in ('default.yaml', 'kitti.yaml', 'odo.yaml', 'nyu.yaml', 'tum.yaml'):
        assert (share / 'config' / name).is_file(), name
    launch_src = sorted(p.name for p in (REPO / 'launch').glob('*.launch.py'))
    assert sorted(p.name for p in (share / 'launch').glob('*.launch.py')) == launch_src
    # console scripts go where `ros2 run` and launch_ros look for them
    assert (prefix / 'lib' / 'trianflow_ros' / 'trianflow-config').is_file()
