"""
Textures for the synthetic scenes: real photos, procedural patterns and a mip-mapped sampler.

Photos are the few real images that scikit-image ships inside its wheel (read straight from
the package folder with OpenCV, so no network download is ever attempted); procedural textures
(fractal value noise, bricks, tiles, planks, clouds) are drawn from a seeded generator. All
textures are square, ``size x size`` RGB in [0, 1], and are tiled with a mirrored repeat so
photo tiles join without seams. Sampling is trilinear (bilinear inside two mip levels chosen
from the pixel footprint), which keeps far, minified surfaces free of aliasing.
"""

import functools
import importlib.util
import math
import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Photos of the scikit-image wheel (skimage/data) that load from disk without pooch:
# name -> file name. Grey photos are tinted per surface.
PHOTO_FILES = {
    'astronaut': 'astronaut.png',
    'brick': 'brick.png',
    'camera': 'camera.png',
    'chelsea': 'chelsea.png',
    'coffee': 'coffee.png',
    'coins': 'coins.png',
    'grass': 'grass.png',
    'gravel': 'gravel.png',
    'motorcycle': 'motorcycle_left.png',
    'rocket': 'rocket.jpg',
}


def _skimage_data_dir() -> Optional[str]:
    """Return the data folder of the installed scikit-image wheel, or None."""
    spec = importlib.util.find_spec('skimage')
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), 'data')


@functools.lru_cache(maxsize=None)
def _load_photo_np(name: str, size: int) -> Optional[np.ndarray]:
    """Read one photo, centre-crop it to a square and resize it; None when unavailable."""
    folder = _skimage_data_dir()
    if folder is None or name not in PHOTO_FILES:
        return None
    image = cv2.imread(os.path.join(folder, PHOTO_FILES[name]), cv2.IMREAD_COLOR)
    if image is None:
        return None
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    image = cv2.resize(image, (size, size), interpolation=interp)
    return image.astype(np.float32) / 255.0


def load_photo(name: str, size: int = 256) -> Optional[torch.Tensor]:
    """
    Load one of the scikit-image photos as a square texture.

    :param name: a key of ``PHOTO_FILES``.
    :param size: side of the square texture in pixels.
    :return: (size, size, 3) float32 RGB in [0, 1], or None when scikit-image or the file is
        missing (callers fall back to procedural textures).
    """
    image = _load_photo_np(name, size)
    return None if image is None else torch.from_numpy(image.copy())


def available_photos(size: int = 256) -> List[str]:
    """Return the names of the photos that load on this machine."""
    return [name for name in PHOTO_FILES if _load_photo_np(name, size) is not None]


def _periodic_noise(size: int, cells: int, channels: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth periodic value noise: a random ``cells`` x ``cells`` lattice, bicubic, (C, S, S)."""
    lattice = torch.rand(1, channels, cells, cells, generator=gen, dtype=torch.float32)
    pad = 2
    padded = F.pad(lattice, (pad, pad, pad, pad), mode='circular')
    scale = size // cells
    up = F.interpolate(padded, scale_factor=scale, mode='bicubic', align_corners=False)
    return up[0, :, pad * scale:pad * scale + size, pad * scale:pad * scale + size]


def fractal_noise(size: int, gen: torch.Generator, base_cells: int = 4, octaves: int = 6,
                  persistence: float = 0.55, channels: int = 1) -> torch.Tensor:
    """
    Periodic fractal (fBm) value noise normalised to [0, 1].

    :param size: texture side, a power of two.
    :param gen: the torch.Generator all randomness comes from.
    :return: (channels, size, size) float32.
    """
    total = torch.zeros(channels, size, size)
    amplitude = 1.0
    cells = base_cells
    for _ in range(octaves):
        if cells > size:
            break
        total += amplitude * _periodic_noise(size, cells, channels, gen)
        amplitude *= persistence
        cells *= 2
    lo = total.amin(dim=(1, 2), keepdim=True)
    hi = total.amax(dim=(1, 2), keepdim=True)
    return (total - lo) / (hi - lo).clamp(min=1e-6)


def _colour(gen: torch.Generator, lo: float = 0.25, hi: float = 0.95) -> torch.Tensor:
    """Return a random RGB colour, shape (3, 1, 1)."""
    return (lo + (hi - lo) * torch.rand(3, generator=gen)).reshape(3, 1, 1)


def bricks(size: int, gen: torch.Generator, rows: int = 8, cols: int = 4) -> torch.Tensor:
    """Running-bond brick wall with per-brick colour, mortar joints and grain, (3, S, S)."""
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing='ij')
    row = torch.floor(v * rows / size)
    shift = (row % 2) * 0.5
    col = torch.floor(u * cols / size + shift) % cols
    fu = (u * cols / size + shift) % 1.0
    fv = (v * rows / size) % 1.0
    mortar = (fu < 0.04) | (fu > 0.96) | (fv < 0.07) | (fv > 0.93)
    base = _colour(gen, 0.35, 0.85)
    jitter = 0.75 + 0.5 * torch.rand(rows, cols, generator=gen)
    per_brick = jitter[row.long(), col.long()]
    grain = fractal_noise(size, gen, base_cells=16, octaves=4)
    image = base * per_brick * (0.75 + 0.35 * grain)
    image = torch.where(mortar, 0.55 + 0.25 * grain, image)
    return image.clamp(0.0, 1.0)


def tiles(size: int, gen: torch.Generator, count: int = 4) -> torch.Tensor:
    """Two-colour floor tiles with grout lines and noise, (3, S, S)."""
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing='ij')
    cu, cv = torch.floor(u * count / size), torch.floor(v * count / size)
    fu, fv = (u * count / size) % 1.0, (v * count / size) % 1.0
    grout = (fu < 0.03) | (fu > 0.97) | (fv < 0.03) | (fv > 0.97)
    a, b = _colour(gen), _colour(gen)
    checker = ((cu + cv) % 2 == 0)
    noise = fractal_noise(size, gen, base_cells=8, octaves=5)
    image = torch.where(checker, a, b) * (0.7 + 0.45 * noise)
    return torch.where(grout, 0.3 * noise + 0.2, image).clamp(0.0, 1.0)


def planks(size: int, gen: torch.Generator, count: int = 6) -> torch.Tensor:
    """Wooden planks: grain stripes distorted by noise, per-plank tone, (3, S, S)."""
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing='ij')
    plank = torch.floor(v * count / size)
    warp = fractal_noise(size, gen, base_cells=4, octaves=4)[0]
    rings = 0.5 + 0.5 * torch.sin(2.0 * math.pi * (v * count * 3.0 / size + 2.0 * warp))
    tone = 0.7 + 0.5 * torch.rand(count, generator=gen)
    base = torch.tensor([0.62, 0.42, 0.25]).reshape(3, 1, 1) * (0.8 + 0.4 * torch.rand(
        3, 1, 1, generator=gen))
    gap = ((v * count / size) % 1.0) < 0.04
    image = base * tone[plank.long()] * (0.7 + 0.4 * rings)
    return torch.where(gap, 0.15 * torch.ones_like(image), image).clamp(0.0, 1.0)


def clouds(size: int, gen: torch.Generator) -> torch.Tensor:
    """Sky: blue with white fractal clouds, (3, S, S)."""
    noise = fractal_noise(size, gen, base_cells=2, octaves=6)
    cover = ((noise - 0.45) / 0.4).clamp(0.0, 1.0)
    blue = torch.tensor([0.45, 0.62, 0.88]).reshape(3, 1, 1)
    white = torch.tensor([0.95, 0.95, 0.97]).reshape(3, 1, 1)
    return blue * (1.0 - cover) + white * cover


def coloured_noise(size: int, gen: torch.Generator) -> torch.Tensor:
    """Multi-colour fractal noise (painted or stained surfaces), (3, S, S)."""
    grey = fractal_noise(size, gen, base_cells=8, octaves=6, persistence=0.8)
    colour = fractal_noise(size, gen, base_cells=2, octaves=3, channels=3)
    return ((0.25 + 0.75 * colour) * (0.3 + 0.9 * grey)).clamp(0.0, 1.0)


def speckle(size: int, gen: torch.Generator) -> torch.Tensor:
    """Asphalt or concrete: fine grain on a blotchy base, (3, S, S)."""
    fine = fractal_noise(size, gen, base_cells=64, octaves=3)
    blotch = fractal_noise(size, gen, base_cells=4, octaves=4)
    tone = _colour(gen, 0.35, 0.6).mean() * torch.ones(3, 1, 1)
    return (tone * (0.6 + 0.5 * fine) * (0.75 + 0.45 * blotch)).clamp(0.0, 1.0)


PROCEDURAL = {
    'bricks': bricks,
    'tiles': tiles,
    'planks': planks,
    'clouds': clouds,
    'noise': coloured_noise,
    'speckle': speckle,
}


class TextureBank:
    """
    A stack of square textures with mip levels, sampled all at once by texture index.

    Texture coordinates are in tiles: one unit of ``u`` spans one texture width. Out-of-range
    coordinates repeat the texture mirrored (seamless for photos as well).
    """

    def __init__(self, textures: Sequence[torch.Tensor], names: Sequence[str],
                 device: torch.device = torch.device('cpu')):
        """
        Build the mip pyramid.

        :param textures: (S, S, 3) or (3, S, S) float tensors in [0, 1], S a power of two,
            all the same size.
        :param names: one name per texture (for reports and tests).
        :param device: where the pyramid lives.
        """
        stack = [t if t.shape[0] == 3 and t.shape[-1] != 3 else t.permute(2, 0, 1)
                 for t in textures]
        level = torch.stack([t.float() for t in stack]).to(device)   # (T, 3, S, S)
        self.size = int(level.shape[-1])
        if self.size & (self.size - 1):
            raise ValueError(f'texture size must be a power of two, got {self.size}')
        self.names = list(names)
        self.num_levels = int(math.log2(self.size)) + 1
        flat, offsets = [], []
        count = 0
        for _ in range(self.num_levels):
            # a one-texel border equal to the edge = the mirrored neighbour of the repeat
            padded = F.pad(level, (1, 1, 1, 1), mode='replicate')
            offsets.append(count)
            flat.append(padded.permute(1, 0, 2, 3).reshape(3, -1))  # (3, T * (s+2)^2)
            count += flat[-1].shape[1]
            if level.shape[-1] > 1:
                level = F.avg_pool2d(level, 2)
        self.flat = torch.cat(flat, dim=1)          # planar RGB: one fast gather per lookup
        self.offsets = torch.tensor(offsets, device=device, dtype=torch.int32)

    def __len__(self) -> int:
        """Return the number of textures."""
        return len(self.names)

    def _bilinear(self, tex: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                  level: torch.Tensor) -> torch.Tensor:
        """Bilinear, mirrored-repeat lookup at integer per-sample mip ``level``, (3, N)."""
        side_i = torch.bitwise_right_shift(torch.full_like(level, self.size), level)
        side = side_i.to(u.dtype)                                  # texels on this level
        pitch = side_i + 2                                         # padded row length
        period = 2.0 * side

        def fold(x):
            """Mirrored repeat of texel-edge coordinates into [0, side], then texel centres."""
            r = torch.remainder(x, period)
            return torch.where(r > side, period - r, r) - 0.5

        x, y = fold(u * side), fold(v * side)
        x0, y0 = torch.floor(x), torch.floor(y)
        wx, wy = x - x0, y - y0
        corner = self.offsets[level] + tex * pitch * pitch \
            + (y0.to(torch.int32) + 1) * pitch + (x0.to(torch.int32) + 1)
        index = torch.stack((corner, corner + 1, corner + pitch, corner + pitch + 1))  # (4, N)
        taps = self.flat.index_select(1, index.reshape(-1)).to(u.dtype).reshape(3, 4, -1)
        top = taps[:, 0] + (taps[:, 1] - taps[:, 0]) * wx
        bottom = taps[:, 2] + (taps[:, 3] - taps[:, 2]) * wx
        return top + (bottom - top) * wy

    def sample(self, tex: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
               footprint: torch.Tensor) -> torch.Tensor:
        """
        Trilinear texture lookup.

        :param tex: texture index per sample, shape (N,), int64.
        :param u: horizontal texture coordinate in tiles, shape (N,).
        :param v: vertical texture coordinate in tiles, shape (N,).
        :param footprint: side of the pixel footprint on the surface in tiles, shape (N,).
        :return: RGB, shape (3, N) (channels first), dtype of ``u``. Not meant for gradients.
        """
        lod = torch.log2((footprint * self.size).clamp(min=1.0)).clamp(max=self.num_levels - 1)
        l0 = torch.floor(lod)
        frac = lod - l0
        l0 = l0.to(torch.int32)
        l1 = (l0 + 1).clamp(max=self.num_levels - 1)
        n = u.shape[0]
        tex = tex.to(torch.int32)
        both = self._bilinear(torch.cat((tex, tex)), torch.cat((u, u)), torch.cat((v, v)),
                              torch.cat((l0, l1)))
        return both[:, :n] + (both[:, n:] - both[:, :n]) * frac


def build_texture_bank(gen: torch.Generator, size: int = 256, device='cpu'
                       ) -> Tuple[TextureBank, dict]:
    """
    Build the textures of one scene: every available photo plus seeded procedural ones.

    :param gen: seeded generator (CPU) for the procedural textures.
    :param size: texture side (power of two).
    :param device: device of the bank.
    :return: the bank and a dict mapping group names ('photo', 'grey_photo', 'bricks',
        'tiles', 'planks', 'clouds', 'noise', 'speckle') to lists of texture indices.
    """
    textures, names, groups = [], [], {}
    for name in PHOTO_FILES:
        photo = load_photo(name, size)
        if photo is None:
            continue
        grey = bool((photo[..., 0] == photo[..., 1]).all()
                    and (photo[..., 1] == photo[..., 2]).all())
        group = 'grey_photo' if grey else 'photo'
        groups.setdefault(group, []).append(len(textures))
        groups.setdefault(name, []).append(len(textures))
        textures.append(photo)
        names.append(name)
    copies = {'bricks': 3, 'tiles': 2, 'planks': 2, 'clouds': 1, 'noise': 4, 'speckle': 2}
    for kind, count in copies.items():
        for k in range(count):
            groups.setdefault(kind, []).append(len(textures))
            textures.append(PROCEDURAL[kind](size, gen))
            names.append(f'{kind}{k}')
    return TextureBank(textures, names, torch.device(device)), groups
