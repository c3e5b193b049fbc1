"""
The training loop of every stage: data, Adam, AMP, DDP, logging, validation, checkpoints.

One :class:`Trainer` runs one stage (``train.mode``) of the paper's schedule (notes Sec. 1.2):
``flow`` (flow net only) -> ``depth`` (depth net, flow frozen; start it with
``init_flow``) -> ``depth_pose`` (joint; start it with ``init_depth``), or a PoseNet baseline.

Per step ``k`` (1-based): the batch of :func:`~trianflow_ros.train.distributed.step_indices`
``(train.seed, k)``, ``out = model(batch, stage)``, ``total = model.total_loss(out.losses)``,
backward, ``Adam(train.lr)`` step over ``model.parameters_to_train(stage)`` (no schedule, no
weight decay: the original). On CUDA with ``train.amp`` the forward runs under
``torch.autocast`` and the loss is scaled by a ``GradScaler``; on the CPU everything is fp32.
A step whose total loss is not finite is skipped (counted as ``skipped_steps``); too many in a
row abort the run.

Every ``log_interval`` steps: TensorBoard scalars ``loss/<name>`` (raw), ``loss/total``,
``diag/<name>``, ``time/steps_per_s``. Every ``val_interval`` steps and at the end:
validation on the held-out split (flow EPE where ground-truth flow exists, depth AbsRel after
per-image median scaling where ground-truth depth exists, and the mean of every loss), written
to TensorBoard (``val/*`` plus images of image 1, the flow, its valid mask, the ground-truth
flow and the disparity) and as one JSON line to ``metrics.jsonl``. Every ``save_interval``
steps: ``step_{k:07d}.pth`` and ``last.pth``; ``last.pth`` again at the end.

Validation runs on rank 0 only, in eval mode, without gradient, and leaves every random
generator (and the model's geometry call counter) as it found them, so validating or not never
changes the training trajectory.
"""

import dataclasses
import json
import math
from pathlib import Path
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from trianflow_ros.config import Config, dump_yaml
from trianflow_ros.data.registry import make_dataset
from trianflow_ros.data.sample import collate_samples
from trianflow_ros.devices import resolve_device
from trianflow_ros.eval.depth_metrics import DepthEvaluator
from trianflow_ros.eval.flow_metrics import FlowEvaluator
from trianflow_ros.nets.checkpoint import CheckpointError, load_state_dict_strict
from trianflow_ros.train import checkpoints as ckpt_io
from trianflow_ros.train.distributed import (barrier, cleanup_distributed, gather_objects,
                                             init_distributed, seed_everything, seed_worker,
                                             StepBatchSampler)

PathLike = Union[str, Path]

#: Integer attributes of a model that advance with its forward calls and feed its random
#: sampling (``TrianFlowModel.geometry_calls``); saved in checkpoints and kept by validation.
MODEL_COUNTERS = ('geometry_calls',)
#: Abort after this many consecutive steps with a non-finite loss.
MAX_BAD_STEPS = 20


@dataclasses.dataclass
class TrainResult:
    """
    What :meth:`Trainer.fit` did.

    :param step: steps done at the end (including those before a resume).
    :param start_step: the step the run started from (0, or the resumed checkpoint's).
    :param last_checkpoint: path of ``last.pth`` (None on ranks other than 0).
    :param losses: ``(step, total loss)`` of every step of this invocation.
    :param val_metrics: the last validation's figures (empty without validation).
    :param skipped_steps: steps skipped for a non-finite loss.
    :param seconds: wall time of the loop.
    :param steps_per_second: training throughput, measured after the first step.
    :param peak_memory_gb: peak CUDA memory (None on the CPU).
    """

    step: int
    start_step: int
    last_checkpoint: Optional[Path]
    losses: List[tuple] = dataclasses.field(default_factory=list)
    val_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    skipped_steps: int = 0
    seconds: float = 0.0
    steps_per_second: float = float('nan')
    peak_memory_gb: Optional[float] = None


def batch_to(batch: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """Move the tensors of a collated batch to ``device`` (other values are kept)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Visualisation for TensorBoard
# --------------------------------------------------------------------------------------------

def flow_to_rgb(flow: torch.Tensor, max_magnitude: Optional[float] = None) -> torch.Tensor:
    """
    Colour-code a flow field: hue = direction, saturation = magnitude (white = no motion).

    :param flow: (2, H, W) flow in pixels, channel 0 = u.
    :param max_magnitude: magnitude shown fully saturated; the field's maximum when None.
    :return: (3, H, W) RGB in [0, 1]. Not differentiable.
    """
    if flow.dim() != 3 or flow.shape[0] != 2:
        raise ValueError(f'flow must have shape (2, H, W), got {tuple(flow.shape)}')
    flow = flow.detach().float().cpu()
    u, v = flow[0], flow[1]
    mag = torch.sqrt(u * u + v * v)
    top = float(mag.max()) if max_magnitude is None else float(max_magnitude)
    sat = (mag / max(top, 1e-6)).clamp(0.0, 1.0)
    hue = torch.remainder(torch.atan2(v, u) / (2.0 * math.pi), 1.0) * 6.0
    sector = torch.floor(hue)
    frac = hue - sector
    p = 1.0 - sat
    q = 1.0 - sat * frac
    t = 1.0 - sat * (1.0 - frac)
    one = torch.ones_like(sat)
    table = [(one, t, p), (q, one, p), (p, one, t), (p, q, one), (t, p, one), (one, p, q)]
    sector = sector.long() % 6
    rgb = torch.zeros(3, *sat.shape)
    for k, channels in enumerate(table):
        sel = sector == k
        for c in range(3):
            rgb[c][sel] = channels[c][sel]
    return rgb


def normalise_map(x: torch.Tensor) -> torch.Tensor:
    """Scale a (1, H, W) map to [0, 1] by its finite minimum and maximum (for display)."""
    x = x.detach().float().cpu()
    finite = x[torch.isfinite(x)]
    if finite.numel() == 0:
        return torch.zeros_like(x)
    lo, hi = float(finite.min()), float(finite.max())
    return ((x - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0).nan_to_num(0.0)


# --------------------------------------------------------------------------------------------
# State that is not a parameter: counters and random generators
# --------------------------------------------------------------------------------------------

def _counters(model: nn.Module) -> Dict[str, int]:
    found = {}
    for name, module in ckpt_io.unwrap(model).named_modules():
        for attr in MODEL_COUNTERS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                found[f'{name}.{attr}' if name else attr] = int(value)
    return found


def _set_counters(model: nn.Module, counters: Mapping[str, int]) -> None:
    modules = dict(ckpt_io.unwrap(model).named_modules())
    for key, value in counters.items():
        name, _, attr = key.rpartition('.')
        if name not in modules or attr not in MODEL_COUNTERS:
            raise CheckpointError(f'the checkpoint holds counter {key!r} that the model lacks')
        setattr(modules[name], attr, int(value))


class _PreservedState:
    """Context: restore every RNG (and the model's counters) on exit."""

    def __init__(self, model: nn.Module, generators: Mapping[str, torch.Generator]):
        self.model = model
        self.generators = generators

    def __enter__(self):
        self.rng = ckpt_io.capture_rng_state(self.generators)
        self.counters = _counters(self.model)
        return self

    def __exit__(self, *exc):
        ckpt_io.restore_rng_state(self.rng, self.generators)
        _set_counters(self.model, self.counters)
        return False


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------

class Trainer:
    """
    Train one stage; see the module doc.

    :ivar cfg: the resolved configuration.
    :ivar stage: ``cfg.train.mode``.
    :ivar model: the (unwrapped) model.
    :ivar step: steps done so far.
    """

    def __init__(self, cfg: Config, out_dir: PathLike, *, device: str = 'auto',
                 resume: Optional[PathLike] = None, init_flow: Optional[PathLike] = None,
                 init_depth: Optional[PathLike] = None, overwrite: bool = False,
                 max_steps: Optional[int] = None, quiet: bool = False, val_samples: int = 64,
                 train_dataset: Optional[Dataset] = None,
                 val_dataset: Optional[Dataset] = None,
                 dataset_overrides: Optional[Mapping[str, Any]] = None,
                 model_factory: Optional[Callable[[Config], nn.Module]] = None,
                 tensorboard: bool = True, log: Optional[Callable[[str], None]] = None):
        """
        Set up model, optimizer, data, logging and (optionally) the resumed state.

        :param cfg: the resolved configuration (on resume: the checkpoint's, possibly with
            overrides -- the CLI does that).
        :param out_dir: the run folder.
        :param device: 'auto', 'cpu', 'cuda' or 'cuda:N'.
        :param resume: a ``last.pth`` / ``step_*.pth`` of this run to continue exactly.
        :param init_flow: a stage-1 checkpoint whose flow net starts this run.
        :param init_depth: a stage-2 checkpoint whose whole model starts this run.
        :param overwrite: delete an earlier run's files in ``out_dir``.
        :param max_steps: stop after this many steps of this invocation (None: run to
            ``train.num_iterations``).
        :param quiet: no progress bar.
        :param val_samples: validate on at most this many held-out samples (evenly spread).
        :param train_dataset: the training set (default: ``make_dataset(cfg.data, 'train')``).
        :param val_dataset: the held-out set (default: ``make_dataset(cfg.data, 'val')``;
            validation is off when that cannot be built).
        :param dataset_overrides: keyword arguments for both ``make_dataset`` calls.
        :param model_factory: builds the model from the config (default
            ``trianflow_ros.model.build_model``).
        :param tensorboard: write TensorBoard event files.
        :param log: where messages go (default: print on rank 0).
        """
        if resume is not None and (init_flow is not None or init_depth is not None):
            raise ValueError('--resume continues a run; it cannot be combined with '
                             '--init-flow / --init-depth')
        self.cfg = cfg
        self.stage = cfg.train.mode
        self.out_dir = Path(out_dir)
        self.max_steps = max_steps
        self.quiet = quiet
        self.val_samples = int(val_samples)
        self.info = init_distributed('cuda' if str(device).startswith('cuda') or (
            device == 'auto' and torch.cuda.is_available()) else 'cpu')
        self.device = resolve_device(device, self.info.local_rank if self.info.enabled else None)
        self._log = log or (lambda msg: print(msg, flush=True))
        self.use_amp = self.device.type == 'cuda' and cfg.train.amp

        if self.info.is_main:
            deleted = ckpt_io.prepare_run_dir(self.out_dir, resume=resume is not None,
                                              overwrite=overwrite)
            if deleted:
                self.log(f'--overwrite: deleted {len(deleted)} file(s) of the earlier run in '
                         f'{self.out_dir}')
        barrier(self.info)

        seed_everything(cfg.train.seed)
        if model_factory is None:
            from trianflow_ros.model import build_model
            model_factory = build_model
        self.model = model_factory(cfg)
        if init_flow is not None:
            self.log(ckpt_io.init_flow(self.model, init_flow))
        if init_depth is not None:
            self.log(ckpt_io.init_depth(self.model, init_depth))
        self.model.to(self.device)
        params = list(self.model.parameters_to_train(self.stage))
        if not params:
            raise RuntimeError(f'the model has no parameters to train in stage {self.stage!r}')
        chosen = {id(p) for p in params}
        for p in self.model.parameters():          # exactly the optimizer's parameters train
            p.requires_grad_(id(p) in chosen)
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.use_amp)
        self.generators = ckpt_io.find_generators(self.model)
        self.step = 0
        self._resume_rng: Optional[Dict[str, Any]] = None
        if resume is not None:
            self._load_resume(resume)
        elif self.info.rank > 0:
            torch.manual_seed(cfg.train.seed + 7919 * self.info.rank)  # own sampling per rank

        overrides = dict(dataset_overrides or {})
        self.train_dataset = (train_dataset if train_dataset is not None
                              else make_dataset(cfg.data, 'train', **overrides))
        if len(self.train_dataset) == 0:
            raise RuntimeError('the training set is empty; check data.root and data.dataset')
        self.val_dataset = val_dataset
        if self.val_dataset is None and self.info.is_main:
            try:
                self.val_dataset = make_dataset(cfg.data, 'val', **overrides)
            except (OSError, ValueError) as e:
                self.log(f'validation is off: the val split cannot be read ({e})')
        if self.val_dataset is not None and len(self.val_dataset) > self.val_samples:
            keep = np.unique(np.linspace(0, len(self.val_dataset) - 1, self.val_samples)
                             .round().astype(int))
            self.val_dataset = Subset(self.val_dataset, keep.tolist())

        self.ddp_model: nn.Module = self.model
        if self.info.enabled:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda'
                else None, find_unused_parameters=True)

        self.writer = None
        if self.info.is_main and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out_dir),
                                        purge_step=self.step + 1 if resume else None)
        if self.info.is_main:
            (self.out_dir / 'config.yaml').write_text(dump_yaml(cfg))
            if resume is not None:
                self._truncate_metrics(self.step)
        self.log(f'stage {self.stage!r} on {self.device} (world size {self.info.world_size}, '
                 f'amp {self.use_amp}); {len(self.train_dataset)} training samples, '
                 f'{len(self.val_dataset) if self.val_dataset is not None else 0} validation '
                 f'samples; {sum(p.numel() for p in params):,} trained parameters; '
                 f'starting at step {self.step} of {cfg.train.num_iterations}')

    # ---------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print a message on rank 0."""
        if self.info.is_main:
            self._log(message)

    def _load_resume(self, path: PathLike) -> None:
        ckpt = ckpt_io.read_training_checkpoint(path)
        if ckpt['stage'] != self.stage:
            raise CheckpointError(
                f'{path} is a {ckpt["stage"]!r}-stage checkpoint but train.mode is '
                f'{self.stage!r}. Fix: resume with the same stage, or start the next stage '
                'from it with --init-flow (after flow) / --init-depth (after depth).')
        state = ckpt_io.strip_module_prefix(ckpt['model_state_dict'], str(path))
        load_state_dict_strict(self.model, state, str(path),
                               fix='resume with the configuration stored in the checkpoint')
        try:
            self.optimizer.load_state_dict(ckpt['optimizer_state_dict'])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f'{path}: the optimizer state does not fit the parameters '
                                  f'of stage {self.stage!r}: {e}') from e
        if self.use_amp and ckpt.get('scaler_state_dict'):
            self.scaler.load_state_dict(ckpt['scaler_state_dict'])
        self.step = int(ckpt['step'])
        rng = ckpt['rng']
        ranks = list(rng.get('ranks') or [])
        if len(ranks) == self.info.world_size:
            self._resume_rng = ranks[self.info.rank]
        else:
            self.log(f'warning: {path} was written by {len(ranks)} process(es), this run has '
                     f'{self.info.world_size}; the data order continues exactly, the random '
                     'sampling inside the model does not')
            self._resume_rng = ranks[0] if ranks else None
            if self.info.rank > 0:
                self._resume_rng = None
                torch.manual_seed(self.cfg.train.seed + 7919 * self.info.rank + self.step)
        self.log(f'resumed {path} at step {self.step}')

    def _truncate_metrics(self, step: int) -> None:
        """Drop lines of metrics.jsonl written after ``step`` by the run being resumed."""
        path = self.out_dir / 'metrics.jsonl'
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if int(json.loads(line).get('step', 0)) <= step:
                    kept.append(line)
            except (ValueError, AttributeError):
                kept.append(line)
        path.write_text(''.join(k + '\n' for k in kept))

    def _rng_snapshot(self) -> Dict[str, Any]:
        state = ckpt_io.capture_rng_state(self.generators)
        state['counters'] = _counters(self.model)
        return state

    def _restore_snapshot(self, state: Mapping[str, Any]) -> None:
        ckpt_io.restore_rng_state(state, self.generators)
        _set_counters(self.model, state.get('counters') or {})

    # ---------------------------------------------------------------------------------------
    def _loader(self, end_step: int) -> DataLoader:
        sampler = StepBatchSampler(len(self.train_dataset), self.cfg.train.batch_size,
                                   self.cfg.train.seed, self.step, end_step,
                                   self.info.world_size, self.info.rank)
        generator = torch.Generator()
        generator.manual_seed(self.cfg.train.seed * 1_000_003 + self.step)  # worker seeds
        workers = self.cfg.train.num_workers
        return DataLoader(self.train_dataset, batch_sampler=sampler,
                          collate_fn=collate_samples, num_workers=workers,
                          worker_init_fn=seed_worker if workers > 0 else None,
                          generator=generator, pin_memory=self.device.type == 'cuda',
                          persistent_workers=False)

    def _train_step(self, batch: Dict[str, Any]):
        batch = batch_to(batch, self.device)
        with torch.autocast(device_type='cuda', dtype=torch.float16, enabled=self.use_amp):
            out = self.ddp_model(batch, self.stage)
            total = self.model.total_loss(out.losses)
        self.scaler.scale(total).backward()
        finite = torch.isfinite(total.detach()).float()
        if self.info.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        ok = bool(finite.item())
        if ok or self.use_amp:                       # the scaler skips inf/NaN steps itself
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return out, total.detach(), ok

    def fit(self) -> TrainResult:
        """
        Run the stage from the current step to ``train.num_iterations`` (or ``max_steps``).

        :return: a :class:`TrainResult`.
        """
        cfg = self.cfg.train
        start = self.step
        end = cfg.num_iterations if self.max_steps is None else min(
            cfg.num_iterations, start + int(self.max_steps))
        result = TrainResult(step=start, start_step=start, last_checkpoint=None)
        if self._resume_rng is not None:
            self._restore_snapshot(self._resume_rng)
            self._resume_rng = None
        self.model.train()
        bar = tqdm(total=end, initial=start, desc=self.stage, dynamic_ncols=True,
                   disable=self.quiet or not self.info.is_main or not sys.stderr.isatty())
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        t_first = None
        last_log_time, last_log_step = t0, start
        bad = 0
        validated_at = saved_at = None
        try:
            for batch in self._loader(end):
                self.step += 1
                out, total, ok = self._train_step(batch)
                value = float(total)
                result.losses.append((self.step, value))
                if not ok:
                    bad += 1
                    result.skipped_steps += 1
                    self.log(f'step {self.step}: non-finite loss, update skipped '
                             f'({ {k: float(v.detach()) for k, v in out.losses.items()} })')
                    if bad >= MAX_BAD_STEPS:
                        raise RuntimeError(f'{bad} consecutive steps with a non-finite loss '
                                           f'(last at step {self.step}); aborting. Lower '
                                           'train.lr or check the data.')
                else:
                    bad = 0
                if t_first is None:
                    t_first = time.perf_counter()
                bar.update(1)
                bar.set_postfix(loss=f'{value:.4g}', refresh=False)
                if self.step % cfg.log_interval == 0 or self.step == end:
                    now = time.perf_counter()
                    rate = (self.step - last_log_step) / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_step = now, self.step
                    self._log_scalars(out, value, rate)
                if self.step % cfg.val_interval == 0:
                    result.val_metrics = self.validate()
                    validated_at = self.step
                if self.step % cfg.save_interval == 0:
                    result.last_checkpoint = self.save(periodic=True)
                    saved_at = self.step
            if validated_at != self.step and self.step > start:
                result.val_metrics = self.validate()
            if saved_at != self.step:
                result.last_checkpoint = self.save(periodic=False)
        finally:
            bar.close()
        t_end = time.perf_counter()
        result.step = self.step
        result.seconds = t_end - t0
        done = self.step - start
        if t_first is not None and done > 1:
            result.steps_per_second = (done - 1) / max(t_end - t_first, 1e-9)
        if self.device.type == 'cuda':
            result.peak_memory_gb = torch.cuda.max_memory_allocated(self.device) / 2**30
        if not self.info.is_main:
            result.last_checkpoint = None
        if self.writer is not None:
            self.writer.flush()
        return result

    def close(self) -> None:
        """Close the TensorBoard writer and leave the process group."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        cleanup_distributed()

    # ---------------------------------------------------------------------------------------
    def _log_scalars(self, out, total: float, rate: float) -> None:
        if self.writer is None:
            return
        w, k = self.writer, self.step
        for name, value in out.losses.items():
            w.add_scalar(f'loss/{name}', float(value.detach()), k)
        w.add_scalar('loss/total', total, k)
        for name, value in (out.diagnostics or {}).items():
            w.add_scalar(f'diag/{name}', float(value), k)
        if out.geometry_ok is not None:
            w.add_scalar('diag/geometry_ok_batch', float(out.geometry_ok.float().mean()), k)
        w.add_scalar('time/steps_per_s', rate, k)
        w.add_scalar('train/lr', self.optimizer.param_groups[0]['lr'], k)
        if self.use_amp:
            w.add_scalar('train/amp_scale', float(self.scaler.get_scale()), k)
        if self.device.type == 'cuda':
            w.add_scalar('memory/peak_gb', torch.cuda.max_memory_allocated(self.device) / 2**30,
                         k)

    def save(self, periodic: bool = True) -> Optional[Path]:
        """
        Write ``last.pth`` (and ``step_{k:07d}.pth`` when ``periodic``) on rank 0.

        Every rank must call it (the RNG states of all ranks are gathered).

        :return: the path of ``last.pth`` on rank 0, None elsewhere.
        """
        ranks = gather_objects(self._rng_snapshot(), self.info)
        if not self.info.is_main:
            return None
        rng = {'world_size': self.info.world_size, 'ranks': ranks,
               'sampler': {'kind': 'step_indexed', 'seed': self.cfg.train.seed,
                           'step': self.step}}
        ckpt = ckpt_io.make_checkpoint(model=self.model, optimizer=self.optimizer,
                                       step=self.step, stage=self.stage,
                                       config_yaml=dump_yaml(self.cfg), rng=rng,
                                       scaler=self.scaler)
        if periodic:
            ckpt_io.atomic_save(ckpt, self.out_dir / ckpt_io.step_name(self.step))
        return ckpt_io.atomic_save(ckpt, self.out_dir / ckpt_io.LAST_NAME)

    # ---------------------------------------------------------------------------------------
    def validate(self) -> Dict[str, float]:
        """
        Evaluate on the held-out samples, log, and append a line to ``metrics.jsonl``.

        Runs on rank 0; the other ranks wait.

        :return: ``{'flow_epe', 'depth_abs_rel', 'loss/<name>', 'loss/total', ...}`` (keys
            present when measurable); empty without a validation set.
        """
        metrics: Dict[str, float] = {}
        if self.info.is_main and self.val_dataset is not None and len(self.val_dataset):
            metrics = self._evaluate()
            record = {'step': self.step, 'stage': self.stage, 'time': time.time(), **metrics}
            with open(self.out_dir / 'metrics.jsonl', 'a') as f:
                f.write(json.dumps(record) + '\n')
            if self.writer is not None:
                for name, value in metrics.items():
                    self.writer.add_scalar(f'val/{name}', value, self.step)
            shown = ', '.join(f'{k} {v:.4g}' for k, v in metrics.items()
                              if k in ('flow_epe', 'depth_abs_rel', 'loss/total'))
            self.log(f'step {self.step}: validation {shown}')
        barrier(self.info)
        return metrics

    @torch.no_grad()
    def _evaluate(self) -> Dict[str, float]:
        """Compute the validation figures (see :meth:`validate`); generators stay untouched."""
        loader = DataLoader(self.val_dataset, batch_size=self.cfg.train.batch_size,
                            shuffle=False, collate_fn=collate_samples, num_workers=0)
        flow_eval = FlowEvaluator()
        depth_eval = DepthEvaluator(min_depth=self.cfg.depth_net.min_depth,
                                    max_depth=self.cfg.depth_net.max_depth, crop=None)
        sums: Dict[str, float] = {}
        count = 0
        was_training = self.model.training
        cuda = [self.device.index or 0] if self.device.type == 'cuda' else []
        with _PreservedState(self.model, self.generators), torch.random.fork_rng(cuda):
            seed_everything(self.cfg.train.seed)
            self.model.eval()
            try:
                for i, batch in enumerate(loader):
                    batch = batch_to(batch, self.device)
                    with torch.autocast(device_type='cuda', dtype=torch.float16,
                                        enabled=self.use_amp):
                        out = self.model(batch, self.stage)
                        total = self.model.total_loss(out.losses)
                    n = batch['image1'].shape[0]
                    count += n
                    for name, value in list(out.losses.items()) + [('total', total)]:
                        sums[f'loss/{name}'] = sums.get(f'loss/{name}', 0.0) + float(value) * n
                    self._score(batch, out, flow_eval, depth_eval)
                    if i == 0:
                        self._log_images(batch, out)
            finally:
                self.model.train(was_training)
        metrics = {k: v / max(count, 1) for k, v in sums.items()}
        if len(flow_eval):
            metrics['flow_epe'] = float(flow_eval.summary().means['epe'])
        if len(depth_eval):
            summary = depth_eval.summary()
            metrics['depth_abs_rel'] = float(summary.means['abs_rel'])
            metrics['depth_a1'] = float(summary.means['a1'])
        metrics['samples'] = float(count)
        return metrics

    @staticmethod
    def _score(batch: Mapping[str, Any], out, flow_eval: FlowEvaluator,
               depth_eval: DepthEvaluator) -> None:
        flows = getattr(out, 'flows_12', None) or []
        if 'flow_12' in batch and flows:
            pred = flows[0].float().cpu().numpy()
            gt = batch['flow_12'].float().cpu().numpy()
            valid = (batch['valid_12'].cpu().numpy() > 0.5 if 'valid_12' in batch
                     else np.ones(gt[:, :1].shape, dtype=bool))
            for b in range(pred.shape[0]):
                if valid[b, 0].any():
                    flow_eval.add(pred[b].transpose(1, 2, 0), gt[b].transpose(1, 2, 0),
                                  valid[b, 0])
        depth = getattr(out, 'depth1', None)
        if 'depth1' in batch and depth is not None:
            pred = depth.float().cpu().numpy()
            gt = batch['depth1'].float().cpu().numpy()
            for b in range(pred.shape[0]):
                try:
                    depth_eval.add(gt[b, 0], pred[b, 0])
                except ValueError:
                    continue                         # no valid ground truth in this frame

    def _log_images(self, batch: Mapping[str, Any], out) -> None:
        if self.writer is None:
            return
        w, k = self.writer, self.step
        image = batch['image1'][0].detach().float().cpu()
        if self.cfg.data.bgr:
            image = image.flip(0)
        w.add_image('val/image1', image.clamp(0, 1), k)
        flows = getattr(out, 'flows_12', None) or []
        top = None
        if 'flow_12' in batch:
            gt = batch['flow_12'][0]
            top = float(gt.norm(dim=0).max())
            w.add_image('val/flow_gt', flow_to_rgb(gt, top), k)
        if flows:
            w.add_image('val/flow', flow_to_rgb(flows[0][0], top), k)
        if getattr(out, 'valid_12', None) is not None:
            w.add_image('val/valid_mask', out.valid_12[0].detach().float().cpu().clamp(0, 1), k)
        if getattr(out, 'score', None) is not None:
            w.add_image('val/score', normalise_map(out.score[0]), k)
        depth = getattr(out, 'depth1', None)
        if depth is not None:
            w.add_image('val/disparity', normalise_map(1.0 / depth[0].clamp(min=1e-6)), k)


def run_training(cfg: Config, out_dir: PathLike, **kwargs) -> TrainResult:
    """
    Build a :class:`Trainer`, run it and close it.

    :param cfg: the resolved configuration.
    :param out_dir: the run folder.
    :param kwargs: keyword arguments of :class:`Trainer`.
    :return: the :class:`TrainResult`.
    """
    trainer = Trainer(cfg, out_dir, **kwargs)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def summarize_losses(losses: Sequence[tuple], window: int = 5) -> Dict[str, float]:
    """
    Mean total loss of the first and the last ``window`` steps of a run.

    :param losses: ``TrainResult.losses``.
    :param window: steps averaged at each end.
    :return: ``{'first': ..., 'last': ...}`` (NaN for an empty run).
    """
    values = [v for _, v in losses if math.isfinite(v)]
    if not values:
        return {'first': float('nan'), 'last': float('nan')}
    return {'first': float(np.mean(values[:window])), 'last': float(np.mean(values[-window:]))}
