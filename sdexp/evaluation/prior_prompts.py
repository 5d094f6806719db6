"""The forgetting probe's prompts when the config names none: every run scores forgetting.

``eval.prior_prompts`` left unset (null) means "derive them", in this order:
1. the class prompt(s) of a DreamBooth run (set when the config is typed, see ``config.derive_defaults``);
2. the training captions with the subject's token removed ("a photo of sks dog" → "a photo of dog"):
   the token is ``data.token``, ``eval.token``, or a rare token word (sks, ohwx …) the captions share;
3. the base model's own general prompts: ``prior_prompts.txt`` in its folder (tiny_shapes ships its
   world's prompts), else the family's everyday prompts.
``eval.prior_prompts=[]`` written explicitly still means no forgetting probe.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sdexp.evaluation.config import MIN_DISTANCE_SAMPLES

MAX_DERIVED = 16  # prompts taken from the captions (most frequent first)
MODEL_PROMPTS_FILE = "prior_prompts.txt"  # a model folder's own general prompts, one per line


@dataclass(frozen=True)
class PriorPrompts:
    prompts: list[str]
    images: int  # images generated per scoring (prompts cycled)
    token: str | None  # the subject's token, which the prompts do not contain
    source: str  # where they came from, in words, for the run's log and best.json

    def describe(self) -> str:
        if not self.prompts:
            return "forgetting probe off (eval.prior_prompts=[])"
        shown = ", ".join(repr(p) for p in self.prompts[:3]) + (" …" if len(self.prompts) > 3 else "")
        return (
            f"forgetting probe: {len(self.prompts)} prior prompt(s) from {self.source}, "
            f"{self.images} image(s) per scoring: {shown}"
        )


def detect_token(captions: list[str], configured: str | None) -> str | None:
    """``configured`` (data.token / eval.token), else a rare-token word in most captions."""
    from sdexp.data.concepts import RARE_TOKENS

    if configured:
        return configured
    words = Counter(w for c in captions for w in set(re.findall(r"[\w-]+", c.lower())))
    common = [t for t in RARE_TOKENS if words[t] * 2 > len(captions)]
    return common[0] if common else None


def without_token(caption: str, token: str) -> str:
    """The caption with the token (a whole word, any case) and the spacing it leaves removed."""
    text = re.sub(rf"(?i)(?<![\w-]){re.escape(token)}(?![\w-])", " ", caption)
    text = re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"\s+", " ", text)).strip(" ,")
    return text


def model_prompts(model_dir: Path | None, family) -> tuple[list[str], str]:
    """A model folder's own general prompts, else its family's everyday ones."""
    if model_dir is not None and (Path(model_dir) / MODEL_PROMPTS_FILE).is_file():
        lines = (Path(model_dir) / MODEL_PROMPTS_FILE).read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if prompts:
            return prompts, f"the model's {MODEL_PROMPTS_FILE}"
    return list(family.general_prompts), f"the {family.label} everyday prompts"


def prior_prompts_for(
    e, captions: list[str], *, data_token: str | None, model_dir: Path | None, family
) -> PriorPrompts:
    """The prior prompts, their image count and the token for one run's evaluation config ``e``."""
    token = detect_token(captions, data_token or e.token)
    if e.prior_prompts is not None:
        prompts, source = list(e.prior_prompts), "eval.prior_prompts"
        images = e.prior_images or len(prompts)
        return PriorPrompts(prompts, images if prompts else 0, token, source)
    prompts, source = [], ""
    if token:
        stripped = [without_token(c, token) for c in captions]
        counts = Counter(p for p in stripped if p)
        prompts = sorted(counts, key=lambda p: (-counts[p], stripped.index(p)))[:MAX_DERIVED]
        source = f"the training captions without {token!r}"
    if not prompts:
        prompts, source = model_prompts(model_dir, family)
    # One image a prompt, and at least half as many as the subject set (and FID/KID's two), so a
    # single derived prompt still gives the probe a few seeds without doubling a scoring's cost.
    images = e.prior_images or max(len(prompts), -(-e.images // 2), MIN_DISTANCE_SAMPLES)
    return PriorPrompts(prompts, images, token, source)
