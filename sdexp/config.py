"""Run-config schemas and their validation.

Hydra composes YAML from ``conf/`` onto these dataclasses (registered in Hydra's ConfigStore),
so an unknown key or a value of the wrong type fails at composition. ``validate`` then checks
ranges and choices that types cannot express. Both failures are ``ConfigError``: one line
naming the key, exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sdexp.data.caption_policy import validate_caption_options
from sdexp.data.options import BucketOptions, CacheOptions, CaptionOptions, MaskOptions
from sdexp.errors import ConfigError
from sdexp.evaluation.config import EvalConfig, expected_metrics, validate_eval
from sdexp.samplers import SAMPLERS
from sdexp.validation import choice, positive

# Names that need no model.path (sdexp.models.loading): random-weight models of each family, and
# tiny_shapes, trained by sdexp.
BUILTIN_MODELS = ("tiny", "tiny_sd2", "tiny_sdxl", "tiny_shapes")
FAMILIES = ("auto", "sd1", "sd2", "sdxl")  # sdexp.models.families (kept here: no torch at the door)
SAVE_DTYPES = ("fp32", "fp16", "bf16")

LORA_TARGETS = ("attn", "transformer", "all")
ADAPTER_TYPES = ("lora", "loha", "lokr")
SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
MIXED_PRECISION = ("no", "fp16", "bf16")
MODEL_DTYPES = ("auto", "fp32", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")
CROPS = ("center", "random", "none")  # sdexp.data.transforms.CROP_MODES
SMALL_IMAGES = ("upscale", "warn", "skip")
WANDB_MODES = ("auto", "online", "offline", "disabled")
LOGGER_BACKENDS = ("wandb", "tensorboard")  # conf/logger/*.yaml switch these flags on
DEVICES = ("auto", "cpu", "cuda")
MONITOR_MODES = ("min", "max")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy")
ADAMW_IMPLS = ("auto", "fused", "foreach", "for_loop")
ADAPTERS = ("lora", "full")


@dataclass
class ModelConfig:
    """Which base model to fine-tune and how its frozen weights are held."""

    name: str = "tiny"  # a built-in (tiny, tiny_sd2, tiny_sdxl, tiny_shapes); sd15/sd2/sdxl need path
    family: str = "auto"  # auto = detected from the folder's configs or the file's keys; sd1 | sd2 | sdxl
    path: str | None = None  # a single-file checkpoint (.safetensors) or a diffusers-format folder
    variant: str | None = None  # e.g. "fp16"; null = detect from the files present
    dtype: str = "auto"  # frozen weights; auto = the mixed-precision dtype, else fp32
    vae: str | None = None  # a replacement VAE: .safetensors file or diffusers folder (e.g. SDXL's fp16-fix)
    vae_dtype: str = "auto"  # auto = dtype, but fp32 where the family's VAE overflows in fp16 (SDXL)
    prediction_type: str | None = None  # null = from the model's scheduler config
    resolution: int | None = None  # null = the model's native resolution
    allow_pickle: bool = False  # load .ckpt/.bin (pickle) weights; they can run code


@dataclass
class MethodConfig:
    """Fields every method has; each method's schema extends it."""

    name: str = MISSING


@dataclass
class LoraMethodConfig(MethodConfig):
    """LoRA through peft; saved as kohya and diffusers files."""

    name: str = "lora"
    rank: int = 4
    alpha: float | None = None  # null = rank (scale 1.0)
    targets: str = "transformer"  # attn | transformer | all
    dropout: float = 0.0
    train_text_encoder: bool = False  # every text encoder of the family (SDXL: both)
    text_encoder_lr: float | None = None  # null = train.lr
    text_encoder_rank: int | None = None  # null = rank
    text_encoder_2_lr: float | None = None  # SDXL's second encoder (OpenCLIP bigG); null = text_encoder_lr
    text_encoder_2_rank: int | None = None  # null = text_encoder_rank
    dora: bool = False  # weight-decomposed LoRA (peft use_dora); exported with kohya dora_scale
    adapter_type: str = "lora"  # lora | loha | lokr (LyCORIS through peft; saved as LyCORIS + peft files)
    lokr_factor: int = -1  # LoKr Kronecker factor (peft decompose_factor); -1 = balanced, near sqrt(dim)
    lokr_decompose_both: bool = False  # LoKr: the small factor low-rank too, not only the large one


@dataclass
class DreamBoothMethodConfig(LoraMethodConfig):
    """A unique token bound to a subject, with prior preservation against language drift.

    The instance/class prompts describe the ``data.dir`` concept; ``data.concepts`` entries carry
    their own. The LoRA keys apply when ``adapter=lora``; ``ema_decay`` when ``adapter=full``.
    """

    name: str = "dreambooth"
    adapter: str = "lora"  # lora | full (the whole UNet)
    instance_prompt: str | None = None  # e.g. "a photo of sks dog"; caption of images without a sidecar
    class_prompt: str | None = None  # e.g. "a photo of dog"
    prior_preservation: bool = True
    class_dir: str | None = None  # your own class images; missing ones are generated and cached
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    class_sampler: str = "dpmpp_2m"  # how missing class images are generated
    class_steps: int = 25
    class_guidance: float = 7.5
    class_seed: int = 0
    class_batch_size: int = 4
    ema_decay: float = 0.0  # adapter=full: 0 = no EMA


@dataclass
class TextualInversionMethodConfig(LoraMethodConfig):
    """New token(s) whose embeddings alone train, in every text encoder of the family; saved as the
    embedding files AUTOMATIC1111, ComfyUI and diffusers load. ``with_lora``: pivotal tuning, a LoRA
    (the keys of method=lora) trained with the embedding and saved beside it."""

    name: str = "textual_inversion"
    token: str = "<sks>"  # the new word; write it (or {token}) in your captions and prompts
    num_vectors: int = 1  # vectors behind the token (more: more capacity, fewer words left in 77)
    init_word: str = "*"  # the vectors start as this word's embedding; must be one token
    embedding_lr: float | None = 5e-3  # null = train.lr (which, with with_lora, is the LoRA's)
    with_lora: bool = False


@dataclass
class FinetuneMethodConfig(MethodConfig):
    """Caption-based fine-tuning of the whole UNet (EveryDream style), optionally the text encoder."""

    name: str = "finetune"
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None  # null = train.lr
    ema_decay: float = 0.9999  # 0 = no EMA; evaluation and checkpoints use the EMA weights
    ema_warmup: bool = True  # decay ramps up over the first steps (diffusers' EMAModel warmup)


@dataclass
class ConceptConfig:
    """One thing to teach: a folder of images with its prompt, optional class images, and weight."""

    dir: str = MISSING
    prompt: str | None = None  # instance prompt for images without a caption sidecar
    class_prompt: str | None = None  # prior preservation for this concept (dreambooth)
    class_dir: str | None = None  # class images; null = generated with the base model and cached
    repeats: int = 1  # how often each image is seen per epoch, relative to other concepts
    loss_weight: float = 1.0


@dataclass
class DataConfig:
    """Where the images are and how each becomes a training example."""

    dir: str | None = None  # one folder; kohya-named subfolders (`10_sks dog/`) are read as concepts
    prompt: str | None = None  # caption for images without a sidecar
    concepts: list[ConceptConfig] = field(default_factory=list)  # several concepts (instead of dir)
    token: str | None = None  # substituted for {token} in captions and prompts
    caption_extension: str = ".txt"
    crop: str = "center"  # center | random | none (fit inside and pad with pad_color)
    pad_color: list[int] = field(default_factory=lambda: [0, 0, 0])
    small_images: str = "upscale"  # images smaller than the resolution: upscale | warn | skip
    flip: bool = False
    skip_bad: bool = False
    val_dir: str | None = None  # held-out images for validation loss; null = training images
    val_images: int = 4  # how many images the validation loss uses
    num_workers: int = 0
    buckets: BucketOptions = field(default_factory=BucketOptions)
    captions: CaptionOptions = field(default_factory=CaptionOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)
    mask: MaskOptions = field(default_factory=MaskOptions)  # loss masks (docs/data.md#masks)


@dataclass
class EarlyStoppingConfig:
    monitor: str = "val/loss"
    mode: str = "min"
    patience: int = 0  # validations without improvement; 0 = off
    min_delta: float = 0.0


@dataclass
class TrainConfig:
    """The optimisation loop: steps, optimiser, schedule, precision, cadence of side jobs."""

    seed: int = 0
    steps: int = 500
    batch_size: int = 1
    gradient_accumulation: int = 1
    lr: float = 1e-4
    scheduler: str = "constant"
    warmup_steps: int = 0
    num_cycles: int = 1  # cosine_with_restarts
    power: float = 1.0  # polynomial
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA) | adafactor | prodigy
    adamw_impl: str = "auto"  # auto = fused on CUDA, else foreach | fused | foreach | for_loop
    prodigy_d_coef: float = 1.0  # prodigy: scales its learning-rate estimate (use train.lr=1.0)
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False  # regional torch.compile of the UNet (sdexp.methods.speedups)
    channels_last: bool = False  # UNet and VAE in channels_last memory format
    auto_batch: bool = (
        False  # CUDA: the largest batch that fits, searched once per card and setup (sdexp.auto_batch)
    )
    device: str = "auto"
    resolution: int | None = None  # null = model.resolution or the family's native one
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    zero_terminal_snr: bool = False  # rescale the noise schedule to zero SNR at its last step (Lin et al.)
    save_dtype: str = "fp32"  # full fine-tune checkpoints: fp16/bf16 halve their size
    checkpoint_every: int = 0  # 0 = only the final checkpoint
    save_state: bool = False  # checkpoints carry optimizer, scheduler, RNG and progress: resumable
    resume: str | None = None  # a run folder (its newest resumable checkpoint) or a checkpoint folder
    val_every: int = 0  # 0 = validate only at checkpoints and at the end
    val_timesteps: int = 8  # fixed timestep grid of the validation loss
    sample_every: int = 0  # 0 = samples only at the end (when sample_prompts is set)
    sample_prompts: list[str] = field(default_factory=list)
    sample_steps: int = 20
    sample_guidance: float = 7.5
    sample_seed: int = 0
    sample_scheduler: str = "dpmpp_2m"
    log_every: int = 1
    max_minutes: float = 0.0  # wall-clock budget for the training loop; 0 = none (steps still bound it)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class LoggerConfig:
    """Where a run is tracked beside its own folder: W&B, TensorBoard, both or neither.

    One flag per backend, not a list of names: Hydra merges ``logger=[wandb,tensorboard]`` config by
    config, and flags from both files survive that merge where a list would be replaced by the last.
    """

    wandb: bool = False  # conf/logger/wandb.yaml sets it (the default logger)
    tensorboard: bool = False  # event files under RUN/tensorboard/
    project: str = "sdexp"
    entity: str | None = None
    group: str | None = None
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"  # W&B: auto = online with credentials, else offline
    log_model: bool = True  # W&B: the best checkpoint as a model artifact at the end of the run
    # Config keys that are this run's hyperparameters (a sweep trial's sampled keys; the runner sets
    # it): top-level W&B config keys and TensorBoard HParams. Empty = LOGGED_HPARAMS that exist.
    hparams: list[str] = field(default_factory=list)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(name for name in LOGGER_BACKENDS if getattr(self, name))

    @property
    def name(self) -> str:
        """The backends joined by "+" (``wandb+tensorboard``), or ``none``: for messages and older callers."""
        return "+".join(self.backends) or "none"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


METHOD_SCHEMAS: dict[str, type[MethodConfig]] = {
    "lora": LoraMethodConfig,
    "dreambooth": DreamBoothMethodConfig,
    "finetune": FinetuneMethodConfig,
    "textual_inversion": TextualInversionMethodConfig,
}


def register_schemas() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    for name, schema in METHOD_SCHEMAS.items():
        cs.store(group="method", name=f"{name}_schema", node=schema)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


LEGACY_LOGGER_NAMES = {"wandb": ("wandb",), "none": ()}  # logger.name before backends were flags


def _translate_legacy_logger(cfg: DictConfig) -> None:
    """A config saved before ``logger.name`` became one flag per backend (run folders to resume,
    rescore or grid) reads as it was meant: ``name: wandb`` is ``wandb: true``."""
    logger = cfg.get("logger")
    if not isinstance(logger, DictConfig) or "name" not in logger:
        return
    name = logger.pop("name")
    if name not in LEGACY_LOGGER_NAMES:
        raise ConfigError(f"logger.name: {name!r} is not a logger; use logger=wandb, tensorboard or none")
    for backend in LOGGER_BACKENDS:
        logger[backend] = backend in LEGACY_LOGGER_NAMES[name]


def to_run_config(cfg: DictConfig | dict) -> RunConfig:
    """Type a composed (or saved, plain) config against the schemas and validate it."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    _translate_legacy_logger(cfg)
    method_name = OmegaConf.select(cfg, "method.name")
    if method_name not in METHOD_SCHEMAS:
        raise ConfigError(
            f"method.name: unknown method {method_name!r}; choose one of {', '.join(METHOD_SCHEMAS)}"
        )
    schema = OmegaConf.structured(RunConfig)
    schema.method = OmegaConf.structured(METHOD_SCHEMAS[method_name])
    _reject_unknown_keys(
        OmegaConf.to_container(cfg, resolve=False), RunConfig(method=METHOD_SCHEMAS[method_name]())
    )
    try:
        typed = OmegaConf.merge(schema, cfg)
        run_config = OmegaConf.to_object(typed)
    except OmegaConfBaseException as err:
        raise ConfigError(describe_omegaconf_error(err)) from None
    derive_defaults(run_config)
    validate(run_config)
    return run_config


DREAMBOOTH_PRIOR_IMAGES = 16  # images of the class prompt(s) a DreamBooth scoring makes (as eval=dreambooth)


def derive_defaults(cfg: RunConfig) -> None:
    """Defaults that follow from other keys, filled in before validation (and saved with the run):
    DreamBooth's class prompts are the natural forgetting probe when no prior prompts are given,
    with as many images as eval=dreambooth makes."""
    m, e = cfg.method, cfg.eval
    if isinstance(m, TextualInversionMethodConfig) and cfg.data.token is None:
        cfg.data.token = m.token  # {token} in captions, templates and prompts is the new word
    if isinstance(m, DreamBoothMethodConfig) and e.prior_prompts is None:
        prompts = [c.class_prompt for c in cfg.data.concepts if c.class_prompt] or [m.class_prompt]
        prompts = list(dict.fromkeys(p for p in prompts if p))
        if prompts:  # none: derived from the captions when the evaluator is built
            e.prior_prompts = prompts
            e.prior_images = e.prior_images or max(DREAMBOOTH_PRIOR_IMAGES, len(prompts))


def _reject_unknown_keys(values: dict, schema: Any, prefix: str = "") -> None:
    """Hydra's `+key=value` can slip keys past the schema; refuse any key the schema lacks."""
    if not is_dataclass(schema) or not isinstance(values, dict):
        return
    names = {f.name: f for f in fields(schema)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{full}: unknown key (valid keys here: {', '.join(names)})")
        _reject_unknown_keys(value, getattr(schema, key), prefix=f"{full}.")


def describe_omegaconf_error(err: BaseException) -> str:
    """One line from an OmegaConf/Hydra error: the key and what is wrong with it."""
    key = getattr(err, "full_key", None)
    msg = getattr(err, "msg", None) or str(err)
    line = _first_line(str(msg))
    if "not in struct" in line or "not in '" in line.replace('"', "'"):
        return f"{key or line}: unknown key ({line})"
    return f"{key}: {line}" if key else line


def validate(cfg: RunConfig) -> None:
    """Check choices and ranges; raise ConfigError naming the first bad key."""
    m, t, d, lg = cfg.model, cfg.train, cfg.data, cfg.logger
    choice("model.dtype", m.dtype, MODEL_DTYPES)
    choice("model.vae_dtype", m.vae_dtype, MODEL_DTYPES)
    choice("model.family", m.family, FAMILIES)
    if m.prediction_type is not None:
        choice("model.prediction_type", m.prediction_type, PREDICTION_TYPES)
    positive("model.resolution", m.resolution, optional=True)
    if m.name not in BUILTIN_MODELS and not m.path:
        raise ConfigError(
            f"model.path: model={m.name} needs model.path=FILE_OR_DIR (a .safetensors checkpoint or a "
            "diffusers-format folder)"
        )
    validate_method(cfg.method, cfg.data)
    choice("data.crop", d.crop, CROPS)
    choice("data.small_images", d.small_images, SMALL_IMAGES)
    if len(d.pad_color) != 3 or not all(0 <= c <= 255 for c in d.pad_color):
        raise ConfigError(f"data.pad_color: must be three integers 0..255, e.g. [0,0,0] (got {d.pad_color})")
    if not d.caption_extension.startswith("."):
        raise ConfigError(f"data.caption_extension: must start with '.' (got {d.caption_extension!r})")
    positive("data.val_images", d.val_images, allow_zero=True)
    positive("data.num_workers", d.num_workers, allow_zero=True)
    validate_caption_options(d.captions, d.token)
    if not 0.0 <= d.mask.unmasked_weight <= 1.0:
        raise ConfigError(
            f"data.mask.unmasked_weight: must be in [0, 1] (got {d.mask.unmasked_weight}); "
            "0 = learn only the white part of each mask"
        )
    validate_train(t)
    resolution = t.resolution or m.resolution
    if resolution is not None and resolution % 8:
        raise ConfigError(f"train.resolution: must be a multiple of 8 (got {resolution})")
    from sdexp.data.buckets import check_bucket_options  # pure Python: no torch, no Pillow

    check_bucket_options(d.buckets, resolution)
    choice("logger.mode", lg.mode, WANDB_MODES)
    _check_hparams(cfg)
    validate_eval(cfg.eval, held_out=bool(d.val_dir), samplers=SAMPLERS)
    if t.early_stopping.patience:
        _check_monitor(cfg)


def _check_hparams(cfg: RunConfig) -> None:
    """Every key in logger.hparams names a config value (a sweep trial's sampled keys)."""
    for key in cfg.logger.hparams:
        node: Any = cfg
        for part in key.split("."):
            if not is_dataclass(node) or part not in {f.name for f in fields(node)}:
                raise ConfigError(
                    f"logger.hparams: {key!r} is not a config key; list dotted keys such as train.lr"
                )
            node = getattr(node, part)


def validate_method(method: MethodConfig, d: DataConfig) -> None:
    """The method's own keys, and what it needs from the data section."""
    if isinstance(method, LoraMethodConfig):
        positive("method.rank", method.rank)
        positive("method.alpha", method.alpha, optional=True)
        choice("method.targets", method.targets, LORA_TARGETS)
        if not 0.0 <= method.dropout < 1.0:
            raise ConfigError(f"method.dropout: must be in [0, 1) (got {method.dropout})")
        _check_adapter_type(method)
        positive("method.text_encoder_rank", method.text_encoder_rank, optional=True)
        positive("method.text_encoder_2_rank", method.text_encoder_2_rank, optional=True)
        positive("method.text_encoder_2_lr", method.text_encoder_2_lr, optional=True)
    if isinstance(method, LoraMethodConfig | FinetuneMethodConfig):
        positive("method.text_encoder_lr", method.text_encoder_lr, optional=True)
    if isinstance(method, DreamBoothMethodConfig | FinetuneMethodConfig):
        if not 0.0 <= method.ema_decay < 1.0:
            raise ConfigError(
                f"method.ema_decay: must be in [0, 1) (got {method.ema_decay}); 0 turns EMA off"
            )
    if isinstance(method, DreamBoothMethodConfig):
        choice("method.adapter", method.adapter, ADAPTERS)
        if method.adapter == "full" and method.dora:
            raise ConfigError(
                "method.dora: DoRA is a LoRA variant; set method.adapter=lora or method.dora=false"
            )
        positive("method.num_class_images", method.num_class_images, allow_zero=not method.prior_preservation)
        positive("method.prior_loss_weight", method.prior_loss_weight, allow_zero=True)
        choice("method.class_sampler", method.class_sampler, tuple(SAMPLERS))
        positive("method.class_steps", method.class_steps)
        positive("method.class_batch_size", method.class_batch_size)
        if d.dir and not d.concepts and not method.instance_prompt and not d.prompt:
            raise ConfigError(
                'method.instance_prompt: DreamBooth needs the instance prompt, e.g. method.instance_prompt="a photo of sks dog"'
            )
        if method.prior_preservation and not d.concepts and not method.class_prompt:
            raise ConfigError(
                'method.class_prompt: prior preservation needs the class prompt, e.g. method.class_prompt="a photo of dog" '
                "(or set method.prior_preservation=false)"
            )
    if isinstance(method, TextualInversionMethodConfig):
        _check_textual_inversion(method, d)
    if d.concepts and d.dir:
        raise ConfigError("data.concepts: give either data.dir (one concept) or data.concepts, not both")
    for i, c in enumerate(d.concepts):
        positive(f"data.concepts[{i}].repeats", c.repeats)
        positive(f"data.concepts[{i}].loss_weight", c.loss_weight, allow_zero=True)


def _check_adapter_type(method: LoraMethodConfig) -> None:
    """LoHa/LoKr take rank/alpha/targets like LoRA; LoRA-only options are refused, not ignored."""
    choice("method.adapter_type", method.adapter_type, ADAPTER_TYPES)
    if method.lokr_factor != -1 and method.lokr_factor < 1:
        raise ConfigError(
            f"method.lokr_factor: must be -1 (balanced) or a positive integer (got {method.lokr_factor})"
        )
    if method.adapter_type == "lora":
        return
    kind = {"loha": "LoHa", "lokr": "LoKr"}[method.adapter_type]
    if isinstance(method, DreamBoothMethodConfig) and method.adapter != "lora":
        raise ConfigError(f"method.adapter_type: {kind} is an adapter; it needs method.adapter=lora")
    if method.dora:
        raise ConfigError(
            f"method.dora: DoRA is a LoRA variant; set method.dora=false with adapter_type={method.adapter_type}"
        )
    if method.dropout:
        raise ConfigError(
            f"method.dropout: LoRA's input dropout has no {kind} counterpart in peft; set method.dropout=0"
        )


def _check_textual_inversion(m: TextualInversionMethodConfig, d: DataConfig) -> None:
    """The token must be one new word; whether the model already knows it is checked once its
    tokenizers load (``sdexp.models.token_embeddings.token_problem``)."""
    if not m.token.strip() or any(ch.isspace() or ch in "{}," for ch in m.token):
        raise ConfigError(
            f"method.token: {m.token!r} must be one word without spaces, commas or braces, e.g. method.token=<sks-dog>"
        )
    positive("method.num_vectors", m.num_vectors)
    if m.num_vectors > 64:
        raise ConfigError(
            f"method.num_vectors: {m.num_vectors} would fill most of the 77-token prompt; use 1-64"
        )
    if not m.init_word.strip() or any(ch.isspace() for ch in m.init_word):
        raise ConfigError(
            f"method.init_word: {m.init_word!r} must be one word (one token), e.g. method.init_word=dog"
        )
    positive("method.embedding_lr", m.embedding_lr, optional=True)
    if d.token is not None and d.token != m.token:
        raise ConfigError(
            f"data.token: {d.token!r} differs from method.token {m.token!r}; textual inversion trains "
            "method.token, which {token} stands for (leave data.token unset)"
        )


def _check_monitor(cfg: RunConfig) -> None:
    """Early stopping watches a metric this run logs: validation, evaluation or an objective."""
    es, e = cfg.train.early_stopping, cfg.eval
    objectives = {f"objective/{o.name}": o.direction for o in e.objectives}
    known = expected_metrics(e, held_out=bool(cfg.data.val_dir)) | set(objectives)
    if es.monitor not in known:
        raise ConfigError(
            f"train.early_stopping.monitor: {es.monitor!r} is not logged by this run; "
            f"choose one of {', '.join(sorted(known))}"
        )
    direction = objectives.get(es.monitor)
    if direction and es.mode != direction[:3]:
        raise ConfigError(
            f"train.early_stopping.mode: {es.monitor} is {direction}d; set train.early_stopping.mode={direction[:3]}"
        )


def validate_train(t: TrainConfig, prefix: str = "train") -> None:
    """Check a loop section (a run's ``train`` or a pretrain stage); keys are named ``prefix.key``."""
    positive(f"{prefix}.steps", t.steps)
    positive(f"{prefix}.batch_size", t.batch_size)
    positive(f"{prefix}.gradient_accumulation", t.gradient_accumulation)
    positive(f"{prefix}.lr", t.lr)
    choice(f"{prefix}.scheduler", t.scheduler, SCHEDULERS)
    positive(f"{prefix}.warmup_steps", t.warmup_steps, allow_zero=True)
    if t.warmup_steps >= t.steps and t.warmup_steps > 0:
        raise ConfigError(f"{prefix}.warmup_steps: {t.warmup_steps} must be below {prefix}.steps ({t.steps})")
    positive(f"{prefix}.num_cycles", t.num_cycles)
    positive(f"{prefix}.power", t.power)
    positive(f"{prefix}.weight_decay", t.weight_decay, allow_zero=True)
    choice(f"{prefix}.optimizer", t.optimizer, OPTIMIZERS)
    choice(f"{prefix}.adamw_impl", t.adamw_impl, ADAMW_IMPLS)
    positive(f"{prefix}.prodigy_d_coef", t.prodigy_d_coef)
    positive(f"{prefix}.max_grad_norm", t.max_grad_norm, optional=True)
    choice(f"{prefix}.mixed_precision", t.mixed_precision, MIXED_PRECISION)
    choice(f"{prefix}.save_dtype", t.save_dtype, SAVE_DTYPES)
    choice(f"{prefix}.device", t.device, DEVICES)
    positive(f"{prefix}.resolution", t.resolution, optional=True)
    positive(f"{prefix}.min_snr_gamma", t.min_snr_gamma, optional=True)
    positive(f"{prefix}.noise_offset", t.noise_offset, allow_zero=True)
    for key in ("checkpoint_every", "val_every", "sample_every"):
        positive(f"{prefix}.{key}", getattr(t, key), allow_zero=True)
    positive(f"{prefix}.val_timesteps", t.val_timesteps)
    positive(f"{prefix}.sample_steps", t.sample_steps)
    positive(f"{prefix}.log_every", t.log_every)
    positive(f"{prefix}.max_minutes", t.max_minutes, allow_zero=True)
    choice(f"{prefix}.sample_scheduler", t.sample_scheduler, tuple(SAMPLERS))
    choice(f"{prefix}.early_stopping.mode", t.early_stopping.mode, MONITOR_MODES)
    positive(f"{prefix}.early_stopping.patience", t.early_stopping.patience, allow_zero=True)


def as_plain_dict(cfg: RunConfig) -> dict:
    """The typed config as plain containers (for saving and for W&B)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
