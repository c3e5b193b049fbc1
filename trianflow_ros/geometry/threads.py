"""Thread control for the small-op geometry solvers on CPU."""

import contextlib
from typing import Iterator

import torch


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
    try:
        yield
    finally:
        torch.set_num_threads(threads)
