"""
Smooth camera trajectories (camera-to-world poses ``T_wc``) drawn from a seed.

World frame: x right, y down, z forward at the start (the optical frame of an upright camera
looking along the street or into the room); the ground is at ``y = +camera height``.
Motions are sums of sinusoids with random amplitudes, periods and phases, so the first ``n``
frames of a trajectory do not depend on how many frames follow (a stride just subsamples).

Kinds:

- ``forward``: driving, about 1 m per frame (10 Hz at ~36 km/h) with gentle yaw
  (peak ~1 deg/frame), small pitch/roll vibration and suspension bounce, like KITTI.
- ``handheld``: 0.02-0.05 m per frame translation, 0.5-3 deg per frame rotation about all axes.
- ``pure_rotation``: the camera centre stays fixed while it rotates like ``handheld``.
- ``standstill``: every pose identical.
- ``highway``: fast driving, 2.5-3 m per frame (25-30 m/s at 10 Hz) with mild curvature (peak
  yaw rate 0.05-0.2 deg/frame, a curve radius of ~1 km and more) and smaller vibration than
  ``forward``; rendered in the ``highway`` scene, where most pixels are far away.
- ``handheld30``: a camera held in the hand at 30 Hz: smooth sway (periods of 1.5-5 s),
  0.005-0.02 m and 0.1-0.5 deg per frame; rendered in the ``room`` scene.
- ``turns``: an urban drive at 10 Hz through 90-degree street corners, the first left or
  right at random, then alternating (the path zig-zags and never crosses a street it has
  passed): 5-10 frames straight at 0.8-1.1 m/frame, then corners of 2-3.5 deg/frame (a curve
  radius of 13-20 m, so 0.45-1.2 m/frame in the corner) with 6-frame ramps in and out,
  separated by 8-20 straight frames; the first two corners end within 115 frames. Vibration
  as ``forward``.
"""

import math
from typing import Tuple

import torch

from trianflow_ros.geometry.se3 import so3_exp

KINDS = ('forward', 'handheld', 'pure_rotation', 'standstill', 'highway', 'handheld30',
         'turns')


def _uniform(gen: torch.Generator, lo: float, hi: float, size=()) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(size, generator=gen, dtype=torch.float64)


def _sinusoids(gen: torch.Generator, frames: torch.Tensor, channels: int, count: int,
               period: Tuple[float, float]) -> torch.Tensor:
    """Return a sum of ``count`` unit-amplitude sinusoids per channel, shape (N, channels)."""
    periods = _uniform(gen, period[0], period[1], (count, channels))
    phases = _uniform(gen, 0.0, 2.0 * math.pi, (count, channels))
    weights = _uniform(gen, 0.5, 1.0, (count, channels))
    weights = weights / weights.sum(0, keepdim=True)
    arg = 2.0 * math.pi * frames[:, None, None] / periods + phases              # (N, c, ch)
    return (weights * torch.sin(arg)).sum(1)


def _rot_y(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack((c, z, s, z, o, z, -s, z, c), -1).reshape(-1, 3, 3)


def _rot_x(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack((o, z, z, z, c, -s, z, s, c), -1).reshape(-1, 3, 3)


def _rot_z(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack((c, -s, z, s, c, z, z, z, o), -1).reshape(-1, 3, 3)


def _pose(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    T = torch.eye(4, dtype=torch.float64).repeat(R.shape[0], 1, 1)
    T[:, :3, :3] = R
    T[:, :3, 3] = t
    return T


def _clip_norm(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Rescale the rows of ``x`` so that their norms lie in [lo, hi]."""
    norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return x * norm.clamp(lo, hi) / norm


def _drive(num: int, gen: torch.Generator, speed: Tuple[float, float],
           yaw_deg: Tuple[float, float], speed_var: float = 0.08,
           vibration_deg: Tuple[float, float] = (0.3, 0.2), bounce_m: float = 0.015
           ) -> torch.Tensor:
    """
    Drive a car along a gently curving path at constant camera height (draws of ``forward``).

    :param speed: range of the mean speed in m/frame.
    :param yaw_deg: range of the peak yaw rate in deg/frame.
    :param speed_var: relative amplitude of the speed variation.
    :param vibration_deg: pitch and roll vibration amplitudes in degrees.
    :param bounce_m: vertical suspension bounce amplitude in metres.
    :return: T_wc, shape (num, 4, 4), float64; the first pose has zero yaw at the origin.
    """
    k = torch.arange(num, dtype=torch.float64)
    v = _uniform(gen, *speed) * (1.0 + speed_var * _sinusoids(gen, k, 1, 2, (30, 90))[:, 0])
    yaw_amp = math.radians(float(_uniform(gen, *yaw_deg)))
    yaw_rate = yaw_amp * _sinusoids(gen, k, 1, 3, (40, 160))[:, 0]
    yaw = torch.cumsum(yaw_rate, 0) - yaw_rate[0]
    vib = _sinusoids(gen, k, 3, 3, (4, 20))
    pitch = math.radians(vibration_deg[0]) * vib[:, 0]
    roll = math.radians(vibration_deg[1]) * vib[:, 1]
    bounce = bounce_m * vib[:, 2]
    heading = torch.stack((torch.sin(yaw), torch.cos(yaw)), -1) * v[:, None]
    xz = torch.cumsum(heading, 0) - heading[0]
    t = torch.stack((xz[:, 0], bounce - bounce[0], xz[:, 1]), -1)
    return _pose(_rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll), t)


def forward_trajectory(num: int, gen: torch.Generator) -> torch.Tensor:
    """
    Driving: ~1 m/frame along a gently curving path at constant camera height.

    :param num: number of frames.
    :param gen: seeded generator.
    :return: T_wc, shape (num, 4, 4), float64; the first pose has zero yaw at the origin.
    """
    return _drive(num, gen, (0.8, 1.2), (0.4, 1.0))


def highway_trajectory(num: int, gen: torch.Generator) -> torch.Tensor:
    """
    Highway driving: 2.5-3 m/frame (25-30 m/s at 10 Hz), mild curvature, small vibration.

    The peak yaw rate is 0.05-0.2 deg/frame (at 27 m/s a curve radius of 0.8 km and more) and
    the speed varies by +-3 %; pitch / roll vibration 0.15 / 0.1 deg, bounce 1 cm.

    :param num: number of frames.
    :param gen: seeded generator.
    :return: T_wc, shape (num, 4, 4), float64; the first pose has zero yaw at the origin.
    """
    return _drive(num, gen, (2.5, 3.0), (0.05, 0.2), speed_var=0.03,
                  vibration_deg=(0.15, 0.1), bounce_m=0.01)


#: frames of the ramps into and out of a turn of ``turns_trajectory``.
TURN_RAMP = 6


def _turn_profile(num: int, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Return the yaw rate (rad/frame) and speed (m/frame) of an urban drive with corners.

    Segments are drawn in order (straight, turn, straight, turn, ...) until ``num`` frames are
    covered, so the first frames do not depend on ``num``. A turn's yaw rate rises along a
    half cosine over ``TURN_RAMP`` frames, holds, and falls back; its hold length makes the
    integral exactly +-90 deg. The speed follows the same profile between the straight speed
    and the turn's (curve radius x yaw rate).

    :return: (yaw_rate, speed), each shape (num,), float64.
    """
    yaw_rate = torch.zeros(num, dtype=torch.float64)
    speed = torch.zeros(num, dtype=torch.float64)
    v_straight = float(_uniform(gen, 0.8, 1.1))
    k = 0
    sign = 0.0
    gap = int(_uniform(gen, 5.0, 11.0))
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(TURN_RAMP, dtype=torch.float64) + 0.5)
                                 / TURN_RAMP)                   # (0, 1), half cosine
    while k < num:
        speed[k:k + gap] = v_straight
        k += gap
        if k >= num:
            break
        rate = math.radians(float(_uniform(gen, 2.0, 3.5)))
        radius = float(_uniform(gen, 13.0, 20.0))
        # the first corner left or right at random, then alternating: the path zig-zags
        # and never crosses a street it has passed (4 corners the same way close a block)
        if sign == 0.0:
            sign = 1.0 if float(_uniform(gen, 0.0, 1.0)) < 0.5 else -1.0
        else:
            sign = -sign
        # ramps contribute rate * TURN_RAMP / 2 each: the hold covers the rest of 90 deg
        hold_angle = math.pi / 2 - rate * TURN_RAMP
        hold = int(math.floor(hold_angle / rate))
        last = hold_angle - hold * rate                    # < rate: one shorter frame
        profile = torch.cat((ramp, torch.ones(hold, dtype=torch.float64),
                             torch.tensor([last / rate], dtype=torch.float64), ramp.flip(0)))
        n = min(len(profile), num - k)
        yaw_rate[k:k + n] = sign * rate * profile[:n]
        speed[k:k + n] = v_straight + (radius * rate - v_straight) * profile[:n]
        k += len(profile)
        gap = int(_uniform(gen, 8.0, 21.0))
    return yaw_rate, speed


def turns_trajectory(num: int, gen: torch.Generator) -> torch.Tensor:
    """
    Drive through a street with 90-degree corners (see the module docstring), at constant height.

    :param num: number of frames.
    :param gen: seeded generator.
    :return: T_wc, shape (num, 4, 4), float64; the first pose has zero yaw at the origin.
    """
    k = torch.arange(num, dtype=torch.float64)
    vib = _sinusoids(gen, k, 3, 3, (4, 20))              # fixed draws before the schedule's
    yaw_rate, v = _turn_profile(num, gen)
    yaw = torch.cumsum(yaw_rate, 0) - yaw_rate[0]
    pitch = math.radians(0.3) * vib[:, 0]
    roll = math.radians(0.2) * vib[:, 1]
    bounce = 0.015 * vib[:, 2]
    # the step from frame i to i + 1 goes along the heading of frame i (the yaw before the
    # step), as ``_drive``
    heading = torch.stack((torch.sin(yaw), torch.cos(yaw)), -1) * v[:, None]
    xz = torch.cumsum(heading, 0) - heading[0]
    t = torch.stack((xz[:, 0], bounce - bounce[0], xz[:, 1]), -1)
    return _pose(_rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll), t)


def _rotation_path(num: int, gen: torch.Generator, lo_deg: float, hi_deg: float,
                   period: Tuple[float, float] = (25.0, 90.0), rate_deg: float = 2.0
                   ) -> torch.Tensor:
    """
    Integrate a smooth body-frame angular velocity with norm in [lo, hi] deg/frame.

    :param period: range of the periods (frames) of the sinusoids of the angular velocity.
    :param rate_deg: scale (deg/frame) of the angular velocity before the norm is clipped.
    """
    k = torch.arange(num, dtype=torch.float64)
    axis_amp = _uniform(gen, 0.6, 1.0, (3,))
    omega = _sinusoids(gen, k, 3, 3, period) * axis_amp
    omega = _clip_norm(omega * math.radians(rate_deg), math.radians(lo_deg),
                       math.radians(hi_deg))
    yaw0 = _uniform(gen, -0.2, 0.2)
    pitch0 = _uniform(gen, 0.0, 0.15)
    R = [(_rot_y(yaw0.reshape(1)) @ _rot_x(-pitch0.reshape(1)))[0]]
    steps = so3_exp(omega)
    for i in range(1, num):
        R.append(R[-1] @ steps[i - 1])
    return torch.stack(R)


def handheld_trajectory(num: int, gen: torch.Generator) -> torch.Tensor:
    """
    Hand-held: 0.02-0.05 m/frame translation and 0.5-3 deg/frame rotation about all axes.

    :return: T_wc, shape (num, 4, 4), float64, starting at the origin.
    """
    R = _rotation_path(num, gen, 0.5, 3.0)
    k = torch.arange(num, dtype=torch.float64)
    vel = _clip_norm(_sinusoids(gen, k, 3, 3, (30, 90)) * 0.04, 0.02, 0.05)
    t = torch.cumsum(vel, 0) - vel[0]
    return _pose(R, t)


def handheld30_trajectory(num: int, gen: torch.Generator) -> torch.Tensor:
    """
    Hand-held at 30 Hz: smooth sway, 0.005-0.02 m/frame and 0.1-0.5 deg/frame.

    The angular and linear velocities are sums of sinusoids with periods of 45-150 frames
    (1.5-5 s at 30 Hz), so consecutive frames differ by a small, slowly changing motion.

    :return: T_wc, shape (num, 4, 4), float64, starting at the origin.
    """
    R = _rotation_path(num, gen, 0.1, 0.5, period=(45.0, 150.0), rate_deg=0.4)
    k = torch.arange(num, dtype=torch.float64)
    vel = _clip_norm(_sinusoids(gen, k, 3, 3, (45, 150)) * 0.015, 0.005, 0.02)
    t = torch.cumsum(vel, 0) - vel[0]
    return _pose(R, t)


def pure_rotation_trajectory(num: int, gen: torch.Generator) -> torch.Tensor:
    """
    Rotation about the fixed camera centre (the origin), 0.5-3 deg/frame.

    :return: T_wc, shape (num, 4, 4), float64.
    """
    R = _rotation_path(num, gen, 0.5, 3.0)
    return _pose(R, torch.zeros(num, 3, dtype=torch.float64))


def standstill_trajectory(num: int, gen: torch.Generator) -> torch.Tensor:
    """
    Identical poses: the origin, a slightly random heading and a small downward pitch.

    :return: T_wc, shape (num, 4, 4), float64.
    """
    yaw = _uniform(gen, -0.1, 0.1).reshape(1)
    pitch = _uniform(gen, 0.0, 0.05).reshape(1)
    R = _rot_y(yaw) @ _rot_x(-pitch)
    return _pose(R, torch.zeros(1, 3, dtype=torch.float64)).repeat(num, 1, 1)


GENERATORS = {
    'forward': forward_trajectory,
    'handheld': handheld_trajectory,
    'pure_rotation': pure_rotation_trajectory,
    'standstill': standstill_trajectory,
    'highway': highway_trajectory,
    'handheld30': handheld30_trajectory,
    'turns': turns_trajectory,
}


def make_trajectory(kind: str, num_frames: int, gen: torch.Generator, stride: int = 1
                    ) -> torch.Tensor:
    """
    Camera-to-world poses of a trajectory kind, every ``stride``-th frame.

    :param kind: one of ``KINDS``.
    :param num_frames: number of poses returned.
    :param gen: seeded generator.
    :param stride: frame stride (fast motion): frame i is frame ``i * stride`` of the underlying
        trajectory.
    :return: T_wc, shape (num_frames, 4, 4), float64.
    """
    if kind not in GENERATORS:
        raise ValueError(f'unknown trajectory kind {kind!r}; choose one of {KINDS}')
    if num_frames < 1 or stride < 1:
        raise ValueError(f'num_frames and stride must be >= 1, got {num_frames}, {stride}')
    full = GENERATORS[kind]((num_frames - 1) * stride + 1, gen)
    return full[::stride].contiguous()
