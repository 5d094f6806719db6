"""The Evaluator on its own: which metrics it reports, DINO when given, and RNG isolation."""

from __future__ import annotations

import random

import numpy as np
import torch


def test_isolated_rng_leaves_every_global_generator_where_it_was():
    from sdexp.rng import isolated_rng

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with isolated_rng("cpu"):
        torch.rand(100), np.random.rand(100), random.random()
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert (
        torch.equal(expected[0], after[0])
        and np.array_equal(expected[1], after[1])
        and expected[2] == after[2]
    )


def test_cycled_prompts_and_seeds():
    from sdexp.evaluation.scorer import cycled

    assert cycled(["a", "b"], 5, 10) == (["a", "b", "a", "b", "a"], [10, 11, 12, 13, 14])
    assert cycled(["a", "b"], 0, 0) == (["a", "b"], [0, 1])


def test_subject_prompts_default_to_training_captions_most_frequent_first():
    from sdexp.evaluation.config import EvalConfig
    from sdexp.evaluation.setup import subject_prompts

    assert subject_prompts(EvalConfig(), ["b", "a", "a", "c"]) == ["a", "b", "c"]
    assert subject_prompts(EvalConfig(prompts=["x"]), ["a"]) == ["x"]


def test_evaluator_reports_every_configured_metric(tmp_path, tiny_dino_dir, monkeypatch):
    from sdexp.base_generations import sampling_pipeline
    from sdexp.evaluation.config import EvalConfig
    from sdexp.evaluation.scorer import Evaluator
    from sdexp.world.shapes import write_concept

    monkeypatch.setenv("SDEXP_CACHE", str(tmp_path / "cache"))
    data = write_concept(tmp_path / "data", n=3, seed=0, concept="striped_star", token="sks")
    paths = sorted(data.glob("*.png"))
    cfg = EvalConfig(
        dino=str(tiny_dino_dir),
        images=3,
        steps=3,
        guidance=4.0,
        prior_prompts=["a red circle on a blue background", "a blue star on a green background"],
        token="sks",
    )

    def evaluator_for_the_concept():
        return Evaluator(
            cfg,
            base_model="tiny_shapes",
            clip_spec="tiny_shapes",
            reference_paths=paths,
            training_paths=paths,
            subject_prompts=["a sks star on a blue background"],
            size=64,
        )

    evaluator = evaluator_for_the_concept()
    pipe, _ = sampling_pipeline("tiny_shapes", sampler=cfg.sampler)
    result = evaluator.evaluate(pipe)
    from sdexp.evaluation.config import expected_metrics

    assert set(result.metrics) == expected_metrics(cfg, held_out=False) - {"val/loss"}
    assert -1 <= result.metrics["eval/dino"] <= 1 and result.metrics["eval/fid_samples"] == 3
    assert len(result.subject) == 3 and len(result.prior) == 2
    assert result.warnings and "FID from 3 samples" in result.warnings[0]
    # The base scored against itself: the prior images are the base's, image for image.
    assert result.metrics["eval/forgetting/clip_t_change"] == 0.0
    assert evaluator.base_seconds > 0  # generated now; a second evaluator finds them cached
    again = evaluator_for_the_concept()
    assert again.evaluate(pipe).metrics == result.metrics and again.base_seconds == 0.0
