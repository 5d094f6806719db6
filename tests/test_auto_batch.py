"""train.auto_batch: the search, the effective-batch rule, the per-card cache, the CPU fallback, and
the real step probe (on the CPU, where nothing runs out of memory)."""

from __future__ import annotations

import json

import pytest

from sdexp.auto_batch import FitCache, choose_batch, largest_fitting, split_batch


class Card:
    """A fake device where batches up to ``capacity`` fit; counts the tries."""

    def __init__(self, capacity: int):
        self.capacity, self.tries = capacity, []

    def fits(self, batch: int) -> bool:
        self.tries.append(batch)
        return batch <= self.capacity


@pytest.mark.parametrize(
    "capacity,limit,expected", [(13, 64, 13), (1, 64, 1), (0, 64, 0), (64, 64, 64), (80, 20, 20)]
)
def test_largest_fitting_finds_the_ceiling(capacity, limit, expected):
    card = Card(capacity)
    assert largest_fitting(card.fits, limit) == expected
    assert len(card.tries) <= 2 * limit.bit_length()  # doubling + bisection, not a scan
    assert all(b <= limit for b in card.tries)


def test_largest_fitting_tries_each_batch_once():
    card = Card(13)
    largest_fitting(card.fits, 64)
    assert card.tries == [1, 2, 4, 8, 16, 12, 14, 13]


@pytest.mark.parametrize(
    "fit,batch,accumulation,expected",
    [
        (20, 1, 1, (20, 1)),  # defaults: the largest that fits
        (6, 8, 1, (4, 2)),  # a set batch of 8 is kept: 4 × 2
        (3, 4, 2, (2, 4)),  # effective 8 again, only 2 divides it under 3
        (16, 2, 4, (8, 1)),  # everything fits: one micro-batch of 8
        (5, 7, 1, (1, 7)),  # a prime effective batch falls back to 1 × 7
    ],
)
def test_split_batch_keeps_a_set_effective_batch(fit, batch, accumulation, expected):
    micro, accum = split_batch(fit, batch, accumulation)
    assert (micro, accum) == expected
    if batch * accumulation > 1:
        assert micro * accum == batch * accumulation and micro <= fit


def test_cpu_warns_and_keeps_the_configured_batch(compose):
    cfg = compose("train.auto_batch=true", "train.batch_size=3", "train.gradient_accumulation=2")
    said = []
    searched = []
    got = choose_batch(cfg, images=10, device_type="cpu", search=searched.append, notify=said.append)
    assert got == (3, 2) and not searched
    assert "needs a CUDA device" in said[0]


def test_search_runs_once_per_card_and_setup(compose, tmp_path):
    """A sweep's later trials (and later sweeps) reuse the first trial's search; another card, or a
    setting that changes memory, searches again."""
    cache = FitCache(tmp_path / "auto_batch.json")
    card = Card(6)
    searches = []

    def search(limit):
        searches.append(limit)
        return largest_fitting(card.fits, limit)

    cfg = compose("train.auto_batch=true")
    kwargs = dict(images=40, device_type="cuda", search=search, cache=cache, notify=lambda *_: None)
    assert choose_batch(cfg, device_name="H100", total_bytes=80 << 30, **kwargs) == (6, 1)
    assert choose_batch(cfg, device_name="H100", total_bytes=80 << 30, **kwargs) == (6, 1)
    assert searches == [40]
    stored = json.loads(cache.path.read_text())
    assert [entry["fit"] for entry in stored.values()] == [6]
    choose_batch(cfg, device_name="RTX 3060", total_bytes=12 << 30, **kwargs)
    checkpointed = compose("train.auto_batch=true", "train.gradient_checkpointing=true")
    choose_batch(checkpointed, device_name="H100", total_bytes=80 << 30, **kwargs)
    assert len(searches) == 3
    # A set effective batch of 8 on the first card: the remembered ceiling (6) answers it.
    eight = compose("train.auto_batch=true", "train.batch_size=8")
    assert choose_batch(eight, device_name="H100", total_bytes=80 << 30, **kwargs) == (4, 2)
    assert len(searches) == 3


def test_a_cached_search_that_stopped_short_is_redone(compose, tmp_path):
    cache = FitCache(tmp_path / "auto_batch.json")
    searches = []

    def search(limit):
        searches.append(limit)
        return limit  # everything up to the limit fits: no ceiling found

    kwargs = dict(device_type="cuda", device_name="H200", total_bytes=140 << 30, search=search, cache=cache)
    cfg = compose("train.auto_batch=true", "train.batch_size=4")
    assert choose_batch(cfg, images=40, notify=lambda *_: None, **kwargs) == (4, 1)
    more = compose("train.auto_batch=true")
    assert choose_batch(more, images=40, notify=lambda *_: None, **kwargs) == (40, 1)
    assert searches == [4, 40]


def test_nothing_fits_is_an_error_a_person_can_act_on(compose, tmp_path):
    from sdexp.errors import UserError

    cfg = compose("train.auto_batch=true")
    with pytest.raises(UserError, match="train=vram12"):
        choose_batch(
            cfg,
            images=4,
            device_type="cuda",
            device_name="tiny card",
            total_bytes=1 << 30,
            search=lambda limit: 0,
            cache=FitCache(tmp_path / "c.json"),
            notify=lambda *_: None,
        )


def test_step_probe_runs_real_steps(compose, toy_images, tmp_path):
    """The probe the child runs: real optimiser steps of the run's module at the asked batch."""
    from sdexp.auto_batch import step_probe

    cfg = compose("model=tiny", f"data.dir={toy_images}", "data.prompt=a sks toy", "logger=none")
    fits = step_probe(cfg, tmp_path / "probe")
    assert fits(1) and fits(3)


def test_train_run_on_cpu_warns_and_trains_the_configured_batch(compose, toy_images, tmp_path):
    import yaml

    from sdexp.run import train_run

    cfg = compose(
        "model=tiny",
        f"data.dir={toy_images}",
        "data.prompt=a sks toy",
        "train.auto_batch=true",
        "train.batch_size=2",
        "train.steps=1",
        "train.device=cpu",
        "data.val_images=1",
        "train.val_timesteps=1",
        "eval=none",
        "logger=none",
    )
    said = []
    result = train_run(cfg, tmp_path / "run", notify=said.append)
    assert result.steps == 1 and any("needs a CUDA device" in str(s) for s in said)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["batch_size"] == 2
