"""
Parameter changes of the running node (``ros2 param set``).

A change is checked (:meth:`~trianflow_ros.ros.params.NodeParameters.check`, and the
configuration it gives must be valid) before it is accepted; a rejected change is logged with
its reason. An accepted change of a configuration field reaches the odometry on the worker
before its next frame (the queue's ``pending_cfg``); the output, path and pairing settings
apply at once.
"""

from typing import Callable

from rcl_interfaces.msg import SetParametersResult

from trianflow_ros.config import Config, ConfigError


class ParameterUpdates:
    """The on-set (check) and post-set (apply) parameter callbacks of the node."""

    def __init__(self, params, current_cfg: Callable[[], Config], queue, output, pairer,
                 logger):
        """
        Keep what a change touches.

        :param params: the node's :class:`~trianflow_ros.ros.params.NodeParameters`.
        :param current_cfg: returns the configuration the odometry runs.
        :param queue: the :class:`~trianflow_ros.ros.frame_queue.FrameQueue`.
        :param output: the :class:`~trianflow_ros.ros.frame_publisher.FramePublisher`.
        :param pairer: the :class:`~trianflow_ros.ros.pairing.FramePairer`.
        :param logger: the node's logger.
        """
        self.params, self._cfg, self._queue = params, current_cfg, queue
        self._output, self._pairer, self._log = output, pairer, logger

    def check(self, params) -> SetParametersResult:
        """Accept a change, or reject it with the reason (logged)."""
        reason = self.params.check(params)
        if reason is None:
            changed = {q.name: q.value for q in params if q.name in self.params.specs}
            try:
                self.params.config({k: v for k, v in changed.items()
                                    if self.params.specs[k].config_key}, base=self._cfg())
            except ConfigError as e:
                reason = str(e)
        if reason is not None:
            self._log.warning(f'parameter change rejected: {reason}')
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def apply(self, params) -> None:
        """Apply an accepted change."""
        p, odom = self.params, self._output.odom
        with self._queue.lock:
            for q in params:
                if q.name not in p.specs:
                    continue
                p.values[q.name] = q.value
                if p.specs[q.name].config_key:
                    self._queue.pending_cfg[q.name] = q.value
            odom.max_frame_interval = float(p['max_frame_interval'])
            odom.twist_sigma = tuple(float(v) for v in p['twist_unknown_sigma'])
        self._output.path.configure(p['path_max_length'], p['path_publish_period'])
        self._pairer.configure(p['camera_info_wait'], p['camera_info_timeout'],
                               p['camera_info_max_age'])
