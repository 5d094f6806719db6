"""On tiny_shapes, a LoRA pushed to over-fit (learning rate 3e-3, the top of the demo's scan) is
caught by the probes: images move towards the training images, prior prompts drift from the base,
and the objective (concept similarity, with prior-prompt CLIP-T allowed to fall by 1 point) picks
an intermediate checkpoint, not the last. docs/evaluation.md has the full-size run."""

from __future__ import annotations

import json

import pytest

from sdexp.run import train_run
from sdexp.tracking.run_folder import read_metrics


@pytest.mark.slow
def test_an_overfitting_run_keeps_an_intermediate_checkpoint_as_best(tmp_path, monkeypatch):
    from sdexp.entry import compose_run_config
    from sdexp.world.shapes import write_concept

    monkeypatch.setenv("SDEXP_CACHE", str(tmp_path / "cache"))
    data = write_concept(tmp_path / "data", n=16, seed=0, concept="striped_star", token="sks")
    cfg = compose_run_config(
        [
            "model=tiny_shapes",
            f"data.dir={data}",
            "eval=shapes",
            "eval.images=8",
            "logger=none",
            "method.rank=8",
            "method.targets=all",
            "train.batch_size=4",
            "train.lr=3e-3",
            "train.steps=150",
            "train.checkpoint_every=30",
        ]
    )
    result = train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    rows = {r["step"]: r for r in read_metrics(result.run_dir) if "objective/subject" in r}
    assert sorted(rows) == [0, 30, 60, 90, 120, 150]
    base, first, last = rows[0], rows[30], rows[150]
    # It learns the concept ...
    assert first["eval/clip_i"] > base["eval/clip_i"] + 0.1
    # ... and then copies and forgets: generations move towards the training images, prior prompts
    # lose CLIP-T against the base's images of the same prompts and seeds, and the sets drift apart.
    assert last["eval/memorisation/nearest_mean"] > base["eval/memorisation/nearest_mean"] + 0.1
    assert last["eval/forgetting/clip_t_change"] < first["eval/forgetting/clip_t_change"] - 2.0
    assert last["eval/forgetting/fid"] > first["eval/forgetting/fid"]
    best = json.loads((result.run_dir / "best.json").read_text())
    assert 0 < best["step"] < 150 and best["feasible"] and best["beats_base"]
    assert last["objective/subject/violation"] > 0  # the last one broke the forgetting bound
    assert (result.run_dir / "best" / "lora.safetensors").read_bytes() == (
        result.run_dir / "checkpoints" / best["checkpoint"] / "lora.safetensors"
    ).read_bytes()
