"""Textual inversion: a new token whose embedding vectors alone train, in every text encoder of the
family; optionally with a LoRA on the UNet (pivotal tuning, ``method.with_lora``).

The vectors sit beside each encoder's embedding table (``sdexp.models.token_embeddings``), so every
other weight of the UNet, VAE and text encoders stays byte-identical, and prompts without the token
give exactly the base model's images. The text encoders run with grad (the token's vectors are in
them), so captions are encoded live, never served from the text cache. The LoRA of pivotal tuning
is ``LoraModule``'s, held by composition: its adapters, parameter groups and files, unchanged.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch

from sdexp.errors import ConfigError, UserError
from sdexp.methods.stable_diffusion import StableDiffusionModule
from sdexp.models.token_embeddings import attach_vectors, expand_prompt, word_embedding
from sdexp.optim import build_optimizer_and_scheduler


class TextualInversionModule(StableDiffusionModule):
    """``method=textual_inversion``: trains ``method.num_vectors`` vectors for ``method.token``."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.embeddings: tuple = ()  # one TokenEmbeddings per text encoder, set in configure_adapters
        self.lora = None
        if cfg.method.with_lora:
            from sdexp.methods.lora import LoraModule

            self.lora = LoraModule(cfg)

    @property
    def text_encoder_trains(self) -> bool:
        """The token's vectors live in the encoders: they run with grad and are prepared for DDP."""
        return True

    # ----- data ---------------------------------------------------------------------------
    def load_data(self) -> None:
        """The captions must hold the token, or nothing trains: none → error; some → a warning."""
        super().load_data()
        from sdexp.data.caption_policy import CaptionPolicy

        token = self.cfg.method.token
        policy = self.train_dataset.caption_policy
        static = replace(policy.options, shuffle_tags=False, tag_dropout=0.0, dropout=0.0)
        render = CaptionPolicy(static, policy.token).render
        records = self.train_dataset.records
        missing = [r for r in records if token.lower() not in render(r.caption, random.Random(0)).lower()]
        if len(missing) == len(records):
            raise UserError(
                f"method.token: none of the {len(records)} training captions contains {token!r} (e.g. "
                f"{records[0].caption!r}), so its embedding would learn nothing; write {{token}} or {token} in "
                "the captions, or set data.captions.template='{token}, {caption}', or data.prompt='a photo of "
                "{token}' for images without a caption"
            )
        if missing:
            print(
                f"warning: {len(missing)} of {len(records)} captions do not contain {token!r} (e.g. "
                f"{missing[0].path.name}); those images do not train the embedding"
            )

    # ----- parameters ---------------------------------------------------------------------
    def configure_adapters(self) -> None:
        m, base = self.cfg.method, self.base
        starts = []
        for i, (tokenizer, encoder) in enumerate(zip(base.tokenizers, base.text_encoders, strict=True)):
            row = word_embedding(tokenizer, encoder, m.init_word)
            if row is None:
                pieces = tokenizer.tokenize(m.init_word)
                raise ConfigError(
                    f"method.init_word: {m.init_word!r} is {len(pieces)} tokens for text encoder {i + 1} "
                    f"({' '.join(pieces)}); the vectors start as one token's embedding: choose a word that is "
                    "one token, such as the subject's class (dog) or *"
                )
            starts.append(row.expand(m.num_vectors, -1))
        try:
            wrappers = attach_vectors(
                base.tokenizers, base.text_encoders, m.token, starts, trainable=True, key="method.token"
            )
        except UserError as err:
            raise ConfigError(str(err)) from None
        self.embeddings = tuple(wrappers)
        if self.lora is not None:
            self.lora.base = base
            self.lora.configure_adapters()

    def trainable_modules(self) -> list[torch.nn.Module]:
        unet = [self.base.unet] if self.lora is not None else []
        return unet + list(self.base.text_encoders)

    def on_modules_prepared(self, modules: list[torch.nn.Module]) -> None:
        n = len(self.base.text_encoders)
        self._unet_call = modules[0] if self.lora is not None else self.base.unet
        self._text_encoder_calls = tuple(modules[-n:])

    def parameter_groups(self) -> list[dict]:
        """The vectors (``method.embedding_lr``), then the LoRA's groups without them."""
        m, t = self.cfg.method, self.cfg.train
        vectors = [e.vectors for e in self.embeddings]
        lr = m.embedding_lr if m.embedding_lr is not None else t.lr
        groups = [{"name": "embedding", "params": vectors, "lr": lr}]
        if self.lora is not None:
            ours = {id(v) for v in vectors}
            for group in self.lora.parameter_groups():
                params = [p for p in group["params"] if id(p) not in ours]
                if params:
                    groups.append({**group, "params": params})
        return groups

    def configure_optimizers(self):
        return build_optimizer_and_scheduler(self.parameter_groups(), self.cfg.train)

    # ----- steps --------------------------------------------------------------------------
    def token_ids(self, captions: list[str]) -> tuple[torch.Tensor, ...]:
        """A multi-vector token is written out as its vector tokens, as the pipelines do."""
        m = self.cfg.method
        return super().token_ids([expand_prompt(c, m.token, m.num_vectors) for c in captions])

    def training_step(self, batch: dict, step: int):
        # Without a LoRA the frozen UNet is not prepared by accelerate: autocast it here.
        with self.trainer.accelerator.autocast():
            return super().training_step(batch, step)

    # ----- checkpoints --------------------------------------------------------------------
    def vectors(self) -> tuple[torch.Tensor, ...]:
        """The trained vectors [num_vectors, dim], one tensor per text encoder."""
        return tuple(e.vectors.detach() for e in self.embeddings)

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict[str, Path]:
        """The embedding files (docs/methods.md), and with ``with_lora`` the LoRA's files beside them."""
        from sdexp.export.embedding_files import save_embedding

        cfg = self.cfg
        paths = self.lora.on_save_checkpoint(ckpt_dir, step) if self.lora is not None else {}
        paths.update(
            save_embedding(
                ckpt_dir,
                token=cfg.method.token,
                vectors=self.vectors(),
                family=self.base.family,
                prediction_type=self.base.prediction_type,
                step=step,
                title=cfg.logger.run_name or f"sdexp-{self.base.name}-textual-inversion",
            )
        )
        return paths
