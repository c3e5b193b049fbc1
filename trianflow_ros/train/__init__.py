"""
Self-supervised training of TrianFlow's three stages (``trianflow-train``).

- :mod:`~trianflow_ros.train.trainer`: :class:`Trainer` -- the loop (Adam, AMP on CUDA,
  DDP, TensorBoard, validation, checkpoints).
- :mod:`~trianflow_ros.train.checkpoints`: checkpoint format, atomic writes, safe reads,
  ``--init-flow`` / ``--init-depth`` loading, run-folder protection.
- :mod:`~trianflow_ros.train.distributed`: torchrun process groups, the step-indexed data
  order, seeding.
- :mod:`~trianflow_ros.train.cli`: the command line.

Reproducibility. ``train.seed`` seeds Python, NumPy and torch; the data of step ``k`` is a
function of ``(seed, k)`` only; DataLoader workers are seeded from the loader's own generator;
checkpoints hold every generator state and the model's geometry call counter. On the CPU
(same thread count, ``num_workers`` any value) a run of 2N steps and a run of N steps resumed
for N more give bit-identical parameters (tested). On CUDA some kernels are nondeterministic
(atomic adds in the backward of ``grid_sample`` and of the cost volume, cuDNN algorithm
selection), so two runs drift apart at float rounding level; set
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and ``torch.use_deterministic_algorithms(True)`` yourself
if you need bit-exactness there, at a cost in speed (not done by default). Under DDP every rank
restores its own generator states on resume when the world size is unchanged.
"""
