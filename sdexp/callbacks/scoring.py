"""Score every checkpoint (and the base at step 0), keep the best one as ``best/``.

At each checkpoint: the validation metrics of that step, plus the evaluation's generated-image
metrics when an ``Evaluator`` is given, are combined into the configured objectives, logged (with
the images) and compared; a better checkpoint is copied to ``best/`` (hard links, atomic swap) and
``best.json`` is rewritten. Other callbacks (early stopping) hear ``on_checkpoint_scored``.
Evaluation runs on the weights a checkpoint saves, in eval mode, with every RNG isolated, so a
run's weights are the same with evaluation on or off.

Under several processes only the main one evaluates and writes ``best/``/``best.json``; its metrics
are broadcast, so every process keeps the same history and its callbacks (early stopping,
pruning) hear the same ``on_checkpoint_scored`` metrics.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from sdexp import distributed
from sdexp.atomic import link_or_copy, write_json_atomic
from sdexp.callbacks.base import Callback
from sdexp.evaluation.objective import Score, score_all
from sdexp.rng import isolated_rng
from sdexp.tracking.base import eval_images

BEST_DIR, BEST_FILE = "best", "best.json"
_BASE_SCORES: dict[str, tuple[dict, object]] = {}  # evaluator signature + weight dtype -> (metrics, images)


def copy_checkpoint(source: Path, dest: Path) -> None:
    """``dest`` becomes a copy of ``source`` (hard links where possible: checkpoints are never
    rewritten in place), swapped in so that a crash leaves the old or the new copy, never half."""
    staging = dest.parent / f".{dest.name}.partial"
    old = dest.parent / f".{dest.name}.old"
    from sdexp.training_state import STATE_DIR

    shutil.rmtree(staging, ignore_errors=True)
    # best/ is for use and export: the training state (train.save_state) stays with its checkpoint
    shutil.copytree(source, staging, copy_function=link_or_copy, ignore=shutil.ignore_patterns(STATE_DIR))
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


class CheckpointScoring(Callback):
    def __init__(self, objectives, run_dir: Path, logger, *, evaluator=None, at_start=True, notify=print):
        self.objectives, self.run_dir, self.logger = list(objectives), Path(run_dir), logger
        self.evaluator, self.at_start, self.notify = evaluator, at_start, notify
        self.history: list[dict] = []
        self.base: dict | None = None
        self.best: dict | None = None
        self._best_score: Score | None = None
        self.eval_seconds = 0.0
        self.checkpoint_seconds: list[float] = []
        self.warnings: list[str] = []

    # ----- hooks --------------------------------------------------------------------------
    def on_train_start(self, trainer, module) -> None:
        if self.evaluator is not None and self.at_start and trainer.state.step == 0:  # not on resume
            self.base = self._score(trainer, module, None)

    def on_checkpoint(self, trainer, module, path) -> None:
        self._score(trainer, module, Path(path))

    # ----- resuming -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        def plain(entry):
            return {k: v for k, v in entry.items() if not k.startswith("_")} if entry else None

        return {
            "history": [plain(e) for e in self.history],
            "base": plain(self.base),
            "best": self.best,
            "eval_seconds": self.eval_seconds,
            "checkpoint_seconds": list(self.checkpoint_seconds),
            "warnings": list(self.warnings),
        }

    def load_state_dict(self, state: dict) -> None:
        """The scores so far; best/ is put back to the best checkpoint's copy (a killed run may have
        promoted a later one that the resumed run has not reached yet)."""

        def scored(entry):
            return {**entry, "_score": score_all(self.objectives, entry["metrics"])[0]} if entry else None

        self.history = [scored(e) for e in state["history"]]
        self.base = scored(state["base"])
        self.best = state["best"]
        self._best_score = score_all(self.objectives, self.best["metrics"])[0] if self.best else None
        self.eval_seconds = state["eval_seconds"]
        self.checkpoint_seconds = list(state["checkpoint_seconds"])
        self.warnings = list(state["warnings"])
        best_dir = self.run_dir / BEST_DIR
        if not distributed.is_main():
            return
        if self.best is not None:
            copy_checkpoint(self.run_dir / "checkpoints" / self.best["checkpoint"], best_dir)
            write_json_atomic(self.run_dir / BEST_FILE, self.summary())
        else:
            shutil.rmtree(best_dir, ignore_errors=True)
            (self.run_dir / BEST_FILE).unlink(missing_ok=True)

    # ----- scoring ------------------------------------------------------------------------
    def _evaluate(self, trainer, module) -> dict:
        started = time.perf_counter()
        step = trainer.state.step
        key = None
        if step == 0:  # the base: scored once per process for the same evaluation (a sweep's trials)
            key = f"{self.evaluator.signature()}-{getattr(module, 'weight_dtype', '')}"
        if key in _BASE_SCORES:
            result = _BASE_SCORES[key]
        else:
            # A module that does not say whether its text encoders train is taken to train them.
            frozen_text = not getattr(module, "text_encoder_trains", True)
            with isolated_rng(trainer.device), module.inference_pipeline(self.evaluator.cfg.sampler) as pipe:
                result = self.evaluator.evaluate(pipe, frozen_text=frozen_text)
            if key is not None:
                _BASE_SCORES[key] = result
        seconds = time.perf_counter() - started
        self.eval_seconds += seconds
        if step > 0:
            self.checkpoint_seconds.append(seconds)
        if self.evaluator.cfg.save_images:
            self.logger.log_images("eval/subject", result.subject, step=step, captions=result.subject_prompts)
            if result.prior:
                self.logger.log_images("eval/prior", result.prior, step=step, captions=result.prior_prompts)
            self.logger.log_eval_table(step, eval_images(result, self.evaluator))
        for warning in result.warnings:
            if warning not in self.warnings:
                self.warnings.append(warning)
                self.notify(f"warning: {warning}")
        return {**result.metrics, "perf/eval_seconds": seconds}

    def _score(self, trainer, module, checkpoint: Path | None) -> dict:
        step = trainer.state.step
        previous = self.history[-1] if self.history else None
        if previous is not None and previous["step"] == step:  # e.g. `final` after stopping at a checkpoint
            entry = {**previous, "checkpoint": checkpoint.name if checkpoint else None}
        else:
            val = trainer.state.last_val
            metrics = {k: v for k, v in val.items() if k != "step"} if val.get("step") == step else {}
            if self.evaluator is not None and trainer.is_main_process:
                metrics.update(self._evaluate(trainer, module))
            if trainer.num_processes > 1:  # the main process's scores, on every process
                metrics, self.warnings = distributed.broadcast((metrics, self.warnings))
            scores = score_all(self.objectives, metrics)
            for s in scores:
                metrics.update(s.as_metrics())
            self.logger.log_metrics(metrics, step=step)
            entry = {
                "step": step,
                "checkpoint": checkpoint.name if checkpoint else None,
                "objectives": {s.name: s.value for s in scores},
                "feasible": scores[0].feasible,
                "metrics": metrics,
                "_score": scores[0],
            }
        self.history.append(entry)
        if checkpoint is not None and entry["_score"].better_than(self._best_score):
            self._promote(entry, checkpoint, write=trainer.is_main_process)
        if (
            self.best is not None and trainer.is_main_process
        ):  # the history grows with every scored checkpoint
            write_json_atomic(self.run_dir / BEST_FILE, self.summary())
        trainer._call("on_checkpoint_scored", entry["metrics"])
        return entry

    def _promote(self, entry: dict, checkpoint: Path, *, write: bool = True) -> None:
        if write:
            copy_checkpoint(checkpoint, self.run_dir / BEST_DIR)
        self._best_score = entry["_score"]
        self.best = {k: v for k, v in entry.items() if not k.startswith("_")}

    def summary(self) -> dict:
        """best.json: the best checkpoint, its scores, the base's, and every scored checkpoint."""
        primary = self.objectives[0]
        best = self.best
        return {
            "step": best["step"] if best else None,
            "checkpoint": best["checkpoint"] if best else None,
            "path": str(self.run_dir / BEST_DIR) if best else None,
            "objective": {"name": primary.name, "direction": primary.direction},
            "objectives": best["objectives"] if best else None,
            "feasible": best["feasible"] if best else None,
            "metrics": best["metrics"] if best else None,
            "base": {"objectives": self.base["objectives"], "metrics": self.base["metrics"]}
            if self.base
            else None,
            "beats_base": self._best_score.better_than(self.base["_score"]) if best and self.base else None,
            "history": [
                {
                    "step": e["step"],
                    "checkpoint": e["checkpoint"],
                    "objectives": e["objectives"],
                    "feasible": e["feasible"],
                }
                for e in self.history
            ],
            "warnings": self.warnings,
            "prior_prompts": self._prior_prompts(),
        }

    def _prior_prompts(self) -> dict | None:
        """Which prompts the forgetting probe used and where they came from (derived or given)."""
        prior = getattr(self.evaluator, "prior", None)
        if prior is None:
            return None
        return {"source": prior.source, "prompts": list(prior.prompts), "images": prior.images}

    def timing(self, wall_seconds: float) -> dict:
        per = self.checkpoint_seconds
        return {
            "seconds": round(self.eval_seconds, 3),
            "share_of_wall": round(self.eval_seconds / wall_seconds, 4) if wall_seconds > 0 else None,
            "checkpoints_scored": len(per),
            "seconds_per_checkpoint": round(sum(per) / len(per), 3) if per else None,
            "base_seconds": round(self.base["metrics"].get("perf/eval_seconds", 0.0), 3)
            if self.base
            else None,
            "base_generation_seconds": round(self.evaluator.base_seconds, 3) if self.evaluator else None,
        }
