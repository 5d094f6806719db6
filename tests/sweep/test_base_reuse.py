"""A sweep worker lends one loaded base to trial after trial (sdexp/models/base_pool.py): each trial
must start from the base exactly as loaded, end exactly as a run on a freshly loaded base, and a
base that comes back changed (or a method that trains it) must never be lent again."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sdexp.models.base_pool import POOL, BaseState, load_run_base, reusing_bases, structure
from sdexp.run import train_run

TINY = ["model=tiny", "eval=none", "logger=none", "data.prompt=a photo of sks toy", "train.steps=2",
        "train.checkpoint_every=2", "data.val_images=1"]  # fmt: skip
LORA = ["method=lora", "method.targets=all", "method.rank=2", "method.train_text_encoder=true"]
TI = [
    "method=textual_inversion",
    "method.init_word=toy",
    "method.with_lora=true",
    "data.prompt='a photo of <sks> toy'",
]


def _cfg(compose, images, *overrides):
    return compose(*TINY, f"data.dir={images}", *overrides)


def _run(cfg, folder):
    return train_run(cfg, folder, notify=lambda *_: None)


def _weights(base) -> dict[str, torch.Tensor]:
    return {
        f"{c}.{k}": v.detach().clone() for c, m in enumerate(base.modules) for k, v in m.state_dict().items()
    }


def _assert_pristine(base, fresh) -> None:
    """Bit for bit the freshly loaded base: every tensor, every module class, the tokenizers."""
    assert structure(base) == structure(fresh)
    ours, theirs = _weights(base), _weights(fresh)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(BaseState.of(base).checksums, BaseState.of(fresh).checksums)


def _lora(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "final" / "lora.safetensors")


def test_a_trial_after_other_trials_starts_from_the_base_and_ends_as_a_fresh_process_run(
    compose, toy_images, tmp_path, cli
):
    later = [*LORA, "train.seed=7", "train.lr=3e-3"]
    second = _cfg(compose, toy_images, *later)
    with reusing_bases():
        _run(_cfg(compose, toy_images, *TI), tmp_path / "ti")  # token, embedding wrappers, LoRA
        assert POOL.release() is None and not POOL.last["reused"]
        first = _cfg(compose, toy_images, *LORA, "train.seed=1", "train.gradient_checkpointing=true")
        _run(first, tmp_path / "a")  # LoRA on the UNet and the text encoder, gradient checkpointing
        assert POOL.last["reused"] and POOL.release() is None
        pooled = POOL.entry.base
        fresh = load_run_base(second, pooled.unet.dtype)
        _assert_pristine(pooled, fresh)
        after = _run(second, tmp_path / "b")
        assert POOL.last["reused"] and POOL.entry.base is pooled
    # The same trial alone in a fresh process: the same LoRA, bit for bit.
    alone = tmp_path / "alone"
    proc = cli(["run.py", *TINY, f"data.dir={toy_images}", *later, f"hydra.run.dir={alone}"])
    assert proc.returncode == 0, proc.stderr
    ours = _lora(after.run_dir)
    theirs = _lora(alone)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_base_that_comes_back_changed_is_dropped_and_reloaded(compose, toy_images, tmp_path):
    cfg = _cfg(compose, toy_images, *LORA)
    with reusing_bases():
        _run(cfg, tmp_path / "a")
        tampered = POOL.entry.base
        with torch.no_grad():
            next(tampered.unet.parameters()).view(-1)[0] += 1e-3  # one weight of the UNet
        why = POOL.release()
        assert why is not None and "weights changed" in why and POOL.entry is None
        _run(cfg, tmp_path / "b")
        assert not POOL.last["reused"] and POOL.entry.base is not tampered
        POOL.release()
        _assert_pristine(POOL.entry.base, load_run_base(cfg, tampered.unet.dtype))
        # Anything left on the modules that restoring does not undo drops the base too.
        POOL.entry.lent = True
        POOL.entry.base.vae.forward_hook = POOL.entry.base.vae.register_forward_hook(lambda *_: None)
        assert "structure changed" in POOL.release()


@pytest.mark.parametrize("method", [["method=finetune"], ["method=dreambooth", "method.adapter=full"]])
def test_a_method_training_the_base_weights_never_gives_it_back(compose, toy_images, tmp_path, method):
    lora = _cfg(compose, toy_images, *LORA)
    extra = ["method.prior_preservation=false"] if "dreambooth" in method[0] else []
    with reusing_bases():
        _run(lora, tmp_path / "lora")
        POOL.release()
        pooled = POOL.entry.base
        _run(_cfg(compose, toy_images, *method, *extra), tmp_path / "full")
        assert POOL.last["reused"] and POOL.entry is None  # it took the pooled base, for good
        assert POOL.release() is None
        _run(lora, tmp_path / "lora-again")
        assert not POOL.last["reused"] and POOL.entry.base is not pooled


@pytest.mark.parametrize("reuse", [True, False])
def test_a_sweep_lends_its_base_to_the_next_trial_unless_told_not_to(tmp_path, toy_images, reuse):
    from sdexp.sweep.definition import parse_definition
    from sdexp.sweep.layout import load_study
    from sdexp.sweep.runner import SweepRunner

    raw = {
        "name": "reuse",
        "overrides": [*TINY, *LORA[:3]],
        "space": {"train.lr": [1e-3, 2e-3]},
        "sampler": "grid",
    }
    runner = SweepRunner(
        parse_definition(raw),
        tmp_path / "sweep",
        extra_overrides=[f"data.dir={toy_images}"],
        notify=lambda *_: None,
        reuse_base=reuse,
    )
    runner.prepare()
    assert runner.run().completed == 2
    trials = sorted(load_study(runner.sweep_dir)[1].get_trials(), key=lambda t: t.number)
    assert [t.user_attrs["base_reused"] for t in trials] == [False, reuse]
    assert all("load_seconds" in t.user_attrs["seconds"] for t in trials)
    assert ("release_seconds" in trials[1].user_attrs["seconds"]) == reuse
    assert POOL.entry is None and not POOL.enabled  # freed when the sweep ends
