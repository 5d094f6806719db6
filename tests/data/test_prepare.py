"""``sdexp prepare``: its verdict (exit code), what it reports, what it writes, and what it leaves alone."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sdexp.cli import main
from sdexp.data.dataset import collate, load_dataset
from sdexp.data.options import BucketOptions
from sdexp.data.transforms import to_tensor

from .hostile_files import BAD, GOOD, ORPHAN, folder_state, make_hostile_folder, textured


@pytest.fixture()
def sdexp(capsys):
    """``sdexp ARGS`` in this process: (exit code, stdout, stderr); the CLI's env/warning tweaks undone."""
    env, filters = dict(os.environ), list(warnings.filters)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    os.environ.clear()
    os.environ.update(env)
    warnings.filters[:] = filters


@pytest.fixture()
def hostile(tmp_path) -> Path:
    return make_hostile_folder(tmp_path / "data")


def test_hostile_folder_names_every_bad_file_exits_2_and_changes_nothing(sdexp, hostile, tmp_path):
    before = folder_state(hostile)
    report = tmp_path / "report"
    code, out, _ = sdexp("prepare", hostile, "--report", report, "--json", tmp_path / "out.json")

    assert code == 2
    for name, fragment in BAD.items():
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{name}:"))
        assert fragment in line
    assert "cannot train yet (exit 2)" in out and "--skip-bad" in out and "--prompt" in out
    assert folder_state(hostile) == before

    found = json.loads((tmp_path / "out.json").read_text())
    assert found["exit_code"] == 2
    assert {Path(b["path"]).relative_to(hostile).as_posix() for b in found["bad"]} == set(BAD)
    assert {Path(i["path"]).relative_to(hostile).as_posix() for i in found["images"]} == set(GOOD)
    assert [Path(p).name for p in found["orphan_captions"]] == [ORPHAN]
    sources = {Path(i["path"]).name: i["caption_source"] for i in found["images"]}
    assert (
        sources["gray.png"] == "empty"
        and sources["wide.png"] == "sidecar"
        and sources["cmyk.jpg"] == "missing"
    )
    identical = [sorted(Path(p).name for p in group) for group in found["exact_duplicates"]]
    assert identical == [["link-to-textured.png", "textured-copy.png", "textured.png"]]
    near = {frozenset((Path(d["a"]).name, Path(d["b"]).name)) for d in found["near_duplicates"]}
    group = identical[0]
    assert any(frozenset((member, "textured-recompressed.jpg")) in near for member in group)
    assert len(near) == 2  # the recompressed copy once (not once per identical file), and the animations
    assert all("wide.png" not in pair for pair in near)
    notes = {Path(i["path"]).name: i["notes"] for i in found["images"]}
    assert "animated (3 frames): first frame used" in notes["anim.gif"]
    assert {Path(d["path"]).name for d in found["not_entered"]} == {"loop", "self"}

    html = (report / "index.html").read_text(encoding="utf-8")
    for name in [*BAD, *GOOD]:
        assert Path(name).name in html
    assert "HEIC/HEIF image" in html


def test_skip_bad_and_prompt_make_it_trainable_and_training_agrees(sdexp, hostile, tmp_path):
    before = folder_state(hostile)
    code, out, _ = sdexp(
        "prepare", hostile, "--skip-bad", "--prompt", "a photo", "--report", tmp_path / "r", "--buckets",
        "--resolution", "256", "--min-bucket", "128", "--max-bucket", "512", "--json", tmp_path / "out.json",
    )  # fmt: skip
    assert code == 0, out
    assert "ready to train (exit 0)" in out
    found = json.loads((tmp_path / "out.json").read_text())

    options = BucketOptions(enabled=True, min_resolution=128, max_resolution=512)
    ds = load_dataset(
        hostile, resolution=256, default_prompt="a photo", skip_bad=True, buckets=options, warn=lambda _: None
    )
    assert [str(r.path) for r in ds.records] == [i["path"] for i in found["images"]]
    assert ds.buckets_per_item == [tuple(i["train_size"]) for i in found["images"]]  # same sizes as reported
    for batch in DataLoader(ds, batch_size=1, collate_fn=collate):
        assert batch["pixel_values"].isfinite().all()
    assert folder_state(hostile) == before


def write_clean(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        textured((96, 64), seed=10 + i).save(folder / f"img {i} <b>&amp;.png")
        (folder / f"img {i} <b>&amp;.txt").write_text(f"caption {i}")
    return folder


def test_clean_folder_exits_0_with_an_escaped_report(sdexp, tmp_path, monkeypatch):
    data = write_clean(tmp_path / "clean")
    monkeypatch.chdir(tmp_path)
    code, out, _ = sdexp("prepare", data)
    assert code == 0, out
    assert "3 to train on, 0 unreadable" in out and "captions    3 sidecar" in out
    html = (tmp_path / "prepare-report" / "index.html").read_text(encoding="utf-8")
    assert "img 0 &lt;b&gt;&amp;amp;.png" in html and "<b>&amp;.png" not in html
    thumbs = sorted((tmp_path / "prepare-report" / "thumbs").glob("*.png"))
    assert len(thumbs) == 3 and all(f"thumbs/{t.name}" in html for t in thumbs)
    assert sorted(p.name for p in data.iterdir()) == sorted(
        [f"img {i} <b>&amp;.{ext}" for i in range(3) for ext in ("png", "txt")]
    )


def test_thumbnails_are_what_the_dataset_yields(sdexp, tmp_path):
    data = write_clean(tmp_path / "clean", n=2)
    code, _, _ = sdexp(
        "prepare", data, "--resolution", "32", "--crop", "random", "--seed", "7", "--report", tmp_path / "r"
    )
    assert code == 0
    ds = load_dataset(data, resolution=32, crop="random", seed=7, default_prompt=None)
    for i, thumb in enumerate(sorted((tmp_path / "r" / "thumbs").glob("*.png"))):
        with Image.open(thumb) as shown:
            assert torch.equal(to_tensor(shown.convert("RGB")), ds[i]["pixel_values"])


@pytest.mark.parametrize(
    ("setup", "args", "fragment"),
    [
        ("empty", [], "no images found"),
        ("uncaptioned", [], "without a caption"),
        ("small", ["--small-images", "skip", "--prompt", "p"], "--small-images skip leaves no image"),
    ],
)
def test_must_fix_cases_exit_2(sdexp, tmp_path, setup, args, fragment):
    data = tmp_path / "data"
    data.mkdir()
    if setup == "uncaptioned":
        textured(seed=1).save(data / "a.png")
    elif setup == "small":
        textured((40, 30)).save(data / "a.png")
    code, out, _ = sdexp("prepare", data, "--report", tmp_path / "r", *args)
    assert code == 2 and fragment in out


def test_report_folder_inside_data(sdexp, tmp_path, monkeypatch):
    data = write_clean(tmp_path / "data")
    before = folder_state(data)
    monkeypatch.chdir(data)
    code, _, err = sdexp("prepare", ".")
    assert code == 2 and "inside the data folder" in err and "--report DIR" in err
    assert folder_state(data) == before  # refused before writing anything

    code, out, _ = sdexp("prepare", ".", "--report", "checks")  # explicit: allowed
    assert code == 0 and "3 to train on" in out
    assert len(list((data / "checks" / ".thumbs").glob("*.png"))) == 3  # hidden: training skips them
    assert len(load_dataset(data, resolution=32, default_prompt=None)) == 3
    code, out, _ = sdexp("prepare", ".", "--report", "checks")  # rerun: its own report is not data
    assert code == 0 and "3 to train on" in out


def test_refuses_a_report_folder_that_is_not_a_report(sdexp, tmp_path):
    data = write_clean(tmp_path / "data")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.md").write_text("mine")
    code, _, err = sdexp("prepare", data, "--report", other)
    assert code == 2 and "is not a prepare report" in err
    assert [p.name for p in other.iterdir()] == ["todo.md"]


def test_bad_arguments_are_one_line_errors(sdexp, tmp_path):
    code, _, err = sdexp("prepare", tmp_path / "missing", "--no-report")
    assert code == 2 and "does not exist" in err
    data = write_clean(tmp_path / "data")
    code, _, err = sdexp("prepare", data, "--buckets", "--bucket-step", "60", "--no-report")
    assert code == 2 and "--bucket-step: must be a positive multiple of 8" in err
    code, _, err = sdexp("prepare", data, "--pad-color", "1,2", "--no-report")
    assert code == 2 and "R,G,B" in err
