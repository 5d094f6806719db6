"""Fixed-seed sample grids for ``train.sample_prompts`` every ``train.sample_every`` steps and at the end."""

from __future__ import annotations

from pathlib import Path

from sdexp.callbacks.base import Callback


def make_grid(images: list, columns: int | None = None):
    """Paste equally sized PIL images into one grid image."""
    from PIL import Image

    columns = columns or len(images)
    rows = (len(images) + columns - 1) // columns
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % columns) * w, (i // columns) * h))
    return grid


class SampleImages(Callback):
    """Grids go to ``out_dir/step-NNNNNN.png``; the single images also go to ``logger`` (W&B) if given."""

    def __init__(self, prompts: list[str], every: int, seed: int, out_dir: Path, logger=None):
        self.prompts, self.every, self.seed = list(prompts), every, seed
        self.out_dir = Path(out_dir)
        self.logger = logger

    def _sample(self, trainer, module) -> None:
        if not self.prompts or not trainer.is_main_process:
            return
        step = trainer.state.step
        images = module.sample_images(self.prompts, self.seed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step-{step:06d}.png"
        make_grid(images).save(path)
        if self.logger is not None:
            self.logger.log_images("samples", images, step=step, captions=self.prompts)

    def on_train_start(self, trainer, module) -> None:
        if self.every and trainer.state.step == 0:  # a resumed run sampled its step already
            self._sample(trainer, module)

    def on_train_step_end(self, trainer, module, logs: dict) -> None:
        step = trainer.state.step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self._sample(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self._sample(trainer, module)
