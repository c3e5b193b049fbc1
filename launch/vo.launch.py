"""
Launch the visual odometry node (and optionally RViz).

Example::

    ros2 launch trianflow_ros vo.launch.py image:=/camera/image_raw \
        camera_info:=/camera/camera_info rviz:=true
    ros2 launch trianflow_ros vo.launch.py namespace:=robot1 params_file:=/my/vo.yaml \
        odom_frame:=vo_odom base_frame:=base_footprint
    ros2 launch trianflow_ros vo.launch.py checkpoint:=/path/kitti_odo.pth config_file:=odo.yaml

Arguments: ``params_file`` (ROS parameters of vo_node, default the package's config/vo.yaml;
use the key ``/**/vo_node`` or ``/**`` so that it applies in any namespace), ``namespace``
(of the node and its relative topics: odom, path, depth, ...), ``image`` and
``camera_info`` (the topics the node's ``image`` / ``camera_info`` are remapped to; with
``use_compressed`` the node reads ``<image>/compressed``), ``rviz`` (start RViz with
config/vo.rviz), and the node parameters ``config_file``, ``checkpoint``, ``odom_frame``,
``base_frame``, ``camera_frame`` and ``use_sim_time``.

Precedence: the node's defaults < ``params_file`` < the parameter arguments **that are
given**. An argument left at its default ('') is not passed at all, so a value in the user's
params_file is never overridden by a launch default (it was: ``checkpoint`` and
``config_file`` came after the params_file). ``checkpoint:=''`` therefore means "as in
params_file" (the node's default there: ``models/default.pth``, else classical).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'trianflow_ros'
#: Node parameters that are launch arguments; passed only when given (not '').
NODE_PARAMETERS = {
    'config_file': 'shared-config YAML (e.g. odo.yaml, kitti.yaml) loaded before the ROS '
                   "parameters; '' = as in params_file",
    'checkpoint': "network weights (.pth) or 'default'; '' = as in params_file (node default: "
                  'the classical pipeline; default = models/default.pth)',
    'odom_frame': "odometry frame (TF parent, Odometry header); '' = as in params_file "
                  '(default odom)',
    'base_frame': "robot body frame (TF child, Odometry child_frame_id); '' = as in "
                  'params_file (default base_link)',
    'camera_frame': "camera optical frame; '' = as in params_file (default: the images' "
                    'header.frame_id)',
    'use_sim_time': "true for bag replay with --clock; '' = as in params_file (default false)",
}
_TRUE = ('true', '1', 'yes', 'on')


def _arguments(share: str):
    args = [
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'vo.yaml'),
                              description='ROS parameters of vo_node (ros__parameters YAML)'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of vo_node and its relative topics'),
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='input image topic (sensor_msgs/Image)'),
        DeclareLaunchArgument('camera_info', default_value='/camera/camera_info',
                              description='camera_info topic with the stamps of the images'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='start RViz with config/vo.rviz'),
    ]
    args += [DeclareLaunchArgument(name, default_value='', description=text)
             for name, text in NODE_PARAMETERS.items()]
    return args


def _nodes(context, share: str):
    """Build the nodes from the argument values (OpaqueFunction: values are known here)."""
    def value(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {}
    for name in NODE_PARAMETERS:
        given = value(name)
        if not given:
            continue
        if name == 'use_sim_time':
            overrides[name] = given.strip().lower() in _TRUE
        else:
            overrides[name] = ParameterValue(given, value_type=str)
    parameters = [value('params_file')] + ([overrides] if overrides else [])
    vo_node = Node(
        package=PACKAGE,
        executable='vo_node',
        name='vo_node',
        namespace=value('namespace'),
        output='screen',
        parameters=parameters,
        remappings=[('image', value('image')), ('camera_info', value('camera_info'))],
    )
    nodes = [vo_node]
    if value('rviz').strip().lower() in _TRUE:
        sim = {'use_sim_time': overrides['use_sim_time']} if 'use_sim_time' in overrides else {}
        nodes.append(Node(package='rviz2', executable='rviz2', name='rviz2',
                          namespace=value('namespace'),
                          arguments=['-d', os.path.join(share, 'config', 'vo.rviz')],
                          parameters=[sim] if sim else []))
    return nodes


def generate_launch_description():
    """Return the launch description: arguments, vo_node and the optional RViz."""
    share = get_package_share_directory(PACKAGE)
    return LaunchDescription(_arguments(share) + [
        OpaqueFunction(function=_nodes, kwargs={'share': share})])
