"""Several concepts: data.concepts and kohya's `N_prompt/` folders become one training set, sampled
by repeats, weighted per concept, with images seen per concept logged."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from toy_images import write_demo_images

from sdexp.data.concepts import kohya_subfolders, resolve_concepts
from sdexp.errors import ConfigError
from sdexp.run import preflight, train_run

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["model=tiny", "eval=none", "logger=none", "data.val_images=1", "train.batch_size=2"]


@pytest.fixture()
def kohya_root(tmp_path):
    root = tmp_path / "train"
    write_demo_images(root / "10_sks toy", n=2, seed=1)
    write_demo_images(root / "2_zwx toy", n=4, seed=2)
    return root


def test_kohya_folders_are_concepts_with_repeats_and_prompts(kohya_root, compose):
    found = kohya_subfolders(kohya_root)
    assert [(r, p) for r, p, _ in found] == [(10, "sks toy"), (2, "zwx toy")]
    concepts = resolve_concepts(compose(*BASE, f"data.dir={kohya_root}"))
    assert [(c.name, c.repeats, c.prompt) for c in concepts] == [
        ("10_sks_toy", 10, "sks toy"),
        ("2_zwx_toy", 2, "zwx toy"),
    ]
    # a folder with images of its own, or an unconventional subfolder, is an ordinary folder
    write_demo_images(kohya_root / "extra", n=1)
    assert kohya_subfolders(kohya_root) == []


def test_sampling_follows_repeats(kohya_root, compose):
    module = preflight(compose(*BASE, f"data.dir={kohya_root}"), require_judge=False)
    ds = module.train_dataset
    assert len(ds) == 6 and ds.repeats() == [10, 10, 2, 2, 2, 2]
    from sdexp.data.buckets import BucketBatchSampler

    sampler = BucketBatchSampler(ds.buckets_per_item, 2, seed=0, repeats=ds.repeats())
    seen = Counter(ds.concept_of[i] for batch in sampler for i in batch)
    assert seen == {0: 20, 1: 8}  # 2 images × 10 repeats, 4 images × 2 repeats per epoch


def test_explicit_concepts_train_with_their_weights_and_counts_are_logged(tmp_path, compose):
    a = write_demo_images(tmp_path / "a", n=2, seed=1)
    b = write_demo_images(tmp_path / "b", n=2, seed=2)
    cfg = compose(
        *BASE,
        f"+data.concepts=[{{dir: '{a}', prompt: 'a sks toy', repeats: 3}}, {{dir: '{b}', prompt: 'a zwx toy', loss_weight: 0.5}}]",
        "train.steps=4",
    )
    assert [(c.repeats, c.loss_weight) for c in resolve_concepts(cfg)] == [(3, 1.0), (1, 0.5)]
    train_run(cfg, tmp_path / "run", notify=lambda *_: None)
    logs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in logs if "train/images/a" in r][-1]
    assert last["train/images/a"] + last["train/images/b"] == 8  # 4 steps × batch 2
    assert last["train/images/a"] > last["train/images/b"]  # 3 repeats against 1


def test_concepts_and_dir_together_are_refused(tmp_path, compose):
    a = write_demo_images(tmp_path / "a", n=1)
    with pytest.raises(ConfigError, match="data.concepts: give either data.dir"):
        compose(*BASE, f"data.dir={a}", f"+data.concepts=[{{dir: '{a}'}}]")


def test_prior_preservation_needs_each_concepts_class_prompt(tmp_path, compose):
    a = write_demo_images(tmp_path / "a", n=1)
    cfg = compose(*BASE, "method=dreambooth", f"+data.concepts=[{{dir: '{a}', prompt: 'a sks toy'}}]")
    with pytest.raises(ConfigError, match=r"data.concepts\[0\].class_prompt"):
        resolve_concepts(cfg)


def test_a_symlink_loop_does_not_break_concept_detection(kohya_root):
    (kohya_root / "loop").symlink_to(kohya_root / "loop")  # points at itself
    (kohya_root / "loop.png").symlink_to(kohya_root / "loop.png")
    # the loops are neither images nor concept folders; the kohya layout still stands
    assert [(r, p) for r, p, _ in kohya_subfolders(kohya_root)] == [(10, "sks toy"), (2, "zwx toy")]
