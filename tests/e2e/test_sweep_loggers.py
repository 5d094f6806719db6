"""A sweep logged to W&B and TensorBoard at once: what each tracker holds, read back with its own reader.

TensorBoard's event files (tensorboard's EventAccumulator) hold every scalar of metrics.jsonl at the
same steps, the evaluation images, and one HParams session per trial (the sampled keys against the
best checkpoint's objective). The offline W&B runs hold the sampled keys as top-level config, the
evaluation table and the best checkpoint as a model artifact; the sweep's summary run holds the best
trial's checkpoint as its own artifact.
"""

from __future__ import annotations

import json
import math

import pytest

from sdexp.tracking.run_folder import read_metrics
from sdexp.tracking.wandb_offline import read_offline_run

SWEEP = {
    "name": "both",
    "overrides": [
        "model=tiny_shapes",
        "eval=shapes",
        "eval.images=1",
        "eval.prior_images=1",
        "eval.steps=1",
        "train.steps=2",
        "train.checkpoint_every=1",
        "train.val_timesteps=2",
        "data.val_images=1",
        "logger=[wandb,tensorboard]",
        "logger.mode=offline",
    ],
    "space": {"train.lr": [1e-3, 1e-2], "method.rank": [4]},
    "sampler": "grid",
    "pruner": "none",
}


def _hparams_sessions(accumulator) -> dict[str, object]:
    """{"experiment" | "session_start_info" | "session_end_info": the hparams plugin's data}."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for tag, content in accumulator.PluginTagToContent("hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        found[data.WhichOneof("data")] = data
        assert tag.startswith("_hparams_/")
    return found


@pytest.mark.slow
def test_a_sweep_logs_to_wandb_and_tensorboard_at_once(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from toy_images import write_demo_images

    from sdexp.sweep.definition import parse_definition
    from sdexp.sweep.runner import SweepRunner
    from sdexp.sweep.summary import log_sweep_summary

    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # wandb's own staging, not ~
    data = write_demo_images(tmp_path / "images", n=4)
    runner = SweepRunner(
        parse_definition(SWEEP),
        tmp_path / "sweep",
        extra_overrides=[f"data.dir={data}", "data.prompt=a photo of sks star"],
        notify=lambda *_: None,
    )
    runner.prepare()
    outcome = runner.run()
    assert outcome.completed == 2, outcome
    for number, lr in ((0, 1e-3), (1, 1e-2)):
        trial = runner.sweep_dir / "trials" / f"{number:04d}"
        best = json.loads((trial / "best.json").read_text())
        # TensorBoard: the same scalars at the same steps as metrics.jsonl, images, config, HParams
        acc = EventAccumulator(str(trial / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        tags = acc.Tags()
        rows = read_metrics(trial)
        expected = {(r["step"], k): v for r in rows for k, v in r.items() if k not in ("step", "time")}
        assert expected
        got = {(e.step, tag): e.value for tag in tags["scalars"] for e in acc.Scalars(tag)}
        for key, value in expected.items():
            assert math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-12), key
        assert "eval/subject" in tags["images"] and acc.Images("eval/subject")[0].width == 64
        assert "config/text_summary" in tags["tensors"]
        hp = _hparams_sessions(acc)
        assert set(hp) == {"experiment", "session_start_info", "session_end_info"}
        start = hp["session_start_info"].session_start_info.hparams
        assert start["train.lr"].number_value == pytest.approx(lr) and start["method.rank"].number_value == 4
        metric_tags = {m.name.tag for m in hp["experiment"].experiment.metric_infos}
        assert "best/objective/subject" in metric_tags
        assert got[(best["step"], "best/objective/subject")] == pytest.approx(best["objectives"]["subject"])
        # W&B: sampled keys at the top of the config, the evaluation table, the best checkpoint
        run = read_offline_run(trial)
        assert run["config"]["lr"] == pytest.approx(lr) and run["config"]["rank"] == 4
        tables = [row["eval/images"] for row in run["history"] if "eval/images" in row]
        assert tables and tables[0]["_type"] == "table-file" and tables[0]["nrows"] == 2
        (wandb_dir,) = (trial / "wandb").glob("offline-run-*")
        table = json.loads((wandb_dir / "files" / tables[0]["path"]).read_text())
        assert table["columns"] == ["step", "set", "prompt", "seed", "image"]
        assert {r[1] for r in table["data"]} == {"subject", "prior"}
        (artifact,) = [a for a in run["artifacts"] if a["type"] == "model"]
        assert artifact["name"] == f"model-both-{number:04d}"
        assert {"best", f"step-{best['step']:06d}"} <= set(artifact["aliases"])
        assert set(artifact["files"]) == {"lora.safetensors", "best.json"}  # best/diffusers/ is a copy
    log_sweep_summary(runner)
    summary = read_offline_run(runner.sweep_dir / "summary")
    (artifact,) = [a for a in summary["artifacts"] if a["type"] == "model"]
    best_trial = summary["summary"]["best/trial"]
    assert {f"trial-{best_trial:04d}", "best"} <= set(artifact["aliases"])
    assert artifact["name"] == "model-both-best" and artifact["metadata"]["trial"] == best_trial
    best_lora = runner.sweep_dir / "trials" / f"{best_trial:04d}" / "best" / "lora.safetensors"
    assert artifact["files"]["lora.safetensors"] == str(best_lora)
