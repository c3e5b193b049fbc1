"""
Synthetic camera sequences with exact ground truth: ``make_sequence`` and the pair sample.

A sequence is rendered eagerly (images, depths, surface ids); the two-view ground truth of a
pair (flow both ways, visibility masks, relative pose) is computed on request by ``pair``.
Everything is a deterministic function of the arguments: the same seed gives bit-identical
tensors.
"""

import contextlib
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from trianflow_ros.data.synthetic.ground_truth import rigid_flow, visibility
from trianflow_ros.data.synthetic.layouts import build_scene, SCENES
from trianflow_ros.data.synthetic.render import render_view
from trianflow_ros.data.synthetic.scene import Rects
from trianflow_ros.data.synthetic.textures import build_texture_bank, TextureBank
from trianflow_ros.data.synthetic.trajectories import KINDS, make_trajectory
from trianflow_ros.geometry.lie import se3_inverse

DEFAULT_SCENE = {'forward': 'street', 'handheld': 'room', 'pure_rotation': 'room',
                 'standstill': 'street', 'highway': 'highway', 'handheld30': 'room',
                 'turns': 'street'}


def default_intrinsics(height: int = 256, width: int = 832) -> torch.Tensor:
    """
    KITTI-like intrinsics: those of a 1241x376 KITTI image resized to ``width x height``.

    At 256x832 this is fx = 482.6, fy = 489.0, cx = 407.7, cy = 126.0.

    :return: (3, 3) float32.
    """
    return torch.tensor([[0.58 * width, 0.0, 0.49 * width],
                         [0.0, 1.91 * height, 0.492 * height],
                         [0.0, 0.0, 1.0]], dtype=torch.float32)


@dataclass
class SyntheticPair:
    """
    Two views with exact ground truth. Tensors are unbatched; add a batch dimension to use them.

    :ivar image_i: (3, H, W) float32 RGB in [0, 1].
    :ivar image_j: (3, H, W) float32 RGB in [0, 1].
    :ivar depth_i: (1, H, W) float32 z-depth in metres.
    :ivar depth_j: (1, H, W) float32 z-depth in metres.
    :ivar flow_ij: (2, H, W) float32, pixels of view i into view j (channel 0 = u).
    :ivar flow_ji: (2, H, W) float32, pixels of view j into view i.
    :ivar valid_ij: (1, H, W) bool, pixel of view i visible in view j (in the image, not
        occluded); flow_ij is exact everywhere, the mask says where it can be observed.
    :ivar valid_ji: (1, H, W) bool, pixel of view j visible in view i.
    :ivar T_ji: (4, 4) float64, maps points of frame i into frame j.
    :ivar K: (3, 3) float32 intrinsics of both views.
    :ivar i: index of view i in the sequence; ``j``: index of view j.
    """

    image_i: torch.Tensor
    image_j: torch.Tensor
    depth_i: torch.Tensor
    depth_j: torch.Tensor
    flow_ij: torch.Tensor
    flow_ji: torch.Tensor
    valid_ij: torch.Tensor
    valid_ji: torch.Tensor
    T_ji: torch.Tensor
    K: torch.Tensor
    i: int
    j: int


@dataclass(eq=False)
class SyntheticSequence:
    """
    A rendered sequence through a textured scene; ``make_sequence`` creates one.

    :ivar images: (N, 3, H, W) float32 RGB in [0, 1].
    :ivar depths: (N, 1, H, W) float32 z-depth in metres (finite everywhere: the street, the
        room and the highway are closed; a ray that met nothing would get inf and id -1).
    :ivar ids: (N, 1, H, W) int64 index of the scene rectangle seen at each pixel centre.
    :ivar poses: (N, 4, 4) float64 camera-to-world poses T_wc.
    :ivar K: (3, 3) float32 intrinsics.
    :ivar kind: trajectory kind; ``scene_kind``: 'street', 'room' or 'highway'.
    :ivar seed: the seed; ``stride``: the frame stride.
    :ivar scene: the scene rectangles (float64); ``scene.group[ids]`` gives object ids.
    :ivar bank: the texture bank of the scene; ``threads``: torch threads of later renders.
    """

    images: torch.Tensor
    depths: torch.Tensor
    ids: torch.Tensor
    poses: torch.Tensor
    K: torch.Tensor
    kind: str
    scene_kind: str
    seed: int
    stride: int
    scene: Rects
    bank: TextureBank
    threads: Optional[int] = 1

    def __len__(self) -> int:
        """Return the number of frames N."""
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        """Image height H."""
        return int(self.images.shape[-2])

    @property
    def width(self) -> int:
        """Image width W."""
        return int(self.images.shape[-1])

    def relative_pose(self, i: int, j: int) -> torch.Tensor:
        """
        Relative pose ``T_ji = T_wj^-1 T_wi`` mapping points of frame i into frame j.

        :return: (4, 4) float64.
        """
        return se3_inverse(self.poses[j]) @ self.poses[i]

    def pair(self, i: int, j: int, rtol: float = 1e-3) -> SyntheticPair:
        """
        Two-view ground truth of frames i and j (any two frames, e.g. (i, i + k) for fast motion).

        :param rtol: relative depth tolerance of the visibility test.
        :return: a ``SyntheticPair``.
        """
        n = len(self)
        if not (-n <= i < n and -n <= j < n):
            raise IndexError(f'frames ({i}, {j}) out of range for a sequence of {n} frames')
        T_ji = self.relative_pose(i, j)
        T_ij = self.relative_pose(j, i)
        with _torch_threads(self.threads):
            x_j, z_j = rigid_flow(self.depths[i], T_ji, self.K)
            x_i, z_i = rigid_flow(self.depths[j], T_ij, self.K)
            grid = _grid(self.height, self.width, x_j.device)
            flow_ij = (x_j - grid).permute(2, 0, 1).float()
            flow_ji = (x_i - grid).permute(2, 0, 1).float()
            valid_ij = visibility(self.scene, self.poses[j], self.K, x_j, z_j, self.ids[j],
                                  self.ids[i], rtol).unsqueeze(0)
            valid_ji = visibility(self.scene, self.poses[i], self.K, x_i, z_i, self.ids[i],
                                  self.ids[j], rtol).unsqueeze(0)
        return SyntheticPair(self.images[i], self.images[j], self.depths[i], self.depths[j],
                             flow_ij, flow_ji, valid_ij, valid_ji, T_ji, self.K,
                             i % n, j % n)

    def images_uint8(self) -> np.ndarray:
        """
        Return the images as (N, H, W, 3) uint8 RGB (for saving, bags, OpenCV).

        :return: numpy array, rounded from [0, 1] to [0, 255].
        """
        scaled = (self.images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        return scaled.permute(0, 2, 3, 1).cpu().numpy()


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]):
    """Run a block with ``threads`` torch intra-op threads, then restore the setting."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _grid(height: int, width: int, device) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=device),
                          torch.arange(width, dtype=torch.float64, device=device),
                          indexing='ij')
    return torch.stack((u, v), dim=-1)


def make_sequence(kind: str = 'forward', num_frames: int = 64, height: int = 256,
                  width: int = 832, seed: int = 0, stride: int = 1,
                  K: Optional[torch.Tensor] = None, device='cpu', scene: Optional[str] = None,
                  aa: int = 3, texture_size: int = 256, threads: Optional[int] = 1
                  ) -> SyntheticSequence:
    """
    Render a synthetic sequence with exact depth, poses and (per pair) flow and occlusion.

    :param kind: trajectory kind: 'forward' (driving), 'handheld', 'pure_rotation',
        'standstill', 'highway' (fast driving among far structure), 'handheld30' (hand-held
        at 30 Hz, small baseline), 'turns' (an urban drive with 90-degree turns); see
        ``trajectories``.
    :param num_frames: number of frames N.
    :param height: image height H.
    :param width: image width W.
    :param seed: the only source of randomness (trajectory, layout, procedural textures).
    :param stride: fast motion: frame i is frame ``i * stride`` of the underlying trajectory.
    :param K: (3, 3) intrinsics without skew; default ``default_intrinsics(height, width)``.
    :param device: render device (CPU by default; same seed, same device -> same tensors).
    :param scene: 'street', 'room' or 'highway'; default by kind ('room' for handheld,
        handheld30 and pure_rotation, 'highway' for highway, else 'street').
    :param aa: edge anti-aliasing sub-pixel grid per side (1 disables it).
    :param texture_size: side of every texture (power of two).
    :param threads: torch intra-op threads while rendering and in ``pair``, restored
        afterwards (None keeps the current setting). The renderer runs many small tensor
        operations, for which one thread is fastest on a shared CPU (2 threads on a busy
        2-core machine cost ~3x the CPU time).
    :return: a ``SyntheticSequence`` (tensors on ``device``; poses float64).
    """
    if kind not in KINDS:
        raise ValueError(f'unknown kind {kind!r}; choose one of {KINDS}')
    scene_kind = scene or DEFAULT_SCENE[kind]
    if scene_kind not in SCENES:
        raise ValueError(f'unknown scene {scene_kind!r}; choose one of {SCENES}')
    if num_frames < 1 or stride < 1:
        raise ValueError(f'num_frames and stride must be >= 1, got {num_frames}, {stride}')
    if height < 2 or width < 2:
        raise ValueError(f'image size must be at least 2x2, got {height}x{width}')
    if K is None:
        K = default_intrinsics(height, width)
    K = torch.as_tensor(K, dtype=torch.float32).cpu()
    if K.shape != (3, 3):
        raise ValueError(f'K must have shape (3, 3), got {tuple(K.shape)}')
    if float(K[0, 1]) != 0.0:
        raise ValueError('K must have zero skew (K[0, 1] = 0)')
    device = torch.device(device)

    def generator(stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(seed) * 7919 + stream)

    with _torch_threads(threads):
        underlying = make_trajectory(kind, (num_frames - 1) * stride + 1, generator(1))
        poses = underlying[::stride].contiguous()
        bank, groups = build_texture_bank(generator(2), texture_size, device)
        rects = build_scene(scene_kind, underlying, generator(3), groups, device)
        rects32 = rects.to(dtype=torch.float32)
        views = []
        for k, T in enumerate(poses):
            if k and torch.equal(T, poses[k - 1]):          # standstill: same view again
                views.append(views[-1])
            else:
                views.append(render_view(rects32, bank, T, K, height, width, aa))
        images = torch.stack([v[0] for v in views])
        depths = torch.stack([v[1] for v in views])
        ids = torch.stack([v[2] for v in views])
    return SyntheticSequence(images, depths, ids, poses.to(device), K.to(device), kind,
                             scene_kind, seed, stride, rects, bank, threads)
