"""Logger interface shared by the run folder and W&B backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image


class Logger:
    """Sink for training metrics, sample images and final summaries; every method defaults to a no-op."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record scalar ``metrics`` at ``step``."""

    def log_images(self, key: str, images: list[Image], step: int, captions: list[str] | None = None) -> None:
        """Record sample ``images`` under ``key`` at ``step``."""

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

    def log_summary(self, values: dict[str, Any]) -> None:
        self._each("log_summary", values)

    def finish(self, exit_code: int = 0) -> None:
        self._each("finish", exit_code)
