"""PostgreSQL, the storage workers on several machines share: the study lock is the database's
advisory lock, the definition travels in the study so another machine joins with the URL and the
study name only, and n_trials is the study's. Against a real throwaway server (conftest.py)."""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from tiny_sweep import tiny_sweep

from sdexp.errors import ConfigError, UserError
from sdexp.sweep import stored_definition
from sdexp.sweep.claim_lock import LOCK_FILE, advisory_key, study_lock
from sdexp.sweep.cli import _definition_and_overrides
from sdexp.sweep.definition import parse_definition
from sdexp.sweep.layout import SweepInfo, open_storage, read_sweep_info, sqlalchemy_url

REPO = Path(__file__).resolve().parents[2]


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _try_lock(url: str, key: int) -> bool:
    """Whether another session can take advisory lock ``key`` now (released again at once)."""
    with psycopg.connect(_plain(url), autocommit=True) as conn:
        taken = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if taken:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return taken


def test_the_advisory_lock_excludes_a_second_holder_until_released(postgres_url, tmp_path):
    key = advisory_key("lock-study")
    assert advisory_key("lock-study") == key != advisory_key("other-study")
    with study_lock(_plain(postgres_url), tmp_path, "lock-study"):
        assert not _try_lock(postgres_url, key)  # a worker on another machine waits
        assert _try_lock(postgres_url, advisory_key("other-study"))  # other studies do not
    assert _try_lock(postgres_url, key)
    assert not (tmp_path / LOCK_FILE).exists()  # no folder lock: the folder is not shared


@pytest.mark.parametrize("url", ["sqlite:///{dir}/study.db", "journal:{dir}/journal.log"])
def test_sqlite_and_journal_storages_lock_the_sweep_folder(tmp_path, url):
    with study_lock(url.format(dir=tmp_path), tmp_path, "s"), open(tmp_path / LOCK_FILE) as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / LOCK_FILE) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released


def test_plain_postgresql_urls_open_with_psycopg_3(postgres_url, monkeypatch):
    plain = _plain(postgres_url)
    assert sqlalchemy_url(plain) == postgres_url
    assert sqlalchemy_url(plain.replace("postgresql://", "postgres://")) == postgres_url
    storage = open_storage(plain, heartbeat_seconds=1)  # SQLAlchemy alone would want psycopg2
    assert storage.engine.dialect.driver == "psycopg"
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install 'sdexp\[postgres\]'"):
        open_storage(plain)


SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, "method.rank": [2, 4]}


def _stored_study(url: str, name: str, n_trials: int = 5):
    definition = parse_definition(
        {
            "name": name,
            "overrides": ["model=tiny"],
            "space": SPACE,
            "n_trials": n_trials,
            "heartbeat_seconds": 2,
            "sampler": {"name": "tpe", "seed": 3},
        },  # fmt: skip
    )
    info = SweepInfo(name, name, url, ["loss"], ["minimize"], n_trials, {"fingerprint": "f", "overrides": []})
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="minimize")
    stored_definition.store(study, definition, info, ["data.dir=/a"])
    return definition, study


def test_the_stored_definition_rebuilds_the_sweep_and_n_trials_is_the_studys(postgres_url):
    url, name = _plain(postgres_url), f"stored-{uuid.uuid4().hex[:6]}"
    definition, study = _stored_study(url, name)
    study.set_user_attr(stored_definition.N_TRIALS_ATTR, 9)  # raised by another machine
    loaded, info = stored_definition.load(url, name)
    assert (loaded.space, loaded.sampler, loaded.heartbeat_seconds) == (
        definition.space, definition.sampler, 2,
    )  # fmt: skip
    assert loaded.overrides == ["model=tiny", "data.dir=/a"]
    assert (info.study_name, info.storage, info.objectives, info.n_trials) == (name, url, ["loss"], 9)
    assert loaded.n_trials == 9
    joined = stored_definition.with_overrides(loaded, ["data.dir=/b", "train.steps=3"])
    assert joined.overrides == ["model=tiny", "data.dir=/b", "train.steps=3"]  # paths differ per machine
    with pytest.raises(ConfigError, match="searches train.lr"):
        stored_definition.with_overrides(loaded, ["train.lr=0.1"])


def test_n_trials_is_set_by_an_explicit_request_and_taken_otherwise(postgres_url):
    url, name = _plain(postgres_url), f"count-{uuid.uuid4().hex[:6]}"
    definition, study = _stored_study(url, name, n_trials=5)
    info = SweepInfo(name, name, url, ["loss"], ["minimize"], 5)

    def settle(requested=None, local_before=None, n=5):
        definition.n_trials = n
        return stored_definition.settle_n_trials(
            study, definition, info, [], requested=requested, local_before=local_before, notify=lambda _: None
        )

    assert settle(requested=8, n=8) == 8  # --n-trials 8 on one machine
    assert settle() == 8  # a new folder with the original YAML takes the study's count
    assert settle(local_before=5) == 8  # as does a folder that ran with 5, unchanged since
    assert settle(local_before=5, n=7) == 7  # its YAML edited to 7: a request
    assert study.user_attrs["n_trials"] == 7


def _args(**given) -> argparse.Namespace:
    defaults = {"definition": None, "overrides": [], "study": None, "storage": None}
    return argparse.Namespace(**{**defaults, **given})


def test_joining_errors_say_what_to_give(postgres_url, tmp_path):
    with pytest.raises(UserError, match=r"give a SWEEP_YAML .*--storage URL --study NAME"):
        _definition_and_overrides(_args())
    with pytest.raises(UserError, match=r"--study w: also give --storage URL"):
        _definition_and_overrides(_args(study="w"))
    with pytest.raises(UserError, match=r"drop w\.yaml or --study"):
        _definition_and_overrides(_args(study="w", storage="sqlite://", definition=Path("w.yaml")))
    url, name = _plain(postgres_url), f"listed-{uuid.uuid4().hex[:6]}"
    _stored_study(url, name)
    with pytest.raises(UserError) as err:
        _definition_and_overrides(_args(study="no-such-study", storage=url))
    message = str(err.value)
    assert "no study 'no-such-study' in postgresql://postgres@127.0.0.1" in message and name in message
    optuna.create_study(study_name="bare", storage=f"sqlite:///{tmp_path}/s.db")  # not made by sdexp
    with pytest.raises(UserError, match="no stored sweep definition"):
        _definition_and_overrides(_args(study="bare", storage=f"sqlite:///{tmp_path}/s.db"))
    # With --study, a first positional that is an override is taken as one.
    joined, extra = _definition_and_overrides(_args(study=name, storage=url, definition=Path("data.dir=/b")))
    assert joined.overrides[-1] == "data.dir=/b" and extra == []


# ----- real processes: three workers and a second machine on one PostgreSQL study -------------

DEFINITION = tiny_sweep("pg", n_trials=6)


def _sweep(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sdexp.cli", "sweep", *args, "--no-report"],
        cwd=cwd,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )


def _has_definition(storage, name: str) -> bool:
    if name not in optuna.get_all_study_names(storage):
        return False
    return stored_definition.DEFINITION_ATTR in optuna.load_study(study_name=name, storage=storage).user_attrs


def _running_trial(out: Path, study) -> int | None:
    """A trial this worker's folder shows started that the study has RUNNING, if any."""
    started = {int(p.parent.name) for p in (out / "trials").glob("*/config.yaml")}
    running = {t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"}
    return max(started & running, default=None)


@pytest.mark.slow
def test_workers_on_several_machines_share_a_postgres_study_exactly(postgres_url, tmp_path, toy_images):
    url = _plain(postgres_url)  # as a user types it
    definition = tmp_path / "pg.yaml"
    name = f"pg-{uuid.uuid4().hex[:6]}"
    definition.write_text(yaml.safe_dump({**DEFINITION, "name": name}))
    outs = [tmp_path / f"machine{i}" for i in range(3)]  # each worker its own folder: no folder lock shared

    def worker(i: int) -> subprocess.Popen:
        args = [str(definition), f"data.dir={toy_images}", "--storage", url, "--out", str(outs[i])]
        return _sweep(args, REPO, outs[i].with_suffix(".log"))

    first, storage, deadline = worker(0), open_storage(url), time.monotonic() + 240
    while not _has_definition(storage, name):  # it has made the study: others may join
        assert first.poll() is None and time.monotonic() < deadline, "worker 0 never created the study"
        time.sleep(0.2)
    # Another machine: its own working folder, no definition file, only the storage and the study.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    joiner = _sweep(["--storage", url, "--study", name, f"data.dir={toy_images}", "--out", "joined"], elsewhere, tmp_path / "joined.log")  # fmt: skip
    study = optuna.load_study(study_name=name, storage=storage)
    while (killed := _running_trial(outs[0], study)) is None:
        assert first.poll() is None and time.monotonic() < deadline, "worker 0 never ran a trial"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-trial: its trial stays RUNNING until its heartbeats are missed
    first.wait()
    while not (elsewhere / "joined" / "sweep.json").exists():  # the joiner is about to claim
        assert joiner.poll() is None and time.monotonic() < deadline, (tmp_path / "joined.log").read_text()
        time.sleep(0.1)
    others = [worker(1), worker(2)]
    for proc, log in [*zip(others, [o.with_suffix(".log") for o in outs[1:]], strict=True),
                      (joiner, tmp_path / "joined.log")]:  # fmt: skip
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]

    trials = study.get_trials()
    states = [(t.number, t.state.name) for t in trials]
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 6, states  # exactly n_trials, though four workers claimed from two "machines"
    assert len({(t.params["train.lr"], t.params["method.rank"]) for t in done}) == 6  # none run twice
    assert [n for n, s in states if s == "FAIL"] == [killed], states  # the killed worker's trial, only
    assert len(trials) == 7, states  # nothing beyond: 6 finished and the one lost
    retry = [t for t in done if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].params == trials[killed].params  # rerun once, same parameters

    joined = elsewhere / "joined"
    info = read_sweep_info(joined)
    assert (info.storage, info.study_name, info.n_trials) == (url, name, 6)
    mine = [t for t in done if (joined / t.user_attrs["run_dir"] / "run.json").is_file()]
    assert mine, (
        f"the joining machine finished no trial: {states}\n{(tmp_path / 'joined.log').read_text()[-3000:]}"
    )
    assert yaml.safe_load((joined / "sweep.yaml").read_text())["space"]["train.lr"]["log"] is True
