"""Did a fine-tune learn the concept, and what did it cost? Measured on the shapes world.

Concept similarity is DreamBooth's CLIP-I: the mean cosine similarity between images generated
for the instance prompt and the instance images. Prompt accuracy is the judge's colour / shape /
background accuracy on ordinary prompts (forgetting shows as a drop). Same prompts and seeds for
the base and the fine-tune, so the two are comparable image for image.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdexp.base_generations import sampling_pipeline
from sdexp.metrics.scores import clip_i
from sdexp.world.evaluate import generate, heldout_prompts, prompt_accuracy
from sdexp.world.shapes import COLOURS, load_concept


def concept_prompts(manifest: dict, n: int) -> list[str]:
    """The instance prompt on backgrounds the concept is not coloured with, cycled to ``n``."""
    backgrounds = [c for c in COLOURS if c not in manifest["colours"]]
    base = manifest["instance_prompt"]
    return [f"{base} on a {backgrounds[i % len(backgrounds)]} background" for i in range(n)]


@torch.no_grad()
def evaluate_concept(
    model: str,
    concept_dir: str | Path,
    *,
    lora: str | Path | None = None,
    judge=None,
    concept_images: int = 16,
    ordinary_prompts: int = 50,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 4.0,
    device: str = "cpu",
) -> dict:
    """Concept similarity and ordinary-prompt accuracy of ``model`` (+ ``lora``), with the images."""
    from PIL import Image

    from sdexp.metrics.clip_models import load_clip

    concept_dir = Path(concept_dir)
    manifest = load_concept(concept_dir)
    references = [Image.open(concept_dir / e["file"]).convert("RGB") for e in manifest["images"]]
    judge = judge or load_clip(model, device)
    pipe, size = sampling_pipeline(model, lora=lora, device=device)
    prompts = concept_prompts(manifest, concept_images)
    generated = generate(pipe, prompts, seed=seed, steps=steps, guidance=guidance, size=size)
    accuracy, ordinary = None, []
    if ordinary_prompts:
        triples = heldout_prompts(ordinary_prompts, seed)
        accuracy, ordinary = prompt_accuracy(
            pipe, judge, triples, seed=seed, steps=steps, guidance=guidance, size=size
        )
    return {
        "concept_similarity": clip_i(judge, generated, references),
        "prompt_accuracy": accuracy,
        "concept_images": generated,
        "ordinary_images": ordinary,
    }
