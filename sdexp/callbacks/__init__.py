"""Trainer callbacks: logging, progress, early stopping, samples (evaluation plugs in here too)."""

from sdexp.callbacks.base import Callback
from sdexp.callbacks.early_stopping import EarlyStopping
from sdexp.callbacks.logging import MetricsLogging
from sdexp.callbacks.progress import ProgressBar
from sdexp.callbacks.samples import SampleImages
from sdexp.callbacks.time_limit import TimeLimit

__all__ = ["Callback", "EarlyStopping", "MetricsLogging", "ProgressBar", "SampleImages", "TimeLimit"]
