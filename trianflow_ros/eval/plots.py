"""
Trajectory plots: top-down view of ground truth and estimates, written as PNG (matplotlib Agg).

The figure is drawn on its own Agg canvas (no pyplot, no global backend change), so this works
without a display and inside a running node.
"""

from pathlib import Path
from typing import Mapping, Optional, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from trianflow_ros.eval.alignment import ALIGN_MODES, align_poses
from trianflow_ros.eval.trajectory_io import Trajectory

#: Axis indices of the plotting planes: 'xz' is the top view of a camera frame (y down).
PLANES = {'xz': (0, 2), 'xy': (0, 1), 'yz': (1, 2)}


def plot_trajectories(path_png: Union[str, Path], gt: Optional[Trajectory],
                      estimates: Mapping[str, Trajectory], title: str = '',
                      plane: str = 'xz', align: str = 'none', dpi: int = 120) -> Path:
    """
    Plot trajectories seen from above and save them as a PNG (replacing an existing file).

    :param path_png: output file; its folder is created.
    :param gt: ground truth (black), or None.
    :param estimates: label -> estimated trajectory (already aligned unless ``align`` is set).
    :param title: figure title.
    :param plane: 'xz' (top view of the KITTI camera frame, the default), 'xy' or 'yz'.
    :param align: 'none' (plot as given), or 'se3' / 'sim3' to align every estimate to ``gt``
        by Umeyama on its positions first (needs ``gt`` with the same number of poses).
    :param dpi: resolution.
    :return: the written path.
    :raises ValueError: unknown plane or alignment, or alignment without paired ground truth.
    """
    if plane not in PLANES:
        raise ValueError(f'unknown plane {plane!r}; expected one of {sorted(PLANES)}')
    if align not in ALIGN_MODES:
        raise ValueError(f'unknown alignment {align!r}; expected one of {ALIGN_MODES}')
    a, b = PLANES[plane]
    fig = Figure(figsize=(7, 6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if gt is not None:
        p = gt.positions
        ax.plot(p[:, a], p[:, b], color='black', linewidth=1.5, label='ground truth')
        ax.plot(p[:1, a], p[:1, b], 'ko', markersize=5, label='start')
    for label, est in estimates.items():
        poses = est.poses
        if align != 'none':
            if gt is None or len(gt) != len(est):
                raise ValueError(f'aligning {label!r} needs a ground truth of the same length '
                                 f'({len(est)} poses)')
            poses, _ = align_poses(poses, gt.poses, align)
        ax.plot(poses[:, a, 3], poses[:, b, 3], linewidth=1.2, label=label)
    ax.set_xlabel(f'{plane[0]} [m]')
    ax.set_ylabel(f'{plane[1]} [m]')
    ax.set_aspect('equal', adjustable='datalim')
    ax.grid(True, linewidth=0.4, alpha=0.6)
    if title:
        ax.set_title(title)
    if gt is not None or estimates:
        ax.legend(loc='best', fontsize='small')
    out = Path(path_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out), format='png')
    return out
