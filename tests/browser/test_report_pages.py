"""The report pages in a real browser: a real small sweep's page, a run's page, `sdexp prepare`'s page.

Each page must load without a console error or a request leaving the machine, show every image,
draw every plotly chart, and its tables must sort and filter. `SDEXP_SCREENSHOTS=1` also saves a
screenshot of each page into docs/screenshots/ (off by default, so the suite rewrites no tracked file).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.page import TABLE_JS, cell, sortable_table
from analysis.report import write_report
from sdexp.sweep.definition import parse_definition
from sdexp.sweep.layout import load_study
from sdexp.sweep.runner import SweepRunner

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # open_storage's RDB
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"
# model=tiny judged by the tiny_shapes CLIP: real eval images at the base and at step 2, in seconds.
BASE = ["model=tiny", "data.prompt=a photo of sks toy", "method.targets=all", "logger=none", "train.steps=2",
        "train.checkpoint_every=2", "data.val_images=2", "eval.clip=tiny_shapes", "eval.images=2", "eval.steps=2",
        "eval.prior_prompts=[]", "eval.fid=false", "train.sample_every=2", "train.sample_prompts=[a photo of sks toy]"]  # fmt: skip
# Random seed 10 draws lr 1e-3 rank 2, then lr 1e30 (diverges to NaN at step 2: a FAIL trial, which
# the budget does not count), then lr 1e-2 rank 4: two complete trials that differ in both parameters.
SPACE = {"train.lr": [1e-3, 1e-2, 1e30], "method.rank": [2, 4]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real three-trial sweep (one failed), run once for the module, with its report and grid."""
    from toy_images import write_demo_images

    root = tmp_path_factory.mktemp("browser")
    images = write_demo_images(root / "images", n=6)
    raw = {"space": SPACE, "sampler": {"name": "random", "seed": 10}, "n_trials": 2}
    runner = SweepRunner(parse_definition({"name": "browser", "overrides": BASE, **raw}), root / "browser",
                         extra_overrides=[f"data.dir={images}"], notify=lambda *_: None)  # fmt: skip
    runner.prepare()
    runner.run()
    _, study = load_study(runner.sweep_dir)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"], states
    write_report(runner.sweep_dir, grids=True)  # sdexp.grid: one prompt × the two complete trials
    return runner.sweep_dir


class Opened:
    """A page opened from disk, with what it logged and requested."""

    def __init__(self, browser, index: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(index.as_uri(), wait_until="load")
        self.page.wait_for_function("Array.from(document.images).every(i => i.complete)")

    def check_loaded(self, min_images: int, min_plots: int) -> None:
        """No console error, nothing fetched from the network, every image decoded, every chart drawn."""
        page = self.page
        assert self.errors == []
        assert [u for u in self.requests if not u.startswith(("file://", "data:"))] == []
        sizes = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert len(sizes) >= min_images and [s for s, w in sizes if w == 0] == []
        plots = page.evaluate(
            "Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => [d.id, !!d.querySelector('svg.main-svg')])"
        )
        assert len(plots) >= min_plots and [i for i, drawn in plots if not drawn] == []

    def column(self, table: str, n: int = 0) -> list[str]:
        """The visible text of column ``n`` of a table's body, top to bottom."""
        return self.page.evaluate(
            f"Array.from(document.querySelectorAll('#{table} tbody tr')).filter(r => r.style.display !== 'none')"
            f".map(r => r.cells[{n}].textContent.trim())"
        )

    def screenshot(self, name: str) -> None:
        if os.environ.get("SDEXP_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.mark.slow  # the module's sweep: three trials, about 20 s
def page_has_grid(page) -> bool:
    """The prompts × trials grid is on the page and decoded (two trial columns wide)."""
    size = page.evaluate(
        "(() => { const g = document.querySelector('img.grid'); return g && [g.naturalWidth, g.naturalHeight]; })()"
    )
    return bool(size) and size[0] > size[1] > 0


def test_the_sweep_report_loads_offline_draws_its_charts_and_its_table_sorts_and_filters(browser, sweep):
    opened = Opened(browser, sweep / "report" / "index.html")
    # history, parallel coordinates, slices, contour, importances + curves
    opened.check_loaded(
        min_images=6 + 4 + 1, min_plots=5 + 3
    )  # training thumbnails, base + best eval images, grid
    page = opened.page
    assert page_has_grid(page)
    opened.screenshot("sweep_report")  # before the clicks below reorder and filter the table
    assert opened.column("trials") == ["★ 0", "1", "2"] or opened.column("trials") == ["0", "1", "★ 2"]
    page.click("#trials thead th:nth-child(1)")
    ascending = opened.column("trials")
    page.click("#trials thead th:nth-child(1)")
    descending = opened.column("trials")
    assert [c.lstrip("★ ") for c in ascending] == ["0", "1", "2"] and descending == ascending[::-1]
    page.fill('input.filter[data-table="trials"]', "FAIL")
    assert [c.lstrip("★ ") for c in opened.column("trials")] == ["1"]
    page.fill('input.filter[data-table="trials"]', "")
    assert len(opened.column("trials")) == 3
    assert page.locator("text=FloatingPointError: loss is nan").count() >= 2  # table row and failures table
    page.close()


@pytest.mark.slow
def test_a_run_report_loads_offline_with_its_curves_and_images(browser, sweep):
    run_dir = sweep / "trials" / "0000"
    proc = subprocess.run([sys.executable, "-m", "sdexp.cli", "report", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    opened = Opened(browser, run_dir / "report" / "index.html")
    # eval images at steps 0 and 2, two sample grids, six training thumbnails; loss + eval curves
    opened.check_loaded(min_images=4 + 2 + 6, min_plots=4)
    opened.screenshot("run_report")
    page = opened.page
    assert opened.column("history", 1) == ["base", "final"]
    page.fill('input.filter[data-table="scores"]', "clip_i")
    assert opened.column("scores") == ["eval/clip_i"]
    page.close()


def test_the_prepare_report_loads_offline_with_every_thumbnail(browser, tmp_path):
    from toy_images import write_demo_images

    images = write_demo_images(tmp_path / "photos", n=6)
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "prepared"
    proc = subprocess.run(
        [sys.executable, "-m", "sdexp.cli", "prepare", str(images), "--resolution", "64", "--report", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "unreadable" in proc.stdout, proc.stdout + proc.stderr
    opened = Opened(browser, out / "index.html")
    opened.check_loaded(min_images=6, min_plots=0)
    assert opened.page.locator("text=Cannot train yet").count() == 1
    opened.screenshot("prepare_report")
    opened.page.close()


def test_the_table_sorts_numbers_as_numbers_and_text_after_them(browser):
    rows = [
        ("", cell(v, "l") + cell(t, "l"))
        for v, t in ((10, "b"), (9, "a"), (100.5, "c"), (None, "d"), (-2.5, "e"))
    ]
    page = browser.new_page()
    page.set_content(
        f"<body>{sortable_table('t', ['n', 'x'], rows, 'filter')}<script>{TABLE_JS}</script></body>"
    )
    page.click("#t thead th:nth-child(1)")
    order = page.evaluate(
        "Array.from(document.querySelectorAll('#t tbody tr')).map(r => r.cells[0].textContent)"
    )
    assert order == ["-2.5", "9", "10", "100.5", "—"]  # as text, "10" < "9"
    page.click("#t thead th:nth-child(2)")
    page.click("#t thead th:nth-child(2)")
    assert page.evaluate("document.querySelector('#t tbody tr').cells[1].textContent") == "e"
    page.fill("input.filter", "c")
    assert (
        page.evaluate(
            "Array.from(document.querySelectorAll('#t tbody tr')).filter(r => r.style.display !== 'none').length"
        )
        == 1
    )
    page.close()


def test_a_multi_objective_report_draws_its_pareto_front(browser, tmp_path):
    """Several objectives and an infeasible trial (a study made directly, no training)."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    from sdexp.sweep.layout import SweepInfo, default_storage, open_storage, write_sweep_info

    url = default_storage(tmp_path)
    write_sweep_info(tmp_path, SweepInfo(name="mo", study_name="mo", storage=url, objectives=["subject", "drift"],
                                         directions=["maximize", "minimize"], n_trials=4))  # fmt: skip
    study = optuna.create_study(
        study_name="mo", storage=open_storage(url), directions=["maximize", "minimize"]
    )
    dists = {"train.lr": FloatDistribution(1e-5, 1e-2, log=True), "method.rank": IntDistribution(2, 16)}
    for lr, rank, values, violation in ((1e-3, 4, [0.9, 0.5], 0), (1e-4, 8, [0.7, 0.1], 0),
                                        (1e-2, 2, [0.6, 0.6], 0), (2e-3, 16, [1.0, 0.0], 1)):  # fmt: skip
        study.add_trial(create_trial(params={"train.lr": lr, "method.rank": rank}, distributions=dists,
                                     values=values, user_attrs={"violation": violation}))  # fmt: skip
    opened = Opened(browser, write_report(tmp_path))
    opened.check_loaded(
        min_images=0, min_plots=5
    )  # Pareto front, parallel coordinates, slices, contour, importances
    assert opened.page.locator("text=Pareto set (2 trials)").count() == 1
    opened.page.close()
