"""Schemas of `sdexp pretrain` (conf/pretrain.yaml + groups `arch` and `budget`) and their checks.

Each stage's loop settings are a plain ``TrainConfig``, so a stage takes the same keys (lr,
scheduler, steps, max_minutes, mixed_precision, ...) as a fine-tuning run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sdexp.config import (
    LoggerConfig,
    TrainConfig,
    _reject_unknown_keys,
    describe_omegaconf_error,
    validate_train,
)
from sdexp.errors import ConfigError
from sdexp.validation import choice, positive

STAGES = ("clip", "vae", "unet")


@dataclass
class ClipArch:
    """Both towers of the small CLIP; the text tower's width is the UNet's cross-attention width."""

    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 256
    vision_hidden: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 256
    patch_size: int = 8
    projection_dim: int = 64


@dataclass
class VaeArch:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8  # 32 groups at these widths loses global colour


@dataclass
class UnetArch:
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8


@dataclass
class ArchConfig:
    """Model sizes (a preset from conf/arch/)."""

    name: str = "small"
    resolution: int = 64
    vocab_size: int = 1000
    clip: ClipArch = field(default_factory=ClipArch)
    vae: VaeArch = field(default_factory=VaeArch)
    unet: UnetArch = field(default_factory=UnetArch)


@dataclass
class PretrainDataConfig:
    dir: str | None = None  # a folder of images with .txt captions
    caption_extension: str = ".txt"
    val_images: int = 256  # held out of training for the validation metrics
    workers: int = 0  # processes decoding the folder into memory (0 = this process)


@dataclass
class ObjectiveConfig:
    """What each stage optimises beyond its loop settings."""

    prediction_type: str = "v_prediction"  # epsilon barely learns captions at this size
    cond_dropout: float = 0.1  # share of empty captions, for classifier-free guidance
    ema_decay: float = 0.999  # UNet EMA (0 = off); the EMA weights are what is saved
    kl_weight: float = 1e-6
    clip_init_temperature: float = 0.07


def _stage(**overrides) -> TrainConfig:
    return TrainConfig(**overrides)


@dataclass
class PretrainConfig:
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    clip: TrainConfig = field(default_factory=lambda: _stage(steps=2000, batch_size=128, lr=1e-3))
    vae: TrainConfig = field(default_factory=lambda: _stage(steps=2000, batch_size=32, lr=1e-3))
    unet: TrainConfig = field(default_factory=lambda: _stage(steps=4000, batch_size=32, lr=1e-3))
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_pretrain_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pretrain_schema", node=PretrainConfig)


def to_pretrain_config(cfg: DictConfig | dict) -> PretrainConfig:
    """Type a composed config against the schema and validate it (ConfigError naming the key)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    _reject_unknown_keys(OmegaConf.to_container(cfg, resolve=False), PretrainConfig())
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PretrainConfig), cfg))
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err)) from None
    validate_pretrain(typed)
    return typed


def validate_pretrain(cfg: PretrainConfig) -> None:
    a, o = cfg.arch, cfg.objective
    if not cfg.stages:
        raise ConfigError(f"stages: name at least one of {', '.join(STAGES)}")
    for stage in cfg.stages:
        choice("stages", stage, STAGES)
    positive("arch.resolution", a.resolution)
    factor = 2 ** (len(a.vae.block_out_channels) - 1)
    if a.resolution % (factor * 2 ** (len(a.unet.block_out_channels) - 1)):
        raise ConfigError(f"arch.resolution: {a.resolution} must divide by the VAE and UNet downsampling")
    if a.resolution % a.clip.patch_size:
        raise ConfigError(f"arch.clip.patch_size: {a.clip.patch_size} must divide arch.resolution")
    for name, width, groups in [
        ("arch.vae", a.vae.block_out_channels, a.vae.norm_num_groups),
        ("arch.unet", a.unet.block_out_channels, a.unet.norm_num_groups),
    ]:
        if any(c % groups for c in width):
            raise ConfigError(f"{name}.norm_num_groups: {groups} must divide every block width {list(width)}")
    for name, hidden, heads in [
        ("arch.clip.text", a.clip.text_hidden, a.clip.text_heads),
        ("arch.clip.vision", a.clip.vision_hidden, a.clip.vision_heads),
    ]:
        if hidden % heads:
            raise ConfigError(f"{name}_heads: {heads} must divide {name}_hidden ({hidden})")
    positive("arch.vocab_size", a.vocab_size)
    choice("objective.prediction_type", o.prediction_type, ("epsilon", "v_prediction"))
    if not 0.0 <= o.cond_dropout < 1.0:
        raise ConfigError(f"objective.cond_dropout: must be in [0, 1) (got {o.cond_dropout})")
    if not 0.0 <= o.ema_decay < 1.0:
        raise ConfigError(f"objective.ema_decay: must be in [0, 1) (got {o.ema_decay})")
    positive("objective.kl_weight", o.kl_weight, allow_zero=True)
    positive("objective.clip_init_temperature", o.clip_init_temperature)
    positive("data.val_images", cfg.data.val_images, allow_zero=True)
    positive("data.workers", cfg.data.workers, allow_zero=True)
    for stage in STAGES:
        validate_train(getattr(cfg, stage), prefix=stage)
        for key in ("compile", "channels_last"):  # applied by fine-tuning's setup only: refused, not ignored
            if getattr(getattr(cfg, stage), key):
                raise ConfigError(f"{stage}.{key}: fine-tuning runs only; pretraining stages run eager")
        if getattr(cfg, stage).auto_batch:  # searched by fine-tuning's train_run only: refused, not ignored
            raise ConfigError(f"{stage}.auto_batch: fine-tuning runs only; set {stage}.batch_size")
