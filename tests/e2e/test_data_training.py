"""The data pipeline feeding real training runs: a hostile folder, aspect-ratio buckets, loader workers.

Each run is the built-in tiny model (64 px) for a few steps, with validation shrunk to one image at
one timestep, so a run costs seconds on the CPU.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from data.hostile_files import BAD, GOOD, folder_state, make_hostile_folder, textured
from safetensors.torch import load_file

from sdexp.callbacks import Callback
from sdexp.data.dataset import load_dataset
from sdexp.data.prepare import PrepareOptions, prepare
from sdexp.run import preflight, train_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

FAST = ("model=tiny", "logger=none", "eval=none", "data.val_images=1", "train.val_timesteps=1")
EXTRA_GOOD = {f"good-{i}.png": f"a good picture number {i}" for i in range(4)}  # captioned images
STEP = 16
BUCKETS = (
    "data.buckets.enabled=true",
    "data.buckets.min_resolution=32",
    "data.buckets.max_resolution=128",
    f"data.buckets.step={STEP}",
)


class BatchRecorder(Callback):
    """Keeps what every training step was fed (image size, paths), without the pixels.

    Wraps the module's own ``training_step`` on the instance, so it records whatever method runs."""

    def __init__(self):
        self.batches: list[dict] = []

    def on_train_start(self, trainer, module) -> None:
        step = module.training_step

        def recording(batch, index):
            self.batches.append(
                {"size": tuple(batch["pixel_values"].shape[-2:]), "path": list(batch["path"])}  # size: (H, W)
            )
            return step(batch, index)

        module.training_step = recording


def run_json(result) -> dict:
    return json.loads((result.run_dir / "run.json").read_text())


def quiet(*_args) -> None:
    pass


@pytest.fixture()
def hostile(tmp_path):
    """Every hostile kind (hostile_files.py) plus a few ordinary captioned images."""
    root = make_hostile_folder(tmp_path / "data")
    for i, (name, caption) in enumerate(EXTRA_GOOD.items()):
        textured((80, 64), seed=20 + i).save(root / name)
        (root / name).with_suffix(".txt").write_text(caption)
    return root


def test_hostile_folder_prepare_exits_2_then_trains_with_skip_bad_and_stays_untouched(
    cli, compose, hostile, tmp_path
):
    before = folder_state(hostile)
    report = tmp_path / "report"
    proc = cli(["-m", "sdexp.cli", "prepare", str(hostile), "--resolution", "64", "--report", str(report)])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    for name, reason in BAD.items():
        line = next((x for x in lines if x.startswith(f"{name}:")), None)
        assert line is not None and reason in line, (name, proc.stdout)
    assert folder_state(hostile) == before

    # With skip_bad and a prompt, prepare's verdict turns to 0 and names what a run will train on.
    verdict = prepare(hostile, PrepareOptions(resolution=64, prompt="a photo", skip_bad=True))
    assert verdict.exit_code == 0, verdict.problems()
    listed = {e.path for e in verdict.trained}
    assert {p.relative_to(hostile).as_posix() for p in listed} == set(GOOD) | set(EXTRA_GOOD)

    cfg = compose(
        *FAST,
        f"data.dir={hostile}",
        "data.skip_bad=true",
        "data.prompt=a photo",
        "train.batch_size=2",
        "train.steps=8",  # 16 images, 8 batches: one epoch, every image decoded in a step
    )
    records = preflight(cfg).train_dataset.records
    assert {r.path for r in records} == listed
    captions = {r.path.relative_to(hostile).as_posix(): r.caption for r in records}
    assert captions["gray.png"] == "a photo"  # its caption file is blank: the prompt stands in
    assert all(captions[name] == text for name, text in EXTRA_GOOD.items())

    recorder = BatchRecorder()
    result = train_run(cfg, tmp_path / "run", notify=quiet, callbacks=[recorder])
    info = run_json(result)
    assert info["status"] == "finished" and info["steps"] == 8 and info["images"] == len(listed)
    assert {p for b in recorder.batches for p in b["path"]} == {str(p) for p in listed}
    assert folder_state(hostile) == before


def test_mixed_aspect_ratios_train_in_buckets_and_lose_only_the_rounding(compose, tmp_path):
    # (w, h): 2:1, 1:2, square, 5:4 (nearest bucket is the square) and about 1:2.2 (enlarged)
    shapes = [(96, 48), (48, 96), (64, 64), (80, 64), (45, 100)]
    data = tmp_path / "data"
    data.mkdir()
    for i, (w, h) in enumerate(shapes * 2):
        textured((w, h), seed=i).save(data / f"{i:02d}-{w}x{h}.png")
    cfg = compose(
        *FAST, f"data.dir={data}", "data.prompt=a shape", *BUCKETS, "train.batch_size=2", "train.steps=5"
    )
    dataset = preflight(cfg).train_dataset
    bucket_of = {
        str(r.path): tuple(s) for r, s in zip(dataset.records, dataset.buckets_per_item, strict=True)
    }

    recorder = BatchRecorder()
    result = train_run(cfg, tmp_path / "run", notify=quiet, callbacks=[recorder])
    assert run_json(result)["status"] == "finished"
    assert {p for b in recorder.batches for p in b["path"]} == set(bucket_of)  # one epoch, every image
    sizes = {b["size"] for b in recorder.batches}
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes), sizes  # not all squares
    for batch in recorder.batches:
        bh, bw = batch["size"]
        assert bw % STEP == 0 and bh % STEP == 0 and 32 <= min(bw, bh) and max(bw, bh) <= 128
        assert bw * bh <= 64 * 64  # no bucket costs more than the resolution square
        for path in batch["path"]:
            assert bucket_of[path] == (bw, bh), path  # the sampler kept the item's own bucket

    # What each image lost: the dataset's own transform, at the bucket it trained at.
    images = load_dataset(data, resolution=64, default_prompt="a shape", buckets=cfg.data.buckets)
    for index, record in enumerate(images.records):
        item = images[index]
        bw, bh = bucket_of[str(record.path)]
        assert tuple(item["pixel_values"].shape[1:]) == (bh, bw)
        (h, w), (top, left) = item["original_size"], item["crop_top_left"]
        # the bucket's shape is at least as close to the image's as the square's is
        assert abs(math.log(bw / bh) - math.log(w / h)) <= abs(math.log(w / h)) + 1e-9, record.path
        # resized to cover the bucket, then centre-cropped: only the rounding remainder is cut,
        # under one step on each side
        scale = max(bw / w, bh / h)
        rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
        margins = (top, rh - bh - top, left, rw - bw - left)
        assert all(0 <= m < STEP for m in margins), (record.path, (w, h), (bw, bh), margins)


def test_loader_workers_train_the_same_weights_as_the_main_process(compose, toy_images, tmp_path):
    """Workers get a fresh dataset copy each epoch; augmentation must still follow (seed, epoch, item)."""

    def train(workers: int):
        cfg = compose(
            *FAST,
            f"data.dir={toy_images}",
            "data.prompt=a photo of sks toy",
            "data.flip=true",
            "data.crop=random",
            "train.batch_size=2",
            "train.steps=6",  # 6 images, 3 batches an epoch: two epochs, so the epoch must reach the workers
            f"data.num_workers={workers}",
        )
        result = train_run(cfg, tmp_path / f"workers{workers}", notify=quiet)
        timings = run_json(result)["timings"]
        assert 0 <= timings["data_wait"] <= timings["loop"], timings
        return load_file(result.final_checkpoint / "lora.safetensors")

    main, workers = train(0), train(2)
    assert main.keys() == workers.keys()
    assert all(torch.equal(main[k], workers[k]) for k in main)
    # and the weights did move, so equality says something
    assert any(main[k].abs().max() > 0 for k in main if "lora_up" in k)
