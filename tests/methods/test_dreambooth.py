"""method=dreambooth: prompts checked at the door, class images generated once and reused, batches
that mix instance and class images with loss = instance + weight × prior, common-token warnings."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sdexp.data.concepts import common_token_warning, instance_token
from sdexp.errors import ConfigError
from sdexp.run import train_run

pytestmark = pytest.mark.usefixtures("one_thread")

DB = [
    "model=tiny",
    "method=dreambooth",
    "eval=none",
    "logger=none",
    "method.instance_prompt=a photo of sks toy",
    "method.class_prompt=a photo of toy",
    "method.num_class_images=3",
    "method.class_steps=2",
    "method.class_batch_size=2",
    "train.steps=3",
    "train.batch_size=2",
    "data.val_images=1",
]


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    """Class images (BaseGenerations) go to a cache of this test's own."""
    monkeypatch.setenv("SDEXP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _run_json(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_class_images_are_generated_once_and_reused(tmp_path, toy_images, compose, private_cache):
    cfg = compose(*DB, f"data.dir={toy_images}")
    train_run(cfg, tmp_path / "first", notify=lambda *_: None)
    generated = sorted((private_cache / "generations").rglob("*.png"))
    assert len(generated) == 3
    stamps = [(p, p.stat().st_mtime_ns) for p in generated]
    assert _run_json(tmp_path / "first")["data"]["class_images_generated"] == 3

    train_run(compose(*DB, f"data.dir={toy_images}"), tmp_path / "second", notify=lambda *_: None)
    assert _run_json(tmp_path / "second")["data"]["class_images_generated"] == 0
    assert [(p, p.stat().st_mtime_ns) for p in generated] == stamps  # untouched, none regenerated
    assert len(list((private_cache / "generations").rglob("*.png"))) == 3

    # Asking for more generates only the new ones (seeds class_seed + i extend the same set).
    train_run(
        compose(*DB, f"data.dir={toy_images}", "method.num_class_images=5"),
        tmp_path / "more",
        notify=lambda *_: None,
    )
    assert _run_json(tmp_path / "more")["data"]["class_images_generated"] == 2


def test_own_class_images_come_first(tmp_path, toy_images, compose, private_cache):
    class_dir = tmp_path / "class"
    class_dir.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (20 * i, 100, 200)).save(class_dir / f"c{i}.png")
    before = {p: p.read_bytes() for p in class_dir.iterdir()}
    cfg = compose(*DB, f"data.dir={toy_images}", f"method.class_dir={class_dir}")
    train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    assert _run_json(tmp_path / "run")["data"]["class_images_generated"] == 1  # 3 wanted, 2 given
    assert {p: p.read_bytes() for p in class_dir.iterdir()} == before  # nothing written into it


def test_the_loss_is_instance_plus_weighted_prior(tmp_path, toy_images, compose, private_cache):
    cfg = compose(*DB, f"data.dir={toy_images}", "method.prior_loss_weight=0.25")
    train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "train/loss" in s]
    assert len(steps) == 3
    for s in steps:
        assert s["train/prior_loss"] > 0 and s["train/instance_loss"] > 0
        assert s["train/loss"] == pytest.approx(
            s["train/instance_loss"] + 0.25 * s["train/prior_loss"], rel=1e-5
        )


def test_without_prior_preservation_no_class_images_are_made(tmp_path, toy_images, compose, private_cache):
    cfg = compose(
        *DB, f"data.dir={toy_images}", "method.prior_preservation=false", "method.class_prompt=null"
    )
    train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    assert not (private_cache / "generations").exists()
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any("train/prior_loss" in s for s in steps)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method.instance_prompt=null"], "method.instance_prompt: DreamBooth needs the instance prompt"),
        (["method.class_prompt=null"], "method.class_prompt: prior preservation needs the class prompt"),
        (["method.adapter=half"], "method.adapter: 'half' is not one of lora, full"),
        (["method.prior_loss_weight=-1"], "method.prior_loss_weight: must be >= 0"),
        (["method.num_class_images=0"], "method.num_class_images: must be > 0"),  # a prior needs class images
        (["method.adapter=full", "method.dora=true"], "method.dora: DoRA is a LoRA variant"),
    ],
)
def test_bad_dreambooth_settings_name_the_key(compose, toy_images, overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(*DB, f"data.dir={toy_images}", *overrides)


def test_run_py_exits_2_without_an_instance_prompt(cli, toy_images):
    out = cli(["run.py", "model=tiny", "method=dreambooth", f"data.dir={toy_images}", "logger=none"])
    assert out.returncode == 2
    assert "method.instance_prompt" in out.stderr and "Traceback" not in out.stderr


def test_the_token_is_found_and_a_common_one_is_warned_about():
    assert instance_token("a photo of sks dog", "a photo of dog") == "sks"
    assert instance_token("a photo of my dog", "a photo of dog") == "my"
    assert instance_token("a photo of dog", None) is None
    assert instance_token("whatever", "x", token="ohwx") == "ohwx"
    warning = common_token_warning("dog")
    assert warning and "common word" in warning and "sks" in warning
    assert common_token_warning("sks") is None
    assert common_token_warning(None) is None


def test_a_common_token_is_warned_about_in_a_run(tmp_path, toy_images, compose, private_cache, capsys):
    cfg = compose(
        *DB,
        f"data.dir={toy_images}",
        "method.instance_prompt=a photo of red toy",
        "method.prior_preservation=false",
        "train.steps=1",
    )
    train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    assert "'red' is a common word" in capsys.readouterr().out


def test_the_class_prompt_is_the_default_forgetting_probe(compose, toy_images):
    cfg = compose(*DB, f"data.dir={toy_images}", "eval=dreambooth")
    assert cfg.eval.prior_prompts == ["a photo of toy"]
    assert "eval/forgetting/clip_t_change" in {c.metric for c in cfg.eval.objectives[0].constraints}
    given = compose(*DB, f"data.dir={toy_images}", "eval.prior_prompts=[a red circle]")
    assert given.eval.prior_prompts == ["a red circle"]
