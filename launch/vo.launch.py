"""
Launch the visual odometry node (and optionally RViz).

Example::

    ros2 launch trianflow_ros vo.launch.py image:=/camera/image_raw \
        camera_info:=/camera/camera_info rviz:=true
    ros2 launch trianflow_ros vo.launch.py checkpoint:=/path/weights.pth \
        config_file:=$(ros2 pkg prefix trianflow_ros)/share/trianflow_ros/config/kitti.yaml

Arguments: ``params_file`` (ROS parameters of vo_node, default the package's config/vo.yaml),
``config_file`` (shared-config YAML loaded by the node before its ROS parameters),
``checkpoint`` (weights; '' = models/default.pth if installed, else the classical pipeline;
'default' = models/default.pth or an error; an original checkpoint such as kitti_odo.pth goes
with ``config_file:=odo.yaml``),
``image`` and ``camera_info`` (the topics the node's ``image`` / ``camera_info`` are
remapped to; with ``use_compressed`` the node reads ``<image>/compressed``),
``use_sim_time`` (bag replay with --clock) and ``rviz`` (start RViz with config/vo.rviz).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'trianflow_ros'


def generate_launch_description():
    """Return the launch description: arguments, vo_node and the optional RViz."""
    share = get_package_share_directory(PACKAGE)
    params_file = os.path.join(share, 'config', 'vo.yaml')
    args = [
        DeclareLaunchArgument('params_file', default_value=params_file,
                              description='ROS parameters of vo_node (ros__parameters YAML)'),
        DeclareLaunchArgument('config_file', default_value='',
                              description='shared-config YAML (e.g. config/kitti.yaml) loaded '
                                          'before the ROS parameters'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="network weights; '' = models/default.pth if "
                                          "installed, else classical (DIS flow); 'default' = "
                                          'models/default.pth (an error when missing)'),
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='input image topic (sensor_msgs/Image)'),
        DeclareLaunchArgument('camera_info', default_value='/camera/camera_info',
                              description='camera_info topic with the stamps of the images'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay with --clock)'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='start RViz with config/vo.rviz'),
    ]
    use_sim_time = ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)
    vo_node = Node(
        package=PACKAGE,
        executable='vo_node',
        name='vo_node',
        output='screen',
        parameters=[
            LaunchConfiguration('params_file'),
            {'config_file': ParameterValue(LaunchConfiguration('config_file'), value_type=str),
             'checkpoint': ParameterValue(LaunchConfiguration('checkpoint'), value_type=str),
             'use_sim_time': use_sim_time},
        ],
        remappings=[('image', LaunchConfiguration('image')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        arguments=['-d', os.path.join(share, 'config', 'vo.rviz')],
        parameters=[{'use_sim_time': use_sim_time}],
        condition=IfCondition(LaunchConfiguration('rviz')),
    )
    return LaunchDescription(args + [vo_node, rviz])
