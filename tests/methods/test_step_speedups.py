"""Faster steps that must not change what is trained: deferred log reads, AdamW kernels,
channels_last, regional compilation, SDPA attention (issue 17, item 1)."""

from __future__ import annotations

import sys

import pytest
import torch

from sdexp.config import TrainConfig
from sdexp.methods.base import StepOutput, TrainingModule
from sdexp.optim import build_optimizer_and_scheduler
from sdexp.trainer import Trainer


class Quadratic(TrainingModule):
    """A one-parameter module whose step losses are known: (w - target)², a NaN from ``nan_at``."""

    def __init__(self, nan_at: int | None = None, steps: int = 8):
        self.w = torch.nn.Linear(1, 1, bias=False)
        self.nan_at, self.steps = nan_at, steps

    def setup(self, trainer) -> None:
        self.trainer = trainer

    def trainable_modules(self):
        return [self.w]

    def configure_optimizers(self):
        return build_optimizer_and_scheduler(
            [{"params": list(self.w.parameters())}], TrainConfig(lr=0.1, steps=self.steps)
        )

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(64, 1), batch_size=1)

    def training_step(self, batch, step):
        loss = ((self.w(batch) - 3.0) ** 2).mean()
        if self.nan_at is not None and step + 1 == self.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss=loss, logs={"train/w": self.w.weight.detach().sum()})

    def val_batches(self):
        return []

    def on_save_checkpoint(self, ckpt_dir, step):
        return {}


class Recorder:
    def __init__(self):
        self.logs = []

    def __getattr__(self, hook):
        if hook == "on_train_step_end":
            return lambda trainer, module, logs: self.logs.append((trainer.state.step, dict(logs)))
        return lambda *args: None


def _fit(tmp_path, log_every, steps=8, nan_at=None, accumulation=1):
    torch.manual_seed(0)
    module, rec = Quadratic(nan_at, steps), Recorder()
    trainer = Trainer(
        run_dir=tmp_path / f"run-{log_every}-{nan_at}",
        max_steps=steps,
        device="cpu",
        log_every=log_every,
        gradient_accumulation=accumulation,
        callbacks=[rec],
    )
    return trainer, module, rec


def test_logged_values_are_read_every_log_every_steps_and_equal_eager_ones(tmp_path):
    """Reading every 3 steps logs, at steps 3, 6 and 8, exactly the floats read every step."""
    trainer, module, rec = _fit(tmp_path, log_every=1)
    trainer.fit(module)
    every = {step: logs for step, logs in rec.logs}
    trainer, module, rec = _fit(tmp_path, log_every=3)
    state = trainer.fit(module)
    with_loss = [step for step, logs in rec.logs if "train/loss" in logs]
    assert with_loss == [3, 6, 8]
    for step in with_loss:
        logs = dict(rec.logs)[step]
        assert all(isinstance(v, float | int) for v in logs.values())
        assert logs["train/loss"] == every[step]["train/loss"] and logs["train/w"] == every[step]["train/w"]
        assert logs["train/grad_norm"] == every[step]["train/grad_norm"]
    assert "train/lr/default" in dict(rec.logs)[2] and "train/loss" not in dict(rec.logs)[2]
    assert state.last_logs["train/loss"] == every[8]["train/loss"]


def test_accumulated_loss_is_the_float_mean_of_its_micro_batches(tmp_path):
    trainer, module, rec = _fit(tmp_path, log_every=1, steps=2, accumulation=2)
    micro = []
    step = module.training_step
    module.training_step = lambda b, s: (out := step(b, s), micro.append(float(out.loss.detach())))[0]
    trainer.fit(module)
    assert [logs["train/loss"] for _, logs in rec.logs] == [
        (micro[0] + micro[1]) / 2,
        (micro[2] + micro[3]) / 2,
    ]


def test_a_nan_between_reads_stops_the_run_naming_its_step(tmp_path):
    trainer, module, rec = _fit(tmp_path, log_every=4, nan_at=3)
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        trainer.fit(module)
    assert trainer.state.step == 2  # the last step that trained on a finite loss
    assert all("train/loss" not in logs for _, logs in rec.logs)  # the read at step 4 raised


def test_the_loop_reads_the_device_once_per_log_step(tmp_path, monkeypatch):
    """sdexp's own code calls no float()/item()/tolist() on a tensor in the loop, except the read
    at each log step (torch's CPU optimizers read their step counters; those stay on the host)."""
    reads = []

    def counting(name, real):
        def read(self, *args):
            if "/sdexp/" in sys._getframe(1).f_code.co_filename:
                reads.append(name)
            return real(self, *args)

        return read

    for name in ("__float__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    trainer, module, rec = _fit(tmp_path, log_every=4)
    marks = []
    trainer.callbacks.append(type("Mark", (), {"__getattr__": lambda self, hook: lambda *a: None})())
    trainer.callbacks[-1].on_train_step_end = lambda trainer, module, logs: marks.append(len(reads))
    trainer.fit(module)
    per_step = [b - a for a, b in zip([0, *marks], marks)]
    assert per_step == [0, 0, 0, 1, 0, 0, 0, 1], (per_step, reads)


def test_adamw_defaults_to_foreach_on_the_cpu_and_matches_the_loop_to_rounding():
    def train(impl):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
        opt, _ = build_optimizer_and_scheduler([{"params": params}], TrainConfig(steps=5, adamw_impl=impl))
        for _ in range(5):
            sum((p**2).sum() for p in params).backward()
            opt.step()
            opt.zero_grad()
        return opt, params

    opt, foreach = train("auto")
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
    _, loop = train("for_loop")
    for a, b in zip(foreach, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_unet_attends_with_sdpa(compose, toy_images):
    """diffusers' AttnProcessor2_0 (scaled_dot_product_attention) in every attention, LoRA on."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from sdexp.methods import build_module

    module = build_module(compose("model=tiny", "logger=none", f"data.dir={toy_images}", "data.prompt=x"))
    trainer = Trainer(run_dir=toy_images.parent / "r", max_steps=1, device="cpu")
    module.setup(trainer)
    processors = module.base.unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def _losses(compose, toy_images, tmp_path, name, *extra):
    from sdexp.run import train_run
    from sdexp.tracking.run_folder import read_metrics

    cfg = compose(
        "model=tiny", "logger=none", "eval=none", "data.val_images=1", f"data.dir={toy_images}",
        "data.prompt=x", "method.targets=all", "train.steps=3", "train.lr=1e-3", *extra,
    )  # fmt: skip
    run = train_run(cfg, tmp_path / name)
    return [row["train/loss"] for row in read_metrics(run.run_dir) if "train/loss" in row]


def test_channels_last_trains_as_the_default_format(compose, toy_images, tmp_path):
    eager = _losses(compose, toy_images, tmp_path, "eager")
    channels_last = _losses(compose, toy_images, tmp_path, "cl", "train.channels_last=true")
    assert channels_last == pytest.approx(eager, rel=1e-4)


@pytest.mark.slow
def test_compiled_step_gives_the_eager_loss(compose, toy_images, tmp_path):
    """LoRA on conv and attention layers: the compiled transformer blocks train as eager ones."""
    eager = _losses(compose, toy_images, tmp_path, "eager")
    compiled = _losses(compose, toy_images, tmp_path, "compiled", "train.compile=true")
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_compile_is_refused_without_a_compiler(monkeypatch):
    from sdexp.errors import ConfigError
    from sdexp.methods import speedups

    monkeypatch.setattr(speedups.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="train.compile: needs a C\\+\\+ compiler"):
        speedups.check_compile(True, "cpu")
    speedups.check_compile(False, "cpu")  # off: nothing to check
