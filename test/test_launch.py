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

    def perform(self, context):
        """Return the value of the argument in the context (as launch does)."""
        return context.launch_configurations[self.args[0]]


class OpaqueFunction(Recorder):
    """Stand-in of launch.actions.OpaqueFunction (keeps function, args, kwargs)."""

    def run(self, context):
        """Call the function as launch does: function(context, *args, **kwargs)."""
        return self.kwargs['function'](context, *self.kwargs.get('args', ()) or (),
                                       **(self.kwargs.get('kwargs') or {}))


class Context:
    """Stand-in of launch.LaunchContext: the argument values, defaults then the given ones."""

    def __init__(self, description, **given):
        self.launch_configurations = {e.name: e.kwargs['default_value']
                                      for e in description.entities
                                      if isinstance(e, DeclareLaunchArgument)}
        self.launch_configurations.update(given)


class Node(Recorder):
    """Stand-in of launch_ros.actions.Node."""


class ParameterValue(Recorder):
    """Stand-in of launch_ros.parameter_descriptions.ParameterValue."""


def install_stubs(monkeypatch):
    mods = {name: types.ModuleType(name) for name in (
        'launch', 'launch.actions', 'launch.substitutions', 'launch_ros',
        'launch_ros.actions', 'launch_ros.parameter_descriptions')}
    mods['launch'].LaunchDescription = LaunchDescription
    mods['launch.actions'].DeclareLaunchArgument = DeclareLaunchArgument
    mods['launch.actions'].OpaqueFunction = OpaqueFunction
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
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


def split(desc, **given):
    """Return the declared arguments and the nodes launched with the ``given`` arguments."""
    args = {e.name: e for e in desc.entities if isinstance(e, DeclareLaunchArgument)}
    opaque = [e for e in desc.entities if isinstance(e, OpaqueFunction)]
    assert len(opaque) == 1, desc.entities
    nodes = {e.kwargs['executable']: e for e in opaque[0].run(Context(desc, **given))}
    return args, nodes


def test_launch_arguments_node_parameters_and_remaps(description, installed):
    args, nodes = split(description)
    share = installed / 'share' / PACKAGE
    assert set(args) == {'params_file', 'namespace', 'config_file', 'checkpoint', 'image',
                         'camera_info', 'use_sim_time', 'rviz', 'odom_frame', 'base_frame',
                         'camera_frame'}
    assert Path(args['params_file'].kwargs['default_value']) == share / 'config' / 'vo.yaml'
    for name in ('checkpoint', 'config_file', 'use_sim_time', 'odom_frame', 'base_frame',
                 'camera_frame', 'namespace'):
        assert args[name].kwargs['default_value'] == '', name
    assert args['rviz'].kwargs['default_value'] == 'false'
    assert all(a.kwargs.get('description') for a in args.values())

    vo = nodes['vo_node']
    assert vo.kwargs['package'] == PACKAGE and vo.kwargs['name'] == 'vo_node'
    assert vo.kwargs['namespace'] == ''
    # nothing given: the params_file alone, so its checkpoint / config_file / frames hold
    assert vo.kwargs['parameters'] == [str(share / 'config' / 'vo.yaml')]
    assert dict(vo.kwargs['remappings']) == {'image': '/camera/image_raw',
                                             'camera_info': '/camera/camera_info'}
    assert 'rviz2' not in nodes


def test_given_arguments_come_after_the_params_file_namespace_and_rviz(description, installed):
    share = installed / 'share' / PACKAGE
    args, nodes = split(description, params_file='/my/vo.yaml', checkpoint='/w/x.pth',
                        odom_frame='vo_odom', base_frame='base_footprint',
                        use_sim_time='true', namespace='robot1', image='/cam/image',
                        rviz='true')
    vo = nodes['vo_node']
    params = vo.kwargs['parameters']
    assert params[0] == '/my/vo.yaml' and len(params) == 2       # given ones win: last
    given = params[1]
    assert set(given) == {'checkpoint', 'odom_frame', 'base_frame', 'use_sim_time'}
    assert given['checkpoint'].args[0] == '/w/x.pth'
    assert given['checkpoint'].kwargs['value_type'] is str
    assert given['odom_frame'].args[0] == 'vo_odom' and given['use_sim_time'] is True
    assert vo.kwargs['namespace'] == 'robot1'
    assert dict(vo.kwargs['remappings'])['image'] == '/cam/image'
    rviz = nodes['rviz2']
    rviz_file = Path(rviz.kwargs['arguments'][1])
    assert rviz.kwargs['arguments'][0] == '-d' and rviz_file == share / 'config' / 'vo.rviz'
    assert rviz.kwargs['parameters'] == [{'use_sim_time': True}]
    displays = yaml.safe_load(rviz_file.read_text())['Visualization Manager']['Displays']
    classes = {d['Class'].split('/')[-1] for d in displays}
    assert {'Image', 'Odometry', 'Path', 'TF'} <= classes
    topics = {d.get('Topic', {}).get('Value') for d in displays}
    assert {'/odom', '/path', '/depth', '/camera/image_raw'} <= topics
    _, nodes = split(description, use_sim_time='false', config_file='odo.yaml')
    given = nodes['vo_node'].kwargs['parameters'][1]
    assert set(given) == {'use_sim_time', 'config_file'} and given['use_sim_time'] is False
    assert given['config_file'].args[0] == 'odo.yaml'


def test_installed_params_file_holds_declared_valid_parameters(installed):
    from trianflow_ros.config import Config
    from trianflow_ros.ros.params import check_value, config_param_specs, node_param_specs
    specs = {s.name: s for s in node_param_specs() + config_param_specs(Config())}
    data = yaml.safe_load((installed / 'share' / PACKAGE / 'config' / 'vo.yaml').read_text())
    assert list(data) == ['/**/vo_node'], 'key /**/vo_node: the file applies in any namespace'
    values = data['/**/vo_node']['ros__parameters']
    assert values, 'vo.yaml has no parameters'
    for name, value in values.items():
        assert name in specs, f'vo.yaml sets {name!r}, which the node does not declare'
        assert check_value(specs[name], value) is None, check_value(specs[name], value)
    assert values['image_qos'] == 'reliable' and values['publish_tf'] is True


def test_params_file_is_generated_from_the_declarations():
    from trianflow_ros.ros.node_params import node_param_specs
    from trianflow_ros.ros.params_file import OMITTED, render
    text = (REPO / 'config' / 'vo.yaml').read_text()
    assert text == render(), ('config/vo.yaml is stale: python -m trianflow_ros.ros.params_file '
                              '> config/vo.yaml')
    values = yaml.safe_load(text)['/**/vo_node']['ros__parameters']
    assert set(values) == {s.name for s in node_param_specs()} - set(OMITTED)


def test_readme_documents_every_node_parameter():
    from trianflow_ros.ros.node_params import node_param_specs
    text = (REPO / 'README.md').read_text()
    missing = [s.name for s in node_param_specs() if f'| `{s.name}` |' not in text]
    assert not missing, f'README.md: the parameter table lacks {missing}'
    for other in ('isaac_ros_visual_slam', 'rtabmap_odom', 'robot_localization'):
        assert other in text


def command_line(node, installed, tmp_path):
    """Return the command launch_ros would exec for a recorded Node (dicts -> a /** file)."""
    kw = node.kwargs
    cmd = [str(installed / 'lib' / kw['package'] / kw['executable']), '--ros-args', '-r',
           f"__node:={kw['name']}"]
    if kw.get('namespace'):
        cmd += ['-r', f"__ns:=/{kw['namespace'].strip('/')}"]
    for i, params in enumerate(kw['parameters']):
        if isinstance(params, dict):
            values = {k: (v.args[0] if isinstance(v, ParameterValue) else v)
                      for k, v in params.items()}
            path = tmp_path / f'launch_params_{i}.yaml'
            path.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
            params = str(path)
        cmd += ['--params-file', str(params)]
    for src, dst in kw['remappings']:
        cmd += ['-r', f'{src}:={dst}']
    return cmd


@pytest.mark.ros
def test_node_runs_from_the_launch_command_line(description, installed, ros_env, tmp_path):
    """
    Run what launch_ros would exec for the node, in a namespace, with a user's params_file.

    The params_file's checkpoint, config_file and odom_frame hold (no launch default overrides
    them); the given base_frame argument wins; the remaps and the namespace apply.
    """
    exe = installed / 'lib' / PACKAGE / 'vo_node'
    assert exe.is_file(), (f'console script missing at {exe}: setup.py needs '
                           "'vo_node = trianflow_ros.ros.vo_node:main' in console_scripts")
    user = tmp_path / 'user.yaml'
    user.write_text(yaml.safe_dump({'/**/vo_node': {'ros__parameters': {
        'checkpoint': 'default', 'config_file': 'odo.yaml', 'odom_frame': 'vo_odom',
        'base_frame': 'from_file', 'data.img_height': 128, 'data.img_width': 416}}}))
    _, nodes = split(description, params_file=str(user), namespace='robot1',
                     base_frame='robot_base')
    cmd = command_line(nodes['vo_node'], installed, tmp_path)
    env = dict(ros_env)
    env['AMENT_PREFIX_PATH'] = str(installed) + os.pathsep + env.get('AMENT_PREFIX_PATH', '')
    # what `source install/setup.bash` adds: the installed package's site-packages
    site = next((installed / 'lib').glob('python3*/site-packages'))
    env['PYTHONPATH'] = str(site) + os.pathsep + env.get('PYTHONPATH', '')
    log = tmp_path / 'node.out'
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    import rclpy
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node as RosNode
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    node = RosNode('launch_probe', context=context)
    values = None
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
        client = node.create_client(GetParameters, '/robot1/vo_node/get_parameters')
        assert client.wait_for_service(timeout_sec=30.0), 'no /robot1/vo_node'
        future = client.call_async(GetParameters.Request(
            names=['config_file', 'checkpoint', 'odom_frame', 'base_frame']))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.spin_until_future_complete(future, timeout_sec=30.0)
        executor.remove_node(node)
        values = [v.string_value for v in future.result().values]
        assert node.count_publishers('/robot1/odom') == 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process(proc)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert values == ['odo.yaml', 'default', 'vo_odom', 'robot_base'], values
    assert 'publishes tf: vo_odom -> robot_base' in text, text
    # the installed package ships models/default.pth: the params_file's checkpoint:=default
    # uses it, with the explicit input size of the params_file
    assert 'working resolution=416x128' in text, text
    assert 'flow=net depth=net' in text and 'share/trianflow_ros/models/default.pth' in text, text
