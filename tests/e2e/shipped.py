"""What ships, found by globbing `conf/` and `sweeps/`, and how each is shrunk to run in the suite.

A file added to either folder is picked up here, so it cannot ship untested. Shrinking touches only
steps, images and trials (and the pruner's resources, which count steps); the precision, method,
eval preset and every other override of a shipped file stay as the user gets them.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
SWEEPS = REPO / "sweeps"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def shipped_sweeps() -> list[Path]:
    return sorted(SWEEPS.glob("*.yaml"))


# A user brings a folder of captioned photos; these are what the presets need from the command line.
DATA_PROMPT = "a photo of sks dog"
METHOD_INPUTS = {
    "dreambooth": ["method.instance_prompt=a photo of sks dog", "method.class_prompt=a photo of dog"],
    # Captioned photos without the new token: the template puts it in (data.token = method.token).
    "textual_inversion": ["data.captions.template='{token} {caption}'"],
}
# Fewer images and steps, never another kind of run.
SMALL_RUN = [
    "train.steps=2",
    "train.val_timesteps=2",
    "data.val_images=1",
    "eval.images=2",
    "eval.prior_images=2",
    "eval.steps=2",
    "method.num_class_images=2",
    "method.class_steps=2",
    "logger=none",
]
STEP_SCALE = (
    400  # a shipped sweep's 800 steps become 2, scored at every step: cadence and pruning keep their ratio
)
# A sweep's trials score one image a prompt set with one sampler step: bf16 runs ~15x slower than fp32
# on a CPU (no native bf16 there), and the shipped sweeps are bf16. The method × eval matrix scores more.
SWEEP_EVAL = ["eval.images=1", "eval.prior_images=1", "eval.steps=1"]


def small_run(method: str) -> list[str]:
    """SMALL_RUN without the keys a method lacks (class images are DreamBooth's)."""
    return [o for o in SMALL_RUN if method == "dreambooth" or not o.startswith("method.")]


def _steps(value: int) -> int:
    return max(1, math.ceil(value / STEP_SCALE))


def _rewrite_override(override: str) -> str:
    key, _, value = override.partition("=")
    if key in ("train.steps", "train.checkpoint_every", "method.num_class_images"):
        return f"{key}={_steps(int(value)) if key != 'method.num_class_images' else 2}"
    if key in ("eval.images", "eval.prior_images"):
        return f"{key}=1"
    return override


def shrink_sweep(raw: dict, trials: int = 2) -> dict:
    """A shipped sweep definition with steps ÷400, one image a scoring and ``trials`` trials (a grid
    keeps ``trials`` points: the first value of every parameter but one)."""
    out = dict(raw)
    out["overrides"] = [_rewrite_override(o) for o in raw.get("overrides", [])]
    space = {}
    for key, spec in raw["space"].items():
        if isinstance(spec, dict) and key == "train.steps":
            spec = {**spec, **{k: _steps(spec[k]) for k in ("low", "high", "step") if k in spec}}
        space[key] = spec
    sampler = raw.get("sampler")
    if sampler == "grid" or (isinstance(sampler, dict) and sampler.get("name") == "grid"):
        keys = list(space)
        space = {k: (v[:trials] if i == 0 else v[:1]) for i, (k, v) in enumerate(space.items())}
        assert keys == list(space)
        out.pop("n_trials", None)
    else:
        out["n_trials"] = trials
        if isinstance(sampler, dict) and "n_startup_trials" in sampler:
            out["sampler"] = {**sampler, "n_startup_trials": 1}
    out["space"] = space
    pruner = raw.get("pruner")
    if isinstance(pruner, dict):
        out["pruner"] = {
            k: (_steps(v) if k in ("min_resource", "max_resource", "n_warmup_steps") else v)
            for k, v in pruner.items()
        }
        if "n_startup_trials" in out["pruner"]:
            out["pruner"]["n_startup_trials"] = 1
    out.pop("timeout_minutes", None)
    return out


# Values a CPU cannot run, and what the matrix runs there instead (the rest of the preset as shipped);
# tests/test_memory_presets.py checks the shipped values themselves.
CPU_STAND_INS = {"train.optimizer": {"adamw8bit": "adamw"}}  # bitsandbytes' 8-bit AdamW is CUDA-only


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def cpu_stand_ins(group: str, preset: str) -> list[str]:
    """Overrides that swap a preset's CUDA-only values for their CPU stand-ins ([] for most)."""
    path = CONF / group / f"{preset}.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("defaults", None)
    tree = raw if path.read_text().startswith("# @package _global_") else {group: raw}
    return [
        f"{key}={CPU_STAND_INS[key][value]}"
        for key, value in _flat(tree).items()
        if key in CPU_STAND_INS and value in CPU_STAND_INS[key]
    ]


# The tiny model that stands in for each family's real one (tiny_shapes learns and has a CLIP judge).
STAND_INS = {"sd1": "tiny_shapes", "sd2": "tiny_sd2", "sdxl": "tiny_sdxl"}
JUDGE = "eval.clip=tiny_shapes"  # the tiny_shapes CLIP judges any tiny model's images


def model_family(preset: str) -> str | None:
    """The family of a model preset that needs a path (sd15, sd2, sdxl), None for a built-in one."""
    raw = yaml.safe_load((CONF / "model" / f"{preset}.yaml").read_text())
    return raw["family"] if raw.get("path") == "???" else None


def sweep_model(raw: dict) -> str:
    """The model preset a shipped sweep runs on: its own `model=` override, else SD 1.5 (what the
    README's commands pass on the command line)."""
    return next((o.split("=", 1)[1] for o in raw.get("overrides", []) if o.startswith("model=")), "sd15")
