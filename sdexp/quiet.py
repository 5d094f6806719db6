"""Keep library chatter (progress bars, info logs, deprecation noise) out of runs and CLIs."""

from __future__ import annotations


def quiet_environment() -> None:
    """Environment switches the libraries read when imported (cheap: imports nothing)."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|peft)\b.*")


def quiet_libraries() -> None:
    """No progress bars or info logs from transformers/diffusers; call in commands that load models."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    quiet_environment()
    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines duplicate the sweep's own; its warnings about ask/tell with
    heartbeats (the sweep sends them itself) and experimental flags say nothing a user can act on."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
    )
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
