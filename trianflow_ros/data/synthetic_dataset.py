"""
A torch Dataset of frame pairs over synthetic sequences with exact ground truth.

Sequences come from ``trianflow_ros.data.synthetic.make_sequence`` and are rendered directly at
the network size (no resize), lazily on first use and cached per process. Samples follow
``trianflow_ros.data.sample`` and carry every ground truth: ``T_21``, ``depth1``, ``depth2``,
``flow_12``, ``flow_21``, ``valid_12``, ``valid_21``.
"""

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from trianflow_ros.data.sample import PairDataset, Sample
from trianflow_ros.data.synthetic import make_sequence, SyntheticSequence


class SyntheticPairDataset(PairDataset):
    """
    Pairs (i, i + stride) of every (kind, seed) sequence.

    :ivar frame_rate: frames per second used for the stamps (``frame / frame_rate``).
    """

    def __init__(self, kinds: Sequence[str] = ('forward',), seeds: Sequence[int] = (0,),
                 num_frames: int = 8, height: int = 256, width: int = 832, stride: int = 1,
                 bgr: bool = False, pairs: bool = True, frame_rate: float = 10.0,
                 sequences: Optional[Sequence[SyntheticSequence]] = None,
                 transform: Optional[Callable[[Sample], Sample]] = None, **render_kwargs):
        """
        Describe the sequences (rendering happens on first access).

        :param kinds: trajectory kinds ('forward', 'handheld', 'pure_rotation', 'standstill').
        :param seeds: one sequence per kind and seed.
        :param num_frames: frames per sequence.
        :param height: image height (rendered at this size).
        :param width: image width.
        :param stride: frame distance of a pair.
        :param bgr: BGR channel order.
        :param pairs: False for single frames (image1, depth1 only).
        :param frame_rate: frames per second for the stamps.
        :param sequences: ready ``SyntheticSequence`` objects to use instead of kinds/seeds
            (their size must be ``height x width``).
        :param transform: optional callable applied to each sample.
        :param render_kwargs: passed to ``make_sequence`` (e.g. ``scene``, ``aa``,
            ``texture_size``).
        """
        super().__init__(height, width, stride, bgr, pairs, transform)
        if num_frames < 1 or frame_rate <= 0:
            raise ValueError(f'need num_frames >= 1 and frame_rate > 0, got {num_frames}, '
                             f'{frame_rate}')
        self.frame_rate = float(frame_rate)
        self.render_kwargs = dict(render_kwargs)
        self._cache: Dict[int, SyntheticSequence] = {}
        if sequences is not None:
            self.specs = [(s.kind, s.seed, len(s)) for s in sequences]
            for k, s in enumerate(sequences):
                if (s.height, s.width) != self.hw:
                    raise ValueError(f'sequence {k} is {s.height}x{s.width}, dataset is '
                                     f'{height}x{width}')
                self._cache[k] = s
        else:
            self.specs = [(kind, int(seed), int(num_frames)) for kind in kinds for seed in seeds]
        if not self.specs:
            raise ValueError('no synthetic sequence selected')
        for k, (_, _, n) in enumerate(self.specs):
            if pairs:
                self.items.extend((k, i, i + stride) for i in range(n - stride))
            else:
                self.items.extend((k, i, None) for i in range(n))

    def sequence(self, k: int) -> SyntheticSequence:
        """Return sequence ``k``, rendering it on first use."""
        if k not in self._cache:
            kind, seed, n = self.specs[k]
            self._cache[k] = make_sequence(kind, num_frames=n, height=self.height,
                                           width=self.width, seed=seed, **self.render_kwargs)
        return self._cache[k]

    def _name(self, k: int) -> Tuple[str, str]:
        kind, seed, _ = self.specs[k]
        return f'synthetic/{kind}/seed{seed}', f'synthetic:{kind}:seed{seed}'

    def _image(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float().clamp(0.0, 1.0)
        return image.flip(0).contiguous() if self.bgr else image.contiguous()

    def load(self, index: int) -> Sample:
        """Build sample ``index``."""
        k, i, j = self.items[index]
        seq = self.sequence(k)
        name, source = self._name(k)
        sample = {'K': seq.K.float().cpu().clone(),
                  'native_hw': torch.tensor(self.hw, dtype=torch.int64),
                  'stamp1': i / self.frame_rate, 'frame1': i, 'sequence': name,
                  'source1': f'{source}:frame{i}'}
        if j is None:
            sample['image1'] = self._image(seq.images[i].cpu())
            sample['depth1'] = seq.depths[i].float().cpu()
            return sample
        pair = seq.pair(i, j)
        sample.update({
            'image1': self._image(pair.image_i.cpu()), 'image2': self._image(pair.image_j.cpu()),
            'stamp2': j / self.frame_rate, 'frame2': j, 'source2': f'{source}:frame{j}',
            'T_21': pair.T_ji.float().cpu(),
            'depth1': pair.depth_i.float().cpu(), 'depth2': pair.depth_j.float().cpu(),
            'flow_12': pair.flow_ij.float().cpu(), 'flow_21': pair.flow_ji.float().cpu(),
            'valid_12': pair.valid_ij.float().cpu(), 'valid_21': pair.valid_ji.float().cpu()})
        return sample
