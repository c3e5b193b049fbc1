"""
The lens distortion of the incoming camera_info, tracked for the node.

:class:`DistortionTracker` turns ``distortion_model`` / ``D`` into a
:class:`~trianflow_ros.geometry.distortion.Distortion` (None for a pinhole or rectified
camera) once per change of the camera_info's model, and remembers what it decided for the
diagnostics. An unsupported model is not fatal: the frames are processed as pinhole images and
every call returns the reason, for a throttled warning.
"""

from typing import Optional, Tuple

from trianflow_ros.geometry.distortion import Distortion


class DistortionTracker:
    """The distortion of the latest camera_info model (one camera)."""

    def __init__(self):
        """Start with a pinhole camera."""
        self._key = None
        self._dist: Optional[Distortion] = None
        self.error = ''
        #: what is used, for the diagnostics
        self.used = 'none (pinhole)'

    def update(self, model: str, d) -> Tuple[Optional[Distortion], bool, str]:
        """
        Return ``(distortion or None, changed, problem)`` for a camera_info's model and D.

        :param model: ``CameraInfo.distortion_model``.
        :param d: ``CameraInfo.d``.
        :return: the distortion to pass to the odometry (None: pinhole); whether it differs
            from the previous call's (log it); the reason it is not supported ('' if it is).
        """
        key = (str(model), tuple(float(v) for v in d))
        changed = key != self._key
        if changed:
            self._key = key
            try:
                dist = Distortion.from_camera_info(*key)
                self.error = ''
                self._dist = None if dist.is_identity else dist
                self.used = (f'{dist.model} {list(dist.coeffs)}' if not dist.is_identity
                             else 'none (pinhole)')
            except ValueError as e:
                self._dist = None
                self.error = (f'{e} The frames are processed as pinhole images (biased where '
                              'the lens distorts).')
                self.used = f'unsupported {key[0]!r}: processed as pinhole'
        return self._dist, changed, self.error
