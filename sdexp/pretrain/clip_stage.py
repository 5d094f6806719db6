"""Stage 1: a small CLIP (text and image towers) trained contrastively on the captioned images.

Its text tower becomes the pipeline's text encoder and the whole model is the judge the metrics
use. Images with the same caption are all positives of each other (a small world repeats
captions), so the targets are spread over them instead of pretending they are negatives.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from sdexp.methods.base import StepOutput, TrainingModule
from sdexp.optim import build_optimizer_and_scheduler
from sdexp.pretrain.images import CaptionedImages, fixed_batches, index_loader
from sdexp.pretrain.tokens import CaptionTokens

# CLIP sees pixels in [-1, 1] (mean 0.5, std 0.5 per channel), the same range the VAE sees.
CLIP_IMAGE_MEAN = CLIP_IMAGE_STD = (0.5, 0.5, 0.5)


def build_clip(arch, tokenizer, init_temperature: float = 0.07, seed: int = 0):
    """A transformers CLIPModel of the ``arch.clip`` size, with the tokenizer's special ids."""
    from transformers import CLIPConfig, CLIPModel

    c = arch.clip
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=c.text_hidden,
            intermediate_size=c.text_intermediate,
            num_hidden_layers=c.text_layers,
            num_attention_heads=c.text_heads,
            max_position_embeddings=tokenizer.model_max_length,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=c.vision_hidden,
            intermediate_size=c.vision_intermediate,
            num_hidden_layers=c.vision_layers,
            num_attention_heads=c.vision_heads,
            image_size=arch.resolution,
            patch_size=c.patch_size,
            hidden_act="quick_gelu",
        ),
        projection_dim=c.projection_dim,
        logit_scale_init_value=math.log(1.0 / init_temperature),
    )
    torch.manual_seed(seed)
    return CLIPModel(config)


def soft_contrastive_loss(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets are uniform over the items sharing a caption group."""
    same = (groups[:, None] == groups[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    image_loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_loss = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (image_loss + text_loss) / 2


class ClipPretrainModule(TrainingModule):
    def __init__(self, images: CaptionedImages, tokens: CaptionTokens, arch, objective, train_cfg):
        self.images, self.tokens = images, tokens
        self.arch, self.objective, self.t = arch, objective, train_cfg
        self.model = None

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.model = build_clip(
            self.arch, self.tokens.tokenizer, self.objective.clip_init_temperature, self.t.seed
        )
        self.model.to(trainer.device)
        self.images.to(trainer.device)
        self.tokens.to(trainer.device)
        self._model = self.model

    def trainable_modules(self):
        return [self.model]

    def on_modules_prepared(self, modules) -> None:
        self._model = modules[0]

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
        groups = [
            {"params": decay, "name": "clip"},
            {"params": no_decay, "name": "clip_no_decay", "weight_decay": 0.0},
        ]
        return build_optimizer_and_scheduler(groups, self.t)

    def train_dataloader(self):
        return index_loader(self.images.train, self.t.batch_size, self.t.seed)

    def _logits(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, _ = self.images.batch(index)
        groups = self.tokens.group[index.to(self.tokens.group.device)]
        out = self._model(input_ids=self.tokens.ids_of_groups(groups), pixel_values=pixels)
        return out.logits_per_image.float(), groups

    def training_step(self, batch, step: int) -> StepOutput:
        logits, groups = self._logits(batch)
        loss = soft_contrastive_loss(logits, groups)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100.0))
        return StepOutput(loss=loss, logs={"train/temperature": 1.0 / self.model.logit_scale.detach().exp()})

    def val_batches(self) -> list:
        return fixed_batches(self.images.val, 256)

    def val_batches_expected(self) -> bool:
        return len(self.images.val) > 0

    @torch.no_grad()
    def validation_step(self, batch, batch_idx: int) -> dict:
        logits, groups = self._logits(batch)
        picked = groups[logits.argmax(dim=1)]
        return {
            "loss": soft_contrastive_loss(logits, groups),
            "retrieval_top1": (picked == groups).float().mean(),
            "n": torch.tensor(float(len(batch))),
        }

    def on_save_checkpoint(self, ckpt_dir: Path, step: int) -> dict:
        self.model.save_pretrained(ckpt_dir / "clip", safe_serialization=True)
        return {"clip": ckpt_dir / "clip"}
