"""
The node's diagnostic messages.

One DiagnosticStatus per frame (``~/status``) and the periodic summary on ``/diagnostics``
(state, accounting, timings, configuration).
"""

from typing import Dict, Optional

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from trianflow_ros.vo.types import FrameResult, TrackingState

PACKAGE = 'trianflow_ros'
#: Diagnostic level of each tracking state.
LEVEL = {TrackingState.INITIALIZING: DiagnosticStatus.OK,
         TrackingState.TRACKING: DiagnosticStatus.OK,
         TrackingState.RECOVERED: DiagnosticStatus.WARN,
         TrackingState.LOST: DiagnosticStatus.ERROR}


def _status(level, name: str, message: str, values: Dict[str, object]) -> DiagnosticStatus:
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=PACKAGE,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def frame_status(node_name: str, r: FrameResult, latency_ms: Optional[float]
                 ) -> DiagnosticStatus:
    """Return the per-frame status (``~/status``); latency None = stamps of another clock."""
    values = {'state': r.state.name, 'stamp': f'{r.stamp:.9f}', 'method': r.method,
              'num_matches': r.num_matches, 'num_inliers': r.num_inliers,
              'scale_source': r.scale_source,
              'latency_ms': 'n/a' if latency_ms is None else f'{latency_ms:.1f}'}
    values.update({f'time_{k}_ms': f'{v:.1f}' for k, v in r.timings.items()})
    return _status(LEVEL[r.state], f'{node_name}: frame', r.message or r.state.name, values)


def summary_status(node_name: str, values: Dict[str, object], last: Optional[FrameResult],
                   paused: bool, image_topic: str) -> DiagnosticStatus:
    """
    Return the ``/diagnostics`` status: ``values`` (accounting, configuration) + the last frame.

    Level: WARN while paused or before the first frame, else the last frame's state.
    """
    values = dict(values)
    if last is not None:
        values.update({'num_matches': last.num_matches, 'num_inliers': last.num_inliers,
                       'method': last.method, 'scale': f'{last.scale:.4f}',
                       'scale_source': last.scale_source, 'message': last.message})
        values.update({f'time_{k}_ms': f'{v:.1f}' for k, v in last.timings.items()})
    if paused:
        level, message = DiagnosticStatus.WARN, 'paused'
    elif last is None:
        level, message = DiagnosticStatus.WARN, f'waiting for images on {image_topic}'
    else:
        level = LEVEL[last.state]
        message = last.state.name + (f': {last.message}' if last.message else '')
    return _status(level, f'{node_name}: visual odometry', message, values)
