"""Early stopping follows Lightning's semantics: patience counts checks without improvement; val/*
monitors are checked at validations, eval/* and objective/* ones at scored checkpoints."""

from __future__ import annotations

from types import SimpleNamespace

from sdexp.callbacks import EarlyStopping


def _trainer():
    return SimpleNamespace(state=SimpleNamespace(step=0, stop_reason=None), should_stop=False)


def _feed(cb, trainer, values, key="val/loss"):
    for i, v in enumerate(values):
        trainer.state.step = (i + 1) * 10
        cb.on_validation_end(trainer, None, {key: v})
        if trainer.should_stop:
            return trainer.state.step
    return None


def test_stops_after_patience_validations_without_improvement():
    trainer = _trainer()
    stopped = _feed(EarlyStopping(patience=2), trainer, [1.0, 0.8, 0.81, 0.79, 0.9, 0.95, 0.7])
    assert stopped == 60
    assert "did not improve" in trainer.state.stop_reason


def test_min_delta_and_max_mode():
    trainer = _trainer()
    cb = EarlyStopping(monitor="val/score", mode="max", patience=1, min_delta=0.1)
    assert _feed(cb, trainer, [1.0, 1.05], key="val/score") == 20  # +0.05 < min_delta
    assert cb.best == 1.0 and cb.best_step == 10


def test_a_monitor_that_is_not_logged_is_a_config_error():
    import pytest

    from sdexp.errors import ConfigError

    with pytest.raises(ConfigError, match="val/typo.*val/loss"):
        _feed(EarlyStopping(monitor="val/typo", patience=1), _trainer(), [1, 2, 3])


def test_objective_monitors_are_checked_at_scored_checkpoints_only():
    trainer = _trainer()
    cb = EarlyStopping(monitor="objective/subject", mode="max", patience=1)
    cb.on_validation_end(trainer, None, {"val/loss": 1.0})  # not its metric, not an error
    for step, value in ((0, 0.3), (10, 0.2)):
        trainer.state.step = step
        cb.on_checkpoint_scored(trainer, None, {"objective/subject": value, "val/loss": 1.0})
    assert trainer.should_stop and "1 scored checkpoints" in trainer.state.stop_reason
    assert cb.best == 0.3 and cb.best_step == 0
