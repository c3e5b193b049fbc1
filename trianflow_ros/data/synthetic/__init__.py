"""
Synthetic textured scenes with exact ground truth (depth, flow, occlusion, poses).

``make_sequence(kind, num_frames, height, width, seed, stride)`` renders a camera sequence
through a street (driving), a highway (fast driving, far structure) or a room (hand-held, also
at 30 Hz); ``SyntheticSequence.pair(i, j)`` gives the two-view ground truth. ``KINDS`` lists the
trajectory kinds; see ``trajectories`` for their motion, ``sequence`` for the shapes and
``layouts`` for the scenes. ``distorted.make_distorted_sequence(kind, ..., distortion=...)``
renders the same scenes through a distorting lens, with exact ground truth on the raw pixels.
"""

from trianflow_ros.data.synthetic.sequence import (default_intrinsics, make_sequence,
                                                   SyntheticPair, SyntheticSequence)
from trianflow_ros.data.synthetic.trajectories import KINDS, make_trajectory

__all__ = ['default_intrinsics', 'KINDS', 'make_sequence', 'make_trajectory', 'SyntheticPair',
           'SyntheticSequence']
