"""The sweep definition as run, kept in the study itself, so that a worker on another machine joins
with the storage URL and the study name only: ``sdexp sweep --storage URL --study NAME``.

Study user attributes (written under the study lock, claim_lock.py):
    sdexp_definition  {"definition": sweep.yaml as run (+ heartbeat_seconds, max_failures),
                       "info": {name, objectives, directions, n_trials, fingerprint, overrides}},
                      stored once, by the worker that created the study
    n_trials          the study's budget, read at every claim by every worker: ``--n-trials`` on
                      one machine is seen by the others (each keeps its sweep.json in sync)
"""

from __future__ import annotations

from dataclasses import asdict

from sdexp.errors import ConfigError, UserError
from sdexp.sweep.definition import SweepDefinition, parse_definition
from sdexp.sweep.layout import SweepInfo, open_storage

DEFINITION_ATTR = "sdexp_definition"
N_TRIALS_ATTR = "n_trials"


def definition_as_run(definition: SweepDefinition, extra: list[str], objectives: list[str]) -> dict:
    """The definition with the command line's overrides folded in, as sweep.yaml holds it, plus the
    worker settings a joining worker must share (heartbeats decide when a trial is taken as lost)."""
    d = definition
    space = {k: {f: v for f, v in asdict(p).items() if f != "key" and v is not None and v is not False}
             for k, p in d.space.items()}  # fmt: skip
    return {"name": d.name, "overrides": d.overrides + list(extra), "space": space, "sampler": d.sampler,
            "pruner": d.pruner, "n_trials": d.n_trials, "timeout_minutes": d.timeout_minutes,
            "objectives": objectives, "max_failures": d.max_failures,
            "heartbeat_seconds": d.heartbeat_seconds}  # fmt: skip


def store(study, definition: SweepDefinition, info: SweepInfo, extra: list[str]) -> None:
    """Record the definition as run and the study's n_trials in the study (at its creation)."""
    study.set_user_attr(
        DEFINITION_ATTR,
        {
            "definition": definition_as_run(definition, extra, info.objectives),
            "info": {
                "name": info.name,
                "objectives": info.objectives,
                "directions": info.directions,
                "n_trials": info.n_trials,
                **info.extra,
            },  # fmt: skip
        },
    )
    study.set_user_attr(N_TRIALS_ATTR, info.n_trials)


def settle_n_trials(study, definition: SweepDefinition, info: SweepInfo, extra: list[str], *,
                    requested: int | None, local_before: int | None, notify=print) -> int:  # fmt: skip
    """The study's n_trials once this worker has joined: a new study stores the definition and its
    count; ``requested`` (``--n-trials``) or a count changed since this folder's last invocation
    (``local_before``, from its sweep.json) sets the study's count for every worker; otherwise the
    worker takes the study's count."""
    if DEFINITION_ATTR not in study.user_attrs:
        store(study, definition, info, extra)
        return info.n_trials
    shared = shared_n_trials(study, info.n_trials)
    wanted = requested
    if wanted is None and local_before is not None and definition.n_trials != local_before:
        wanted = definition.n_trials
    if wanted is not None and wanted != shared:
        if shared != local_before:  # else this folder's own change, already announced
            notify(f"n_trials: {shared} -> {wanted} for study {info.study_name} (every worker)")
        study.set_user_attr(N_TRIALS_ATTR, wanted)
        return wanted
    return shared


def shared_n_trials(study, default: int) -> int:
    """The study's current n_trials (``default`` for a study made before it was shared)."""
    return int(study.user_attrs.get(N_TRIALS_ATTR, default))


def load(storage_url: str, study_name: str) -> tuple[SweepDefinition, SweepInfo]:
    """The definition and SweepInfo a worker joining ``study_name`` runs with (n_trials: the
    study's current count); one-line errors when the study or its stored definition is missing."""
    import optuna

    from sdexp.quiet import quiet_optuna

    quiet_optuna()
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        there = f"studies there: {', '.join(sorted(names))}" if names else "it holds no study"
        raise UserError(
            f"--study: no study {study_name!r} in {shown_url(storage_url)} ({there}); "
            "check the name and the --storage URL"
        ) from None
    payload = study.user_attrs.get(DEFINITION_ATTR)
    if not payload:
        raise UserError(
            f"--study: study {study_name!r} in {shown_url(storage_url)} has no stored sweep definition "
            "(not started by this version of `sdexp sweep`); join it with its SWEEP_YAML instead"
        )
    definition = parse_definition(payload["definition"], f"study {study_name}")
    definition.name = study_name  # the study this worker opens (sdexp names studies after definitions)
    stored = payload["info"]
    n_trials = shared_n_trials(study, stored["n_trials"])
    definition.n_trials = n_trials
    info = SweepInfo(
        name=stored["name"],
        study_name=study_name,
        storage=storage_url,
        objectives=list(stored["objectives"]),
        directions=list(stored["directions"]),
        n_trials=n_trials,
        extra={"fingerprint": stored.get("fingerprint"), "overrides": stored.get("overrides", [])},
    )
    return definition, info


def with_overrides(definition: SweepDefinition, overrides: list[str]) -> SweepDefinition:
    """``definition`` with ``overrides`` (a joining worker's command line) replacing stored
    overrides of the same key and appended otherwise: paths differ between machines."""

    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    searched = [o for o in overrides if key(o) in definition.space]
    if searched:
        raise ConfigError(
            f"{searched[0]}: the study searches {key(searched[0])}; it cannot be fixed on one worker"
        )
    given = {key(o) for o in overrides}
    definition.overrides = [o for o in definition.overrides if key(o) not in given] + list(overrides)
    return definition


def shown_url(url: str) -> str:
    """A storage URL fit for a message: its password hidden."""
    if "://" not in url or url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: show it as given
        return url
