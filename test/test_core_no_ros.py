"""The core never imports ROS: import every non-ROS module with ROS modules blocked."""

from pathlib import Path
import subprocess
import sys

REPO = Path(__file__).resolve().parents[1]

BLOCKER = r"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = ('rclpy', 'rcl_interfaces', 'builtin_interfaces', 'std_msgs', 'sensor_msgs',
           'geometry_msgs', 'nav_msgs', 'std_srvs', 'tf2_ros', 'tf2_msgs', 'cv_bridge',
           'message_filters', 'diagnostic_msgs', 'visualization_msgs', 'launch', 'launch_ros',
           'ament_index_python', 'rosidl_runtime_py', 'rclpy_message_converter')

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('ROS module imported by the core: ' + name)
        return None

sys.meta_path.insert(0, Block())
import trianflow_ros
names = [m.name for m in pkgutil.walk_packages(trianflow_ros.__path__, 'trianflow_ros.')
         if not m.name.startswith('trianflow_ros.ros')]
for name in names:
    importlib.import_module(name)
print('imported', len(names), 'modules:', ' '.join(sorted(names)))
"""


def test_core_imports_without_ros():
    out = subprocess.run([sys.executable, '-c', BLOCKER], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    count = int(out.stdout.split()[1])
    # config, geometry and data modules at least: the walk must really find the core.
    assert count >= 10, out.stdout
    assert 'trianflow_ros.geometry.camera' in out.stdout
    assert 'trianflow_ros.config' in out.stdout


def test_blocker_catches_a_ros_import():
    """The check above could pass vacuously if the blocker did nothing: prove it blocks."""
    code = BLOCKER.split('import trianflow_ros')[0] + 'import rclpy\n'
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert 'ROS module imported by the core: rclpy' in out.stderr
