"""Tracking: the run folder's own metric files plus optional W&B (never prompting) and TensorBoard mirrors."""

from sdexp.tracking.base import EvalImage, Logger, MultiLogger, Trackers
from sdexp.tracking.run_folder import (
    RunFolderLogger,
    collect_versions,
    read_metrics,
    write_json_atomic,
    write_run_json,
)
from sdexp.tracking.tensorboard_logger import TensorBoardLogger
from sdexp.tracking.wandb_logger import WandbLogger, has_wandb_credentials, resolve_wandb_mode
from sdexp.tracking.wandb_offline import read_offline_run

__all__ = [
    "EvalImage",
    "Logger",
    "MultiLogger",
    "RunFolderLogger",
    "TensorBoardLogger",
    "Trackers",
    "WandbLogger",
    "collect_versions",
    "has_wandb_credentials",
    "read_metrics",
    "read_offline_run",
    "resolve_wandb_mode",
    "write_json_atomic",
    "write_run_json",
]
