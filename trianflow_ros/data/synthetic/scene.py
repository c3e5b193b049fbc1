"""
Analytic scenes made of one-sided rectangles, and ray casting against all of them at once.

Every surface is a rectangle (centre ``c``, orthonormal in-plane axes ``a1``, ``a2``, normal
``n = a1 x a2`` pointing to the side it is seen from, half extents ``h1``, ``h2`` that may be
infinite). An infinite plane is a rectangle with infinite extents, and a box is six outward
rectangles. A ray ``o + t d`` hits rectangle k at ``t = n.(c - o) / n.d`` when ``t > 0`` and
the hit lies within the extents; the nearest hit wins. Because every ray of a frame starts at
the camera centre, back-facing rectangles and rectangles outside the view frustum are culled
once per frame. With ``d = R_wc K^-1 [u, v, 1]^T`` the ray parameter ``t`` is the z-depth.
"""

from dataclasses import dataclass, fields
from typing import List, Optional, Tuple

import torch


@dataclass
class Rects:
    """
    A set of P rectangles (the whole scene), all tensors on one device.

    :ivar centre: (P, 3) world centres.
    :ivar axis1: (P, 3) unit in-plane axis of texture coordinate u.
    :ivar axis2: (P, 3) unit in-plane axis of texture coordinate v.
    :ivar normal: (P, 3) unit normal ``axis1 x axis2``, towards the visible side.
    :ivar half1: (P,) half extent along axis1 in metres (may be inf).
    :ivar half2: (P,) half extent along axis2 in metres (may be inf).
    :ivar texture: (P,) int64 texture index.
    :ivar tile: (P,) metres per texture tile (world-metric texture scale).
    :ivar offset: (P, 2) texture offset in metres.
    :ivar colour: (P, 3) RGB multiplier: tint times the face's Lambertian shading.
    :ivar group: (P,) int64 object id (the six faces of a box share one).
    """

    centre: torch.Tensor
    axis1: torch.Tensor
    axis2: torch.Tensor
    normal: torch.Tensor
    half1: torch.Tensor
    half2: torch.Tensor
    texture: torch.Tensor
    tile: torch.Tensor
    offset: torch.Tensor
    colour: torch.Tensor
    group: torch.Tensor

    def __len__(self) -> int:
        """Return the number of rectangles P."""
        return int(self.centre.shape[0])

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> 'Rects':
        """Copy to a device; floating tensors also to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
            out[f.name] = value.to(device) if device is not None else value
        return Rects(**out)

    def select(self, index: torch.Tensor) -> 'Rects':
        """Return the rectangles at ``index`` (a long or bool tensor)."""
        return Rects(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


class SceneBuilder:
    """Collect rectangles and boxes in float64, then freeze them into ``Rects``."""

    def __init__(self):
        """Start an empty scene."""
        self._rows: List[dict] = []
        self._groups = 0

    def add_rect(self, centre, axis1, axis2, half1: float, half2: float, texture: int,
                 tile: float, colour, offset=(0.0, 0.0), facing=None,
                 group: Optional[int] = None) -> int:
        """
        Add one rectangle.

        :param centre: world centre (3,).
        :param axis1: in-plane axis for texture u (3,), normalised here.
        :param axis2: in-plane axis for texture v (3,), made orthonormal to axis1 here.
        :param half1: half extent along axis1 (inf for an unbounded plane).
        :param half2: half extent along axis2.
        :param texture: texture index.
        :param tile: metres per texture tile.
        :param colour: RGB multiplier (3,).
        :param offset: texture offset in metres (2,).
        :param facing: optional world point on the visible side; axis1 is flipped if the normal
            points away from it.
        :param group: object id; a new one when None.
        :return: the object id.
        """
        c = torch.as_tensor(centre, dtype=torch.float64)
        a1 = torch.as_tensor(axis1, dtype=torch.float64)
        a1 = a1 / a1.norm()
        a2 = torch.as_tensor(axis2, dtype=torch.float64)
        a2 = a2 - (a2 @ a1) * a1
        a2 = a2 / a2.norm()
        n = torch.linalg.cross(a1, a2)
        if facing is not None:
            if float(n @ (torch.as_tensor(facing, dtype=torch.float64) - c)) < 0:
                a1, n = -a1, -n
        if group is None:
            group = self._groups
            self._groups += 1
        self._rows.append({
            'centre': c, 'axis1': a1, 'axis2': a2, 'normal': n, 'half1': float(half1),
            'half2': float(half2), 'texture': int(texture), 'tile': float(tile),
            'offset': tuple(float(x) for x in offset),
            'colour': torch.as_tensor(colour, dtype=torch.float64), 'group': group})
        return group

    def add_box(self, centre, rotation, half_extents, textures, tile: float, colour,
                light, ambient: float = 0.45, offset=(0.0, 0.0)) -> int:
        """
        Add an oriented box as six outward faces, each shaded by a fixed directional light.

        :param centre: world centre (3,).
        :param rotation: (3, 3) world-from-box rotation (columns = box axes).
        :param half_extents: (3,) half sizes along the box axes.
        :param textures: one texture index, or six (one per face).
        :param tile: metres per texture tile.
        :param colour: RGB tint (3,).
        :param light: unit world direction towards the light (3,).
        :param ambient: ambient share of the shading.
        :return: the object id shared by the six faces.
        """
        c = torch.as_tensor(centre, dtype=torch.float64)
        R = torch.as_tensor(rotation, dtype=torch.float64)
        h = [float(x) for x in half_extents]
        if isinstance(textures, int):
            textures = [textures] * 6
        group = self._groups
        self._groups += 1
        face = 0
        for k in range(3):
            i, j = (k + 1) % 3, (k + 2) % 3          # right-handed: e_i x e_j = e_k
            for sign in (1.0, -1.0):
                n = sign * R[:, k]
                a1, a2 = sign * R[:, i], R[:, j]     # (s e_i) x e_j = s e_k
                shade = lambert(n, light, ambient)
                self.add_rect(c + sign * h[k] * R[:, k], a1, a2, h[i], h[j], textures[face],
                              tile, torch.as_tensor(colour, dtype=torch.float64) * shade,
                              offset=offset, group=group)
                face += 1
        return group

    def build(self, device='cpu') -> Rects:
        """Freeze the collected rectangles into float64 tensors on ``device``."""
        rows = self._rows

        def stack(key):
            return torch.stack([r[key] for r in rows])

        return Rects(
            centre=stack('centre'), axis1=stack('axis1'), axis2=stack('axis2'),
            normal=stack('normal'),
            half1=torch.tensor([r['half1'] for r in rows], dtype=torch.float64),
            half2=torch.tensor([r['half2'] for r in rows], dtype=torch.float64),
            texture=torch.tensor([r['texture'] for r in rows], dtype=torch.long),
            tile=torch.tensor([r['tile'] for r in rows], dtype=torch.float64),
            offset=torch.tensor([r['offset'] for r in rows], dtype=torch.float64),
            colour=stack('colour'),
            group=torch.tensor([r['group'] for r in rows], dtype=torch.long),
        ).to(device)


def lambert(normal: torch.Tensor, light: torch.Tensor, ambient: float) -> float:
    """Return the view-independent shading ``ambient + (1 - ambient) max(0, n.l)``."""
    return ambient + (1.0 - ambient) * max(0.0, float(normal @ light))


def cull(rects: Rects, T_wc: torch.Tensor, K: torch.Tensor, height: int, width: int,
         margin: float = 2.0) -> torch.Tensor:
    """
    Find the rectangles that a camera may see (front-facing and in the view frustum).

    :param rects: the scene.
    :param T_wc: camera-to-world pose (4, 4).
    :param K: intrinsics (3, 3) without skew.
    :param margin: frustum margin in pixels.
    :return: int64 indices into ``rects``.
    """
    origin = T_wc[:3, 3].to(rects.centre.dtype)
    front = ((origin - rects.centre) * rects.normal).sum(-1) > 0
    finite = torch.isfinite(rects.half1) & torch.isfinite(rects.half2)
    h1 = torch.where(finite, rects.half1, torch.zeros_like(rects.half1)).unsqueeze(-1)
    h2 = torch.where(finite, rects.half2, torch.zeros_like(rects.half2)).unsqueeze(-1)
    corners = torch.stack([rects.centre + s1 * h1 * rects.axis1 + s2 * h2 * rects.axis2
                           for s1 in (-1.0, 1.0) for s2 in (-1.0, 1.0)], dim=1)   # (P, 4, 3)
    R = T_wc[:3, :3].to(corners.dtype)
    X = (corners - origin) @ R                                     # camera frame, (P, 4, 3)
    x, y, z = X[..., 0], X[..., 1], X[..., 2]
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    outside = torch.stack([
        z <= 0,
        fx * x + (cx + 0.5 + margin) * z < 0,
        (width - 0.5 + margin - cx) * z - fx * x < 0,
        fy * y + (cy + 0.5 + margin) * z < 0,
        (height - 0.5 + margin - cy) * z - fy * y < 0,
    ]).all(dim=-1).any(dim=0)                                      # (P,)
    keep = front & (~outside | ~finite)
    return torch.nonzero(keep).squeeze(-1)


def intersect(rects: Rects, origin: torch.Tensor, dirs: torch.Tensor, chunk: int = 65536
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Nearest hit of rays from one origin against all rectangles.

    :param rects: candidate rectangles (P of them), dtype of ``dirs``.
    :param origin: ray origin (3,).
    :param dirs: ray directions (N, 3), not necessarily unit.
    :param chunk: rays per block (bounds the (N, P) temporaries).
    :return: ``t`` (N,), inf where nothing is hit, and the rectangle index (N,) into ``rects``
        (0 where nothing is hit). Not meant for gradients.
    """
    rel = rects.centre - origin                                            # (P, 3)
    num = (rel * rects.normal).sum(-1)                                     # n.(c - o)
    cu = -(rel * rects.axis1).sum(-1)                                      # a1.(o - c)
    cv = -(rel * rects.axis2).sum(-1)
    basis = torch.cat((rects.normal, rects.axis1, rects.axis2), dim=0).T   # (3, 3P)
    p = len(rects)
    ts, idxs = [], []
    for start in range(0, dirs.shape[0], chunk):
        d = dirs[start:start + chunk]
        proj = d @ basis                                                   # (n, 3P)
        dn, d1, d2 = proj[:, :p], proj[:, p:2 * p], proj[:, 2 * p:]
        t = num / dn
        hit = (t > 1e-6) & ((cu + t * d1).abs() <= rects.half1) \
            & ((cv + t * d2).abs() <= rects.half2)
        t = torch.where(hit, t, torch.full_like(t, float('inf')))
        tmin, idx = t.min(dim=1)
        ts.append(tmin)
        idxs.append(idx)
    return torch.cat(ts), torch.cat(idxs)


def compact_candidates(candidates: torch.Tensor) -> torch.Tensor:
    """
    Drop repeated ids from rows of candidate lists, keeping as few columns as possible.

    :param candidates: (N, C) int64 ids, non-negative.
    :return: (N, C') int64 with C' the largest number of distinct ids in a row; shorter rows
        are padded with their first id.
    """
    if candidates.shape[1] <= 1:
        return candidates
    ordered, _ = candidates.sort(dim=1)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    sentinel = torch.iinfo(ordered.dtype).max
    ordered, _ = torch.where(repeat, torch.full_like(ordered, sentinel), ordered).sort(dim=1)
    width = int((~repeat).sum(dim=1).max())
    ordered = ordered[:, :width]
    return torch.where(ordered == sentinel, ordered[:, :1], ordered)


def intersect_candidates(rects: Rects, origin: torch.Tensor, dirs: torch.Tensor,
                         candidates: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Nearest hit of groups of rays against each group's short list of candidate rectangles.

    Used where the surfaces near a ray are known (the ids seen at neighbouring pixel centres):
    anti-aliasing sub-samples and visibility tests. A surface thinner than the spacing of
    those pixel centres can be missed.

    :param rects: all rectangles (dtype of ``dirs``).
    :param origin: ray origin (3,).
    :param dirs: ray directions, (N, S, 3): S rays per group.
    :param candidates: (N, C) int64 rectangle indices per group (repeats allowed).
    :return: ``t`` (N, S), inf where no candidate is hit, and the rectangle index (N, S) (a
        candidate of the group where nothing is hit).
    """
    candidates = compact_candidates(candidates)
    c = candidates.shape[1]
    # per rectangle: n.(c - o), a1.(o - c), a2.(o - c), half extents, then n, a1, a2
    rel = rects.centre - origin
    table = torch.cat((
        torch.stack(((rel * rects.normal).sum(-1), -(rel * rects.axis1).sum(-1),
                     -(rel * rects.axis2).sum(-1), rects.half1, rects.half2), dim=-1),
        rects.normal, rects.axis1, rects.axis2), dim=-1)                   # (P, 14)
    gathered = table[candidates]                                           # (N, C, 14)
    num, cu, cv, h1, h2 = (gathered[..., k].unsqueeze(1) for k in range(5))
    basis = gathered[..., 5:].reshape(-1, c, 3, 3).transpose(1, 2).reshape(-1, 3 * c, 3)
    proj = torch.bmm(dirs, basis.transpose(1, 2))                          # (N, S, 3C)
    t = num / proj[..., :c]
    hit = (t > 1e-6) & (torch.addcmul(cu, t, proj[..., c:2 * c]).abs() <= h1) \
        & (torch.addcmul(cv, t, proj[..., 2 * c:]).abs() <= h2)
    t = torch.where(hit, t, torch.full_like(t, float('inf')))
    tmin, k = t.min(dim=2)                                                 # (N, S)
    return tmin, candidates.gather(1, k)


def surface_coordinates(rects: Rects, idx: torch.Tensor, origin: torch.Tensor,
                        dirs: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    In-plane metric coordinates (u, v) of hits, relative to each rectangle's centre.

    :param rects: the rectangles ``idx`` refers to.
    :param idx: rectangle per ray (N,).
    :param origin: ray origin (3,).
    :param dirs: ray directions (N, 3).
    :param t: ray parameters of the hits (N,).
    :return: u and v, each (N,).
    """
    point = origin + t.unsqueeze(-1) * dirs - rects.centre[idx]
    return (point * rects.axis1[idx]).sum(-1), (point * rects.axis2[idx]).sum(-1)
