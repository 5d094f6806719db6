"""The TensorBoard logger, read back with TensorBoard's own EventAccumulator: scalars, images with
their captions, the config as text, and the HParams session written into the run's own events."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from sdexp.errors import ConfigError
from sdexp.tracking import MultiLogger, RunFolderLogger, TensorBoardLogger, read_metrics
from sdexp.tracking.hparams import best_results, run_hparams, short_names


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hparams(acc) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = [
        plugin_data_pb2.HParamsPluginData.FromString(c) for c in acc.PluginTagToContent("hparams").values()
    ]
    return {d.WhichOneof("data"): getattr(d, d.WhichOneof("data")) for d in data}


def _text(acc, tag: str) -> list[str]:
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")]


BEST = {
    "step": 4,
    "checkpoint": "step-000004",
    "objectives": {"subject": 0.75},
    "feasible": True,
    "metrics": {"eval/clip_i": 0.5, "val/loss": 0.25, "objective/subject": 0.75, "eval/x": "nan"},
}


def test_scalars_images_config_and_hparams_round_trip(tmp_path):
    config = {"train": {"lr": 1e-3, "optimizer": "adamw"}, "method": {"name": "lora", "rank": 4}}
    tb = TensorBoardLogger(run_dir=tmp_path, config=config, hparams=run_hparams(config))
    logger = MultiLogger([RunFolderLogger(tmp_path), tb])
    logger.log_metrics({"train/loss": 0.5, "train/lr": 1e-3, "flag": True, "note": "text"}, step=1)
    logger.log_metrics({"train/loss": float("nan"), "val/loss": 0.125}, step=2)
    red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    logger.log_images("eval/subject", [red, blue], step=2, captions=["a red square", "a blue square"])
    logger.log_images("samples", [red, Image.new("RGB", (4, 4))], step=2)  # two sizes: one tag each
    (tmp_path / "best.json").write_text(json.dumps(BEST))
    logger.finish(exit_code=0)

    acc = _events(tmp_path / "tensorboard")
    for row in read_metrics(tmp_path):  # every scalar of metrics.jsonl, same key, same step
        for key, value in row.items():
            if key in ("step", "time") or isinstance(value, str):
                continue
            (event,) = [e for e in acc.Scalars(key) if e.step == row["step"]]
            assert (math.isnan(value) and math.isnan(event.value)) or event.value == pytest.approx(
                float(value)
            )
    assert "note" not in acc.Tags()["scalars"]
    (grid,) = acc.Images("eval/subject")
    assert (grid.step, grid.width, grid.height) == (2, 16, 8)  # both images, side by side
    assert "| 1 | 2 | a blue square |" in _text(acc, "eval/subject/captions")[0]
    assert {"samples/0", "samples/1"} <= set(acc.Tags()["images"])
    assert _text(acc, "config")[0].startswith("```yaml\ntrain:\n  lr: 0.001")

    hp = _hparams(acc)
    start = hp["session_start_info"].hparams
    assert start["train.lr"].number_value == 1e-3 and start["method.rank"].number_value == 4
    assert start["train.optimizer"].string_value == "adamw" and "train.seed" not in start
    assert {m.name.tag for m in hp["experiment"].metric_infos} == set(best_results(BEST))
    assert hp["session_end_info"].status == 1  # STATUS_SUCCESS
    (best,) = acc.Scalars("best/objective/subject")
    assert (best.step, best.value) == (4, 0.75)
    assert acc.Scalars("best/eval/clip_i")[0].value == 0.5


def test_a_failed_run_ends_its_session_as_failed_and_without_results(tmp_path):
    tb = TensorBoardLogger(run_dir=tmp_path, config={}, hparams={"train.lr": 0.1, "method.targets": None})
    tb.finish(exit_code=1)
    tb.finish(exit_code=1)  # a second finish is a no-op
    hp = _hparams(_events(tmp_path / "tensorboard"))
    assert hp["session_end_info"].status == 2  # STATUS_FAILURE
    assert not hp["experiment"].metric_infos and set(hp["session_start_info"].hparams) == {"train.lr"}


def test_hparams_of_a_plain_run_and_of_a_sweep_trial():
    config = {"train": {"lr": 0.1, "steps": 5}, "method": {"name": "lora", "rank": 4, "targets": ["a", "b"]}}
    assert run_hparams(config) == {"method.name": "lora", "train.lr": 0.1, "method.rank": 4, "train.steps": 5}
    assert run_hparams(config, ["method.targets"]) == {"method.targets": '["a", "b"]'}
    with pytest.raises(ConfigError, match="logger.hparams: 'train.lrr' is not a config key"):
        run_hparams(config, ["train.lrr"])
    # W&B top-level keys: the short name where it is unambiguous, else the dotted key
    hparams = {"train.lr": 1, "method.lr": 2, "method.rank": 4, "x.train": 0, "method.name": "lora"}
    names = short_names(hparams, reserved={"train"})
    assert names == {"train.lr": 1, "method.lr": 2, "rank": 4, "x.train": 0, "method.name": "lora"}
    assert best_results(None) == {} and best_results(BEST)["best/val/loss"] == 0.25


def test_a_resumed_run_purges_the_killed_runs_later_steps(tmp_path):
    killed = TensorBoardLogger(run_dir=tmp_path, config={}, hparams={})
    for step in range(1, 6):
        killed.log_metrics({"train/loss": float(step)}, step=step)
    killed.writer.close()  # killed: never finished
    (tmp_path / "run.json").write_text(json.dumps({"resumes": [{"from": "step-000002", "at": "now"}]}))
    resumed = TensorBoardLogger(run_dir=tmp_path, config={}, hparams={})
    for step in (3, 4):
        resumed.log_metrics({"train/loss": 10.0 * step}, step=step)
    resumed.finish()
    seen = [(e.step, e.value) for e in _events(tmp_path / "tensorboard").Scalars("train/loss")]
    assert seen == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
