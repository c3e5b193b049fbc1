"""
The installed launch file, with small recording stand-ins for ``launch`` / ``launch_ros``.

``launch`` and ``launch_ros`` are not installable from PyPI, so the test builds the package with
colcon into a temporary prefix, puts stand-in modules into ``sys.modules``, imports the
*installed* ``share/trianflow_ros/launch/vo.launch.py``, and checks what it declares: the
arguments, the node (package, executable, name, parameters, remappings) and RViz. It then checks
that the installed ``config/vo.yaml`` only holds declared, valid parameters, and runs the
command line launch_ros would build for the node, which must come up and subscribe to the
remapped topics.
"""

import importlib.util
import os
from pathlib import Path
import subprocess
import sys
import time
import types

import pytest
from trianflow_ros.ros.process import stop_process
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = 'trianflow_ros'


# --------------------------------------------------------------------------------------------
# stand-ins: they only record their arguments
# --------------------------------------------------------------------------------------------
class Recorder:
    """Base of the stand-ins: keeps the positional and keyword arguments."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs

    def __repr__(self):
        return f'{type(self).__name__}{self.args}{self.kwargs}'


class LaunchDescription(Recorder):
    """Stand-in of launch.LaunchDescription."""

    @property
    def entities(self):
        return list(self.args[0]) if self.args else []


class DeclareLaunchArgument(Recorder):
    """Stand-in of launch.actions.DeclareLaunchArgument."""

    @property
    def name(self):
        return self.args[0]


class LaunchConfiguration(Recorder):
    """Stand-in of launch.substitutions.LaunchConfiguration (equal by name)."""

    def __eq__(self, other):
        return isinstance(other, LaunchConfiguration) and other.args == self.args

    __hash__ = None


class IfCondition(Recorder):
    """Stand-in of launch.conditions.IfCondition."""


class Node(Recorder):
    """Stand-in of launch_ros.actions.Node."""


class ParameterValue(Recorder):
    """Stand-in of launch_ros.parameter_descriptions.ParameterValue."""


def install_stubs(monkeypatch):
    mods = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.substitutions', 'launch.conditions', 'launch_ros',
        'launch_ros.actions', 'launch_ros.parameter_descriptions')}
    mods['launch'].LaunchDescription = LaunchDescription
    mods['launch.actions'].DeclareLaunchArgument = DeclareLaunchArgument
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch.conditions'].IfCondition = IfCondition
    mods['launch_ros.actions'].Node = Node
    mods['launch_ros.parameter_descriptions'].ParameterValue = ParameterValue
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """Build the package with colcon into a temporary prefix; return the package prefix."""
    exe = Path(sys.executable).with_name('colcon')
    if not exe.exists():
        pytest.fail(f'colcon not installed next to {sys.executable}; run `make test`')
    base = tmp_path_factory.mktemp('colcon')
    env = dict(os.environ)
    env.setdefault('AMENT_PREFIX_PATH', sys.prefix)
    env['COLCON_HOME'] = str(base / 'colcon_home')
    out = subprocess.run([str(exe), '--log-base', str(base / 'log'), 'build', '--paths',
                          str(REPO), '--build-base', str(base / 'build'), '--install-base',
                          str(base / 'install')], cwd=base, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return base / 'install' / PACKAGE


@pytest.fixture
def description(installed, monkeypatch):
    """Return the LaunchDescription recorded from the installed launch file."""
    install_stubs(monkeypatch)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(installed) + os.pathsep
                       + os.environ.get('AMENT_PREFIX_PATH', sys.prefix))
    path = installed / 'share' / PACKAGE / 'launch' / 'vo.launch.py'
    assert path.is_file(), f'launch file not installed at {path}'
    spec = importlib.util.spec_from_file_location('vo_launch', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def split(desc):
    args = {e.name: e for e in desc.entities if isinstance(e, DeclareLaunchArgument)}
    nodes = {e.kwargs['executable']: e for e in desc.entities if isinstance(e, Node)}
    return args, nodes


def test_launch_arguments_node_parameters_and_remaps(description, installed):
    args, nodes = split(description)
    share = installed / 'share' / PACKAGE
    assert set(args) == {'params_file', 'config_file', 'checkpoint', 'image', 'camera_info',
                         'use_sim_time', 'rviz'}
    assert Path(args['params_file'].kwargs['default_value']) == share / 'config' / 'vo.yaml'
    assert args['checkpoint'].kwargs['default_value'] == ''
    assert args['use_sim_time'].kwargs['default_value'] == 'false'
    assert args['rviz'].kwargs['default_value'] == 'false'
    assert all(a.kwargs.get('description') for a in args.values())

    vo = nodes['vo_node']
    assert vo.kwargs['package'] == PACKAGE and vo.kwargs['name'] == 'vo_node'
    params = vo.kwargs['parameters']
    assert params[0] == LaunchConfiguration('params_file')
    overrides = params[1]
    assert set(overrides) == {'config_file', 'checkpoint', 'use_sim_time'}
    assert overrides['checkpoint'].args[0] == LaunchConfiguration('checkpoint')
    assert overrides['checkpoint'].kwargs['value_type'] is str
    assert overrides['use_sim_time'].kwargs['value_type'] is bool
    assert dict(vo.kwargs['remappings']) == {'image': LaunchConfiguration('image'),
                                             'camera_info': LaunchConfiguration('camera_info')}

    rviz = nodes['rviz2']
    assert rviz.kwargs['condition'].args[0] == LaunchConfiguration('rviz')
    rviz_file = Path(rviz.kwargs['arguments'][1])
    assert rviz.kwargs['arguments'][0] == '-d' and rviz_file == share / 'config' / 'vo.rviz'
    displays = yaml.safe_load(rviz_file.read_text())['Visualization Manager']['Displays']
    classes = {d['Class'].split('/')[-1] for d in displays}
    assert {'Image', 'Odometry', 'Path', 'TF'} <= classes
    topics = {d.get('Topic', {}).get('Value') for d in displays}
    assert {'/odom', '/path', '/depth', '/camera/image_raw'} <= topics


def test_installed_params_file_holds_declared_valid_parameters(installed):
    from trianflow_ros.config import Config
    from trianflow_ros.ros.params import check_value, config_param_specs, node_param_specs
    specs = {s.name: s for s in node_param_specs() + config_param_specs(Config())}
    data = yaml.safe_load((installed / 'share' / PACKAGE / 'config' / 'vo.yaml').read_text())
    values = data['vo_node']['ros__parameters']
    assert values, 'vo.yaml has no parameters'
    for name, value in values.items():
        assert name in specs, f'vo.yaml sets {name!r}, which the node does not declare'
        assert check_value(specs[name], value) is None, check_value(specs[name], value)
    assert values['image_qos'] == 'reliable' and values['publish_tf'] is True


@pytest.mark.ros
def test_node_runs_from_the_launch_command_line(installed, ros_env, tmp_path):
    """Run what launch_ros would exec for the node; it must start and use the remaps."""
    exe = installed / 'lib' / PACKAGE / 'vo_node'
    assert exe.is_file(), (f'console script missing at {exe}: setup.py needs '
                           "'vo_node = trianflow_ros.ros.vo_node:main' in console_scripts")
    # launch_ros writes the dict parameters into a params file like this one (dotted names work)
    small = tmp_path / 'overrides.yaml'
    small.write_text("vo_node:\n  ros__parameters:\n    config_file: ''\n    checkpoint: ''\n"
                     '    use_sim_time: false\n    data.img_height: 128\n'
                     '    data.img_width: 416\n')
    env = dict(ros_env)
    env['AMENT_PREFIX_PATH'] = str(installed) + os.pathsep + env.get('AMENT_PREFIX_PATH', '')
    # what `source install/setup.bash` adds: the installed package's site-packages
    site = next((installed / 'lib').glob('python3*/site-packages'))
    env['PYTHONPATH'] = str(site) + os.pathsep + env.get('PYTHONPATH', '')
    log = tmp_path / 'node.out'
    cmd = [str(exe), '--ros-args', '-r', '__node:=vo_node', '--params-file',
           str(installed / 'share' / PACKAGE / 'config' / 'vo.yaml'), '--params-file',
           str(small), '-r', 'image:=/camera/image_raw', '-r', 'camera_info:=/camera/camera_info']
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    import rclpy
    from rclpy.node import Node as RosNode
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    node = RosNode('launch_probe', context=context)
    try:
        end = time.monotonic() + 90
        while not (node.count_subscribers('/camera/image_raw') > 0
                   and node.count_subscribers('/camera/camera_info') > 0):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, 'remapped subscriptions never appeared\n' + \
                log.read_text()
            time.sleep(0.1)
        while 'visual odometry ready' not in log.read_text():
            assert time.monotonic() < end, log.read_text()
            time.sleep(0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process(proc)
    text = log.read_text()
    assert proc.returncode == 0, text
    # the installed package ships models/default.pth: an empty checkpoint parameter uses it, with
    # the explicit input size of the parameter file
    assert 'working resolution=416x128' in text, text
    assert 'flow=net depth=net' in text and 'share/trianflow_ros/models/default.pth' in text, text
