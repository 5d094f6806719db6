"""The sweep report: built from a fake sweep folder (Optuna study + run folders), no torch needed.

The page is checked as HTML here; tests/browser/ renders real reports in Chromium."""

from __future__ import annotations

import json
import math
import re
import shlex

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from analysis.plots import study_figures
from analysis.report import best_trials, dashboard_command, main, write_report
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
    table = html.split("<h2>Trials</h2>")[1].split("</table>")[0].split("<tbody>")[1]
    return {int(n): row for row, n in re.findall(r'(<tr[^>]*><td data-v="(\d+)">.*?</tr>)', table)}


def body(html: str) -> str:
    """The page without its head (plotly.js, inline there, holds strings such as "<img")."""
    return html.split("</head>", 1)[1]


def plot_divs(html: str) -> list[str]:
    """The ids of the page's plotly figures."""
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', html)


def test_report_of_a_sweep(sweep, capsys):
    assert main([str(sweep)]) == 0
    index = sweep / "report" / "index.html"
    html = index.read_text()
    printed = capsys.readouterr().out
    command = f"optuna-dashboard {shlex.quote(default_storage(sweep))}"
    assert command in printed and command in html

    srcs = re.findall(r'<img src="([^"]+)"', body(html))
    assert len(srcs) == 4  # the best trial's two images at its best step and the base's two
    assert all((index.parent / src).is_file() for src in srcs)
    assert all(src.startswith("images/") for src in srcs)
    assert "a &lt;sks&gt; toy #1" in html and "<sks>" not in html

    rows = trial_rows(html)
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert [n for n, row in rows.items() if "★" in row] == [4]  # feasible 0.8 beats infeasible 0.9
    assert "&lt;boom&gt; &amp; more" in rows[3] and "<boom>" not in html
    assert "PRUNED" in rows[2] and '<td data-v="20">20</td>' in rows[2]
    assert "eval/clip_i" in html and "eval/clip_t" not in html  # only metric columns some trial has
    assert "COMPLETE 3 · PRUNED 1 · FAIL 1 · RUNNING 0 · WAITING 0" in html

    assert "not enough trials" not in html and "not drawn" not in html
    # history, parallel coordinates, slices, contour, importances; objective/subject and val/loss curves
    assert len(plot_divs(html)) == 7
    assert "Hyperparameter Importances" in html and "Contour Plot" in html
    curves = html.split("Curves of the top 3 trials")[1]
    assert '"name":"trial 4"' in curves and '"name":"trial 1"' in curves and '"name":"trial 0"' in curves


def test_missing_run_folders_still_render(tmp_path):
    _, study = make_study(tmp_path)
    for state, lr, rank, value, attrs in TRIALS.values():
        add(study, state, lr, rank, value, attrs)
    out = tmp_path / "elsewhere"
    html = body(write_report(tmp_path, out).read_text())
    assert (out / "index.html").is_file()
    assert (
        "<img" not in html
        and "—" in html
        and "none shown: the run&#x27;s config.yaml names no data.dir" in html
    )
    assert sorted(trial_rows(html)) == [0, 1, 2, 3, 4]


def test_too_few_trials_show_no_importances(tmp_path):
    _, study = make_study(tmp_path)
    add(study, TrialState.COMPLETE, 1e-3, 4, 0.5, {"violation": 0})
    add(study, TrialState.FAIL, 1e-4, 8, None, {"error": "x"})
    html = write_report(tmp_path).read_text()
    assert "Parameter importances: not enough trials" in html
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


def test_dashboard_command_for_a_journal():
    assert dashboard_command("journal:/tmp/a b.log") == "optuna-dashboard '/tmp/a b.log'"


def test_infinite_values_are_left_out_of_the_plots_and_the_best_is_starred(tmp_path):
    info, study = make_study(tmp_path)
    add(study, TrialState.COMPLETE, 1e-3, 4, 0.5, {"violation": 0})
    add(study, TrialState.COMPLETE, 1e-4, 8, float("-inf"), {"violation": 0})
    add(study, TrialState.COMPLETE, 1e-2, 8, 0.7, {"violation": 0})
    html = write_report(tmp_path).read_text()
    assert "★ 2" in html
    history = dict(study_figures(info, study, best_trials(info, study)))["Optimization history"]
    ys = [y for trace in history.data for y in (trace.y or ())]
    assert ys and not any(math.isinf(y) for y in ys)  # -inf is not drawn (it would flatten the axis)
    star = next(trace for trace in history.data if trace.name == "sweep's best")
    assert list(star.x) == [2] and list(star.y) == [0.7]


def test_the_plots_follow_the_constraint_and_the_number_of_parameters(tmp_path):
    """Infeasible trials are marked apart and the constraint-aware best is starred (Optuna's own
    best would be the infeasible 0.9); one parameter: no contour, with a note saying why."""
    info, study = make_study(tmp_path)
    add(study, TrialState.COMPLETE, 1e-3, 4, 0.5, {"violation": 0})
    add(study, TrialState.COMPLETE, 1e-2, 8, 0.9, {"violation": 1})
    add(study, TrialState.COMPLETE, 1e-4, 4, 0.6, {"violation": 0})
    figures = dict(study_figures(info, study, best_trials(info, study)))
    traces = {t.name: t for t in figures["Optimization history"].data}
    assert list(traces["infeasible"].x) == [1] and list(traces["sweep's best"].x) == [2]
    assert (
        "Contour of method.rank and train.lr" in figures or "Contour of train.lr and method.rank" in figures
    )
    assert not any(isinstance(v, str) for v in figures.values())

    one = tmp_path / "one"
    one.mkdir()
    info, study = make_study(one)
    for lr, value in ((1e-3, 0.5), (1e-2, 0.6)):
        study.add_trial(create_trial(params={"train.lr": lr}, distributions={"train.lr": DISTS["train.lr"]},
                                     values=[value], user_attrs={"violation": 0.0}))  # fmt: skip
    html = write_report(one).read_text()
    assert "Contour: not drawn (the sweep has 1 parameter(s); it needs two)" in html
    assert len(plot_divs(html)) == 4  # history, parallel coordinates, slices, importances


def test_multi_objective_draws_the_pareto_front_instead_of_the_history(tmp_path):
    info, study = make_study(tmp_path, ("subject", "drift"), ("maximize", "minimize"))
    add(study, TrialState.COMPLETE, 1e-3, 4, (0.9, 0.5), {"violation": 0})
    add(study, TrialState.COMPLETE, 1e-4, 8, (0.7, 0.1), {"violation": 0})
    add(study, TrialState.COMPLETE, 2e-3, 8, (1.0, 0.0), {"violation": 1})
    figures = dict(study_figures(info, study, best_trials(info, study)))
    assert "Optimization history" not in figures
    pareto = figures["Pareto front"]
    kinds = {t.hovertemplate.split("<extra>")[1].split("</extra>")[0]: list(t.x) for t in pareto.data}
    assert kinds["Infeasible Trial"] == [1.0] and sorted(kinds["Best Trial"]) == [0.7, 0.9]
    assert pareto.layout.xaxis.title.text == "subject"


def test_the_page_works_offline_with_plotly_inline_once(sweep):
    from plotly.offline import get_plotlyjs

    html = write_report(sweep).read_text()
    assert html.count(get_plotlyjs()[:300]) == 1  # the library once, in the head, however many plots
    assert len(plot_divs(html)) > 1
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", html)  # nothing fetched
    assert "cdn.plot.ly/plotly" not in html and "cdn.jsdelivr" not in html.split("</script>", 1)[1]
    assert "table.sortable" in html and 'class="sortable" id="trials"' in html  # the inline table script


def test_failed_trials_show_their_error_and_a_link_to_their_run_log(sweep):
    log = trial_dir(sweep, 3) / "run.log"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    html = write_report(sweep, sweep / "elsewhere" / "page").read_text()
    section = html.split("<h2>Failed trials (1)</h2>")[1].split("<h2>")[0]
    failed = section.split("</table>")[0]
    assert "&lt;boom&gt; &amp; more" in failed and "train.lr = 0.01" in failed
    assert "<pre>Traceback (most recent call last):\nRuntimeError: CUDA out of memory</pre>" in section
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
        f"sdexp report: error: {elsewhere}: neither a sweep folder (no sweep.json) nor a run folder "
        "(no run.json or metrics.jsonl); pass a folder `sdexp sweep` or `python run.py` wrote"
    ]
    assert not (elsewhere / "report").exists()
