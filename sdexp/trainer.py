"""A generic training loop on accelerate that calls a module's hooks and runs callbacks.

It knows nothing of models or methods: devices, mixed precision, gradient accumulation,
clipping, validation cadence, atomic checkpoint folders and stopping are its whole job.

Under several processes (``torchrun``/``accelerate launch``: DDP) every process runs this same
loop on its slice of each global batch; the logged losses are their mean, validation is sharded
and averaged over all of them, and stops are the main process's decision, agreed on at the steps
whose logs are read (see ``sdexp.distributed``).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from sdexp import distributed, training_state
from sdexp.callbacks.base import Callback
from sdexp.errors import UserError
from sdexp.methods.base import TrainingModule
from sdexp.rng import isolated_rng


def check_device(device: str, key: str) -> None:
    """``cuda`` asked for where none is visible is the user's error, found before any work."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}: cuda was asked for but no CUDA device is visible; use {key}=auto")


def resolve_device(device: str, key: str) -> str:
    """The device type a setting gives: checked, and ``auto`` = CUDA when visible, else the CPU."""
    check_device(device, key)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def wants_cpu(device: str) -> bool:
    """Whether a ``train.device`` setting trains on the CPU (accelerate's ``cpu=`` flag)."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def _forget_previous_run_state(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state that refuses a second Accelerator with another mixed
    precision; a sweep's trials (or a pretrain's stages) in one process each set their own. The
    process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState, GradientState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()


@dataclass
class TrainerState:
    """What callbacks may read: progress, the latest logs and validation metrics."""

    step: int = 0
    epoch: int = 0
    max_steps: int = 0
    last_logs: dict = field(default_factory=dict)
    last_val: dict = field(default_factory=dict)
    checkpoints: list = field(default_factory=list)
    stop_reason: str | None = None
    started_at: float = 0.0
    train_seconds: float = 0.0
    loop_started: float = 0.0  # wall clock (time.time) at the first step and after the last
    loop_ended: float = 0.0
    data_wait_seconds: float = 0.0  # time the loop spent waiting for the dataloader's next batch
    batches_in_epoch: int = 0  # micro-batches taken from this epoch's data (where a resumed run goes on)
    resumed_from: str | None = None  # the checkpoint this fit started from (train.resume)


class StepValues:
    """Each step's logs, their tensors (loss, grad norm, a module's tensor logs) left on the device
    until ``read``: one transfer for every step since the last read, so the loop never waits for
    the device in between (a host sync mid-step serialises the host's kernel launches with the
    device's work)."""

    def __init__(self):
        self.pending: list[tuple[int, dict]] = []

    def add(self, step: int, logs: dict) -> None:
        self.pending.append((step, logs))

    def read(self) -> list[tuple[int, dict]]:
        """The pending steps' logs, oldest first, every tensor as a float (its exact value)."""
        tensors = [v for _, logs in self.pending for v in logs.values() if isinstance(v, torch.Tensor)]
        numbers = iter(())
        if tensors:
            device = tensors[0].device
            flat = torch.stack([t.detach().reshape(()).to(device, torch.float64) for t in tensors])
            flat = distributed.mean_across_processes(flat)  # every process's mean (DDP: equal batches)
            numbers = iter(flat.tolist())  # the one host sync
        out = [
            (step, {k: next(numbers) if isinstance(v, torch.Tensor) else v for k, v in logs.items()})
            for step, logs in self.pending
        ]
        self.pending.clear()
        return out


def plain(logs: dict) -> dict:
    """The entries of ``logs`` that need no device read (epoch, learning rates, counters)."""
    return {k: v for k, v in logs.items() if not isinstance(v, torch.Tensor)}


class Trainer:
    """Runs ``module`` for ``max_steps`` optimizer steps on one accelerate ``Accelerator``.

    Logged tensors (``train/loss``, ``train/grad_norm``, a module's tensor logs) are read from the
    device every ``log_every`` steps, at the last step and before validation or a checkpoint; the
    finiteness check of the loss runs at those reads, over every step since the previous one. In
    between, callbacks get the step's other logs only.
    """

    def __init__(
        self,
        *,
        run_dir: str | Path,
        max_steps: int,
        seed: int = 0,
        device: str = "auto",
        mixed_precision: str = "no",
        gradient_accumulation: int = 1,
        max_grad_norm: float | None = 1.0,
        val_every: int = 0,
        checkpoint_every: int = 0,
        log_every: int = 1,
        callbacks: list[Callback] | None = None,
        save_state: bool = False,
        resume_from: str | Path | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.max_steps = max_steps
        self.seed = seed
        self.max_grad_norm = max_grad_norm
        self.val_every = val_every
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.callbacks = list(callbacks or [])
        self.save_state = save_state  # checkpoints carry the training state (sdexp.training_state)
        self.resume_from = Path(resume_from) if resume_from else None
        check_device(device, "train.device")
        use_cpu = wants_cpu(device)
        _forget_previous_run_state(mixed_precision)
        self.accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=gradient_accumulation,
        )
        self.state = TrainerState(max_steps=max_steps)
        self.should_stop = False

    @classmethod
    def from_config(cls, train_cfg, run_dir: str | Path, callbacks: list[Callback] | None = None) -> Trainer:
        """A trainer for a run config's ``train`` section (run.py, sweeps and the benchmark use this)."""
        t = train_cfg
        return cls(
            run_dir=run_dir,
            max_steps=t.steps,
            seed=t.seed,
            device=t.device,
            mixed_precision=t.mixed_precision,
            gradient_accumulation=t.gradient_accumulation,
            max_grad_norm=t.max_grad_norm,
            val_every=t.val_every,
            checkpoint_every=t.checkpoint_every,
            log_every=t.log_every,
            callbacks=callbacks,
            save_state=t.save_state,
        )

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    def _own_loader(self, loader):
        """The module's loader, prepared as accelerate prepares one for a single process.

        The module's sampler already cuts each global batch and keeps this process's slice
        (``BucketBatchSampler(num_replicas=, rank=)``), so the processes together see the batch one
        process with the global batch size sees. ``accelerator.prepare`` would shard it again (each
        process taking every N-th batch: another order for every N). Preparing it as one process's
        keeps what accelerate adds (device placement, the end of an epoch closing a gradient
        accumulation, ``skip_first_batches`` on resume) and, with one process, is exactly what
        ``prepare`` does."""
        from accelerate.data_loader import prepare_data_loader

        acc = self.accelerator
        return prepare_data_loader(
            loader,
            acc.device,
            num_processes=1,
            process_index=0,
            put_on_device=acc.device_placement,
            rng_types=list(acc.rng_types),
            non_blocking=acc.non_blocking,
        )

    def _agree_to_stop(self) -> bool:
        """The main process's ``should_stop`` and stop reason, on every process (one small broadcast,
        at the steps whose logs are read: a stop decided in between waits for the next such step,
        so every process leaves the loop at the same step)."""
        if self.num_processes > 1:
            self.should_stop, self.state.stop_reason = distributed.broadcast(
                (self.should_stop, self.state.stop_reason)
            )
        return self.should_stop

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, self.module, *args)

    # ----- the loop -----------------------------------------------------------------------
    def fit(self, module: TrainingModule) -> TrainerState:
        self.module = module
        set_seed(self.seed)
        module.setup(self)
        optimizer, lr_scheduler = module.configure_optimizers()
        trainable = module.trainable_modules()
        *trainable, optimizer = self.accelerator.prepare(*trainable, optimizer)
        dataloader = self._own_loader(module.train_dataloader())
        module.on_modules_prepared(trainable)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        for m in trainable:
            m.train()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = self.state
        state.started_at = time.perf_counter()
        rng = None
        if self.resume_from is not None:
            module.val_batches()  # built as at step 0 (they read the data's epoch)
            rng = training_state.load_training_state(self, self.resume_from)
            state.resumed_from = self.resume_from.name
        else:
            self._run_validation()  # step 0: the base, before callbacks start (scoring reads it)
        self._call("on_train_start")
        state.loop_started = time.time()
        values = StepValues()
        loss_sum, micro = None, 0
        stop = False  # what every process agreed on (one process: should_stop at every step)
        while state.step < self.max_steps and not stop:
            module.on_train_epoch_start(state.epoch)
            if hasattr(dataloader, "set_epoch"):  # accelerate's loader counts epochs itself
                dataloader.set_epoch(state.epoch)
            skip = state.batches_in_epoch  # > 0 only where a resumed run goes on mid-epoch
            batches = iter(self.accelerator.skip_first_batches(dataloader, skip) if skip else dataloader)
            if rng is not None:  # after the iterator: making one draws from the global RNG
                training_state.restore_rng(rng)
                rng = None
            while True:
                waited = time.perf_counter()
                batch = next(batches, None)
                state.data_wait_seconds += time.perf_counter() - waited
                if batch is None:
                    break
                state.batches_in_epoch += 1
                with self.accelerator.accumulate(*trainable):
                    out = module.training_step(batch, state.step)
                    self.accelerator.backward(out.loss)
                    grad_norm = None
                    if self.accelerator.sync_gradients and self.max_grad_norm:
                        grad_norm = self.accelerator.clip_grad_norm_(params, self.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss = out.loss.detach().double()  # float64 on the device: the sum a float sum was
                loss_sum = loss if loss_sum is None else loss_sum + loss
                micro += 1
                if not self.accelerator.sync_gradients:
                    continue
                lr_scheduler.step()
                state.step += 1
                module.on_train_batch_end(state.step)
                logs = {"train/loss": loss_sum / micro, "train/epoch": state.epoch, **out.logs}
                if grad_norm is not None:
                    logs["train/grad_norm"] = grad_norm
                for group in optimizer.param_groups:
                    logs[f"train/lr/{group.get('name', 'default')}"] = group["lr"]
                loss_sum, micro = None, 0
                values.add(state.step, logs)
                read = state.step >= self.max_steps or any(
                    self._due(every) for every in (self.log_every, self.val_every, self.checkpoint_every)
                )
                logs = self._read_logs(values) if read else plain(logs)
                state.last_logs = logs
                self._call("on_train_step_end", logs)
                if self._due(self.val_every) and not self._due(self.checkpoint_every):
                    self._run_validation()
                if self._due(self.checkpoint_every) and state.step < self.max_steps:
                    self._run_validation()
                    self.save_checkpoint(f"step-{state.step:06d}")
                if read or self.num_processes == 1:
                    stop = self._agree_to_stop()
                if state.step >= self.max_steps or stop:
                    break
            state.epoch += 1
            state.batches_in_epoch = 0
        if values.pending:  # stopped between reads (a callback): check and keep the last step's logs
            state.last_logs = self._read_logs(values)
        state.loop_ended = time.time()
        if state.stop_reason is None:
            state.stop_reason = "max_steps" if state.step >= self.max_steps else "stopped"
        if state.last_val.get("step") != state.step:
            self._run_validation()
        self.save_checkpoint("final")
        state.train_seconds = time.perf_counter() - state.started_at
        self._call("on_train_end")
        return state

    def _read_logs(self, values: StepValues) -> dict:
        """The newest step's logs, read with every pending step's; a non-finite loss stops the run,
        naming its step (the run's step count goes back to the last finite one)."""
        logs = {}
        for step, logs in values.read():
            loss = logs.get("train/loss")
            if loss is not None and not math.isfinite(loss):
                self.state.step = step - 1
                raise FloatingPointError(f"loss is {loss} at step {step}")
        return logs

    def _due(self, every: int) -> bool:
        return bool(every) and self.state.step % every == 0

    # ----- validation and checkpoints -----------------------------------------------------
    @torch.no_grad()
    def _run_validation(self) -> dict:
        """The validation loss over ``module.val_batches()``: each process takes every N-th batch,
        and the item-weighted means are combined over the processes (torchmetrics ``MeanMetric``,
        float64), so the values equal the single-process ones."""
        from torchmetrics import MeanMetric

        batches = self.module.val_batches()
        if not batches:
            return {}
        modules = self.module.trainable_modules()
        for m in modules:
            m.eval()
        self.module.on_validation_start()
        means: dict[str, MeanMetric] = {}

        def mean(key: str) -> MeanMetric:
            if key not in means:
                means[key] = MeanMetric(nan_strategy="disable").set_dtype(torch.float64).to(self.device)
            return means[key]

        rank, processes = self.accelerator.process_index, self.num_processes
        try:
            with isolated_rng(self.device):
                with self.accelerator.autocast():
                    for i, batch in enumerate(batches):
                        if i % processes != rank:
                            continue
                        out = self.module.validation_step(batch, i)
                        n = float(out.pop("n", torch.tensor(1.0)))
                        for key, value in out.items():
                            value = torch.tensor(float(value), dtype=torch.float64, device=self.device)
                            mean(key).update(value, weight=n)
        finally:
            self.module.on_validation_end()  # e.g. the training weights back after EMA ones
        for m in modules:
            m.train()
        keys = sorted(means)
        if processes > 1:  # a key no batch of this process gave: weight 0, so every process syncs it
            keys = sorted({k for shard in distributed.gather(keys) for k in shard})
            for key in keys:
                if key not in means:
                    mean(key).update(torch.zeros((), dtype=torch.float64, device=self.device), weight=0.0)
        averaged = {f"val/{k}": float(means[k].compute()) for k in keys}
        metrics = self.module.validation_summary(averaged)
        self.state.last_val = {"step": self.state.step, **metrics}
        self._call("on_validation_end", metrics)
        return metrics

    def save_checkpoint(self, name: str) -> Path:
        """Write ``checkpoints/<name>/`` atomically: staged in a hidden folder, then renamed. With
        ``save_state`` the training state goes in too, completed once the checkpoint is scored."""
        final = self.run_dir / "checkpoints" / name
        staging = final.parent / f".{name}.partial"
        if self.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            if self.save_state:
                self.state.checkpoints.append({"name": name, "step": self.state.step})  # as it will be
                training_state.save_training_state(self, staging / training_state.STATE_DIR)
                self.state.checkpoints.pop()
            self.module.on_save_checkpoint(staging, self.state.step)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        self.accelerator.wait_for_everyone()
        self.state.checkpoints.append({"name": name, "step": self.state.step, "path": str(final)})
        self._call("on_checkpoint", final)
        if self.save_state:  # the RNGs as the loop goes on from here: after saving and scoring
            training_state.complete_state(self, final)
        return final
