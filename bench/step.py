"""sdexp's training step against the diffusers-example step, same model, same run.

    python bench/step.py                                   # CPU: tiny model, batch 1,4
    python bench/step.py --model tiny_sdxl --batch 1,2     # CPU: the SDXL path (tiny_sd2: SD 2.x, v-prediction)
    python bench/step.py --model sd15-arch --batch 1,4,8   # GPU default: SD 1.5 arch, 512 px, bf16
    python bench/step.py --model sdxl-arch --batch 1,4 [--gradient-checkpointing]   # GPU: SDXL arch, 1024 px
    python bench/step.py --method finetune --batch 4 [--optimizer adamw8bit] [--gradient-checkpointing] [--ema]
                                                           # full fine-tune (train_text_to_image.py's step)
    python bench/step.py --model sdxl-arch --build-only    # only build the random-weight folder (timed)
    python bench/step.py --merge a.json b.json --json all.json   # one table and one JSON of several runs

Models: ``tiny``, ``tiny_sd2``, ``tiny_sdxl`` (sdexp's built-in random tiny models, 64 px, CPU) and
``sd15-arch``, ``sd21-arch``, ``sdxl-arch`` (the released architectures from sdexp's shipped
configs with seeded random weights, at their native 512 / 768 / 1024 px: GPU). An ``-arch``
folder is built once into the cache (``$SDEXP_CACHE/models``, bf16 safetensors, real CLIP
tokenizer files) by ``build_random_model``.

Each (implementation, batch) runs in its own subprocess so that its peak memory is its own.
Both take the same fixed synthetic pixel batch and caption, skip ``--warmup`` steps, and report
the median of ``--steps`` timed steps. The parent prints ratios sdexp/reference (machines are
noisy; only the ratio within one run means much) and writes everything to a JSON file. It
checks that both sides train the same LoRA modules and parameter count (exit status 1 if not).

* reference, SD 1.x / 2.x: the step of diffusers' ``train_text_to_image_lora.py``, written out
  below: frozen VAE encode + frozen text encoder (caption tokenized once, as the example's data
  loader does), noise / timesteps / add_noise, UNet forward under autocast (bf16/fp16 if asked;
  none on CPU by default), SDPA attention, peft LoRA rank 4 on to_q/to_k/to_v/to_out.0, MSE
  against epsilon (or the velocity for v-prediction models), backward (GradScaler under fp16, as
  accelerate does), clip_grad_norm_(1.0), AdamW step, zero_grad, and ``loss.item()`` (the
  example logs the loss every step too).
* reference, SDXL: the step of ``train_text_to_image_lora_sdxl.py``: the VAE in fp32 (the example
  without ``--pretrained_vae_model_name_or_path``), latents cast to the weight dtype; both text
  encoders every step (penultimate hidden states concatenated, pooled output of the second:
  ``encode_prompt`` below); ``add_time_ids`` per item from (original size, crop top-left, target
  size); the UNet called with ``added_cond_kwargs``; the rest as above. The reference loads the
  folder with diffusers/transformers directly and encodes with its own code, never sdexp's.
* ``--method finetune``: the reference is the step of diffusers' ``train_text_to_image.py`` (every
  UNet weight in fp32 under autocast, AdamW or bitsandbytes AdamW8bit over the UNet, EMA step
  with ``--ema``); sdexp runs ``method=finetune`` with the same settings.
* ``--gradient-checkpointing``: both sides checkpoint the UNet (LoRA and finetune).
* sdexp: ``LoraModule`` with method.rank=4 method.targets=attn, driven by the real
  ``Trainer.fit`` over an in-memory dataset of the same pixels (and, for SDXL, the same
  geometry: original size = target size, crop (0, 0)); a callback times the interval between
  consecutive ``on_train_step_end`` calls (validation is off; the final checkpoint is written
  after the last step). For SDXL sdexp gets ``model.vae_dtype=fp32`` so that both sides encode
  with the same VAE precision (sdexp's own default under bf16 is a bf16 VAE).

Memory: on CUDA ``max_memory_allocated`` above what setup left allocated; on CPU the peak RSS
above the RSS after setup (weights paged in first) and, exactly, the peak bytes of tensors
allocated within one extra, untimed step run under torch.profiler.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for _path in (REPO, BENCH):  # sdexp, and bench/meter.py (also when this file is imported by a test)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from meter import Meter  # noqa: E402

CAPTION = "a photo of sks dog on a red table"
LORA_RANK = 4
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the examples' target_modules
RESULT_TAG = "@@BENCH@@ "
ARCH_VERSION = 2  # v2: any family, from the shipped configs, real CLIP tokenizer files, bf16 weights
ARCH_DTYPE = "bfloat16"  # stored weights of the -arch folders (half the bytes to write and load)
COMPONENT_SEEDS = {"unet": 0, "vae": 1, "text_encoder": 2, "text_encoder_2": 3}

# Reference figures from DESIGN.md ("Benchmarks"; H100, bf16, LoRA rank 4, eager):
# (model, batch, gradient checkpointing) -> (img/s, absolute peak GiB or None).
DESIGN_REFERENCE = {
    ("sd15-arch", 8, False): (53.0, None),
    ("sd15-arch", 32, False): (95.0, None),
    ("sdxl-arch", 1, False): (2.0, 12.3),
    ("sdxl-arch", 4, False): (7.9, 34.0),
    ("sdxl-arch", 1, True): (1.1, 5.7),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # --model
    sdexp_model: str  # sdexp's conf/model group
    family: str  # sd1 | sd2 | sdxl (what the sdexp side is told; the reference reads the folder)
    arch: str | None = None  # shipped config (sdexp/models/configs) of a random-weight real architecture


MODELS = {
    s.name: s
    for s in (
        ModelSpec("tiny", "tiny", "sd1"),
        ModelSpec("tiny_sd2", "tiny_sd2", "sd2"),
        ModelSpec("tiny_sdxl", "tiny_sdxl", "sdxl"),
        ModelSpec("sd15-arch", "sd15", "sd1", "sd15"),
        ModelSpec("sd21-arch", "sd2", "sd2", "sd21"),
        ModelSpec("sdxl-arch", "sdxl", "sdxl", "sdxl"),
    )
}


# ----- models -------------------------------------------------------------------------------
def arch_dir(spec: ModelSpec) -> Path:
    """Where the random-weight folder of an -arch model lives (named after its config digest)."""
    from sdexp.models.shipped_configs import config_dir
    from sdexp.models.tiny import cache_root

    return cache_root() / "models" / f"{config_dir(spec.arch).name}-random-{ARCH_DTYPE}-v{ARCH_VERSION}"


def model_folder(spec: ModelSpec) -> Path:
    """The diffusers folder both sides load (a tiny model is built into the cache on first use)."""
    if spec.arch is None:
        from sdexp.models.tiny import ensure_tiny

        return ensure_tiny(spec.name)
    return arch_dir(spec)


def build_random_model(config_folder: Path, out: Path, device: str, dtype: str = ARCH_DTYPE) -> Path:
    """A diffusers pipeline folder with the architecture of ``config_folder`` and seeded random
    weights (stored in ``dtype``), written once, atomically. Every model component of its
    model_index.json is built from its config on ``device`` (random init is much faster on a GPU);
    the others (scheduler, tokenizers) are copied."""
    import importlib
    import shutil

    import torch

    if (out / "model_index.json").exists():
        return out
    index = json.loads((config_folder / "model_index.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for component, entry in sorted(index.items()):
            if not (isinstance(entry, list) and entry[0]):
                continue
            if component not in COMPONENT_SEEDS:
                shutil.copytree(config_folder / component, staging / component)
                continue
            library, class_name = entry
            cls = getattr(importlib.import_module(library), class_name)
            torch.manual_seed(COMPONENT_SEEDS[component])
            with torch.device(device):
                if library == "diffusers":
                    module = cls.from_config(cls.load_config(config_folder, subfolder=component))
                else:
                    module = cls(cls.config_class.from_pretrained(config_folder / component))
            module.to("cpu", getattr(torch, dtype)).save_pretrained(staging / component)
            del module
            if device == "cuda":
                torch.cuda.empty_cache()
        shutil.copy(config_folder / "model_index.json", staging / "model_index.json")
        try:
            os.replace(staging, out)
        except OSError:  # another process finished first
            if not (out / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def build_model(spec: ModelSpec, device: str) -> Path:
    if spec.arch is None:
        return model_folder(spec)
    from sdexp.models.shipped_configs import config_dir

    return build_random_model(config_dir(spec.arch), arch_dir(spec), device)


# ----- the reference step (diffusers examples), loaded and encoded without sdexp ---------------
@dataclass
class ReferenceModel:
    unet: object
    vae: object
    text_encoders: list
    tokenizers: list
    noise_scheduler: object

    @property
    def sdxl(self) -> bool:
        return len(self.text_encoders) == 2


def load_reference(folder: Path, weight_dtype, vae_dtype=None) -> ReferenceModel:
    """The components as the examples load them: text encoder classes from the folder's own
    configs, CLIP tokenizers, DDPMScheduler from the scheduler config; all on the CPU."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    index = json.loads((Path(folder) / "model_index.json").read_text())
    names = [n for n in ("text_encoder", "text_encoder_2") if isinstance(index.get(n), list) and index[n][0]]
    text_encoders = [
        getattr(transformers, index[n][1]).from_pretrained(folder / n, dtype=weight_dtype) for n in names
    ]
    tokenizers = [
        CLIPTokenizer.from_pretrained(folder / n.replace("text_encoder", "tokenizer")) for n in names
    ]
    # The SDXL example keeps its VAE in fp32 (NaNs otherwise); train_text_to_image_lora.py casts it.
    vae_dtype = vae_dtype or (weight_dtype if len(names) == 1 else torch.float32)
    ref = ReferenceModel(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=weight_dtype),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype),
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
    )
    for m in (ref.unet, ref.vae, *ref.text_encoders):
        m.requires_grad_(False)
    return ref


def native_resolution(ref: ReferenceModel) -> int:
    return ref.unet.config.sample_size * 2 ** (len(ref.vae.config.block_out_channels) - 1)


def tokenize_prompt(tokenizer, prompt):
    """The examples' ``tokenize_prompt``."""
    return tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompt(text_encoders, text_input_ids_list):
    """``encode_prompt`` of train_text_to_image_lora_sdxl.py (from StableDiffusionXLPipeline's):
    each encoder's penultimate hidden states, concatenated; the pooled output of the last one."""
    import torch

    prompt_embeds_list = []
    for text_encoder, text_input_ids in zip(text_encoders, text_input_ids_list):
        prompt_embeds = text_encoder(
            text_input_ids.to(text_encoder.device), output_hidden_states=True, return_dict=False
        )
        pooled_prompt_embeds = prompt_embeds[0]  # only the final encoder's is kept
        prompt_embeds = prompt_embeds[-1][-2]
        bs_embed, seq_len, _ = prompt_embeds.shape
        prompt_embeds_list.append(prompt_embeds.view(bs_embed, seq_len, -1))
    prompt_embeds = torch.concat(prompt_embeds_list, dim=-1)
    pooled_prompt_embeds = pooled_prompt_embeds.view(bs_embed, -1)
    return prompt_embeds, pooled_prompt_embeds


def compute_time_ids(original_size, crops_coords_top_left, target_size, device, dtype):
    """The example's ``compute_time_ids`` (adapted there from StableDiffusionXLPipeline._get_add_time_ids)."""
    import torch

    add_time_ids = list(tuple(original_size) + tuple(crops_coords_top_left) + tuple(target_size))
    return torch.tensor([add_time_ids]).to(device, dtype=dtype)


def reference_geometry(batch: int, resolution: int) -> tuple[list, list, tuple]:
    """What the SDXL example's data loader yields for a square image already at the resolution:
    original sizes (h, w), crop top-lefts (0, 0), and the target size (resolution, resolution)."""
    return [(resolution, resolution)] * batch, [(0, 0)] * batch, (resolution, resolution)


def run_reference(args, device) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    spec = MODELS[args.model]
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision, torch.float32)
    ref = load_reference(model_folder(spec), weight_dtype)
    unet, vae, text_encoders, noise_scheduler = ref.unet, ref.vae, ref.text_encoders, ref.noise_scheduler
    resolution = args.resolution or native_resolution(ref)
    torch.manual_seed(0)
    ema = None
    if args.method == "finetune":  # train_text_to_image.py: the whole UNet, in fp32 master weights
        unet.to(torch.float32)
        unet.requires_grad_(True)
    else:
        unet.add_adapter(
            LoraConfig(
                r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian", target_modules=LORA_TARGETS
            )
        )
        # The examples cast the LoRA weights to fp32 under fp16 only (under bf16 peft leaves them in
        # bf16); sdexp trains them in fp32 under both, so the reference does too: same trainable dtype.
        if weight_dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    for m in (unet, vae, *text_encoders):
        m.to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        unet.to(memory_format=memory_format)
        vae.to(memory_format=memory_format)
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    if args.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if args.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=0.9999)
    forward = unet
    if args.compile:
        forward = torch.compile(unet)

    pixels = fixed_pixels(args.batch, resolution).to(device, dtype=vae.dtype, memory_format=memory_format)
    input_ids = [tokenize_prompt(tok, [CAPTION] * args.batch).to(device) for tok in ref.tokenizers]
    original_sizes, crop_top_lefts, target_size = reference_geometry(args.batch, resolution)
    autocast = torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
    scaler = torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16)  # as accelerate does
    prediction_type = noise_scheduler.config.prediction_type
    losses = []

    def conditioning() -> tuple:
        """(encoder_hidden_states, extra UNet kwargs) of this step."""
        if not ref.sdxl:  # train_text_to_image_lora.py
            return text_encoders[0](input_ids[0], return_dict=False)[0], {}
        add_time_ids = torch.cat(
            [
                compute_time_ids(s, c, target_size, device, weight_dtype)
                for s, c in zip(original_sizes, crop_top_lefts)
            ]
        )
        prompt_embeds, pooled_prompt_embeds = encode_prompt(text_encoders, input_ids)
        return prompt_embeds, {
            "added_cond_kwargs": {"time_ids": add_time_ids, "text_embeds": pooled_prompt_embeds}
        }

    def step():
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            if ref.sdxl:
                latents = latents.to(weight_dtype)  # the SDXL example's fp32 VAE output, cast
            encoder_hidden_states, extra = conditioning()
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps).contiguous(
            memory_format=memory_format
        )
        target = (
            noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, timesteps)
        )
        with autocast:
            model_pred = forward(noisy_latents, timesteps, encoder_hidden_states, **extra, return_dict=False)[
                0
            ]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        losses.append(loss.detach().item())

    meter = Meter(device, args.warmup, args.steps)
    meter.start((unet, vae, *text_encoders))
    for i in range(1, meter.total + 1):
        step()
        meter.step_end(i)
    return {
        **meter.summary(),
        **trained(unet),
        "final_loss": losses[-1],
        "resolution": resolution,
        "vae_dtype": str(vae.dtype).removeprefix("torch."),
        "conditioning": "sdxl" if ref.sdxl else "text",
    }


def trained(unet) -> dict:
    """What trains, counted the same way on both sides."""
    params = [p for p in unet.parameters() if p.requires_grad]
    return {
        "trainable_params": sum(p.numel() for p in params),
        "trainable_dtype": str(params[0].dtype).removeprefix("torch.") if params else None,
        "lora_modules": sum(1 for n, _ in unet.named_modules() if n.endswith(".lora_A")),
    }


# ----- sdexp: LoraModule through the real Trainer.fit ---------------------------------------
def sdexp_overrides(args, total_steps: int) -> list[str]:
    spec = MODELS[args.model]
    model = [f"model={spec.sdexp_model}"]
    if spec.arch is not None:
        model.append(f"model.path={arch_dir(spec)}")
    if spec.family == "sdxl":
        model.append("model.vae_dtype=fp32")  # as the SDXL example keeps its VAE (see the docstring)
    if args.method == "finetune":
        method = [
            "method=finetune",
            f"method.ema_decay={0.9999 if args.ema else 0}",
            "method.ema_warmup=false",
        ]
    else:
        method = ["method=lora", f"method.rank={LORA_RANK}", "method.targets=attn"]
    resolution = [f"train.resolution={args.resolution}"] if args.resolution else []
    return [
        *model,
        *method,
        *resolution,
        f"train.optimizer={args.optimizer}",
        f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"train.compile={str(args.compile).lower()}",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.batch_size={args.batch}",
        f"train.mixed_precision={args.precision}",
        f"train.steps={total_steps}",
        f"train.device={args.device}",
        "train.val_every=0",
        "train.checkpoint_every=0",
        "data.val_images=0",  # no validation loss at the start or end
        "logger=none",
    ]


class SyntheticImages:
    """``n`` items cycling over the fixed pixel batch, all with the fixed caption and the geometry of
    a square image already at the resolution (SDXL's micro-conditioning): the training set's
    interface (one concept, one bucket, no cache) without reading files, like the reference."""

    caption_policy = None

    def __init__(self, pixels, n: int):
        self.pixels, self.n = pixels, n
        self.buckets_per_item = [tuple(pixels.shape[:1:-1])] * n  # (w, h)
        original_sizes, crop_top_lefts, target_size = reference_geometry(1, pixels.shape[-1])
        self.geometry = {
            "original_size": original_sizes[0],
            "crop_top_left": crop_top_lefts[0],
            "target_size": target_size,
        }

    def set_epoch(self, epoch: int) -> None:
        pass

    def repeats(self) -> list[int]:
        return [1] * self.n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {
            "pixel_values": self.pixels[i % len(self.pixels)],
            "caption": CAPTION,
            "path": f"synthetic-{i}",
            "cache_key": None,
            "concept": 0,
            "loss_weight": 1.0,
            **self.geometry,
        }


def run_sdexp(args, device) -> dict:
    from sdexp.callbacks.base import Callback
    from sdexp.data.concepts import Concept
    from sdexp.entry import compose_run_config
    from sdexp.methods import build_module
    from sdexp.trainer import Trainer

    meter = Meter(device, args.warmup, args.steps)
    total = meter.total
    cfg = compose_run_config(sdexp_overrides(args, total))
    t = cfg.train
    module = build_module(cfg)
    resolution = module.resolution
    assert not args.resolution or resolution == args.resolution, (resolution, args.resolution)
    module.train_dataset = SyntheticImages(fixed_pixels(args.batch, resolution), args.batch * total)
    module.val_dataset = None  # setup() skips load_data
    module.concepts = [Concept("synthetic", Path("synthetic"), CAPTION, None, None)]
    module.user_class_records = {}
    losses = []

    class Timer(Callback):
        def on_train_start(self, trainer, module):
            assert trainer.device.type == device.type, (trainer.device, device)
            meter.start(module.base.modules)

        def on_train_step_end(self, trainer, module, logs):
            meter.step_end(trainer.state.step)
            if "train/loss" in logs:  # read every train.log_every steps
                losses.append(logs["train/loss"])

    callbacks = []
    if args.with_logging:
        from sdexp.callbacks import MetricsLogging, ProgressBar
        from sdexp.tracking.run_folder import RunFolderLogger

        callbacks = [MetricsLogging(RunFolderLogger(args.run_dir), t.log_every, t.batch_size), ProgressBar()]
    # Timer last, so the other callbacks' cost is inside the step.
    trainer = Trainer.from_config(t, args.run_dir, callbacks=[*callbacks, Timer()])
    state = trainer.fit(module)
    assert state.step == total, state
    base = module.base
    return {
        **meter.summary(),
        **trained(base.unet),
        "final_loss": losses[-1],
        "device": str(trainer.device),
        "resolution": resolution,
        "vae_dtype": str(base.vae.dtype).removeprefix("torch."),
        "conditioning": "sdxl" if base.family.needs_geometry else "text",
    }


def fixed_pixels(batch: int, resolution: int):
    """The same pixel batch for both sides: uniform in [-1, 1], seed 1234, fp32."""
    import torch

    g = torch.Generator().manual_seed(1234)
    return torch.rand((batch, 3, resolution, resolution), generator=g) * 2 - 1


def worker(args) -> None:
    import torch

    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "build":
        started = time.perf_counter()
        spec = MODELS[args.model]
        existed = (
            spec.arch is None or (arch_dir(spec) / "model_index.json").exists()
        )  # tiny: built by the parent
        folder = build_model(spec, "cuda" if args.device == "cuda" else "cpu")
        result = {
            "existed": existed,
            "impl": "build",
            "model": args.model,
            "folder": str(folder),
            "build_s": time.perf_counter() - started,
        }
        print(RESULT_TAG + json.dumps(result), flush=True)
        return
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdexp-bench-") as tmp:
        args.run_dir = tmp
        result = run_reference(args, device) if args.worker == "ref" else run_sdexp(args, device)
    result.update(
        impl=args.worker,
        model=args.model,
        batch=args.batch,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        compile=args.compile,
        channels_last=args.channels_last,
        wall_s=time.perf_counter() - started,
        threads=torch.get_num_threads(),
    )
    result.setdefault("device", str(device))
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ----- the parent: subprocesses, table, JSON ------------------------------------------------
def spawn(args, impl: str, batch: int | None) -> dict | None:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        impl,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--precision",
        args.precision,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if batch is not None:
        cmd += ["--batch", str(batch)]
    if args.resolution:
        cmd += ["--resolution", str(args.resolution)]
    cmd += ["--method", args.method, "--optimizer", args.optimizer]
    for flag in ("gradient_checkpointing", "ema", "compile", "channels_last", "with_logging"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired as err:  # the worker was killed; report it and go on
        tail = "\n".join(
            _text(err.stdout).strip().splitlines()[-10:] + _text(err.stderr).strip().splitlines()[-10:]
        )
        print(
            f"!! {impl} batch={batch} killed after --worker-timeout {args.worker_timeout}s:\n{tail}",
            file=sys.stderr,
        )
        return None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    print(f"!! {impl} batch={batch} failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
    return None


def _text(out) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


def _median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r and r.get(key) is not None]
    return statistics.median(values) if values else None


def combine(runs: list[dict]) -> dict | None:
    runs = [r for r in runs if r]
    if not runs:
        return None
    out = dict(runs[0])
    for key in ("step_ms_median", "peak_mb", "peak_abs_mb", "tensor_peak_mb"):
        out[key] = _median_of(runs, key)
    out["repeats"] = [{k: r[k] for k in ("step_ms_median", "peak_mb", "wall_s")} for r in runs]
    return out


def compare(ref: dict | None, ours: dict | None) -> dict:
    """Ratios sdexp/reference and whether both train the same thing (LoRA modules, parameters)."""
    if not (ref and ours):
        return {}
    same = {k: ref[k] == ours[k] for k in ("trainable_params", "lora_modules", "conditioning", "resolution")}
    return {
        "time_ratio": ours["step_ms_median"] / ref["step_ms_median"],
        "mem_ratio": _ratio(ours["peak_mb"], ref["peak_mb"]),
        "tensor_mem_ratio": _ratio(ours.get("tensor_peak_mb"), ref.get("tensor_peak_mb")),
        "same_training": all(same.values()),
        "differs": [k for k, v in same.items() if not v],
    }


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def _ratio(a, b):
    return a / b if a is not None and b else None


def render_table(rows: list[dict]) -> str:
    """One line per (model, resolution, batch, checkpointing): ms/step, peak memory and img/s of both
    sides, sdexp/ref ratios (x), and DESIGN.md's reference img/s where it has one."""
    cuda = any(r.get("device") == "cuda" for r in rows)
    mems = [("peak_mb", "MB")] if cuda else [("peak_mb", "RSS MB"), ("tensor_peak_mb", "tensor MB")]
    design = any(_design(r) for r in rows)
    cols = [("model", max([9, *(len(r["model"]) for r in rows)])), ("px", 4), ("batch", 5), ("gc", 2)]
    cols += [("mode", 7)]
    cols += [("ref ms", 8), ("sdexp ms", 9), ("time x", 6)]
    for _, label in mems:
        cols += [(f"ref {label}", max(len(label) + 4, 8)), (f"sdexp {label}", max(len(label) + 6, 9))]
        cols += [("mem x", 5)]
    cols += [("ref img/s", 9), ("sdexp img/s", 11)]
    if design:
        cols += [("DESIGN img/s", 12)]
    lines = [" ".join(f"{h:>{w}}" for h, w in cols)]
    lines.append("-" * len(lines[0]))
    for row in rows:
        ref, ours, b = row["ref"] or {}, row["sdexp"] or {}, row["batch"]
        r_ms, s_ms = ref.get("step_ms_median"), ours.get("step_ms_median")
        px = ref.get("resolution") or ours.get("resolution")
        cells = [row["model"], fmt(px, "d"), str(b), "y" if row.get("gradient_checkpointing") else "n"]
        cells += [step_mode(row)]
        cells += [fmt(r_ms), fmt(s_ms), fmt(_ratio(s_ms, r_ms), ".2f")]
        for key, _ in mems:
            r, o = ref.get(key), ours.get(key)
            cells += [fmt(r), fmt(o), fmt(_ratio(o, r), ".2f")]
        cells += [fmt(_ratio(b * 1000, r_ms), ".2f"), fmt(_ratio(b * 1000, s_ms), ".2f")]
        if design:
            d = _design(row)
            cells.append(f"{d[0]:.1f}" if d else "-")
        lines.append(" ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)))
    note = (
        "MB: torch.cuda.max_memory_allocated() during the steps, above what was allocated after setup"
        if cuda
        else "RSS MB: peak RSS during the steps above RSS after setup (includes what the allocator keeps);\n"
        "tensor MB: peak bytes of tensors allocated within one (profiled, untimed) step"
    )
    if design:
        note += "\nDESIGN img/s: the reference's figure in DESIGN.md (H100, bf16, eager)"
    return "\n".join(lines) + "\n" + note


def step_mode(row: dict) -> str:
    """eager, compile, cl (channels_last) or compile+cl: how both sides ran the step."""
    parts = [name for key, name in (("compile", "compile"), ("channels_last", "cl")) if row.get(key)]
    return "+".join(parts) or "eager"


def _design(row: dict):
    if row.get("method", "lora") != "lora" or row.get("precision") != "bf16" or row.get("device") != "cuda":
        return None
    if row.get("compile") or row.get("channels_last"):  # DESIGN's figures are eager
        return None
    return DESIGN_REFERENCE.get((row["model"], row["batch"], bool(row.get("gradient_checkpointing"))))


def detail_lines(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        ref, ours = row["ref"] or {}, row["sdexp"] or {}
        if not (ref and ours):
            continue
        d = _design(row)
        design = f" (DESIGN: {d[1]} GiB)" if d and d[1] else ""
        out.append(
            f"{row['model']} batch {row['batch']}{' gc' if row.get('gradient_checkpointing') else ''}: "
            f"absolute peak ref {ref['peak_abs_mb'] / 1024:.2f} GiB, sdexp {ours['peak_abs_mb'] / 1024:.2f} GiB{design}; "
            f"trainable params ref {ref['trainable_params']} / sdexp {ours['trainable_params']} "
            f"({ref['lora_modules']} / {ours['lora_modules']} LoRA modules, {ref['trainable_dtype']}); "
            f"VAE {ref['vae_dtype']} / {ours['vae_dtype']}"
            + ("" if row.get("same_training") else f"  !! DIFFERENT: {', '.join(row.get('differs', []))}")
        )
    return out


def merge(paths: list[str], out: Path) -> int:
    """Several result files (and --build-only timings) as one JSON and one table."""
    runs, rows, builds = [], [], {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        builds.update(data.get("builds", {}))
        if "rows" in data:
            runs.append({"file": str(path), **data.get("meta", {})})
            rows += data["rows"]
    print(render_table(rows) if rows else "no rows")
    for line in detail_lines(rows):
        print(line)
    for model, seconds in builds.items():
        print(f"built {model} in {seconds:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = {"meta": {"merged": [str(p) for p in paths]}, "builds": builds, "runs": runs, "rows": rows}
    out.write_text(json.dumps(merged, indent=2))
    print(f"\nresults: {out}")
    ok = all(r["ref"] and r["sdexp"] and r.get("same_training") for r in rows)
    return 0 if rows and ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", choices=tuple(MODELS), default=None, help="default: tiny on CPU, sd15-arch on CUDA"
    )
    p.add_argument("--batch", default=None, help="comma list, default 1,4 on CPU and 1,4,8 on CUDA")
    p.add_argument(
        "--resolution", type=int, default=None, help="pixels; default the model's native resolution"
    )
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument(
        "--precision", choices=("no", "bf16", "fp16"), default=None, help="default: no on CPU, bf16 on CUDA"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per worker; default 1 on CPU (steady timings on a shared box), 0 = torch's default",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="reference: torch.compile of the whole UNet; sdexp: train.compile=true (regional)",
    )
    p.add_argument("--channels-last", action="store_true", help="both sides: UNet and VAE in channels_last")
    p.add_argument(
        "--method", choices=("lora", "finetune"), default="lora", help="LoRA (default) or full fine-tune"
    )
    p.add_argument(
        "--optimizer", choices=("adamw", "adamw8bit"), default="adamw", help="adamw8bit needs CUDA"
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="both sides checkpoint the UNet")
    p.add_argument("--ema", action="store_true", help="full fine-tune: both sides keep an EMA (decay 0.9999)")
    p.add_argument(
        "--with-logging",
        action="store_true",
        help="sdexp also runs train_run's metrics logger and progress bar",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="run each (impl, batch) pair this many times, alternating"
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=None,
        help="seconds; a worker running longer is killed (row fails)",
    )
    p.add_argument("--build-only", action="store_true", help="build the model folder (timed) and stop")
    p.add_argument(
        "--merge", nargs="+", metavar="JSON", help="merge result files into --json and print one table"
    )
    p.add_argument(
        "--json", default=None, help="where to write results (default bench/results-<device>.json)"
    )
    p.add_argument("--worker", choices=("ref", "sdexp", "build"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.batch = int(args.batch or 1)
        worker(args)
        return 0
    if args.merge:
        return merge(args.merge, Path(args.json or REPO / "bench" / "results-merged.json"))

    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    args.device = device
    args.model = args.model or ("sd15-arch" if cuda else "tiny")
    args.precision = args.precision or ("bf16" if cuda else "no")
    if args.threads is None:
        args.threads = 0 if cuda else 1
    batches = [int(b) for b in (args.batch or ("1,4,8" if cuda else "1,4")).split(",")]
    out = Path(args.json) if args.json else REPO / "bench" / f"results-{device}.json"
    spec = MODELS[args.model]
    builds = {}
    if args.build_only or not (model_folder(spec) / "model_index.json").exists():
        print(f"building {args.model} in {model_folder(spec)} ...", flush=True)
        built = spawn(args, "build", None)
        if built is None:
            return 1
        if not built.get("existed"):
            builds[args.model] = built["build_s"]
        print(
            f"  {'was already built' if built.get('existed') else 'built'} in {built['build_s']:.0f} s",
            flush=True,
        )
        if args.build_only:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"builds": builds, "folder": built["folder"]}, indent=2))
            return 0

    threads = args.threads or torch.get_num_threads()
    # The workers name the GPU: the parent does not start CUDA (its context would hold GPU memory).
    name = "cuda" if cuda else f"cpu ({os.cpu_count()} cores), {threads} torch thread(s)"
    meta = {
        "device": name,
        "torch": torch.__version__,
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "merge")},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def save():  # after every batch, so that a run stopped early keeps what it measured
        out.write_text(json.dumps({"meta": meta, "builds": builds, "rows": rows}, indent=2))

    for batch in batches:
        runs = {"ref": [], "sdexp": []}
        for _ in range(args.repeats):
            for impl in ("ref", "sdexp"):
                print(f"running {impl:5s} model={args.model} batch={batch} ...", flush=True)
                runs[impl].append(spawn(args, impl, batch))
        ref, ours = combine(runs["ref"]), combine(runs["sdexp"])
        row = {
            "model": args.model,
            "batch": batch,
            "device": device,
            "precision": args.precision,
            "method": args.method,
            "gradient_checkpointing": args.gradient_checkpointing,
            "compile": args.compile,
            "channels_last": args.channels_last,
            "ref": ref,
            "sdexp": ours,
            **compare(ref, ours),
        }
        if ref and ours and not row["same_training"]:
            print(f"!! the two sides differ in {', '.join(row['differs'])}", file=sys.stderr)
        rows.append(row)
        if cuda and (ref or ours):
            name = meta["device"] = (ref or ours).get("device_name", name)
        save()

    print(
        f"\n{args.model} on {name}, precision={args.precision}, median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(render_table(rows))
    for line in detail_lines(rows):
        print(line)
    print(f"\nresults: {out}")
    return 0 if all(r["ref"] and r["sdexp"] and r["same_training"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
