"""
Process groups, the step-indexed data order, and seeding for single- and multi-process runs.

Multi-GPU training uses PyTorch's own machinery only: launch with ``torchrun`` (which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), the trainer calls
:func:`init_distributed` (NCCL on CUDA, Gloo on CPU) and wraps the model in
``torch.nn.parallel.DistributedDataParallel``. ``train.batch_size`` is the batch of ONE
process; the effective batch of a step is ``batch_size * world_size``.

Data order (what makes a resume exact): the samples of optimisation step ``k`` (1-based) are a
deterministic function of ``(train.seed, k)`` -- :func:`step_indices` draws
``batch_size * world_size`` dataset indices with replacement from
``numpy.random.default_rng((seed, k))`` and rank ``r`` takes the r-th slice (a
``DistributedSampler`` equivalent for this sampler). This is the original's per-index
``np.random.seed(idx)`` sampling with replacement, made explicit, so a resumed run needs only
the step to continue the same sequence of batches.
"""

import dataclasses
import os
import random
from typing import Iterator, List, Optional

import numpy as np
import torch
from torch import distributed as dist
from torch.utils.data import Sampler


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """
    Where this process sits in a (possibly single-process) run.

    :param rank: global rank (0 in a single-process run).
    :param world_size: number of processes (1 in a single-process run).
    :param local_rank: rank on this machine (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Return True when more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Return True on the process that logs, validates and saves (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, '')
    if not value.strip():
        return default
    try:
        return int(value)
    except ValueError as e:
        raise RuntimeError(f'environment variable {name}={value!r} is not an integer '
                           '(set by torchrun; do not set it by hand)') from e


def dist_info_from_env() -> DistInfo:
    """
    Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun``.

    :return: the process's place; ``DistInfo()`` when the variables are absent.
    :raises RuntimeError: inconsistent values.
    """
    world = _env_int('WORLD_SIZE', 1)
    rank = _env_int('RANK', 0)
    local = _env_int('LOCAL_RANK', rank)
    if world < 1 or not 0 <= rank < world:
        raise RuntimeError(f'invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}')
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_distributed(device_type: str, info: Optional[DistInfo] = None) -> DistInfo:
    """
    Join the process group when launched by ``torchrun`` with ``WORLD_SIZE > 1``.

    :param device_type: 'cuda' (NCCL backend) or 'cpu' (Gloo backend).
    :param info: the process's place; read from the environment when None.
    :return: the process's place (a single-process ``DistInfo`` does nothing).
    """
    info = dist_info_from_env() if info is None else info
    if not info.enabled or dist.is_initialized():
        return info
    backend = 'nccl' if device_type == 'cuda' else 'gloo'
    if device_type == 'cuda':
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def gather_objects(obj: object, info: DistInfo) -> List[object]:
    """
    Collect one picklable object from every rank, in rank order (every rank gets the list).

    :param obj: this rank's object.
    :param info: the process's place.
    :return: ``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` in a single-process run.
    """
    if not info.enabled or not dist.is_initialized():
        return [obj]
    out: List[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def step_indices(seed: int, step: int, dataset_len: int, batch_size: int,
                 world_size: int = 1, rank: int = 0) -> List[int]:
    """
    Dataset indices of one rank for optimisation step ``step`` (sampling with replacement).

    :param seed: ``train.seed``.
    :param step: 1-based optimisation step.
    :param dataset_len: number of samples in the training set (> 0).
    :param batch_size: samples per rank and step.
    :param world_size: number of ranks.
    :param rank: this rank.
    :return: ``batch_size`` indices in ``[0, dataset_len)``; the ranks' lists are the
        consecutive slices of one draw of ``batch_size * world_size`` indices.
    """
    if dataset_len < 1:
        raise ValueError('the training set is empty')
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f'bad sampler settings: batch_size={batch_size}, '
                         f'world_size={world_size}, rank={rank}')
    rng = np.random.default_rng((int(seed), int(step)))
    drawn = rng.integers(0, dataset_len, size=batch_size * world_size)
    return [int(i) for i in drawn[rank * batch_size:(rank + 1) * batch_size]]


class StepBatchSampler(Sampler):
    """
    Batch sampler yielding :func:`step_indices` for steps ``start_step + 1 .. end_step``.

    Use as ``DataLoader(dataset, batch_sampler=StepBatchSampler(...))``; the loader keeps the
    order with any number of workers.
    """

    def __init__(self, dataset_len: int, batch_size: int, seed: int, start_step: int,
                 end_step: int, world_size: int = 1, rank: int = 0):
        """
        Describe the batches.

        :param dataset_len: training-set size.
        :param batch_size: samples per rank and step.
        :param seed: ``train.seed``.
        :param start_step: steps already done (0 for a fresh run, the checkpoint's step on
            resume).
        :param end_step: last step to produce (inclusive).
        :param world_size: number of ranks.
        :param rank: this rank.
        """
        self.dataset_len = int(dataset_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.end_step = int(end_step)
        self.world_size = int(world_size)
        self.rank = int(rank)
        step_indices(self.seed, 1, self.dataset_len, self.batch_size, self.world_size,
                     self.rank)  # validates the settings

    def __len__(self) -> int:
        """Return the number of batches (steps) left."""
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[List[int]]:
        """Yield the index lists of the steps in order."""
        for step in range(self.start_step + 1, self.end_step + 1):
            yield step_indices(self.seed, step, self.dataset_len, self.batch_size,
                               self.world_size, self.rank)


def seed_everything(seed: int) -> None:
    """
    Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    CUDA kernels may still be nondeterministic (atomic adds in ``grid_sample`` backward,
    cuDNN algorithm choice): bit-exact repeatability is only promised on CPU. See
    ``trianflow_ros/train/__init__.py``.

    :param seed: any integer; reduced to 32 bits for NumPy.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """
    ``DataLoader`` ``worker_init_fn``: seed NumPy and ``random`` in a worker from torch's.

    torch gives every worker the seed ``base_seed + worker_id`` (``base_seed`` drawn from the
    loader's own generator); this derives the other generators from it so that any randomness
    in a dataset is reproducible.

    :param worker_id: the worker number (unused; torch's seed already depends on it).
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
