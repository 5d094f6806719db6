"""Objectives order checkpoints as configured, and configs naming unmeasurable metrics fail at the door."""

from __future__ import annotations

import pytest

from sdexp.errors import ConfigError
from sdexp.evaluation.config import ObjectiveConfig, ObjectiveConstraint, ObjectiveTerm
from sdexp.evaluation.objective import score


def _objective(direction="maximize", constraints=()):
    return ObjectiveConfig(
        name="o",
        direction=direction,
        terms=[ObjectiveTerm("eval/clip_i", 1.0), ObjectiveTerm("eval/forgetting/clip_t_change", 0.1)],
        constraints=list(constraints),
    )


def test_weighted_sum_and_direction():
    metrics = {"eval/clip_i": 0.5, "eval/forgetting/clip_t_change": -2.0}
    s = score(_objective(), metrics)
    assert s.value == pytest.approx(0.3) and s.feasible
    better = score(_objective(), {**metrics, "eval/clip_i": 0.6})
    assert better.better_than(s) and not s.better_than(better)
    low = score(_objective("minimize"), metrics)
    assert low.better_than(score(_objective("minimize"), {**metrics, "eval/clip_i": 0.6}))
    assert s.as_metrics() == {"objective/o": pytest.approx(0.3), "objective/o/violation": 0.0}


def test_a_feasible_checkpoint_beats_any_infeasible_one_and_violation_orders_the_rest():
    bound = [ObjectiveConstraint("eval/forgetting/clip_t_change", min=-1.0)]
    feasible = score(
        _objective(constraints=bound), {"eval/clip_i": 0.1, "eval/forgetting/clip_t_change": -0.5}
    )
    broke_a_little = score(
        _objective(constraints=bound), {"eval/clip_i": 0.9, "eval/forgetting/clip_t_change": -1.5}
    )
    broke_a_lot = score(
        _objective(constraints=bound), {"eval/clip_i": 0.95, "eval/forgetting/clip_t_change": -9.0}
    )
    assert not broke_a_little.feasible and broke_a_little.violation == pytest.approx(0.5)
    assert feasible.better_than(broke_a_little) and not broke_a_little.better_than(feasible)
    assert broke_a_little.better_than(broke_a_lot)
    upper = score(
        ObjectiveConfig(
            name="m",
            terms=[ObjectiveTerm("eval/kid")],
            constraints=[ObjectiveConstraint("eval/kid", max=0.1)],
        ),
        {"eval/kid": 0.3},
    )
    assert upper.violation == pytest.approx(0.2)


def test_a_metric_that_was_not_measured_is_named():
    with pytest.raises(ConfigError, match="eval/forgetting/clip_t_change"):
        score(_objective(), {"eval/clip_i": 0.5})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["eval.objectives.0.terms.0.metric=eval/nosuch"],
            "eval.objectives.0.terms.0.metric: 'eval/nosuch' is not logged",
        ),
        (["eval.objectives.0.terms.0.metric=eval/dino"], "eval/dino"),  # needs eval.dino
        (  # forgetting needs prior prompts: derived unless turned off
            ["eval.prior_prompts=[]", "eval.objectives.0.terms.0.metric=eval/forgetting/kid"],
            "is not logged",
        ),
        (["eval.images=1", "eval.objectives.0.terms.0.metric=eval/fid"], "needs at least 2 images"),
        (
            [
                "eval.prior_prompts=[a dog]",
                "eval.objectives.0.constraints=[{metric: eval/forgetting/fid, max: 1}]",
            ],
            "needs at least 2 prior images",
        ),
        (["eval.objectives.0.terms.0.metric=val/gap"], "need data.val_dir"),
        (["eval.objectives.0.direction=up"], "eval.objectives.0.direction"),
        (["eval.token=sks", "eval.prior_prompts=[a photo of sks dog]"], "contains the token"),
        (["eval.images=0"], "eval.images"),
        (["eval.fid_features=swav"], "eval.fid_features"),
        (["eval.sampler=nosuch"], "eval.sampler"),
        (
            ["train.early_stopping.patience=2", "train.early_stopping.monitor=eval/nosuch"],
            "train.early_stopping.monitor",
        ),
        (
            ["train.early_stopping.patience=2", "train.early_stopping.monitor=objective/subject"],
            "train.early_stopping.mode=max",
        ),
    ],
)
def test_bad_eval_configs_fail_at_the_door(compose, overrides, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        compose("data.dir=/tmp", *overrides)


def test_presets_compose(compose):
    shapes = compose("model=tiny_shapes", "data.dir=/tmp", "eval=shapes", "train.early_stopping.patience=2",
                     "train.early_stopping.monitor=objective/subject", "train.early_stopping.mode=max")  # fmt: skip
    assert shapes.eval.token == "sks" and len(shapes.eval.prior_prompts) == 16
    assert shapes.eval.objectives[0].constraints[0].metric == "eval/forgetting/clip_t_change"
    off = compose("data.dir=/tmp", "eval=none")
    assert not off.eval.enabled and off.eval.objectives[0].terms[0].metric == "val/loss"
