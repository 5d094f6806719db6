"""The sweep report: built from a fake sweep folder (Optuna study + run folders), no torch needed."""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from analysis.report import best_trials, dashboard_command, main, scatter_chart, write_report
from sdexp.sweep.layout import (
    SweepInfo,
    default_storage,
    load_study,
    open_storage,
    trial_dir,
    write_sweep_info,
)

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # open_storage's RDB

DISTS = {
    "train.lr": FloatDistribution(1e-5, 1e-2, log=True),
    "method.rank": CategoricalDistribution([4, 8]),
}
ERROR = "RuntimeError: CUDA out of memory <boom> & more"
# number: (state, lr, rank, value, user_attrs)
TRIALS = {
    0: (TrialState.COMPLETE, 1e-4, 4, 0.6, {"violation": 0.0, "best_checkpoint": "step-000050"}),
    1: (TrialState.COMPLETE, 3e-3, 8, 0.9, {"violation": 0.5, "best_checkpoint": "step-000025"}),
    2: (TrialState.PRUNED, 1e-5, 4, None, {"pruned_step": 20}),
    3: (TrialState.FAIL, 1e-2, 8, None, {"error": ERROR}),
    4: (TrialState.COMPLETE, 1e-3, 8, 0.8, {"violation": 0.0, "best_checkpoint": "step-000050"}),
}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_study(tmp_path, objectives=("subject",), directions=("maximize",)):
    url = default_storage(tmp_path)
    info = SweepInfo(name="t", study_name="t", storage=url, objectives=list(objectives),
                     directions=list(directions), n_trials=len(TRIALS))  # fmt: skip
    write_sweep_info(tmp_path, info)
    return info, optuna.create_study(study_name="t", storage=open_storage(url), directions=list(directions))


def add(study, state, lr, rank, values, attrs, intermediate=None):
    values = None if values is None else list(values) if isinstance(values, (list, tuple)) else [values]
    study.add_trial(
        create_trial(
            params={"train.lr": lr, "method.rank": rank},
            distributions=DISTS,
            values=values,
            user_attrs={"run_dir": f"trials/{len(study.trials):04d}", **attrs},
            intermediate_values=intermediate or {},
            state=state,
        )
    )


def write_run_folder(sweep, number, value):
    """metrics.jsonl, best.json and two eval images at steps 0 and 50, like a real trial leaves."""
    run = trial_dir(sweep, number)
    folder = run / "samples" / "eval_subject"
    folder.mkdir(parents=True)
    rows = [{"step": s, "objective/subject": value * s / 50, "val/loss": 1 - s / 100} for s in (0, 25, 50)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = [{"step": 50, "checkpoint": "step-000050", "objectives": {"subject": value}, "feasible": True}]
    best = {"step": 50, "checkpoint": "step-000050", "objectives": {"subject": value}, "history": history}
    (run / "best.json").write_text(json.dumps(best))
    with (folder / "index.jsonl").open("w") as f:
        for step in (0, 50):
            files = [f"step-{step:06d}-{i}.png" for i in range(2)]
            for i, name in enumerate(files):
                Image.new("RGB", (8, 8), (step * 5, 40 * i, 0)).save(folder / name)
            captions = [f"a <sks> toy #{i}" for i in range(2)]
            f.write(
                json.dumps({"step": step, "key": "eval_subject", "files": files, "captions": captions}) + "\n"
            )


@pytest.fixture
def sweep(tmp_path):
    _, study = make_study(tmp_path)
    for number, (state, lr, rank, value, attrs) in TRIALS.items():
        metrics = {"eval/clip_i": 0.5 + number / 10, "val/loss": 0.2} if value is not None else {}
        add(study, state, lr, rank, value, {**attrs, "metrics": metrics}, {10: 0.1, 20: 0.2})
        if value is not None:
            write_run_folder(tmp_path, number, value)
    return tmp_path


def trial_rows(html: str) -> dict[int, str]:
    """{trial number: its row} of the trials table."""
    table = html.split("<h2>Trials</h2>")[1].split("</table>")[0]
    return {int(n): row for row, n in re.findall(r"(<tr[^>]*><td>(?:★ )?(\d+)</td>.*?</tr>)", table)}


def test_report_of_a_sweep(sweep, capsys):
    assert main([str(sweep)]) == 0
    index = sweep / "report" / "index.html"
    html = index.read_text()
    printed = capsys.readouterr().out
    command = f"optuna-dashboard {shlex.quote(default_storage(sweep))}"
    assert command in printed and command in html

    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == 4  # the best trial's two images at its best step and the base's two
    assert all((index.parent / src).is_file() for src in srcs)
    assert all(src.startswith("images/") for src in srcs)
    assert "a &lt;sks&gt; toy #1" in html and "<sks>" not in html

    rows = trial_rows(html)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert [n for n, row in rows.items() if "★" in row] == [4]  # feasible 0.8 beats infeasible 0.9
    assert "&lt;boom&gt; &amp; more" in rows[3] and "<boom>" not in html
    assert "PRUNED" in rows[2] and "<td>20</td>" in rows[2]
    assert "eval/clip_i" in html and "eval/clip_t" not in html  # only metric columns some trial has
    assert "COMPLETE 3 · PRUNED 1 · FAIL 1 · RUNNING 0 · WAITING 0" in html

    importances = html.split("<h2>Parameter importances")[1].split("<h2>")[0]
    assert "train.lr" in importances and "not enough trials" not in importances
    assert html.count("<svg") == 4  # subject vs 2 params, objective/subject and val/loss curves
    assert "trial 4" in html.split("Curves of the top 3 trials")[1]


def test_missing_run_folders_still_render(tmp_path):
    _, study = make_study(tmp_path)
    for state, lr, rank, value, attrs in TRIALS.values():
        add(study, state, lr, rank, value, attrs)
    out = tmp_path / "elsewhere"
    html = write_report(tmp_path, out).read_text()
    assert (out / "index.html").is_file()
    assert "<img" not in html and "—" in html
    assert sorted(trial_rows(html)) == [0, 1, 2, 3, 4]


def test_too_few_trials_show_no_importances(tmp_path):
    _, study = make_study(tmp_path)
    add(study, TrialState.COMPLETE, 1e-3, 4, 0.5, {"violation": 0})
    add(study, TrialState.FAIL, 1e-4, 8, None, {"error": "x"})
    html = write_report(tmp_path).read_text()
    assert "not enough trials" in html
    assert "★ 0" in html


def test_multi_objective_lists_the_feasible_pareto_set(tmp_path):
    info, study = make_study(tmp_path, ("subject", "drift"), ("maximize", "minimize"))
    add(study, TrialState.COMPLETE, 1e-3, 4, (0.9, 0.5), {"violation": 0})  # Pareto
    add(study, TrialState.COMPLETE, 1e-4, 8, (0.7, 0.1), {"violation": 0})  # Pareto
    add(study, TrialState.COMPLETE, 1e-2, 4, (0.6, 0.6), {"violation": 0})  # dominated by 0
    add(study, TrialState.COMPLETE, 2e-3, 8, (1.0, 0.0), {"violation": 1})  # dominates all, infeasible
    html = write_report(tmp_path).read_text()
    assert "Pareto set (2 trials)" in html
    assert sorted(n for n, row in trial_rows(html).items() if "★" in row) == [0, 1]
    assert [t.number for t in best_trials(info, study)] == [0, 1]  # by the first objective
    assert [t.number for t in study.best_trials] == [3]  # Optuna does not see the user-attr constraint


def test_best_trials_single_objective(tmp_path, sweep):
    info, study = load_study(sweep)
    assert [t.number for t in best_trials(info, study)] == [4]
    info.directions = ["minimize"]
    assert [t.number for t in best_trials(info, study)] == [0]


def test_best_trials_when_nothing_is_feasible_or_complete(tmp_path):
    info, study = make_study(tmp_path)
    assert best_trials(info, study) == []
    add(study, TrialState.PRUNED, 1e-3, 4, None, {})
    assert best_trials(info, study) == []
    add(study, TrialState.COMPLETE, 1e-3, 4, 0.2, {"violation": 2})
    add(study, TrialState.COMPLETE, 1e-3, 8, 0.3, {"violation": 1})
    add(study, TrialState.COMPLETE, 1e-4, 8, 0.1, {})  # no violation recorded: counts as feasible
    assert [t.number for t in best_trials(info, study)] == [3]


def test_scatter_axes():
    svg = scatter_chart({"a": [(1e-5, 0.1, "t0"), (1e-4, 0.2, "t1"), (1e-2, 0.3, "t2")]}, logx=True)
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"[^>]*fill-opacity', svg)]
    assert len(xs) == 3 and xs[2] - xs[1] == pytest.approx(2 * (xs[1] - xs[0]), abs=0.2)  # decades
    svg = scatter_chart({"a": [(0, 1.0, "t0"), (1, 1.0, "t1")]}, categories=["4", "<8>"])
    assert "&lt;8&gt;" in svg


def test_dashboard_command_for_a_journal():
    assert dashboard_command("journal:/tmp/a b.log") == "optuna-dashboard '/tmp/a b.log'"


def test_svgs_are_well_formed_and_infinite_values_are_left_out(tmp_path):
    _, study = make_study(tmp_path)
    add(study, TrialState.COMPLETE, 1e-3, 4, 0.5, {"violation": 0})
    add(study, TrialState.COMPLETE, 1e-4, 8, float("-inf"), {"violation": 0})
    add(study, TrialState.COMPLETE, 1e-2, 8, 0.7, {"violation": 0})
    html = write_report(tmp_path).read_text()
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) == 2
    for svg in svgs:
        root = ET.fromstring(svg)
        assert len(root.findall("{http://www.w3.org/2000/svg}circle")) == 2 + 1  # finite points + legend
    assert "★ 2" in html


def test_failed_trials_show_their_error_and_a_link_to_their_run_log(sweep):
    log = trial_dir(sweep, 3) / "run.log"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    html = write_report(sweep, sweep / "elsewhere" / "page").read_text()
    failed = html.split("<h2>Failed trials (1)</h2>")[1].split("</table>")[0]
    assert "&lt;boom&gt; &amp; more" in failed and "train.lr = 0.01" in failed
    href = re.search(r'<a href="([^"]+)">trials/0003/run.log</a>', failed).group(1)
    assert href == "../../trials/0003/run.log"
    assert ((sweep / "elsewhere" / "page") / href).resolve() == log.resolve()
    log.unlink()  # a trial whose folder was cleaned up: the path still shows, with no dead link
    failed = write_report(sweep).read_text().split("<h2>Failed trials (1)</h2>")[1]
    assert "trials/0003/run.log (missing)" in failed and "<a href" not in failed.split("</table>")[0]


def test_a_sweep_with_no_failures_has_no_failed_trials_section(tmp_path):
    _, study = make_study(tmp_path)
    add(study, TrialState.COMPLETE, 1e-3, 4, 0.5, {"violation": 0})
    assert "Failed trials" not in write_report(tmp_path).read_text()


def test_sdexp_report_writes_the_page_and_refuses_a_folder_that_is_not_a_sweep(sweep, tmp_path, cli):
    proc = cli(["-m", "sdexp.cli", "report", str(sweep)])
    assert proc.returncode == 0, proc.stderr
    index = sweep / "report" / "index.html"
    assert f"report: {index}" in proc.stdout and "<h2>Trials</h2>" in index.read_text()
    elsewhere = tmp_path / "not-a-sweep"
    elsewhere.mkdir()
    proc = cli(["-m", "sdexp.cli", "report", str(elsewhere)])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"sdexp report: error: {elsewhere}: not a sweep folder (no sweep.json); pass the folder `sdexp sweep` wrote"
    ]
    assert not (elsewhere / "report").exists()
