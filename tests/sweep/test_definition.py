"""Sweep definitions are checked before any trial runs: every mistake names its key."""

from __future__ import annotations

import pytest

from sdexp.errors import ConfigError
from sdexp.sweep.definition import check_composes, load_definition, parse_definition


def _sweep(**extra):
    raw = {"name": "t", "overrides": ["model=tiny"], "space": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
           "n_trials": 3}  # fmt: skip
    raw.update(extra)
    return raw


def test_a_definition_parses_with_shorthands():
    d = parse_definition(
        _sweep(space={"train.lr": [1e-4, 1e-3], "method.rank": [4, 8, 16]}, sampler="grid", n_trials=None)
    )
    assert d.n_trials == 6 and d.sampler_name == "grid" and d.pruner == {"name": "none"}
    assert (
        d.grid()[0] == {"train.lr": 1e-4, "method.rank": 4} and len({tuple(g.items()) for g in d.grid()}) == 6
    )
    tpe = parse_definition(
        _sweep(space={"train.steps": {"type": "int", "low": 100, "high": 400, "step": 100}})
    )
    assert tpe.space["train.steps"].low == 100 and tpe.sampler_name == "tpe"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_sweep(spaces={}), "spaces: unknown key"),
        (_sweep(space={}), "space: give at least one parameter"),
        (
            _sweep(space={"train.lr": {"type": "float", "low": 1e-3, "high": 1e-5}}),
            "space.train.lr: needs numbers low < high",
        ),
        (
            _sweep(space={"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}),
            "space.train.lr.low",
        ),
        (_sweep(space={"train.lr": {"type": "choice", "choices": [1]}}), "space.train.lr.type"),
        (_sweep(space={"train.lr": {"type": "float", "lo": 1}}), "space.train.lr.lo: unknown field"),
        (_sweep(sampler="annealing"), "sampler.name"),
        (_sweep(pruner={"name": "wishful"}), "pruner.name"),
        (_sweep(sampler="grid"), "space.train.lr: a grid needs a list of values"),
        (_sweep(space={"train.lr": [1e-4]}, sampler="grid", n_trials=5), "n_trials: the grid has 1 points"),
        (_sweep(n_trials=0), "n_trials"),
        (_sweep(overrides=["train.lr=1e-4"]), "overrides: train.lr=1e-4 sets a key the space searches"),
    ],
)
def test_bad_definitions_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_definition(raw)


def test_every_parameter_bound_composes_against_the_run_config():
    bad_key = parse_definition(_sweep(space={"train.learning_rate": [1e-4]}))
    with pytest.raises(ConfigError, match="space.train.learning_rate=0.0001: train.learning_rate"):
        check_composes(bad_key, ["data.dir=/tmp"])
    bad_value = parse_definition(_sweep(space={"train.scheduler": ["cosine", "cosine_annealing"]}))
    with pytest.raises(ConfigError, match="space.train.scheduler=cosine_annealing"):
        check_composes(bad_value, ["data.dir=/tmp"])
    ok = check_composes(parse_definition(_sweep()), ["data.dir=/tmp"])
    assert ok.train.lr == pytest.approx(1e-5)


def test_shipped_sweeps_parse(tmp_path):
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[2] / "sweeps").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"demo", "lr_rank_grid", "lora_random", "lora_tpe", "dreambooth_tpe"}
    for path in shipped:
        d = load_definition(path)
        assert d.n_trials >= 1
        extra = ["data.dir=/tmp", "model=tiny"] if "model=tiny_shapes" not in d.overrides else ["data.dir=/tmp"]
        if "method=dreambooth" in d.overrides:  # the user names the subject and its class
            extra += ["method.instance_prompt=a photo of sks dog", "method.class_prompt=a photo of dog"]
        check_composes(d, extra)


def test_pruners_see_infeasible_checkpoints_as_worse_than_any_feasible_one():
    from sdexp.sweep.runner import pruner_value

    assert pruner_value(0.3, 0.0, "maximize") == 0.3
    assert pruner_value(0.9, 0.5, "maximize") < pruner_value(-100.0, 0.0, "maximize")
    assert pruner_value(0.9, 0.5, "maximize") > pruner_value(
        0.9, 2.0, "maximize"
    )  # smaller violation is better
    assert pruner_value(0.1, 0.5, "minimize") > pruner_value(100.0, 0.0, "minimize")
    assert pruner_value(0.1, 0.5, "minimize") < pruner_value(0.1, 2.0, "minimize")
