"""
The inputs of a VO pair's dense depth maps, on every pixel or on every n-th pixel.

Where only the depth *output* reads a dense map (the classical pipeline: no depth network, no
refinement; the pose rests on the sparse map points), the maps are computed on every n-th
pixel of both axes (``vo.output_depth_stride``) and repeated back to the full grid: 1/n^2 of
the validity, triangulation and transfer work, for a depth image of 1/n the resolution.

Pixel convention: pixel ``i`` of the strided grid is pixel ``n * i`` of the full grid, so a
point ``x`` of the full grid is ``x / n`` on the strided one (flows divided by n, K's first two
rows divided by n) and the geometry is the same.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DenseInputs:
    """
    Images, intrinsics, flows and undistortion of a pair at one stride.

    :ivar stride: n (1: the full grid).
    :ivar img1: (1, 3, h, w) keyframe image; ``img2`` the current one.
    :ivar K1: (1, 3, 3) keyframe intrinsics in the strided pixels; ``K2`` the current ones.
    :ivar flow_12: (1, 2, h, w) keyframe -> current flow in strided pixels; ``flow_21`` back.
    :ivar undistort: raw -> pinhole pixels of the strided grid (None: pinhole images).
    :ivar grid: (1, h*w, 2) pinhole pixels of the strided raw grid (None: pinhole images).
    :ivar hw: (H, W) of the full grid.
    """

    stride: int
    img1: torch.Tensor
    img2: torch.Tensor
    K1: torch.Tensor
    K2: torch.Tensor
    flow_12: torch.Tensor
    flow_21: torch.Tensor
    undistort: Optional[Callable[[torch.Tensor], torch.Tensor]]
    grid: Optional[torch.Tensor]
    hw: Tuple[int, int]

    @classmethod
    def at_stride(cls, stride: int, img1: torch.Tensor, img2: torch.Tensor, K1: torch.Tensor,
                  K2: torch.Tensor, flow_12: torch.Tensor, flow_21: torch.Tensor,
                  undistort=None, grid: Optional[torch.Tensor] = None) -> 'DenseInputs':
        """
        Take every ``stride``-th pixel of full-grid inputs.

        :param stride: n >= 1.
        :param img1: (1, 3, H, W); ``img2`` the same.
        :param K1: (1, 3, 3); ``K2`` the same.
        :param flow_12: (1, 2, H, W); ``flow_21`` the same.
        :param undistort: raw -> pinhole pixels of the full grid, (1, N, 2) -> (1, N, 2).
        :param grid: (1, H*W, 2) pinhole pixels of the full raw grid.
        """
        n = int(stride)
        if n < 1:
            raise ValueError(f'stride must be >= 1, got {stride}')
        h, w = flow_21.shape[-2:]
        if n == 1:
            return cls(1, img1, img2, K1, K2, flow_12, flow_21, undistort, grid, (h, w))

        def k(K: torch.Tensor) -> torch.Tensor:
            K = K.clone()
            K[:, :2] = K[:, :2] / n
            return K

        def und(x: torch.Tensor) -> torch.Tensor:
            return undistort(x * n) / n
        g = None
        if grid is not None:
            g = (grid.reshape(1, h, w, 2)[:, ::n, ::n].reshape(1, -1, 2) / n)
        return cls(n, img1[..., ::n, ::n], img2[..., ::n, ::n], k(K1), k(K2),
                   flow_12[..., ::n, ::n] / n, flow_21[..., ::n, ::n] / n,
                   und if undistort is not None else None, g, (h, w))

    def strided(self, image: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Return a full-grid (B, C, H, W) map (a keyframe's depth) on the strided grid."""
        if image is None or self.stride == 1:
            return image
        return image[..., ::self.stride, ::self.stride]

    def full(self, *maps: Optional[torch.Tensor]
             ) -> Union[Optional[torch.Tensor], Tuple[Optional[torch.Tensor], ...]]:
        """
        Return strided (B, C, h, w) maps on the full grid (each value repeated n x n).

        :return: one map for one argument, else a tuple.
        """
        out = tuple(m if m is None or self.stride == 1 else
                    F.interpolate(m, scale_factor=self.stride, mode='nearest')[
                        ..., :self.hw[0], :self.hw[1]]
                    for m in maps)
        return out[0] if len(out) == 1 else out
