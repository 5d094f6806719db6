"""sdexp's training step against the diffusers-example step, same model, same run.

    python bench/step.py                                   # CPU: tiny model, batch 1,4
    python bench/step.py --model sd15-arch --batch 1,4,8   # GPU default: SD 1.5 arch, 512 px, bf16
    python bench/step.py --method finetune --batch 4 [--optimizer adamw8bit] [--gradient-checkpointing] [--ema]
                                                           # full fine-tune (train_text_to_image.py's step)

Each (implementation, batch) runs in its own subprocess so that its peak memory is its own.
Both take the same fixed synthetic pixel batch and caption, skip ``--warmup`` steps, and report
the median of ``--steps`` timed steps. The parent prints ratios sdexp/reference (machines are
noisy; only the ratio within one run means much) and writes everything to a JSON file.

* reference: the step of diffusers' ``train_text_to_image_lora.py``, written out below:
  frozen VAE encode + frozen text encoder (caption tokenized once, as the example's data loader
  does), noise / timesteps / add_noise, UNet forward under autocast (bf16/fp16 if asked; none on
  CPU by default), SDPA attention, peft LoRA rank 4 on to_q/to_k/to_v/to_out.0, MSE against
  epsilon, backward (GradScaler under fp16, as accelerate does), clip_grad_norm_(1.0), AdamW
  step, zero_grad, and ``loss.item()`` (the example logs the loss every step too).
* ``--method finetune``: the reference is the step of diffusers' ``train_text_to_image.py`` (every
  UNet weight in fp32 under autocast, AdamW or bitsandbytes AdamW8bit over the UNet, EMA step
  with ``--ema``, gradient checkpointing with ``--gradient-checkpointing``); sdexp runs
  ``method=finetune`` with the same settings.
* sdexp: ``LoraModule`` with method.rank=4 method.targets=attn, driven by the real
  ``Trainer.fit`` over an in-memory dataset of the same pixels; a callback times the interval
  between consecutive ``on_train_step_end`` calls (validation is off; the final checkpoint is
  written after the last step).

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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

CAPTION = "a photo of sks dog on a red table"
LORA_RANK = 4
RESULT_TAG = "@@BENCH@@ "
SD15_ARCH_VERSION = 1


def _sd15_configs() -> tuple[dict, dict, dict]:
    from sdexp.models.sd15_meta import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG

    return dict(SD15_UNET_CONFIG), dict(SD15_TEXT_CONFIG), dict(SD15_VAE_CONFIG)


# ----- models -------------------------------------------------------------------------------
def sd15_arch_dir() -> Path:
    from sdexp.models.tiny import cache_root

    return cache_root() / "models" / f"sd15-arch-random-v{SD15_ARCH_VERSION}"


def build_sd15_arch(out: Path, device: str) -> Path:
    """SD 1.5's architecture with seeded random weights, written once as a diffusers folder."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdexp.models.tiny import SCHEDULER_CONFIG
    from sdexp.models.tokenizer import train_clip_tokenizer

    if (out / "model_index.json").exists():
        return out
    unet_cfg, text_cfg, vae_cfg = _sd15_configs()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sd15-arch-", dir=out.parent))
    try:
        tokenizer = CLIPTokenizer.from_pretrained(train_clip_tokenizer(staging / "tok-src"))
        assert len(tokenizer) <= text_cfg["vocab_size"]
        with torch.device(device):  # random init is much faster on a GPU
            torch.manual_seed(0)
            unet = UNet2DConditionModel(**unet_cfg)
            torch.manual_seed(1)
            vae = AutoencoderKL(**vae_cfg)
            torch.manual_seed(2)
            text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        pipe = StableDiffusionPipeline(
            vae=vae.cpu(),
            text_encoder=text_encoder.cpu(),
            tokenizer=tokenizer,
            unet=unet.cpu(),
            scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(staging / "model", safe_serialization=True)
        os.replace(staging / "model", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def model_ref(model: str) -> str:
    return "tiny" if model == "tiny" else str(sd15_arch_dir())


from meter import Meter  # noqa: E402  (bench/ is on sys.path when this script runs)


# ----- the reference step (diffusers example) -----------------------------------------------
def run_reference(args, device) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from sdexp.models.loading import load_base

    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision, torch.float32)
    base = load_base(model_ref(args.model), dtype=weight_dtype)
    unet, vae, text_encoder, noise_scheduler = base.unet, base.vae, base.text_encoder, base.noise_scheduler
    torch.manual_seed(0)
    ema = None
    if args.method == "finetune":  # train_text_to_image.py: the whole UNet, in fp32 master weights
        unet.to(torch.float32)
        unet.requires_grad_(True)
        if args.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
    else:
        unet.add_adapter(
            LoraConfig(
                r=LORA_RANK,
                lora_alpha=LORA_RANK,
                init_lora_weights="gaussian",
                target_modules=["to_k", "to_q", "to_v", "to_out.0"],
            )
        )
        if weight_dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)  # LoRA weights train in fp32
    for m in (unet, vae, text_encoder):
        m.to(device)
    unet.train()
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    if args.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(lora_params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    else:
        optimizer = torch.optim.AdamW(lora_params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if args.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(lora_params, decay=0.9999)
    forward = unet
    if args.compile:
        forward = torch.compile(unet)

    pixels, input_ids = fixed_inputs(args, base.tokenizer, base.native_resolution)
    pixels = pixels.to(device, dtype=weight_dtype)
    input_ids = input_ids.to(device)
    autocast = torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
    scaler = torch.amp.GradScaler(
        device.type, enabled=weight_dtype == torch.float16
    )  # as accelerate does for fp16
    losses = []

    def step():
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        with autocast:
            model_pred = forward(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(lora_params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(lora_params)
        losses.append(loss.detach().item())

    meter = Meter(device, args.warmup, args.steps)
    meter.start((unet, vae, text_encoder))
    for i in range(1, meter.total + 1):
        step()
        meter.step_end(i)
    n_lora_modules = sum(1 for n, _ in unet.named_modules() if n.endswith(".lora_A"))
    return {
        **meter.summary(),
        "trainable_params": sum(p.numel() for p in lora_params),
        "lora_modules": n_lora_modules,
        "final_loss": losses[-1],
    }


# ----- sdexp: LoraModule through the real Trainer.fit ---------------------------------------
def sdexp_overrides(args, total_steps: int) -> list[str]:
    model = ["model=tiny"] if args.model == "tiny" else ["model=sd15", f"model.path={sd15_arch_dir()}"]
    if args.method == "finetune":
        method = ["method=finetune", f"method.ema_decay={0.9999 if args.ema else 0}", "method.ema_warmup=false"]
    else:
        method = ["method=lora", f"method.rank={LORA_RANK}", "method.targets=attn"]
    return [
        *model,
        *method,
        f"train.optimizer={args.optimizer}",
        f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
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
    """``n`` items cycling over the fixed pixel batch, all with the fixed caption: the training set's
    interface (one concept, one bucket, no cache) without reading files, like the reference."""

    caption_policy = None

    def __init__(self, pixels, n: int):
        self.pixels, self.n = pixels, n
        self.buckets_per_item = [tuple(pixels.shape[:1:-1])] * n

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
    resolution = 64 if args.model == "tiny" else 512
    pixels, _ = fixed_inputs(args, None, resolution)
    module.train_dataset = SyntheticImages(pixels, args.batch * total)  # setup() skips load_data
    module.val_dataset = None
    module.concepts = [Concept("synthetic", Path("synthetic"), CAPTION, None, None)]
    module.user_class_records = {}
    losses = []

    class Timer(Callback):
        def on_train_start(self, trainer, module):
            assert trainer.device.type == device.type, (trainer.device, device)
            meter.start((module.base.unet, module.base.vae, module.base.text_encoder))

        def on_train_step_end(self, trainer, module, logs):
            meter.step_end(trainer.state.step)
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
    unet = module.base.unet
    return {
        **meter.summary(),
        "trainable_params": sum(p.numel() for p in unet.parameters() if p.requires_grad),
        "lora_modules": sum(1 for n, _ in unet.named_modules() if n.endswith(".lora_A")),
        "final_loss": losses[-1],
        "device": str(trainer.device),
    }


def fixed_inputs(args, tokenizer, resolution: int):
    """The same pixel batch (uniform in [-1, 1], seed 1234) and caption ids for both sides."""
    import torch

    g = torch.Generator().manual_seed(1234)
    pixels = torch.rand((args.batch, 3, resolution, resolution), generator=g) * 2 - 1
    ids = None
    if tokenizer is not None:
        ids = tokenizer(
            [CAPTION] * args.batch,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
    return pixels, ids


def worker(args) -> None:
    import torch

    from sdexp.quiet import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "build":
        build_sd15_arch(sd15_arch_dir(), "cuda" if args.device == "cuda" else "cpu")
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
        wall_s=time.perf_counter() - started,
        threads=torch.get_num_threads(),
    )
    result.setdefault("device", str(device))
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
    cmd += ["--method", args.method, "--optimizer", args.optimizer]
    for flag in ("gradient_checkpointing", "ema"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    if args.compile:
        cmd.append("--compile")
    if args.with_logging:
        cmd.append("--with-logging")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    if impl == "build" and proc.returncode == 0:
        return {}
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    print(f"!! {impl} batch={batch} failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
    return None


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


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def _ratio(a, b):
    return a / b if a is not None and b else None


def render_table(rows: list[dict], cuda: bool) -> str:
    """ms/step, peak memory and img/s of both sides, and sdexp/ref ratios (x)."""
    mems = [("peak_mb", "MB")] if cuda else [("peak_mb", "RSS MB"), ("tensor_peak_mb", "tensor MB")]
    cols = [("batch", 5), ("ref ms", 8), ("sdexp ms", 9), ("time x", 6)]
    for _, label in mems:
        cols += [(f"ref {label}", len(label) + 4), (f"sdexp {label}", len(label) + 6), ("mem x", 5)]
    cols += [("ref img/s", 9), ("sdexp img/s", 11)]
    lines = [" ".join(f"{h:>{w}}" for h, w in cols)]
    lines.append("-" * len(lines[0]))
    for row in rows:
        ref, ours, b = row["ref"] or {}, row["sdexp"] or {}, row["batch"]
        r_ms, s_ms = ref.get("step_ms_median"), ours.get("step_ms_median")
        cells = [str(b), fmt(r_ms), fmt(s_ms), fmt(_ratio(s_ms, r_ms), ".2f")]
        for key, _ in mems:
            r, o = ref.get(key), ours.get(key)
            cells += [fmt(r), fmt(o), fmt(_ratio(o, r), ".2f")]
        cells += [fmt(_ratio(b * 1000, r_ms), ".2f"), fmt(_ratio(b * 1000, s_ms), ".2f")]
        lines.append(" ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)))
    note = (
        "MB: torch.cuda.max_memory_allocated() during the steps, above what was allocated after setup"
        if cuda
        else "RSS MB: peak RSS during the steps above RSS after setup (includes what the allocator keeps);\n"
        "tensor MB: peak bytes of tensors allocated within one (profiled, untimed) step"
    )
    return "\n".join(lines) + "\n" + note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", choices=("tiny", "sd15-arch"), default=None, help="default: tiny on CPU, sd15-arch on CUDA"
    )
    p.add_argument("--batch", default=None, help="comma list, default 1,4 on CPU and 1,4,8 on CUDA")
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
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet where supported")
    p.add_argument("--method", choices=("lora", "finetune"), default="lora", help="LoRA (default) or full fine-tune")
    p.add_argument("--optimizer", choices=("adamw", "adamw8bit"), default="adamw", help="adamw8bit needs CUDA")
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
        "--json", default=None, help="where to write results (default bench/results-<device>.json)"
    )
    p.add_argument("--worker", choices=("ref", "sdexp", "build"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.batch = int(args.batch or 1)
        worker(args)
        return 0

    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    args.device = device
    args.model = args.model or ("sd15-arch" if cuda else "tiny")
    args.precision = args.precision or ("bf16" if cuda else "no")
    if args.threads is None:
        args.threads = 0 if cuda else 1
    batches = [int(b) for b in (args.batch or ("1,4,8" if cuda else "1,4")).split(",")]
    if args.compile:
        from sdexp.config import TrainConfig

        if "compile" not in TrainConfig.__dataclass_fields__:
            print("note: sdexp has no train.compile option; --compile compiles the reference UNet only")
    if args.model == "sd15-arch" and not (sd15_arch_dir() / "model_index.json").exists():
        print(f"building the SD 1.5-architecture random-weight model in {sd15_arch_dir()} ...", flush=True)
        t0 = time.perf_counter()
        if spawn(args, "build", None) is None:
            return 1
        print(f"  built in {time.perf_counter() - t0:.0f}s", flush=True)

    rows = []
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
            "ref": ref,
            "sdexp": ours,
        }
        if ref and ours:
            row["time_ratio"] = ours["step_ms_median"] / ref["step_ms_median"]
            row["mem_ratio"] = _ratio(ours["peak_mb"], ref["peak_mb"])
            row["tensor_mem_ratio"] = _ratio(ours.get("tensor_peak_mb"), ref.get("tensor_peak_mb"))
            if ref["trainable_params"] != ours["trainable_params"]:
                print(
                    f"!! trainable params differ: ref {ref['trainable_params']} vs sdexp {ours['trainable_params']}",
                    file=sys.stderr,
                )
        rows.append(row)

    threads = args.threads or torch.get_num_threads()
    name = (
        torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores), {threads} torch thread(s)"
    )
    print(
        f"\n{args.model} on {name}, precision={args.precision}, median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(render_table(rows, cuda))
    for row in rows:
        ref, ours = row["ref"] or {}, row["sdexp"] or {}
        if ref and ours:
            print(
                f"batch {row['batch']}: absolute peak ref {ref['peak_abs_mb']:.0f} MB, sdexp {ours['peak_abs_mb']:.0f} MB; "
                f"trainable params ref {ref['trainable_params']} / sdexp {ours['trainable_params']} "
                f"({ref['lora_modules']} / {ours['lora_modules']} LoRA modules)"
            )
    out = Path(args.json) if args.json else REPO / "bench" / f"results-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": name,
        "torch": torch.__version__,
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nresults: {out}")
    return 0 if all(r["ref"] and r["sdexp"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
