"""Grid fixtures: one short LoRA run on the tiny model, trained once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PROMPTS = ["a photo of sks toy", "a blue, round thing on a long table in a room"]
# What every grid test samples with: cheap, and what the generate() comparisons repeat.
SAMPLE = {"steps": 2, "width": 32, "height": 32}
# A high rate so 4 steps move the LoRA far enough to change a 2-step image visibly.
RUN = ["model=tiny", "eval=none", "logger=none", "method.targets=all", "train.lr=5e-2", "train.steps=4",
       "train.checkpoint_every=2", "data.val_images=2", "data.prompt=a photo of sks toy"]  # fmt: skip


def pixels(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run: checkpoints/step-000002 and final, best/ (by val/loss), config.yaml."""
    import torch
    from toy_images import write_demo_images

    from sdexp.entry import compose_run_config
    from sdexp.run import train_run

    root = tmp_path_factory.mktemp("grid_run")
    images = write_demo_images(root / "images", n=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose_run_config([*RUN, f"data.dir={images}"])
        return train_run(cfg, root / "run", notify=lambda *_: None).run_dir
    finally:
        torch.set_num_threads(threads)
