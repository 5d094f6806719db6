"""`sdexp dashboard`: optuna-dashboard on a sweep's storage (SQLite or journal), its API answering on
127.0.0.1 with the study and its trials; a port in use is one line and exit 2."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import optuna
import pytest

from sdexp.cli import main
from sdexp.dashboard import serve
from sdexp.sweep.layout import SweepInfo, default_storage, open_storage, write_sweep_info

REPO = Path(__file__).resolve().parents[1]


def make_sweep(folder, storage: str):
    """A sweep folder whose study holds two COMPLETE trials and one FAIL (no training: the storage is
    what the dashboard reads)."""
    folder.mkdir()
    write_sweep_info(folder, SweepInfo("dash", "dash-study", storage, ["val_loss"], ["minimize"], 3))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opened = open_storage(storage) if storage.startswith("journal:") else storage
    study = optuna.create_study(study_name="dash-study", storage=opened, direction="minimize")
    for lr, loss in ((1e-3, 0.5), (1e-2, 0.4)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.lr": lr},
                distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
                value=loss,
            )
        )
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return folder


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _api_lists_the_study(base_url: str) -> None:
    studies = get_json(f"{base_url}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["dash-study"]
    detail = get_json(f"{base_url}/api/studies/{studies[0]['study_id']}")
    trials = detail["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete", "Fail"]
    assert [t["values"] for t in trials[:2]] == [[0.5], [0.4]]
    assert [t["params"][0]["name"] for t in trials[:2]] == ["train.lr", "train.lr"]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_serve_answers_with_the_sweeps_study_on_loopback_until_stopped(tmp_path, kind):
    folder = tmp_path / "sweep"
    storage = default_storage(folder) if kind == "sqlite" else f"journal:{folder / 'study.journal'}"
    make_sweep(folder, storage)
    lines, stop = queue.Queue(), threading.Event()
    thread = threading.Thread(target=serve, args=(folder, "127.0.0.1", 0, lines.put, stop), daemon=True)
    thread.start()
    try:
        assert "Ctrl-C" in lines.get(timeout=60)
        url = lines.get(timeout=10)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/dashboard")
        _api_lists_the_study(url.removesuffix("/dashboard"))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    with pytest.raises(OSError):  # the port is closed again
        urllib.request.urlopen(f"{url.removesuffix('/dashboard')}/api/studies", timeout=5)


def test_sdexp_dashboard_prints_the_url_serves_and_stops_on_ctrl_c(tmp_path):
    folder = make_sweep(tmp_path / "sweep", default_storage(tmp_path / "sweep"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdexp.cli", "dashboard", str(folder), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        first, url = proc.stdout.readline(), proc.stdout.readline().strip()
        assert "Ctrl-C" in first and url.startswith("http://127.0.0.1:"), (first, url, proc.poll())
        _api_lists_the_study(url.removesuffix("/dashboard"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "dashboard stopped" in out


def test_a_port_in_use_is_one_line_suggesting_another(tmp_path, capsys, isolated_cli_state):
    folder = make_sweep(tmp_path / "sweep", default_storage(tmp_path / "sweep"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["dashboard", str(folder), "--port", str(port)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"127.0.0.1:{port} is in use" in err and f"--port {port + 1}" in err
    with pytest.raises(SystemExit):
        main(["dashboard", str(tmp_path), "--port", "0"])
    assert "not a sweep folder" in capsys.readouterr().err
