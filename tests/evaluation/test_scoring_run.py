"""Scoring inside a run: evaluation leaves training untouched, best/ holds the best checkpoint,
early stopping can watch an objective, and `sdexp eval` rescores the same checkpoints."""

from __future__ import annotations

import json

import pytest

from sdexp.run import train_run
from sdexp.tracking.run_folder import read_metrics

# A small evaluation on tiny_shapes: 2 subject + 2 prior images, 4 sampling steps.
QUICK_EVAL = (
    "model=tiny_shapes",
    "logger=none",
    "eval=shapes",
    "eval.images=2",
    "eval.steps=4",
    "eval.prior_prompts=[a blue star on a green background,a red circle on a blue background]",
    "method.targets=all",
    "train.lr=1e-3",
    "train.batch_size=2",
    "train.steps=6",
    "train.checkpoint_every=3",
)


@pytest.fixture(scope="module")
def concept(tmp_path_factory):
    from sdexp.world.shapes import write_concept

    return write_concept(
        tmp_path_factory.mktemp("concept") / "data", n=4, seed=0, concept="striped_star", token="sks"
    )


@pytest.fixture(scope="module")
def generations(tmp_path_factory, request):
    """Base generations cached in a folder of this module (not the user's cache)."""
    import os

    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SDEXP_CACHE")
    os.environ["SDEXP_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SDEXP_CACHE", None)
    else:
        os.environ["SDEXP_CACHE"] = old


@pytest.fixture(scope="module")
def scored_run(concept, generations, tmp_path_factory):
    from sdexp.entry import compose_run_config

    cfg = compose_run_config([*QUICK_EVAL, f"data.dir={concept}"])
    return train_run(cfg, tmp_path_factory.mktemp("runs") / "on", notify=lambda *_: None)


def test_evaluation_does_not_change_the_trained_weights(scored_run, concept, tmp_path):
    from sdexp.entry import compose_run_config

    cfg = compose_run_config([*QUICK_EVAL, f"data.dir={concept}", "eval.enabled=false", "eval=none"])
    off = train_run(cfg, tmp_path / "off", notify=lambda *_: None)
    for name in ("step-000003", "final"):
        on_bytes = (scored_run.run_dir / "checkpoints" / name / "lora.safetensors").read_bytes()
        off_bytes = (off.run_dir / "checkpoints" / name / "lora.safetensors").read_bytes()
        assert on_bytes == off_bytes, name
    assert not any("eval/clip_i" in row for row in read_metrics(off.run_dir))


def test_every_checkpoint_and_the_base_are_scored_and_best_holds_the_best(scored_run):
    run_dir = scored_run.run_dir
    rows = [r for r in read_metrics(run_dir) if "objective/subject" in r]
    assert [r["step"] for r in rows] == [0, 3, 6]
    for r in rows:
        for key in ("eval/clip_t", "eval/clip_i", "eval/memorisation/nearest_mean", "eval/fid", "eval/kid",
                    "eval/forgetting/clip_t_change", "eval/forgetting/kid", "eval/prompt_drift", "val/loss"):  # fmt: skip
            assert key in r, key
    base = rows[0]
    # The base is the model the forgetting probe compares with: nothing forgotten at step 0.
    assert base["eval/forgetting/clip_t_change"] == 0.0 and abs(base["eval/forgetting/fid"]) < 1e-4
    best = json.loads((run_dir / "best.json").read_text())
    scored = {r["step"]: r for r in rows if r["step"] > 0}

    def rank(r):
        return (
            r["objective/subject/violation"] == 0,
            -r["objective/subject/violation"],
            r["objective/subject"],
        )

    winner = max(scored.values(), key=rank)
    assert best["step"] == winner["step"]
    assert best["objectives"]["subject"] == pytest.approx(winner["objective/subject"])
    assert best["base"]["metrics"]["eval/clip_i"] == pytest.approx(base["eval/clip_i"])
    assert [h["step"] for h in best["history"]] == [0, 3, 6]
    name = best["checkpoint"]
    assert (run_dir / "best" / "lora.safetensors").read_bytes() == (
        run_dir / "checkpoints" / name / "lora.safetensors"
    ).read_bytes()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["best"]["checkpoint"] == name
    timing = run["evaluation"]
    assert timing["checkpoints_scored"] == 2 and 0 < timing["share_of_wall"] < 1
    assert (run_dir / "samples" / "eval_subject").is_dir()


def test_base_images_for_prior_prompts_are_generated_once(scored_run, concept, generations, tmp_path):
    """The run above generated the base's prior images; a second run on the same base reuses them."""
    from sdexp.entry import compose_run_config

    cached = sorted((generations / "generations").rglob("*.png"))
    assert len(cached) == 2
    before = {p: p.stat().st_mtime_ns for p in cached}
    cfg = compose_run_config([*QUICK_EVAL, f"data.dir={concept}", "train.steps=3", "train.seed=7"])
    result = train_run(cfg, tmp_path / "again", notify=lambda *_: None)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["evaluation"]["base_generation_seconds"] == 0.0
    assert {p: p.stat().st_mtime_ns for p in sorted((generations / "generations").rglob("*.png"))} == before


def test_early_stopping_can_watch_the_objective(concept, generations, tmp_path):
    from sdexp.entry import compose_run_config

    cfg = compose_run_config(
        [
            *QUICK_EVAL,
            f"data.dir={concept}",
            "train.steps=30",
            "train.lr=1e-1",  # destroys the model, so the objective stops improving
            "train.early_stopping.patience=1",
            "train.early_stopping.monitor=objective/subject",
            "train.early_stopping.mode=max",
        ]
    )
    result = train_run(cfg, tmp_path / "es", notify=lambda *_: None)
    assert result.steps < 30 and result.stop_reason.startswith("early_stopping: objective/subject")
    best = json.loads((result.run_dir / "best.json").read_text())
    assert best["history"][-1]["step"] == result.steps  # final is the last checkpoint, scored once
    assert len(best["history"]) == len({h["step"] for h in best["history"]}) + 1


def test_sdexp_eval_rescores_a_runs_checkpoints_like_the_run_did(scored_run, cli, tmp_path):
    out = tmp_path / "eval.json"
    proc = cli(["-m", "sdexp.cli", "eval", str(scored_run.run_dir), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "sdexp eval" in proc.stdout and "step-000003" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["rows"]] == ["base", "step-000003", "final"]
    in_run = {r["step"]: r for r in read_metrics(scored_run.run_dir) if "objective/subject" in r}
    for row in result["rows"]:
        logged = in_run[row["step"]]
        # The run scored its in-memory weights; `sdexp eval` loads the saved LoRA files into diffusers.
        assert row["metrics"]["eval/clip_i"] == pytest.approx(logged["eval/clip_i"], abs=0.02)
        assert row["metrics"]["eval/clip_t"] == pytest.approx(logged["eval/clip_t"], abs=2.0)
    best = json.loads((scored_run.run_dir / "best.json").read_text())
    assert result["best"] == best["checkpoint"]


def test_sdexp_eval_scores_a_lora_file_on_a_base_and_rejects_bad_targets(scored_run, concept, cli, tmp_path):
    lora = scored_run.run_dir / "best" / "lora.safetensors"
    out = tmp_path / "one.json"
    args = ["-m", "sdexp.cli", "eval", str(lora), "model=tiny_shapes", f"data.dir={concept}", "eval=shapes",
            "eval.images=2", "eval.steps=4", "--no-base", "--out", str(out)]  # fmt: skip
    proc = cli(args)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["lora"] and 0 < rows[0]["metrics"]["eval/clip_i"] <= 1
    missing = cli(["-m", "sdexp.cli", "eval", str(tmp_path / "nothing")])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_data = cli(["-m", "sdexp.cli", "eval", str(lora), "model=tiny_shapes"])
    assert no_data.returncode == 2 and "data.dir" in no_data.stderr
    wrong_group = cli(["-m", "sdexp.cli", "eval", str(scored_run.run_dir), "model=tiny"])
    assert wrong_group.returncode == 2 and "keeps its own model" in wrong_group.stderr


def test_sdexp_eval_scores_a_model_folder_against_its_base(concept, generations, cli, tmp_path):
    model = tmp_path / "model"
    assert cli(["-m", "sdexp.cli", "export-model", "tiny_shapes", str(model)]).returncode == 0
    out = tmp_path / "model.json"
    args = ["-m", "sdexp.cli", "eval", str(model), "model=tiny_shapes", f"data.dir={concept}", "eval=shapes",
            "eval.images=2", "eval.steps=4", "--out", str(out)]  # fmt: skip
    proc = cli(args)
    assert proc.returncode == 0, proc.stderr
    base, exported = json.loads(out.read_text())["rows"]
    # The fp32 export of the fp16 base generates the same images: nothing forgotten, same scores.
    assert exported["name"] == "model"
    assert exported["metrics"]["eval/forgetting/clip_t_change"] == pytest.approx(0.0, abs=0.5)
    assert exported["metrics"]["eval/clip_i"] == pytest.approx(base["metrics"]["eval/clip_i"], abs=0.02)


def test_missing_judges_fail_before_the_run_folder_exists(concept, tmp_path):
    from sdexp.entry import compose_run_config
    from sdexp.errors import UserError

    for override, message in (
        ("eval.fid_features=inception", "eval.fid_features"),
        (f"eval.dino={tmp_path / 'no-dino'}", "eval.dino"),
        ("eval.clip=open_clip:ViT-B-32:laion2b_s34b_b79k", "clip model"),
    ):
        cfg = compose_run_config([*QUICK_EVAL, f"data.dir={concept}", override])
        with pytest.raises(UserError, match=message):
            train_run(cfg, tmp_path / "run", notify=lambda *_: None)
        assert not (tmp_path / "run").exists()
