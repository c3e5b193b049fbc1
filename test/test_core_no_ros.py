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
    imported = set(out.stdout.split(':', 1)[1].split())
    # Every module file of the core must have been found and imported (the walk is not vacuous).
    pkg = REPO / 'trianflow_ros'
    on_disk = {'trianflow_ros.' + '.'.join(p.relative_to(pkg).with_suffix('').parts)
               for p in pkg.rglob('*.py') if p.name != '__init__.py'}
    on_disk = {m for m in on_disk if not m.startswith('trianflow_ros.ros')}
    assert on_disk <= imported, sorted(on_disk - imported)
    assert {'trianflow_ros.config', 'trianflow_ros.geometry.camera'} <= imported


def test_blocker_catches_a_ros_import():
    """The check above could pass vacuously if the blocker did nothing: prove it blocks."""
    code = BLOCKER.split('import trianflow_ros')[0] + 'import rclpy\n'
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert 'ROS module imported by the core: rclpy' in out.stderr
