"""Judging the shapes world with a CLIP: zero-shot attribute accuracy and prompt accuracy of a model.

Each image is classified by the one prompt ``a <colour> <shape> on a <colour> background`` (of all
8×6×7 of them) it is most similar to; colour, shape and background accuracy are read off that
choice. The same judge scores real held-out images (how good is the CLIP?) and generations from
held-out prompts (how well does a model follow prompts?), held-out colour×shape pairs included.
"""

from __future__ import annotations

import random
from itertools import product
from pathlib import Path

from sdexp.world.shapes import COLOURS, HELD_OUT, SHAPES, prompt, sample_scene

ATTRIBUTES = ("colour", "shape", "background")


def attribute_grid() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) a one-shape scene can have."""
    return [(c, s, b) for c, s, b in product(COLOURS, SHAPES, COLOURS) if c != b]


class ShapesJudge:
    """Classifies images into (colour, shape, background) by CLIP similarity to every prompt."""

    def __init__(self, clip):
        self.clip = clip
        self.grid = attribute_grid()
        self.text = clip.encode_texts([prompt(*g) for g in self.grid])

    def classify(self, images) -> list[tuple[str, str, str]]:
        sims = self.clip.encode_images(images) @ self.text.T
        return [self.grid[i] for i in sims.argmax(dim=1).tolist()]

    def accuracy(self, images, truths: list[tuple[str, str, str]]) -> dict[str, float]:
        """Share of images whose colour / shape / background / all three were judged right."""
        predicted = self.classify(images)
        result = {}
        for k, name in enumerate(ATTRIBUTES):
            result[name] = sum(p[k] == t[k] for p, t in zip(predicted, truths)) / len(truths)
        result["all"] = sum(p == t for p, t in zip(predicted, truths)) / len(truths)
        return result


def one_shape_truths(manifest: dict) -> list[tuple[str, tuple[str, str, str]]]:
    """(file, (colour, shape, background)) of the manifest's one-shape images."""
    out = []
    for entry in manifest["images"]:
        scene = entry["scene"]
        if len(scene["shapes"]) == 1:
            s = scene["shapes"][0]
            out.append((entry["file"], (s["colour"], s["kind"], scene["background"])))
    return out


def zero_shot_accuracy(clip, world_dir: str | Path, limit: int | None = None) -> dict:
    """The judge's accuracy on the one-shape images of a written world (e.g. the heldout split)."""
    from PIL import Image

    from sdexp.world.shapes import load_world

    world_dir = Path(world_dir)
    items = one_shape_truths(load_world(world_dir))[:limit]
    images = [Image.open(world_dir / f).convert("RGB") for f, _ in items]
    result = ShapesJudge(clip).accuracy(images, [t for _, t in items])
    return {**result, "images": len(items)}


def heldout_prompts(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """``n`` one-shape (colour, shape, background) triples, half of them held-out pairs."""
    rng = random.Random(f"prompts:{seed}")
    triples = []
    for _ in range(n):
        scene = sample_scene(rng, split="heldout")
        s = scene.shapes[0]
        triples.append((s.colour, s.kind, scene.background))
    return triples


def generate(
    pipe, prompts: list[str], *, seed: int, steps: int, guidance: float, size: int, batch: int = 100
):
    """One image per prompt, image i from seed ``seed + i`` (batching does not change them)."""
    from sdexp.base_generations import SamplingSettings, generate_images

    settings = SamplingSettings(steps=steps, guidance=guidance)
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        images.extend(
            generate_images(pipe, chunk, list(range(seed + i, seed + i + len(chunk))), settings, size)
        )
    return images


def prompt_accuracy(
    pipe, clip, triples, *, seed: int = 0, steps: int = 20, guidance: float = 5.0, size: int = 64
) -> dict:
    """How often generations show the prompt's colour / shape / background, by the judge."""
    images = generate(
        pipe, [prompt(*t) for t in triples], seed=seed, steps=steps, guidance=guidance, size=size
    )
    judge = ShapesJudge(clip)
    result = judge.accuracy(images, triples)
    held = [k for k, t in enumerate(triples) if (t[0], t[1]) in HELD_OUT]
    if held:
        held_acc = judge.accuracy([images[k] for k in held], [triples[k] for k in held])
        result.update({f"heldout_pairs/{k}": v for k, v in held_acc.items()})
    result["prompts"] = len(triples)
    result["heldout_pairs/prompts"] = len(held)
    return result, images
