"""The pretraining recipe: tokenizer → CLIP → VAE → UNet → the model folder, each stage a run folder.

OUT/config.yaml    the composed config          OUT/tokenizer/   BPE learned from the captions
OUT/clip/, OUT/vae/, OUT/unet/   run folders (config.yaml, metrics.jsonl, run.json, checkpoints/)
OUT/unet-base/     the pipeline the UNet stage starts from (trained CLIP text tower and VAE)
OUT/model/         the result: a diffusers folder + clip/ (see sdexp.pretrain.assemble)

A stage named in ``stages`` is trained anew (its old folder in OUT is replaced); a stage left out
reuses the finished one already in OUT. So stages can run apart (e.g. the UNet again with another
learning rate), and an interrupted recipe resumes with ``stages=[...]`` naming what is left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from sdexp.atomic import atomic_write_bytes
from sdexp.errors import UserError
from sdexp.pretrain.config import STAGES, PretrainConfig


def compose_pretrain_config(overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """conf/pretrain.yaml with ``overrides`` (Hydra's compose API), typed and validated."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from sdexp.config import describe_omegaconf_error, register_schemas
    from sdexp.entry import CONF_DIR, missing_option_message
    from sdexp.errors import ConfigError
    from sdexp.pretrain.config import register_pretrain_schema, to_pretrain_config

    register_schemas()
    register_pretrain_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="pretrain", overrides=list(overrides))
    except MissingConfigException as err:
        raise ConfigError(missing_option_message(err, CONF_DIR)) from None
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
        raise ConfigError(describe_omegaconf_error(cause)) from None
    return to_pretrain_config(cfg)


def _plain(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _learn_tokenizer(target: Path, captions: list[str], vocab_size: int) -> Path:
    from sdexp.models.tokenizer import train_clip_tokenizer

    if (target / "vocab.json").exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=target.parent))
    try:
        train_clip_tokenizer(staging, vocab_size, texts=captions)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _finished(stage_dir: Path) -> Path | None:
    final = stage_dir / "checkpoints" / "final"
    return final if final.is_dir() else None


class Recipe:
    """Runs the configured stages of ``cfg`` into ``out``."""

    def __init__(self, cfg: PretrainConfig, out: str | Path, notify=print):
        self.cfg, self.out, self.notify = cfg, Path(out).resolve(), notify
        self.images = self.tokens = None

    def check(self) -> None:
        """Inputs that can be wrong fail here, before anything is written."""
        if not self.cfg.data.dir:
            raise UserError("data.dir: no data folder given; pass data.dir=DIR (images with .txt captions)")
        for stage in STAGES:
            if stage not in self.cfg.stages and not _finished(self.out / stage):
                raise UserError(
                    f"stages: {stage} is not in stages={self.cfg.stages} but {self.out / stage} holds no "
                    f"finished {stage} stage; add {stage} to stages or point --out at a folder that has it"
                )
        from sdexp.trainer import check_device

        for stage in self.cfg.stages:
            check_device(getattr(self.cfg, stage).device, f"{stage}.device")

    def run(self) -> Path:
        from transformers import CLIPTokenizer

        from sdexp.pretrain.images import CaptionedImages
        from sdexp.pretrain.tokens import CaptionTokens
        from sdexp.quiet import quiet_libraries

        quiet_libraries()
        self.check()
        cfg, out = self.cfg, self.out
        started = time.perf_counter()
        self.images = CaptionedImages.load(
            cfg.data.dir,
            cfg.arch.resolution,
            caption_extension=cfg.data.caption_extension,
            val_images=cfg.data.val_images,
            seed=cfg.clip.seed,
            workers=cfg.data.workers,
        )
        self.notify(
            f"data: {len(self.images.train)} training + {len(self.images.val)} validation images "
            f"from {cfg.data.dir} ({time.perf_counter() - started:.1f}s)"
        )
        out.mkdir(parents=True, exist_ok=True)
        text = OmegaConf.to_yaml(OmegaConf.create(_plain(cfg)))
        atomic_write_bytes(out / "config.yaml", text.encode("utf-8"))
        tokenizer_dir = _learn_tokenizer(out / "tokenizer", self.images.captions, cfg.arch.vocab_size)
        self.tokens = CaptionTokens(CLIPTokenizer.from_pretrained(tokenizer_dir), self.images.captions)
        for stage in STAGES:
            if stage in cfg.stages:
                getattr(self, f"_run_{stage}")()
        model_dir = self._assemble()
        self.notify(f"model: {model_dir} ({time.perf_counter() - started:.0f}s in all)")
        return model_dir

    # ----- stages ---------------------------------------------------------------------------
    def _fit(self, stage: str, module) -> None:
        from sdexp.run import fit_and_record
        from sdexp.trainer import Trainer

        t = getattr(self.cfg, stage)
        stage_dir = self.out / stage
        if stage_dir.exists():
            self.notify(f"stage {stage}: replacing the earlier {stage_dir}")
            shutil.rmtree(stage_dir)  # a stage named in `stages` is trained anew
        logger = replace(
            self.cfg.logger,
            group=self.cfg.logger.group or f"pretrain-{self.out.name}",
            run_name=self.cfg.logger.run_name or f"{self.out.name}-{stage}",
        )
        self.notify(f"stage {stage}: up to {t.steps} steps at batch {t.batch_size} → {stage_dir}")
        trainer = Trainer.from_config(t, stage_dir)
        stage_dir.mkdir(parents=True)
        # The whole recipe config as this stage ran it (OUT/config.yaml is the latest invocation's).
        shutil.copyfile(self.out / "config.yaml", stage_dir / "config.yaml")
        result = fit_and_record(
            trainer,
            module,
            t,
            logger,
            stage_dir,
            config={"stage": stage, **_plain(self.cfg)},
            images=len(self.images.train),
        )
        val = {k: round(v, 4) for k, v in result.last_val.items() if k != "step"}
        self.notify(
            f"stage {stage}: {result.steps} steps ({result.stop_reason}), {result.wall_seconds:.0f}s, {val}"
        )

    def _run_clip(self) -> None:
        from sdexp.pretrain.clip_stage import ClipPretrainModule

        c = self.cfg
        self._fit("clip", ClipPretrainModule(self.images, self.tokens, c.arch, c.objective, c.clip))

    def _run_vae(self) -> None:
        from sdexp.pretrain.vae_stage import VaePretrainModule

        c = self.cfg
        self._fit("vae", VaePretrainModule(self.images, c.arch, c.objective, c.vae))

    def _run_unet(self) -> None:
        from sdexp.config import DataConfig, ModelConfig, RunConfig
        from sdexp.pretrain.assemble import write_unet_base
        from sdexp.pretrain.unet_stage import UnetFromScratchModule

        c, out = self.cfg, self.out
        base = out / "unet-base"
        shutil.rmtree(base, ignore_errors=True)
        write_unet_base(
            base,
            arch=c.arch,
            clip_dir=_finished(out / "clip") / "clip",
            vae_dir=_finished(out / "vae") / "vae",
            tokenizer_dir=out / "tokenizer",
            prediction_type=c.objective.prediction_type,
            seed=c.unet.seed,
        )
        run_cfg = RunConfig(
            model=ModelConfig(name="scratch", path=str(base), dtype="fp32", resolution=c.arch.resolution),
            method=None,
            data=DataConfig(dir=c.data.dir, val_images=c.data.val_images),
            train=c.unet,
            logger=c.logger,
        )
        self._fit("unet", UnetFromScratchModule(run_cfg, self.images, c.objective))

    def _assemble(self) -> Path:
        from sdexp.pretrain.assemble import write_final_model

        out = self.out
        return write_final_model(
            out / "model",
            unet_base=out / "unet-base",
            unet_dir=_finished(out / "unet") / "unet",
            clip_dir=_finished(out / "clip") / "clip",
        )
