"""Logger interface shared by the run folder, W&B and TensorBoard backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class EvalImage:
    """One image an evaluation generated, with what made it: a row of an evaluation table."""

    set: str  # "subject" or "prior" (the forgetting probe)
    prompt: str
    seed: int
    image: Image


def eval_images(result: Any, evaluator: Any) -> list[EvalImage]:
    """The rows of one scoring: ``result`` (an ``Evaluation``) with the seeds ``evaluator`` used."""
    rows = []
    for name in ("subject", "prior"):
        images, prompts = getattr(result, name), getattr(result, f"{name}_prompts")
        seeds = getattr(evaluator, f"{name}_seeds")
        rows += [EvalImage(name, p, int(s), im) for im, p, s in zip(images, prompts, seeds, strict=False)]
    return rows


class Logger:
    """Sink for training metrics, sample images and final summaries; every method defaults to a no-op."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar ``metrics`` at ``step``."""

    def log_images(self, key: str, images: list[Image], step: int, captions: list[str] | None = None) -> None:
        """Record sample ``images`` under ``key`` at ``step``."""

    def log_eval_table(self, step: int, rows: list[EvalImage]) -> None:
        """Record one scoring's generated images as a table (step, set, prompt, seed, image); the
        images themselves also come through ``log_images``, so a backend without tables skips this."""

    def log_summary(self, values: dict[str, Any]) -> None:
        """Record run-level results (best score, final loss, ...)."""

    def finish(self, exit_code: int = 0) -> None:
        """Flush and close; ``exit_code`` != 0 marks the run as failed."""

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


class MultiLogger(Logger):
    """Fans every call out to several loggers, so one failing backend cannot starve the others."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = list(loggers)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        first_error: BaseException | None = None
        for logger in self.loggers:
            try:
                getattr(logger, method)(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - re-raised below once all loggers ran
                first_error = first_error or err
        if first_error is not None:
            raise first_error

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def log_images(self, key: str, images: list[Image], step: int, captions: list[str] | None = None) -> None:
        self._each("log_images", key, images, step, captions)

    def log_eval_table(self, step: int, rows: list[EvalImage]) -> None:
        self._each("log_eval_table", step, rows)

    def log_summary(self, values: dict[str, Any]) -> None:
        self._each("log_summary", values)

    def finish(self, exit_code: int = 0) -> None:
        self._each("finish", exit_code)


class Trackers(MultiLogger):
    """The run's trackers beyond its own folder (W&B, TensorBoard): sample images go to these, the
    folder keeps its own grids. ``run_id`` is the W&B run's, which a resumed run goes on logging to."""

    @property
    def run_id(self) -> str | None:
        return next((lg.run_id for lg in self.loggers if getattr(lg, "run_id", None)), None)
