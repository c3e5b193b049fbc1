"""
Scene layouts around a camera trajectory: a street or a highway (driving), a room (hand-held).

``street``: an infinite ground plane and a sky plane 35 m up, building facades on both sides
that follow the driven path (continuous, 5-20 m high, one texture per building), parked cars
and poles as boxes, and end walls ``ahead`` metres past the last and 30 m before the first
camera, so every pixel has a finite depth. ``room``: a closed room (floor, ceiling, four
walls) with photo posters on the walls and boxes on the floor kept clear of the camera path.
``highway``: far-field structure around a fast drive: an infinite textured road surface, blocks
of buildings 30-200 m to both sides of the path (from 100 m behind the first camera to
``ahead`` metres past the last), a cloud layer 1.5 km up and a backdrop of four walls
(mountains / skyline photos) 5 km from the path, so every pixel still has a finite depth but
most of the image lies beyond 30 m.
World frame as in ``trajectories``: y down, the ground at ``y = +camera height``.
"""

import math
from typing import Dict, List, Tuple

import torch

from trianflow_ros.data.synthetic.scene import lambert, Rects, SceneBuilder

SCENES = ('street', 'room', 'highway')
CAMERA_HEIGHT = 1.65
LIGHT = torch.tensor([0.35, -1.0, 0.25], dtype=torch.float64)
LIGHT = LIGHT / LIGHT.norm()
DOWN = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)


def _u(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _pick(gen: torch.Generator, items: List[int]) -> int:
    return items[int(torch.randint(len(items), (), generator=gen))]


def _tint(gen: torch.Generator, lo: float = 0.55) -> torch.Tensor:
    return lo + (1.0 - lo) * torch.rand(3, generator=gen, dtype=torch.float64)


def _textures(groups: Dict[str, List[int]], *names: str) -> List[int]:
    out = []
    for name in names:
        out += groups.get(name, [])
    return out or groups['noise']


class _Path:
    """Arc-length parameterised polyline on the ground (x, z) through the camera centres."""

    def __init__(self, centres: torch.Tensor, forward: torch.Tensor, behind: float,
                 ahead: float):
        pts = [centres[0] - behind * forward[0]]
        for c in centres:
            if float((c - pts[-1]).norm()) > 1e-3:
                pts.append(c)
        pts.append(pts[-1] + ahead * forward[-1])
        self.points = torch.stack(pts)                                   # (M, 2)
        seg = (self.points[1:] - self.points[:-1]).norm(dim=-1)
        self.s = torch.cat((torch.zeros(1, dtype=torch.float64), torch.cumsum(seg, 0)))
        self.length = float(self.s[-1])

    def at(self, s: float):
        """Return the point (x, z) and unit tangent at arc length ``s``."""
        s = min(max(s, 0.0), self.length)
        i = int(torch.searchsorted(self.s, torch.tensor(s, dtype=torch.float64)).clamp(
            1, len(self.s) - 1))
        a, b = self.points[i - 1], self.points[i]
        span = float(self.s[i] - self.s[i - 1])
        tangent = (b - a) / span
        return a + (s - float(self.s[i - 1])) * tangent, tangent


def _ground_path(poses: torch.Tensor, behind: float, ahead: float) -> Tuple[_Path, torch.Tensor]:
    """Return the cameras' path on the ground (x, z) of poses (N, 4, 4), and its midpoint."""
    centres = poses[:, [0, 2], 3]
    fwd = poses[:, [0, 2], 2]
    fwd = fwd / fwd.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    path = _Path(centres, fwd, behind=behind, ahead=ahead)
    return path, path.at(path.length / 2)[0]


def _ground_and_sky(b: SceneBuilder, gen: torch.Generator, groups: Dict[str, List[int]],
                    mid: torch.Tensor, tile: Tuple[float, float], tint: float, sky_y: float,
                    sky_tile: float, sky_colour: List[float]) -> None:
    """
    Add the endless ground (gravel at the camera height) and sky planes around ``mid`` (x, z).

    :param tile: range of the ground texture's tile size, metres (drawn from ``gen``).
    :param tint: lower bound of the ground's random tint.
    :param sky_y: height (y, down) of the sky plane.
    :param sky_tile: the sky texture's tile size, metres.
    :param sky_colour: the sky's RGB factor.
    """
    b.add_rect(_world(mid, CAMERA_HEIGHT), [1, 0, 0], [0, 0, 1], math.inf, math.inf,
               _pick(gen, _textures(groups, 'speckle', 'gravel')), _u(gen, *tile),
               _tint(gen, tint) * lambert(-DOWN, LIGHT, 0.45), facing=_world(mid, 0.0))
    b.add_rect(_world(mid, sky_y), [1, 0, 0], [0, 0, 1], math.inf, math.inf,
               _pick(gen, groups.get('clouds', groups['noise'])), sky_tile, sky_colour,
               facing=_world(mid, 0.0))


def _world(xz, y: float) -> torch.Tensor:
    return torch.tensor([float(xz[0]), y, float(xz[1])], dtype=torch.float64)


def _right(tangent) -> torch.Tensor:
    """Horizontal right-hand direction (world) of a ground tangent (x, z), y down."""
    return torch.tensor([float(tangent[1]), 0.0, -float(tangent[0])], dtype=torch.float64)


def _yaw_rotation(forward: torch.Tensor, jitter: float = 0.0) -> torch.Tensor:
    """World-from-box rotation with box z along ``forward`` (horizontal), y down."""
    angle = math.atan2(float(forward[0]), float(forward[2])) + jitter
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def build_street(poses: torch.Tensor, gen: torch.Generator, groups: Dict[str, List[int]],
                 ahead: float = 40.0, device='cpu') -> Rects:
    """
    Street scene around a driving trajectory.

    :param poses: T_wc of every rendered (underlying) frame, (N, 4, 4) float64.
    :param gen: seeded generator.
    :param groups: texture groups from ``build_texture_bank``.
    :param ahead: distance from the last camera to the far end wall in metres.
    :return: the scene rectangles (float64).
    """
    b = SceneBuilder()
    ground_y = CAMERA_HEIGHT
    path, mid = _ground_path(poses, behind=30.0, ahead=ahead)

    _ground_and_sky(b, gen, groups, mid, (2.5, 4.0), 0.8, ground_y - 35.0, 80.0, [1.0, 1.0, 1.0])
    for s_end, sign in ((path.length, -1.0), (0.0, 1.0)):
        p, tangent = path.at(s_end)
        b.add_rect(_world(p, ground_y - 30.0), _right(tangent), DOWN, 400.0, 40.0,
                   _pick(gen, _textures(groups, 'photo', 'grey_photo')), 40.0,
                   _tint(gen, 0.8) * 0.8, facing=_world(p + sign * tangent, 0.0))

    facade = _textures(groups, 'bricks', 'brick', 'photo', 'grey_photo', 'noise', 'planks')
    car = _textures(groups, 'photo', 'noise', 'tiles')
    for side in (-1.0, 1.0):
        width = _u(gen, 7.0, 10.0) if side < 0 else _u(gen, 5.5, 7.5)
        s0 = 0.0
        while s0 < path.length:                                   # buildings
            s1 = min(s0 + _u(gen, 6.0, 18.0), path.length)
            p0, t0 = path.at(s0)
            p1, t1 = path.at(s1)
            q0 = p0 + side * width * _right(t0)[[0, 2]]
            q1 = p1 + side * width * _right(t1)[[0, 2]]
            height = _u(gen, 5.0, 20.0)
            half1 = float((q1 - q0).norm()) / 2 + 0.02
            tex = _pick(gen, facade)
            axis = torch.tensor([float(q1[0] - q0[0]), 0.0, float(q1[1] - q0[1])])
            normal_hint = _world(path.at((s0 + s1) / 2)[0], 0.0)
            normal = -side * _right(path.at((s0 + s1) / 2)[1])
            b.add_rect(_world((q0 + q1) / 2, ground_y - height / 2), axis, DOWN, half1,
                       height / 2, tex, _u(gen, 3.0, 7.0),
                       _tint(gen, 0.5) * lambert(normal, LIGHT, 0.45),
                       offset=(_u(gen, 0, 5), _u(gen, 0, 5)), facing=normal_hint)
            s0 = s1
        s = _u(gen, 2.0, 8.0)
        while s < path.length - 3.0:                              # parked cars
            length, w, h = _u(gen, 3.8, 4.8), _u(gen, 1.6, 1.9), _u(gen, 1.3, 1.7)
            p, tangent = path.at(s + length / 2)
            lateral = side * (width - 0.8 - w / 2 - _u(gen, 0.0, 0.4))
            centre = _world(p + lateral * _right(tangent)[[0, 2]], ground_y - h / 2)
            fwd3 = torch.tensor([float(tangent[0]), 0.0, float(tangent[1])])
            b.add_box(centre, _yaw_rotation(fwd3, _u(gen, -0.08, 0.08)),
                      (w / 2, h / 2, length / 2), _pick(gen, car), _u(gen, 1.5, 3.0),
                      _tint(gen, 0.4), LIGHT, offset=(_u(gen, 0, 2), _u(gen, 0, 2)))
            s += length + _u(gen, 1.0, 12.0)
        s = _u(gen, 3.0, 15.0)
        while s < path.length - 3.0:                              # poles
            p, tangent = path.at(s)
            h = _u(gen, 3.0, 6.0)
            lateral = side * (width - 0.4)
            centre = _world(p + lateral * _right(tangent)[[0, 2]], ground_y - h / 2)
            b.add_box(centre, torch.eye(3, dtype=torch.float64), (0.1, h / 2, 0.1),
                      _pick(gen, _textures(groups, 'speckle', 'noise')), 1.0, _tint(gen, 0.6),
                      LIGHT)
            s += _u(gen, 8.0, 25.0)
    return b.build(device)


def build_room(poses: torch.Tensor, gen: torch.Generator, groups: Dict[str, List[int]],
               device='cpu') -> Rects:
    """
    Room scene around a hand-held (or rotating, or static) camera.

    :param poses: T_wc of every rendered (underlying) frame, (N, 4, 4) float64.
    :param gen: seeded generator.
    :param groups: texture groups from ``build_texture_bank``.
    :return: the scene rectangles (float64).
    """
    b = SceneBuilder()
    centres = poses[:, :3, 3]
    mid = 0.5 * (centres.amin(0) + centres.amax(0))
    hx, hz = _u(gen, 3.0, 4.5), _u(gen, 3.5, 5.0)
    floor_y, ceil_y = float(mid[1]) + _u(gen, 1.2, 1.5), float(mid[1]) - _u(gen, 1.2, 1.6)
    cx, cz = float(mid[0]), float(mid[2])
    wall_tex = _textures(groups, 'bricks', 'brick', 'noise', 'grey_photo', 'tiles')
    floor_tex = _textures(groups, 'planks', 'tiles', 'gravel', 'speckle')
    inside = [cx, (floor_y + ceil_y) / 2, cz]
    walls = [  # centre, axis1, axis2, texture choices, tint floor
        ([cx, floor_y, cz], [1, 0, 0], [0, 0, 1], floor_tex),
        ([cx, ceil_y, cz], [1, 0, 0], [0, 0, 1], _textures(groups, 'speckle', 'noise')),
        ([cx - hx, 0, cz], [0, 0, 1], [0, 1, 0], wall_tex),
        ([cx + hx, 0, cz], [0, 0, 1], [0, 1, 0], wall_tex),
        ([cx, 0, cz - hz], [1, 0, 0], [0, 1, 0], wall_tex),
        ([cx, 0, cz + hz], [1, 0, 0], [0, 1, 0], wall_tex),
    ]
    normals = []
    for centre, a1, a2, choices in walls:
        n = torch.linalg.cross(torch.tensor(a1, dtype=torch.float64),
                               torch.tensor(a2, dtype=torch.float64))
        if float(n @ (torch.tensor(inside, dtype=torch.float64)
                      - torch.tensor(centre, dtype=torch.float64))) < 0:
            n = -n
        normals.append(n)
        b.add_rect(centre, a1, a2, math.inf, math.inf, _pick(gen, choices),
                   _u(gen, 1.2, 2.5), _tint(gen, 0.6) * lambert(n, LIGHT, 0.55),
                   offset=(_u(gen, 0, 2), _u(gen, 0, 2)), facing=inside)
    photos = _textures(groups, 'photo', 'grey_photo')
    for k in range(int(torch.randint(4, 8, (), generator=gen))):      # posters
        w = 2 + k % 4
        centre = torch.tensor(walls[w][0], dtype=torch.float64)
        along = torch.tensor(walls[w][1], dtype=torch.float64)
        extent = hz if w < 4 else hx
        half = _u(gen, 0.3, 0.7)
        pos = centre + normals[w] * 0.02 + along * _u(gen, -extent + 0.8, extent - 0.8)
        pos[1] = _u(gen, ceil_y + 0.9, floor_y - 1.0)
        b.add_rect(pos, along, DOWN, half, half, _pick(gen, photos), 2 * half,
                   lambert(normals[w], LIGHT, 0.55) * torch.ones(3, dtype=torch.float64),
                   offset=(half, half), facing=pos + normals[w])
    box_tex = _textures(groups, 'photo', 'grey_photo', 'noise', 'planks', 'tiles', 'bricks')
    placed = []
    for _ in range(int(torch.randint(9, 15, (), generator=gen))):     # boxes on the floor
        for _attempt in range(40):
            half = torch.tensor([_u(gen, 0.15, 0.6), _u(gen, 0.15, 0.8), _u(gen, 0.15, 0.6)],
                                dtype=torch.float64)
            radius = float(half.norm())
            x = _u(gen, cx - hx + 0.2 + radius, cx + hx - 0.2 - radius)
            z = _u(gen, cz - hz + 0.2 + radius, cz + hz - 0.2 - radius)
            centre = torch.tensor([x, floor_y - float(half[1]), z], dtype=torch.float64)
            clear = float((centres - centre).norm(dim=-1).min()) > radius + 0.6
            apart = all(float((centre - c)[[0, 2]].norm()) > radius + r for c, r in placed)
            if clear and apart:
                break
        else:
            continue
        placed.append((centre, radius))
        yaw = _u(gen, -math.pi, math.pi)
        R = _yaw_rotation(torch.tensor([math.sin(yaw), 0.0, math.cos(yaw)]))
        b.add_box(centre, R, half, [_pick(gen, box_tex) for _ in range(6)], _u(gen, 0.6, 1.5),
                  _tint(gen, 0.5), LIGHT, ambient=0.5, offset=(_u(gen, 0, 1), _u(gen, 0, 1)))
    return b.build(device)


def build_highway(poses: torch.Tensor, gen: torch.Generator, groups: Dict[str, List[int]],
                  ahead: float = 600.0, device='cpu') -> Rects:
    """
    Highway scene around a fast driving trajectory: road, distant buildings, sky and backdrop.

    :param poses: T_wc of every rendered (underlying) frame, (N, 4, 4) float64.
    :param gen: seeded generator.
    :param groups: texture groups from ``build_texture_bank``.
    :param ahead: how far past the last camera the buildings go, in metres.
    :return: the scene rectangles (float64).
    """
    b = SceneBuilder()
    ground_y = CAMERA_HEIGHT
    path, mid = _ground_path(poses, behind=100.0, ahead=ahead)
    # the road's texture tile is larger than the distance driven in two frames (2.5-3 m
    # each): a mirrored 2-3.5 m tile repeated itself every one or two frames, and the true
    # motion of the road was aliased (no matcher can resolve it from two images)
    sky_y = ground_y - 1500.0
    _ground_and_sky(b, gen, groups, mid, (9.0, 14.0), 0.75, sky_y, 900.0, [0.9, 0.95, 1.0])
    backdrop = 5000.0                                 # far walls around the whole drive
    for dx, dz in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)):
        centre = _world((float(mid[0]) + dx * backdrop, float(mid[1]) + dz * backdrop),
                        (ground_y + sky_y) / 2)
        along = torch.tensor([dz, 0.0, dx], dtype=torch.float64)
        b.add_rect(centre, along, DOWN, backdrop + 10.0, (ground_y - sky_y) / 2 + 1.0,
                   _pick(gen, _textures(groups, 'photo', 'grey_photo', 'clouds')), 600.0,
                   _tint(gen, 0.7), offset=(_u(gen, 0, 600), 0.0),
                   facing=_world(mid, 0.0))
    block = _textures(groups, 'bricks', 'brick', 'photo', 'grey_photo', 'noise', 'tiles')
    for side in (-1.0, 1.0):
        s = _u(gen, 0.0, 30.0)
        while s < path.length:                                    # blocks of buildings
            p, tangent = path.at(s)
            lateral = _u(gen, 30.0, 200.0)
            half = (_u(gen, 5.0, 25.0), _u(gen, 4.0, 20.0), _u(gen, 5.0, 25.0))
            centre = _world(p + side * (lateral + half[0]) * _right(tangent)[[0, 2]],
                            ground_y - half[1])
            fwd3 = torch.tensor([float(tangent[0]), 0.0, float(tangent[1])])
            b.add_box(centre, _yaw_rotation(fwd3, _u(gen, -0.3, 0.3)), half,
                      [_pick(gen, block) for _ in range(6)], _u(gen, 4.0, 10.0),
                      _tint(gen, 0.5), LIGHT, offset=(_u(gen, 0, 5), _u(gen, 0, 5)))
            s += 2.0 * half[2] + _u(gen, 5.0, 60.0)
    return b.build(device)


def build_scene(kind: str, poses: torch.Tensor, gen: torch.Generator,
                groups: Dict[str, List[int]], device='cpu') -> Rects:
    """
    Build a scene layout of ``kind`` ('street', 'room' or 'highway') around ``poses``.

    :return: the scene rectangles (float64, on ``device``).
    """
    if kind == 'street':
        return build_street(poses, gen, groups, device=device)
    if kind == 'room':
        return build_room(poses, gen, groups, device=device)
    if kind == 'highway':
        return build_highway(poses, gen, groups, device=device)
    raise ValueError(f'unknown scene kind {kind!r}; choose one of {SCENES}')
