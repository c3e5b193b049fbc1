"""Thread control for the small-op geometry solvers on CPU."""

import contextlib
from typing import Iterator, List

import torch

#: thread counts saved by the active :func:`one_cpu_thread` blocks (innermost last)
_SAVED: List[int] = []


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """
    Run the enclosed CPU tensor work on one intra-op thread, then restore the thread count.

    The pose solvers are thousands of small tensor ops; with several intra-op threads every op
    pays an OpenMP fork/join, and on a loaded 2-core machine the spinning workers made
    ransac_essential + recover_pose about 10x slower (270 ms instead of 30 ms per pair).
    torch.set_num_threads is process-wide: other threads' CPU tensor work runs on one thread
    during the call. Does nothing for non-CPU devices or when one thread is already set.

    :param device: the device of the tensors.
    """
    threads = torch.get_num_threads()
    if device.type != 'cpu' or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    _SAVED.append(threads)
    try:
        yield
    finally:
        _SAVED.pop()
        torch.set_num_threads(threads)


@contextlib.contextmanager
def all_cpu_threads() -> Iterator[None]:
    """
    Inside :func:`one_cpu_thread`: run the enclosed work on the thread count set before it.

    For the few large ops inside a frame of small ones: a network's convolutions use every
    core, the geometry around them one. Does nothing outside a :func:`one_cpu_thread` block.
    """
    if not _SAVED:
        yield
        return
    current = torch.get_num_threads()
    torch.set_num_threads(_SAVED[-1])
    try:
        yield
    finally:
        torch.set_num_threads(current)
