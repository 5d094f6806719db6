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
        extra = (
            ["data.dir=/tmp", "model=tiny"] if "model=tiny_shapes" not in d.overrides else ["data.dir=/tmp"]
        )
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


SWEEP_AS_PEOPLE_WRITE_IT = """
name: numbers
overrides: [model=tiny]
space:
  train.lr: {type: float, low: 1e-5, high: 5E-3, log: true}
  train.min_snr_gamma: {type: float, low: -3e2, high: 1., step: 1e1}
  train.steps: {type: int, low: 1e2, high: 4e2, step: 5e1}
  method.rank: [4.0, 8, 1.6e1]
  train.noise_offset: [0, 5e-2, .1]
  data.prompt: ["1e-5", 1e-5x, a 1e3 toy, 1.2.3, +inf]
sampler: {name: tpe, seed: 0e0, n_startup_trials: 5e0}
pruner: {name: hyperband, min_resource: 2e2, max_resource: 8E2, reduction_factor: 2.}
n_trials: 1.6e1
timeout_minutes: 9e1
max_failures: 3e0
heartbeat_seconds: 3e1
"""


def test_numbers_read_as_people_write_them(tmp_path):
    """`1e-5` is a number (YAML 1.2), not PyYAML's string; whole numbers written as floats are ints."""
    from sdexp.sweep.runner import make_pruner, make_sampler

    path = tmp_path / "numbers.yaml"
    path.write_text(SWEEP_AS_PEOPLE_WRITE_IT)
    d = load_definition(path)
    lr, gamma, steps = d.space["train.lr"], d.space["train.min_snr_gamma"], d.space["train.steps"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 5e-3, True)
    assert (gamma.low, gamma.high, gamma.step) == (-300.0, 1.0, 10.0)
    assert (steps.low, steps.high, steps.step) == (100, 400, 50)
    assert all(type(v) is int for v in (steps.low, steps.high, steps.step))
    assert d.space["method.rank"].choices == [4, 8, 16]
    assert all(type(c) is int for c in d.space["method.rank"].choices)
    assert d.space["train.noise_offset"].choices == [0, 0.05, 0.1]
    assert d.space["data.prompt"].choices == ["1e-5", "1e-5x", "a 1e3 toy", "1.2.3", "+inf"]  # strings stay
    assert (d.n_trials, d.timeout_minutes, d.max_failures, d.heartbeat_seconds) == (16, 90.0, 3, 30)
    assert type(d.n_trials) is int and type(d.heartbeat_seconds) is int
    assert d.pruner == {"name": "hyperband", "min_resource": 200, "max_resource": 800, "reduction_factor": 2}
    assert d.sampler == {"name": "tpe", "seed": 0, "n_startup_trials": 5}
    assert all(type(v) is int for v in [*list(d.pruner.values())[1:], *list(d.sampler.values())[1:]])
    make_pruner(d, multi=False), make_sampler(d, multi=False)  # Optuna takes them as they are


def test_plain_pyyaml_is_left_as_it_was():
    import yaml

    from sdexp.sweep.definition import load_yaml

    assert yaml.safe_load("x: 1e-5") == {"x": "1e-5"}  # the loader is ours alone, not a patch
    assert load_yaml("x: 1e-5") == {"x": 1e-5}
    assert load_yaml("[2021-01-01, 0x10, 1_000, .inf, yes, ~, 1e]") == [
        __import__("datetime").date(2021, 1, 1), 16, 1000, float("inf"), True, None, "1e"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"type": "float", "low": "1e-5", "high": 1e-3}, "space.train.lr.low: give a number (got '1e-5', a quoted string: drop the quotes)"),
        ({"type": "float", "low": True, "high": 1e-3}, "space.train.lr.low: give a number (got True)"),
        ({"type": "float", "low": float("-inf"), "high": 1e-3}, "space.train.lr.low: give a number"),
        ({"type": "int", "low": 1.5, "high": 4}, "space.train.lr.low: give a whole number (got 1.5)"),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0}, "space.train.lr.step: must be > 0"),
    ],
)  # fmt: skip
def test_a_number_that_is_not_one_names_its_key(space, message):
    with pytest.raises(
        ConfigError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")
    ):
        parse_definition(_sweep(space={"train.lr": space}))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"n_trials": 2.5}, "n_trials: give a whole number (got 2.5)"),
        ({"timeout_minutes": "an hour"}, "timeout_minutes: give a number (got 'an hour')"),
        ({"max_failures": 0}, "max_failures: must be >= 1"),
    ],
)
def test_budget_numbers_are_checked(extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_definition(_sweep(**extra))
