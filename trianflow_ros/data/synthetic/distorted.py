"""
Synthetic sequences seen through a distorting lens, with exact ground truth on the raw pixels.

``make_distorted_sequence(kind, ..., distortion=Distortion('plumb_bob', (-0.3, 0.08)))``
renders the scene of ``make_sequence`` (same seed: same trajectory, scene and textures) as a
camera with intrinsics K and that lens distortion would see it: the ray of a raw pixel ``x`` is
the pinhole ray of its undistorted twin ``u(x)`` (``geometry.distortion.undistort_pixels``,
exact Newton inversion), cast against the scene by brute force (no anti-aliasing). Everything
is on the raw (distorted) pixel grid:

- ``depths``: z-depth of the scene point seen at each raw pixel centre;
- ``pair(i, j).flow_ij``: raw pixel of view j where the point seen at raw pixel ``x`` of view
  i appears: ``d(K pi(T_ji X)) - x`` with ``X = depth_i(x) K^-1 [u(x), 1]`` and ``d`` the
  forward distortion model;
- ``valid_ij``: the target lies in the image (and round-trips through the model), in front
  of camera j, and a ray cast from camera j finds that same point (no occluder).

So the oracle providers (``vo.OracleFlowProvider`` / ``OracleDepthProvider``) work on it
unchanged, and ``VisualOdometry.step(..., distortion=seq.distortion)`` must recover the
ground-truth poses exactly, while ignoring the distortion must not.
"""

from typing import Optional

import torch

from trianflow_ros.data.synthetic.render import pixel_rays, shade
from trianflow_ros.data.synthetic.scene import intersect, Rects
from trianflow_ros.data.synthetic.sequence import (_grid, _torch_threads, default_intrinsics,
                                                   make_sequence, SyntheticPair,
                                                   SyntheticSequence)
from trianflow_ros.geometry.distortion import (as_distortion, distort_pixels, Distortion,
                                               undistort_pixels)

_CHUNK = 16384


class DistortedSequence(SyntheticSequence):
    """
    A rendered sequence through a distorting lens (attributes of ``SyntheticSequence``).

    :ivar images: (N, 3, H, W) float32 RGB of the raw (distorted) camera.
    :ivar depths: (N, 1, H, W) float32 z-depth at the raw pixel centres (inf where a ray
        cannot be undistorted or meets nothing).
    :ivar ids: (N, 1, H, W) int64 scene rectangle seen at each raw pixel (-1: none).
    :ivar K: (3, 3) float32 intrinsics (of the raw camera; its pinhole twin shares them).
    :ivar distortion: the :class:`~trianflow_ros.geometry.distortion.Distortion` of the lens.
    """

    def __init__(self, *args, distortion: Distortion, **kwargs):
        """Wrap rendered tensors; use :func:`make_distorted_sequence` to create one."""
        super().__init__(*args, **kwargs)
        self.distortion = distortion

    def _undistorted_grid(self) -> torch.Tensor:
        """Return the undistorted twins (H * W, 2) float64 of the raw pixel centres."""
        grid = _grid(self.height, self.width, self.images.device).reshape(1, -1, 2)
        K = self.K.double()[None]
        return undistort_pixels(grid, K, as_distortion(self.distortion))[0]

    def pair(self, i: int, j: int, rtol: float = 1e-3) -> SyntheticPair:
        """
        Two-view ground truth of frames i and j on the raw pixel grid (see the module).

        :param rtol: relative depth tolerance of the visibility test.
        :return: a ``SyntheticPair`` (flows and masks of the raw camera).
        """
        n = len(self)
        if not (-n <= i < n and -n <= j < n):
            raise IndexError(f'frames ({i}, {j}) out of range for a sequence of {n} frames')
        with _torch_threads(self.threads):
            und = self._undistorted_grid()
            f_ij, v_ij = self._flow(i, j, und, rtol)
            f_ji, v_ji = self._flow(j, i, und, rtol)
        return SyntheticPair(self.images[i], self.images[j], self.depths[i], self.depths[j],
                             f_ij, f_ji, v_ij, v_ji, self.relative_pose(i, j), self.K,
                             i % n, j % n)

    def _flow(self, i: int, j: int, und: torch.Tensor, rtol: float):
        h, w = self.height, self.width
        K = self.K.double()
        dist = as_distortion(self.distortion)
        z = self.depths[i, 0].reshape(-1).double()
        ray = torch.cat((((und - K[:2, 2]) / K.diagonal()[:2]), torch.ones_like(und[:, :1])), 1)
        X = ray * z[:, None]                                                 # frame i
        T = self.relative_pose(i, j)
        Xj = X @ T[:3, :3].T + T[:3, 3]
        zj = Xj[:, 2]
        safe = torch.where(zj.abs() > 1e-9, zj, torch.full_like(zj, 1e-9))
        target_und = Xj[:, :2] / safe[:, None] * K.diagonal()[:2] + K[:2, 2]
        target = distort_pixels(target_und[None], K[None], dist)[0]
        grid = _grid(h, w, und.device).reshape(-1, 2)
        flow = (target - grid).T.reshape(2, h, w).float()
        u, v = target[:, 0], target[:, 1]
        ok = (torch.isfinite(z) & (zj > 1e-6) & (u >= 0) & (u <= w - 1) & (v >= 0)
              & (v <= h - 1) & torch.isfinite(target).all(1))
        back = undistort_pixels(target[None], K[None], dist)[0]
        ok &= ((back - target_und).norm(dim=1) < 1e-3).nan_to_num(False)    # no fold-over
        valid = torch.zeros(h * w, dtype=torch.bool, device=und.device)
        where = torch.nonzero(ok).squeeze(-1)
        if where.numel():
            T_wj = self.poses[j].double()
            dirs = pixel_rays(target_und[where], K, T_wj[:3, :3])
            t, _ = _cast(self.scene, T_wj[:3, 3], dirs)
            valid[where] = (t - zj[where]).abs() <= rtol * zj[where]
        return torch.nan_to_num(flow, nan=0.0), valid.reshape(1, h, w)


def _cast(rects: Rects, origin: torch.Tensor, dirs: torch.Tensor):
    """Nearest hits (z-depth, rectangle index into ``rects`` or -1) of rays from ``origin``."""
    keep = torch.nonzero(((origin.to(rects.centre.dtype) - rects.centre) * rects.normal)
                         .sum(-1) > 0).squeeze(-1)
    sub = rects.select(keep)
    t, k = intersect(sub, origin.to(dirs.dtype), dirs, chunk=_CHUNK)
    idx = torch.where(torch.isfinite(t), keep[k], torch.full_like(k, -1))
    return t, idx


def make_distorted_sequence(kind: str = 'forward', num_frames: int = 8, height: int = 96,
                            width: int = 320, distortion=None, seed: int = 0, stride: int = 1,
                            K: Optional[torch.Tensor] = None, scene: Optional[str] = None,
                            texture_size: int = 256, threads: Optional[int] = 1
                            ) -> DistortedSequence:
    """
    Render a synthetic sequence through a distorting lens (exact depth, poses, raw-pixel flow).

    Same trajectory, scene and textures as ``make_sequence`` with the same arguments; the rays
    are cast per pixel against the whole scene (no edge anti-aliasing), which costs ~0.1-0.3 s
    per 96x320 frame.

    :param kind: a trajectory kind of ``make_sequence``.
    :param num_frames: number of frames N.
    :param height: image height H.
    :param width: image width W.
    :param distortion: the lens: a ``Distortion``, ``(model, coeffs)`` or text (e.g.
        ``'plumb_bob -0.3 0.08'``, barrel distortion like ``vamr_checkerboard``); None or
        'none' renders the pinhole camera.
    :param seed: the only source of randomness.
    :param stride: frame stride of the underlying trajectory.
    :param K: (3, 3) intrinsics; default ``default_intrinsics(height, width)``.
    :param scene: scene layout (default by kind).
    :param texture_size: side of every texture.
    :param threads: torch intra-op threads while rendering (None keeps the setting).
    :return: a :class:`DistortedSequence` (CPU tensors).
    """
    dist = as_distortion(distortion) or Distortion()
    if K is None:
        K = default_intrinsics(height, width)
    K = torch.as_tensor(K, dtype=torch.float32)
    # the trajectory, scene and textures of make_sequence (rendered at a dummy 2x2 size)
    base = make_sequence(kind, num_frames, 2, 2, seed=seed, stride=stride, K=K, scene=scene,
                         aa=1, texture_size=texture_size, threads=threads)
    grid = _grid(height, width, 'cpu').reshape(1, -1, 2)
    und = undistort_pixels(grid, K.double()[None], as_distortion(dist))[0]
    finite = torch.isfinite(und).all(1)
    focal = float(torch.sqrt(K[0, 0] * K[1, 1]))
    rects32 = base.scene.to(dtype=torch.float32)
    images, depths, ids = [], [], []
    with _torch_threads(threads):
        for T_wc in base.poses:
            T = T_wc.double()
            t = torch.full((height * width,), float('inf'), dtype=torch.float64)
            idx = torch.full((height * width,), -1, dtype=torch.long)
            dirs = pixel_rays(und[finite], K.double(), T[:3, :3])
            t[finite], idx[finite] = _cast(base.scene, T[:3, 3], dirs)
            all_dirs = pixel_rays(torch.where(finite[:, None], und, torch.zeros_like(und)),
                                  K.double(), T[:3, :3]).float()
            colour = shade(rects32, base.bank, T.float(), focal, all_dirs,
                           torch.where(torch.isfinite(t), t, torch.zeros_like(t)).float(), idx)
            images.append(colour.reshape(3, height, width))
            depths.append(t.float().reshape(1, height, width))
            ids.append(idx.reshape(1, height, width))
    return DistortedSequence(torch.stack(images), torch.stack(depths), torch.stack(ids),
                             base.poses, K, kind, base.scene_kind, seed, stride, base.scene,
                             base.bank, threads, distortion=dist)
