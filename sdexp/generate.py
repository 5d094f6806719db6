"""Images from a base model plus LoRAs, each PNG carrying its A1111 ``parameters`` so it can be remade.

Image i uses seed + i on a CPU generator, so an image is the same whether made alone or in a set,
and on any device up to the device's arithmetic.
"""

from __future__ import annotations

import hashlib
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sdexp.errors import UserError
from sdexp.samplers import SAMPLERS, a1111_name, make_scheduler

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


@dataclass
class LoraSpec:
    """A LoRA file checked before any model loads: where, which format, its adapter name and scale."""

    path: Path
    format: str
    name: str
    scale: float
    modules: int
    family: str | None


def _adapter_name(path: Path, taken: set[str]) -> str:
    """The file's stem (its folder's name for diffusers' generic file name), unique and peft-safe."""
    stem = path.stem
    if stem in ("pytorch_lora_weights", "lora"):
        parent = path.parent.parent if path.parent.name == "diffusers" else path.parent
        stem = parent.name or stem
    name = re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "lora"
    unique, i = name, 2
    while unique in taken:
        unique, i = f"{name}_{i}", i + 1
    taken.add(unique)
    return unique


def check_loras(loras: list[tuple[str | Path, float]]) -> list[LoraSpec]:
    """Resolve and validate every LoRA file; a UserError names the first bad one."""
    from sdexp.inspect import find_lora_file, inspect_lora

    specs, taken = [], set()
    for raw, scale in loras:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"--lora: {path} does not exist")
        file = find_lora_file(path)
        if file is None:
            raise UserError(
                f"--lora: {path} is a folder without lora.safetensors or pytorch_lora_weights.safetensors"
            )
        if file.suffix in PICKLE_SUFFIXES:
            raise UserError(
                f"--lora: {file} is a pickle file, which can run code when loaded; use a .safetensors LoRA"
            )
        if file.suffix != ".safetensors":
            raise UserError(f"--lora: {file} is not a .safetensors file")
        info = inspect_lora(file)
        if info["format"] == "unknown" or not info["modules"]:
            raise UserError(
                f"--lora: {file} is not a LoRA in kohya (lora_unet_…), LyCORIS LoHa/LoKr or diffusers (unet.….lora_A) format"
            )
        specs.append(
            LoraSpec(
                file,
                info["format"],
                _adapter_name(file, taken),
                float(scale),
                sum(info["modules"].values()),
                info["family"],
            )
        )
    return specs


def check_embeddings(values: list[str]) -> list:
    """Read every ``--embedding FILE[:TOKEN]`` (textual inversion) before any model loads."""
    from sdexp.export.embedding_files import parse_embedding_arg, read_embedding

    found = [read_embedding(*parse_embedding_arg(v)) for v in values]
    tokens = [e.token for e in found]
    if len(set(tokens)) < len(tokens):
        raise UserError(
            f"--embedding: two embeddings use one token ({', '.join(tokens)}); name them FILE:TOKEN"
        )
    return found


def load_embeddings(base, embeddings: list) -> None:
    """Attach each embedding's token and vectors to ``base``'s tokenizers and text encoders."""
    from sdexp.models.token_embeddings import attach_vectors

    for emb in embeddings:
        attach_vectors(base.tokenizers, base.text_encoders, emb.token, emb.vectors(base.family))


def _loaded_modules(pipe, adapter: str, family) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    components = [pipe.unet, *(getattr(pipe, name) for name in family.text_encoder_attributes)]
    return sum(
        1
        for component in components
        for module in component.modules()
        if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "r", {})  # LoRA, LoHa, LoKr
    )


@contextmanager
def _diffusers_silent():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_loras(pipe, specs: list[LoraSpec], family) -> None:
    """Load each LoRA as its own adapter and activate them all with their scales; nothing is skipped silently."""
    for spec in specs:
        if spec.family and spec.family != family.name:
            raise UserError(f"--lora: {spec.path} was made for {spec.family}, but the model is {family.name}")
        try:
            if spec.format in ("lycoris", "peft"):  # LoHa/LoKr: diffusers reads neither layout
                from sdexp.export.lycoris import load_lycoris

                load_lycoris(pipe, spec.path, spec.name, family)
            else:
                with _diffusers_silent():  # diffusers logs the error it then raises; we report it once
                    pipe.load_lora_weights(str(spec.path), adapter_name=spec.name)
        except (ValueError, RuntimeError, KeyError, TypeError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            reason = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
            raise UserError(f"--lora: could not load {spec.path} into the model: {reason[:300]}") from None
        loaded = _loaded_modules(pipe, spec.name, family)
        if loaded != spec.modules:
            raise UserError(
                f"--lora: {spec.path} holds {spec.modules} LoRA modules but only {loaded} matched the model's layers; "
                "it was made for a different base model"
            )
    if specs:
        pipe.set_adapters([s.name for s in specs], adapter_weights=[s.scale for s in specs])


def _device(device: str):
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _next_index(out_dir: Path) -> int:
    indices = [int(m.group(1)) for p in out_dir.glob("*.png") if (m := re.match(r"^(\d{5})-", p.name))]
    return max(indices, default=-1) + 1


def generate(
    model: str | Path,
    loras: list[tuple[str | Path, float]] | None = None,
    prompt: str = "",
    negative: str = "",
    steps: int = 30,
    guidance: float = 7.5,
    seed: int | None = None,
    n: int = 1,
    width: int | None = None,
    height: int | None = None,
    scheduler: str = "euler_a",
    out_dir: str | Path = "outputs",
    device: str = "auto",
    dtype: str = "auto",
    vae: str | Path | None = None,
    family: str = "auto",
    embeddings: list[str] | None = None,
) -> list[Path]:
    """Generate ``n`` PNGs (seeds seed..seed+n-1) into ``out_dir``; returns their paths.
    ``embeddings``: textual-inversion files, ``FILE`` or ``FILE:TOKEN`` (default token: the one it was
    trained with, else the file name, as AUTOMATIC1111 names it)."""
    import torch

    from sdexp.export.lora_files import addnet_hash_file
    from sdexp.models.loading import DTYPES, load_base
    from sdexp.png_info import format_parameters, write_png
    from sdexp.sampling import run_pipeline

    if scheduler not in SAMPLERS:
        raise UserError(f"--scheduler: unknown scheduler {scheduler!r}; choose one of {', '.join(SAMPLERS)}")
    if steps < 1 or n < 1:
        raise UserError(f"--steps and -n must be at least 1 (got steps={steps}, n={n})")
    for flag, value in (("--width", width), ("--height", height)):
        if value is not None and (value < 8 or value % 8):
            raise UserError(f"{flag}: {value} is not a positive multiple of 8")
    if dtype not in ("auto", *DTYPES):
        raise UserError(f"--dtype: unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    specs = check_loras(list(loras or []))
    tis = check_embeddings(list(embeddings or []))
    dev = _device(device)
    torch_dtype = (
        (torch.float16 if dev.type == "cuda" else torch.float32) if dtype == "auto" else DTYPES[dtype]
    )

    base = load_base(model, dtype=torch_dtype, vae=vae, family=family)
    load_embeddings(base, tis)
    pipe = base.pipeline(scheduler=make_scheduler(scheduler, base.noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    load_loras(pipe, specs, base.family)
    pipe.to(dev)

    width, height = width or base.native_resolution, height or base.native_resolution
    seed = random.SystemRandom().randrange(2**32) if seed is None else int(seed)
    hashes = {s.name: addnet_hash_file(s.path)[:12] for s in specs}
    extra = {"Lora scales": ", ".join(f"{s.name}: {s.scale:g}" for s in specs)} if specs else {}
    if tis:
        # A1111's TI hash: the whole file's SHA-256, first 10 hex digits.
        extra["TI hashes"] = ", ".join(
            f"{e.token}: {hashlib.sha256(e.path.read_bytes()).hexdigest()[:10]}" for e in tis
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, paths = _next_index(out_dir), []
    for i in range(n):
        image_seed = seed + i
        generator = torch.Generator("cpu").manual_seed(image_seed)
        with torch.inference_mode():
            (image,) = run_pipeline(
                pipe,
                [prompt],
                negative_prompt=negative,
                steps=steps,
                guidance=guidance,
                width=width,
                height=height,
                generators=[generator],
            )
        text = format_parameters(
            prompt,
            negative,
            steps=steps,
            sampler=a1111_name(scheduler),
            cfg_scale=guidance,
            seed=image_seed,
            width=width,
            height=height,
            model=base.name,
            lora_hashes=hashes,
            extra=extra,
        )
        paths.append(write_png(image, out_dir / f"{start + i:05d}-{image_seed}.png", text))
    return paths
