"""The node's log throttle (trianflow_ros.ros.throttle): repeats hidden, new problems shown."""

from trianflow_ros.ros.throttle import LogThrottle, message_shape


class Clock:

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_shape_ignores_numbers_only():
    a = message_shape('frame dropped: image step 10 is smaller than 1248.5 (416 x rgb8)')
    b = message_shape('frame dropped: image step 12 is smaller than 3e3 (832 x rgb8)')
    assert a == b and 'step # is smaller' in a
    assert message_shape('encoding yuv422') != message_shape('encoding rgb8')


def test_different_errors_of_one_kind_are_all_logged():
    clock = Clock()
    throttle = LogThrottle(5.0, clock)
    first = throttle.admit('malformed', 'image data has 10 bytes, expected 30 (4x2 rgb8)')
    same = throttle.admit('malformed', 'image data has 12 bytes, expected 30 (4x2 rgb8)')
    other = throttle.admit('malformed', 'image is 0x0: no pixels')
    assert first is not None and same is None and other is not None
    clock.t += 5.0
    again = throttle.admit('malformed', 'image data has 11 bytes, expected 30 (4x2 rgb8)')
    assert again is not None and '(1 more like this' in again


def test_once_and_custom_period():
    clock = Clock()
    throttle = LogThrottle(5.0, clock)
    assert throttle.admit('info', 'using camera_matrix', once=True)
    clock.t += 1000.0
    assert throttle.admit('info', 'using camera_matrix', once=True) is None
    assert throttle.admit('qos', 'incompatible', period=30.0)
    clock.t += 10.0
    assert throttle.admit('qos', 'incompatible', period=30.0) is None
