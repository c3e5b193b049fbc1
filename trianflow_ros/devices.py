"""The torch device of a device setting (``vo.device``, ``--device``): one rule for all callers."""

from typing import Optional, Union

import torch


def resolve_device(name: Union[str, torch.device, None],
                   local_rank: Optional[int] = None) -> torch.device:
    """
    Return the torch device of ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` (case is ignored).

    ``auto`` (or None, '') picks CUDA when available, else the CPU. ``cuda`` is this process's
    GPU: ``cuda:local_rank`` under torchrun (``local_rank`` given), else torch's current device.
    A ``torch.device`` is returned as it is.

    :param name: the setting.
    :param local_rank: the GPU of this process in a distributed run, or None.
    :raises RuntimeError: CUDA asked for but not available, or an unknown name (with the fix).
    """
    if isinstance(name, torch.device):
        return name
    name = (name or 'auto').strip().lower()
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda'):
        if not torch.cuda.is_available():
            raise RuntimeError(f'device {name!r} requested but CUDA is not available '
                               '(CPU-only torch or no GPU). Fix: --device cpu or auto.')
        if name == 'cuda':
            return torch.device('cuda', local_rank if local_rank is not None else
                                torch.cuda.current_device())
        return torch.device(name)
    if name != 'cpu':
        raise RuntimeError(f'unknown device {name!r}; use auto, cpu, cuda or cuda:N')
    return torch.device('cpu')
