"""The frame of the ROS command-line tools (player, recorder): their arguments, their shutdown."""

import argparse
import sys
from typing import Iterable, List, Optional

import rclpy
from rclpy.executors import Executor
from rclpy.node import Node


def parse_tool_args(parser: argparse.ArgumentParser, argv: Optional[List[str]]
                    ) -> argparse.Namespace:
    """Parse ``argv``, or the command line without its ROS arguments (``--ros-args ...``)."""
    if argv is None:
        argv = rclpy.utilities.remove_ros_args(sys.argv)[1:]
    return parser.parse_args(argv)


def shutdown(executor: Executor, nodes: Iterable[Optional[Node]]) -> None:
    """Shut the executor down, destroy the nodes (None: not created), then rclpy."""
    executor.shutdown()
    for node in nodes:
        if node is not None:
            node.destroy_node()
    rclpy.try_shutdown()
