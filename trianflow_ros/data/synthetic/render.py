"""
Render RGB, z-depth and surface ids of one camera view of a rectangle scene.

One ray per pixel centre (``raster.rasterize``) gives the exact depth and surface id; the
colour comes from a trilinear (mip-mapped) texture lookup whose level follows the pixel
footprint on the surface, so far and slanted surfaces do not alias. Pixels on a surface
boundary (their id differs from a 4-neighbour) are re-rendered with ``aa x aa`` sub-pixel rays
tested against the surfaces of their 3x3 neighbourhood and averaged (edge anti-aliasing);
depth and ids stay those of the pixel centre.
"""

from typing import Optional, Tuple

import torch

from trianflow_ros.data.synthetic.raster import rasterize
from trianflow_ros.data.synthetic.scene import (cull, intersect, intersect_candidates, Rects,
                                                surface_coordinates)
from trianflow_ros.data.synthetic.textures import TextureBank


def pixel_rays(pixels: torch.Tensor, K: torch.Tensor, R_wc: torch.Tensor) -> torch.Tensor:
    """
    World ray directions ``R_wc K^-1 [u, v, 1]^T`` (camera-frame z component 1).

    :param pixels: (N, 2) pixel coordinates (u, v).
    :param K: (3, 3) intrinsics.
    :param R_wc: (3, 3) camera-to-world rotation.
    :return: (N, 3) directions, dtype of ``pixels``.
    """
    fx, fy, cx, cy, s = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    y = (pixels[:, 1] - cy) / fy
    x = (pixels[:, 0] - cx - s * y) / fx
    rays = torch.stack((x, y, torch.ones_like(x)), dim=-1)
    return rays @ R_wc.T


def cast(rects: Rects, T_wc: torch.Tensor, K: torch.Tensor, pixels: torch.Tensor,
         height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Cast rays through arbitrary ``pixels`` against the whole scene (brute force, no candidates).

    The reference for ``raster.rasterize`` and for tests; every tensor in the dtype of
    ``pixels``, so a float64 scene gives float64 depths.

    :param rects: the scene (dtype of ``pixels``).
    :param T_wc: (4, 4) camera-to-world pose.
    :param K: (3, 3) intrinsics.
    :param pixels: (N, 2) pixel coordinates (inside the image, up to half a pixel outside).
    :return: z-depth (N,) (inf on a miss), global rectangle index (N,) (-1 on a miss), and the
        ray directions (N, 3).
    """
    dtype = pixels.dtype
    T = T_wc.to(dtype)
    keep = cull(rects, T, K, height, width)
    sub = rects.select(keep)
    dirs = pixel_rays(pixels, K.to(dtype), T[:3, :3])
    t, k = intersect(sub, T[:3, 3], dirs)
    idx = torch.where(torch.isfinite(t), keep[k], torch.full_like(k, -1))
    return t, idx, dirs


def shade(rects: Rects, bank: TextureBank, T_wc: torch.Tensor, focal: float,
          dirs: torch.Tensor, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """
    Colour of ray hits: texture (trilinear, footprint-selected level) times face colour.

    :param focal: focal length in pixels (sqrt(fx fy)), sets the pixel footprint.
    :param dirs: (N, 3) ray directions with camera-frame z = 1.
    :param t: (N,) z-depth of the hits.
    :param idx: (N,) global rectangle index, -1 for misses (rendered black).
    :return: (3, N) RGB in [0, 1] (channels first).
    """
    hit = idx >= 0
    k = idx.clamp(min=0)
    origin = T_wc[:3, 3].to(dirs.dtype)
    tt = torch.where(hit, t, torch.zeros_like(t))
    u, v = surface_coordinates(rects, k, origin, dirs, tt)
    tile = rects.tile[k]
    norm = dirs.norm(dim=-1)
    cos_view = ((dirs * rects.normal[k]).sum(-1).abs() / norm).clamp(min=0.02)
    # footprint side on the surface: pixel solid angle cos^3(a) / f^2 times r^2 / cos(view)
    footprint = tt / focal * torch.sqrt(1.0 / norm / cos_view)
    off = rects.offset[k]
    colour = bank.sample(rects.texture[k], (u + off[:, 0]) / tile, (v + off[:, 1]) / tile,
                         footprint / tile)
    colour = (colour * rects.colour[k].T).clamp(0.0, 1.0)
    return torch.where(hit, colour, torch.zeros_like(colour))


def render_view(rects: Rects, bank: TextureBank, T_wc: torch.Tensor, K: torch.Tensor,
                height: int, width: int, aa: int = 3
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Render one view.

    :param rects: scene in float32 on the render device.
    :param bank: textures on the render device.
    :param T_wc: (4, 4) camera-to-world pose.
    :param K: (3, 3) intrinsics.
    :param aa: sub-pixel grid per side on surface boundaries (1 = no anti-aliasing).
    :return: image (3, H, W) float32 in [0, 1], z-depth (1, H, W) float32, rectangle id
        (1, H, W) int64.
    """
    device = rects.centre.device
    dtype = rects.centre.dtype
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                          torch.arange(width, device=device, dtype=dtype), indexing='ij')
    pixels = torch.stack((u.reshape(-1), v.reshape(-1)), dim=-1)
    T = T_wc.to(device=device, dtype=dtype)
    Kd = K.to(device=device, dtype=dtype)
    focal = float(torch.sqrt(K[0, 0] * K[1, 1]))
    depth, ids = rasterize(rects, T_wc, K, height, width)
    t = depth.reshape(-1)
    dirs = pixel_rays(pixels, Kd, T[:3, :3])
    colour = shade(rects, bank, T, focal, dirs, t, ids.reshape(-1))
    if aa > 1:
        edge = torch.zeros_like(ids, dtype=torch.bool)
        dx = ids[:, 1:] != ids[:, :-1]
        dy = ids[1:, :] != ids[:-1, :]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:, :] |= dy
        edge[:-1, :] |= dy
        where = torch.nonzero(edge.reshape(-1)).squeeze(-1)
        if where.numel():
            steps = (torch.arange(aa, device=device, dtype=dtype) + 0.5) / aa - 0.5
            sy, sx = torch.meshgrid(steps, steps, indexing='ij')
            offsets = torch.stack((sx.reshape(-1), sy.reshape(-1)), dim=-1)     # (aa^2, 2)
            sub = (pixels[where].unsqueeze(1) + offsets).reshape(-1, 2)
            neigh = neighbour_ids(ids, 3, where)                                # (M, 9)
            dirs_s = pixel_rays(sub, Kd, T[:3, :3])
            ts, ids_s = intersect_candidates(rects, T[:3, 3], dirs_s.reshape(-1, aa * aa, 3),
                                             neigh.clamp(min=0))
            ts, ids_s = ts.reshape(-1), ids_s.reshape(-1)
            ids_s = torch.where(torch.isfinite(ts), ids_s, torch.full_like(ids_s, -1))
            col = shade(rects, bank, T, focal, dirs_s, ts, ids_s)
            # a sub-sample that meets none of the candidates keeps the pixel-centre colour
            centre = colour[:, where].repeat_interleave(aa * aa, dim=1)
            col = torch.where(ids_s >= 0, col, centre)
            colour[:, where] = col.reshape(3, -1, aa * aa).mean(dim=2)
    image = colour.reshape(3, height, width)
    return image, depth.reshape(1, height, width), ids.reshape(1, height, width)


def neighbour_ids(ids: torch.Tensor, size: int, where: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
    """
    Surface ids of the ``size x size`` neighbourhood of pixels (clamped at the image border).

    :param ids: (H, W) int64.
    :param size: odd neighbourhood side, or even (then the window is offset by one towards
        the start: columns u - size/2 + 1 .. u + size/2).
    :param where: flat pixel indices (M,) to look at; all pixels when None.
    :return: (M, size * size) int64.
    """
    h, w = ids.shape
    if where is None:
        where = torch.arange(h * w, device=ids.device)
    row, col = where // w, where % w
    before = (size - 1) // 2
    steps = torch.arange(size, device=ids.device) - before
    rows = (row.unsqueeze(-1) + steps).clamp(0, h - 1)                  # (M, size)
    cols = (col.unsqueeze(-1) + steps).clamp(0, w - 1)
    flat = (rows.unsqueeze(-1) * w + cols.unsqueeze(1)).reshape(len(where), -1)
    return ids.reshape(-1)[flat]
