"""One training run from a validated config: the run folder, loggers, callbacks, trainer, run.json.

``train_run`` is what run.py (Hydra), the demo and, later, each sweep trial call. Inputs are
checked (data, model path) before anything heavy is loaded, so mistakes fail in seconds.

Under several processes (``torchrun``/``accelerate launch``) every process calls ``train_run`` with
the main process's run folder; only the main one creates and writes it (config, run.json, run.log,
loggers, W&B); the others train and log nowhere.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from sdexp import distributed
from sdexp.atomic import atomic_write_bytes
from sdexp.config import RunConfig, as_plain_dict
from sdexp.errors import ConfigError, UserError
from sdexp.quiet import quiet_libraries
from sdexp.tracking.base import Logger
from sdexp.tracking.run_log import RUN_LOG, run_log


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    stop_reason: str
    final_checkpoint: Path
    last_train: dict
    last_val: dict
    wall_seconds: float
    best: dict | None = None  # best.json's content: the best checkpoint, its objectives, the history


def save_config(cfg: RunConfig, run_dir: Path) -> Path:
    """The composed config, complete and plain: rerun it with `--config-path RUN --config-name config`."""
    text = OmegaConf.to_yaml(OmegaConf.create(as_plain_dict(cfg)))
    return atomic_write_bytes(run_dir / "config.yaml", text.encode("utf-8"))


def _build_logger(logger_cfg, config: dict, run_dir: Path, notify, wandb_id: str | None = None):
    """(every logger of the run as one, its trackers or None): the run folder's own record always,
    then each backend ``logger_cfg`` switches on (W&B, TensorBoard), with the run's hyperparameters.
    The trackers (``Trackers``: sample images, ``run_id`` = the W&B run's) are None with neither."""
    from sdexp.tracking.base import MultiLogger, Trackers
    from sdexp.tracking.hparams import run_hparams
    from sdexp.tracking.run_folder import RunFolderLogger

    lg = logger_cfg
    trackers = []
    hparams = run_hparams(config, list(lg.hparams))
    if lg.wandb:
        from sdexp.tracking.hparams import short_names
        from sdexp.tracking.wandb_logger import WandbLogger

        wandb_logger = WandbLogger(
            run_dir=run_dir,
            project=lg.project,
            entity=lg.entity,
            group=lg.group,
            name=lg.run_name or run_dir.name,
            tags=list(lg.tags),
            config=config,
            mode=lg.mode,
            notify=notify,
            run_id=wandb_id,
            hparams=short_names(hparams, reserved=set(config)),
            log_model=lg.log_model,
        )
        trackers.append(wandb_logger)
    if lg.tensorboard:
        from sdexp.tracking.tensorboard_logger import TensorBoardLogger

        trackers.append(TensorBoardLogger(run_dir=run_dir, config=config, hparams=hparams))
    return MultiLogger([RunFolderLogger(run_dir), *trackers]), Trackers(trackers) if trackers else None


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively; without it torch emulates bf16 (measured ~15x slower
    than fp32 on the tiny_shapes UNet), which turns a minute's CPU run into a quarter of an hour."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: do not warn on a guess
    return "avx512_bf16" in flags or "amx_bf16" in flags


def preflight(cfg: RunConfig, *, require_judge: bool = True):
    """Everything about a run's inputs that can fail before a model loads, so mistakes fail in
    seconds: the data scans, the model resolves, val/* objectives have validation data and, with
    ``require_judge`` (a sweep, whose trials need their objectives), eval/* objectives have a
    CLIP to be measured with. Returns the module, its data loaded."""
    from sdexp.evaluation.config import objective_metric_names
    from sdexp.evaluation.scorer import resolve_clip_spec
    from sdexp.methods import build_module
    from sdexp.models.loading import model_family, resolve_model
    from sdexp.optim import check_optimizer
    from sdexp.trainer import resolve_device

    module = build_module(cfg)
    check_optimizer(cfg.train.optimizer, resolve_device(cfg.train.device, "train.device"))
    module.load_data()
    model_ref = cfg.model.path or cfg.model.name
    model_family(resolve_model(model_ref, allow_pickle=cfg.model.allow_pickle), cfg.model.family)
    names = objective_metric_names(cfg.eval)
    needs_validation = sorted(m for m in names if m.startswith("val/"))
    if needs_validation and not module.val_batches_expected():
        raise ConfigError(
            f"eval.objectives: {needs_validation[0]} needs validation; set data.val_images > 0 or data.val_dir"
        )
    needs_eval = sorted(m for m in names if not m.startswith("val/"))
    if require_judge and needs_eval and not cfg.eval.enabled:
        raise ConfigError(f"eval.objectives: {needs_eval[0]} needs evaluation; set eval.enabled=true")
    if require_judge and needs_eval and resolve_clip_spec(cfg.eval.clip, model_ref) is None:
        raise ConfigError(
            f"eval.clip: the objectives need {needs_eval[0]}, but {model_ref} has no CLIP of its own; "
            "set eval.clip=open_clip:MODEL:TAG (or a local weights file)"
        )
    return module


def train_run(
    cfg: RunConfig, run_dir: str | Path, *, notify=print, callbacks=(), resume_from: Path | None = None
) -> RunResult:
    """Train one run into ``run_dir`` and return where things went; ``callbacks`` join the
    trainer's (a sweep's pruning callback does). ``resume_from``: a checkpoint of this run folder
    holding the training state to go on from (``sdexp.resume`` prepares the folder).

    What the terminal shows goes to ``run_dir/run.log`` too, with the traceback if the run fails:
    from the input checks on when the folder exists already (Hydra's), else from its creation."""
    from sdexp.evaluation.setup import build_scoring
    from sdexp.trainer import Trainer

    quiet_libraries()
    started = time.time()
    run_dir = Path(run_dir).resolve()
    main = distributed.is_launched_main()  # the others neither print nor write (they run alike)
    if not main:
        notify = _silent
    if main and (run_dir / "run.json").exists() and resume_from is None:
        raise UserError(
            f"hydra.run.dir: {run_dir} already holds a run (run.json); choose a new folder or delete that one"
        )
    t = cfg.train
    if t.auto_batch and distributed.launched_processes() > 1:
        raise ConfigError(
            "train.auto_batch: each process would search its own batch size; with several processes "
            "set train.batch_size (per process) instead"
        )
    with run_log(run_dir / RUN_LOG) if main and run_dir.is_dir() else contextlib.nullcontext():
        # Everything that can be wrong with the inputs fails here, before the run folder exists. A
        # single run without a judge still trains: build_scoring says evaluation is off and why.
        module = preflight(cfg, require_judge=False)
        if t.early_stopping.patience and not module.val_batches_expected():
            raise ConfigError(
                "train.early_stopping.patience: early stopping needs validation; set data.val_images > 0"
            )
        if t.auto_batch and resume_from is None:  # a resumed run keeps the batch it started with
            from sdexp.auto_batch import apply_auto_batch

            apply_auto_batch(cfg, images=sum(module.train_dataset.repeats()), notify=notify)
        trainer = Trainer.from_config(t, run_dir, callbacks=list(callbacks))  # checks the device first
        trainer.resume_from = resume_from
        if trainer.device.type == "cpu" and t.mixed_precision == "bf16" and not cpu_has_native_bf16():
            notify(
                "warning: train.mixed_precision=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16) "
                "runs ~15x slower than fp32, training and scoring alike; on this CPU use train.mixed_precision=no"
            )
        scoring = build_scoring(cfg, module, run_dir, trainer.device, notify)
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
        with run_log(run_dir / RUN_LOG) if main else contextlib.nullcontext():
            if resume_from is None and main:  # a resumed run keeps the config it started with
                save_config(cfg, run_dir)
            return fit_and_record(
                trainer,
                module,
                t,
                cfg.logger,
                run_dir,
                config=as_plain_dict(cfg),
                images=len(module.train_dataset),
                notify=notify,
                started=started,
                scoring=scoring,
            )


def fit_and_record(
    trainer,
    module,
    t,
    logger_cfg,
    run_dir: Path,
    *,
    config: dict,
    images: int,
    notify=print,
    started: float | None = None,
    scoring=None,
) -> RunResult:
    """Fit ``module`` with ``trainer`` (built from train config ``t``) into ``run_dir``.

    Adds the loggers and the callbacks ``t`` asks for, and records run.json as it goes;
    ``scoring`` (a ``CheckpointScoring``) scores each checkpoint and keeps ``best/``.

    Fine-tuning runs and each stage of ``sdexp pretrain`` go through here, so every run folder
    has the same files (run.log among them) and every loop the same callbacks.
    """
    from sdexp.callbacks import EarlyStopping, MetricsLogging, ProgressBar, SampleImages, TimeLimit
    from sdexp.tracking.run_folder import collect_versions, write_run_json

    started = time.time() if started is None else started
    main = trainer.is_main_process  # the only process that writes (several: sdexp.distributed)
    record = write_run_json if main else _skip
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    processes = trainer.num_processes
    effective_batch = t.batch_size * t.gradient_accumulation * processes  # samples per optimizer step
    log = run_log(run_dir / RUN_LOG) if main else contextlib.nullcontext()
    with log:  # a pretrain stage's, or a direct call's
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
        previous = json.loads((run_dir / "run.json").read_text()) if trainer.resume_from and main else {}
        when = {"started_at": now}
        if trainer.resume_from:  # run.json keeps the first start and lists every resume
            when = {"resumes": [*previous.get("resumes", []), {"from": trainer.resume_from.name, "at": now}]}
        record(
            run_dir,
            status="running",
            seed=t.seed,
            versions=collect_versions(),
            images=images,
            num_processes=processes,
            effective_batch=effective_batch,
            **when,
        )
        if main:
            logger, wandb_logger = _build_logger(
                logger_cfg, config, run_dir, notify, previous.get("wandb_id")
            )
        else:  # one run folder, one W&B run: the main process's
            logger, wandb_logger = Logger(), None
        if wandb_logger is not None and wandb_logger.run_id:  # the W&B run a resume goes on logging to
            record(run_dir, wandb_id=wandb_logger.run_id)
        if scoring is not None:
            scoring.logger = logger
            trainer.callbacks.append(scoring)
        trainer.callbacks += [
            MetricsLogging(logger, t.log_every, effective_batch),
            ProgressBar(),
        ]
        if t.max_minutes:
            trainer.callbacks.append(TimeLimit(t.max_minutes))
        if t.early_stopping.patience:
            es = t.early_stopping
            trainer.callbacks.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta))
        if t.sample_prompts:
            trainer.callbacks.append(
                SampleImages(
                    t.sample_prompts, t.sample_every, t.sample_seed, run_dir / "samples", wandb_logger
                )
            )
        try:
            state = trainer.fit(module)
        except BaseException as err:  # record why the run ended, keep its logs, then re-raise
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            record(
                run_dir,
                status=status,
                error=f"{type(err).__name__}: {err}",
                steps=trainer.state.step,
                wall_seconds=round(time.time() - started, 3),
                checkpoints=trainer.state.checkpoints,
            )
            logger.finish(exit_code=130 if status == "interrupted" else 1)
            raise
        summary = {
            "steps": state.step,
            "stop_reason": state.stop_reason,
            "train/effective_batch": effective_batch,
            **{k: v for k, v in state.last_logs.items() if k == "train/loss"},
            **{k: v for k, v in state.last_val.items() if k != "step"},
        }
        best = scoring.summary() if scoring is not None else None
        if best and best["step"] is not None:
            summary.update(
                {
                    "best/step": best["step"],
                    **{f"best/objective/{k}": v for k, v in best["objectives"].items()},
                }
            )
        logger.log_summary(summary)
        logger.finish(exit_code=0)
        ended = time.time()
        wall = ended - started
        scored = {}
        if scoring is not None:
            scored = {
                "best": {k: best[k] for k in ("step", "checkpoint", "objectives", "feasible", "beats_base")},
                "evaluation": scoring.timing(wall),
            }
        final = run_dir / "checkpoints" / "final"
        record(
            run_dir,
            status="finished",
            steps=state.step,
            stop_reason=state.stop_reason,
            wall_seconds=round(wall, 3),
            train_seconds=round(state.train_seconds, 3),
            timings={  # what a trial costs beyond its steps: set-up before step 1, teardown after the last
                "setup": round(state.loop_started - started, 3),
                "loop": round(state.loop_ended - state.loop_started, 3),
                "teardown": round(ended - state.loop_ended, 3),
                "data_wait": round(state.data_wait_seconds, 3),  # inside the loop: waiting for batches
            },
            device=str(trainer.device),
            data=module.run_info(),
            final={"train": state.last_logs, "val": state.last_val},
            checkpoints=state.checkpoints,
            **scored,
        )
        return RunResult(
            run_dir, state.step, state.stop_reason, final, state.last_logs, state.last_val, wall, best
        )


def _silent(*args, **kwargs) -> None:
    """``notify`` of a process beside the main one: the main one says it."""


def _skip(*args, **kwargs) -> None:
    """``write_run_json`` of a process beside the main one: the main one writes the folder."""


def run_from_hydra(cfg) -> None:
    """run.py's task: type and validate the composed config, train, report bad input as exit 2."""
    from hydra.core.hydra_config import HydraConfig

    from sdexp.config import to_run_config
    from sdexp.errors import report_and_exit

    try:
        run_cfg = to_run_config(cfg)
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        if distributed.launched_processes() > 1:  # ${now:...} differs per process: rank 0's folder
            from sdexp.trainer import wants_cpu

            distributed.start_process_group(cpu=wants_cpu(run_cfg.train.device))
            out_dir = Path(distributed.broadcast(str(out_dir.resolve())))
        if run_cfg.train.resume:  # e.g. under -m: the resumed run's folder and config, not Hydra's
            from sdexp.resume import resume_run

            result = resume_run(run_cfg.train.resume, list(HydraConfig.get().overrides.task))
        else:
            result = train_run(run_cfg, out_dir)
    except UserError as err:
        verbose = HydraConfig.get().verbose if HydraConfig.initialized() else False
        if verbose:
            import os

            os.environ["SDEXP_DEBUG"] = "1"
        report_and_exit(err)
        return
    if distributed.launched_processes() > 1:  # each process's own word on where it stopped
        rank, world = distributed.launched_rank(), distributed.launched_processes()
        print(f"process {rank} of {world}: steps {result.steps} ({result.stop_reason})", flush=True)
        if rank != 0:
            return
    print(f"run folder:  {result.run_dir}")
    lora = result.final_checkpoint / "lora.safetensors"
    print(f"checkpoint:  {lora if lora.exists() else result.final_checkpoint}")
    print(f"steps: {result.steps} ({result.stop_reason}); wall time {result.wall_seconds:.1f}s")
