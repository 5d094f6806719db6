"""The callback hooks the trainer calls (Lightning's names, trimmed to what we use)."""

from __future__ import annotations


class Callback:
    def on_train_start(self, trainer, module) -> None:
        pass

    def on_train_step_end(self, trainer, module, logs: dict) -> None:
        pass

    def on_validation_end(self, trainer, module, metrics: dict) -> None:
        pass

    def on_checkpoint(self, trainer, module, path) -> None:
        pass

    def on_checkpoint_scored(self, trainer, module, metrics: dict) -> None:
        """After a checkpoint (or the base at step 0) was scored: validation, evaluation and
        ``objective/*`` values of that step."""

    def on_train_end(self, trainer, module) -> None:
        pass

    def state_dict(self) -> dict:
        """What a resumed run needs to decide as this run would have (``train.save_state``);
        plain containers only. {} = nothing."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
