"""What a run teaches: one or several concepts, each a folder with its prompt, class and weight.

A concept comes from one of three places, resolved here once so the training module sees one list:
``data.concepts`` (explicit), subfolders of ``data.dir`` named in kohya's convention
(``10_sks dog/`` = 10 repeats, prompt "sks dog"), or ``data.dir`` alone (one concept, with
DreamBooth's instance and class prompts from the method).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sdexp.errors import ConfigError

KOHYA_FOLDER = re.compile(r"^(?P<repeats>\d+)_(?P<prompt>.+)$")

# Words people reach for as a "unique" token that the text encoder already knows well: training
# binds the subject to them and drags what they meant along (DreamBooth's language drift).
COMMON_WORDS = frozenset(
    """a an the of in on at with and or photo picture image painting drawing portrait style art
    dog cat man woman person people boy girl child baby face car house tree flower bird horse
    red green blue yellow black white orange purple pink brown gray grey
    toy doll bag shoe hat cup bottle chair table book phone watch
    cute beautiful old new big small my our your his her their""".split()
)
RARE_TOKENS = ("sks", "ohwx", "zwx", "qxv", "vbn")


@dataclass(frozen=True)
class Concept:
    """One thing to teach, resolved to paths and numbers."""

    name: str  # for logs: the folder's name
    dir: Path
    prompt: str | None  # caption of images without a sidecar
    class_prompt: str | None  # set only when prior preservation is on
    class_dir: Path | None
    repeats: int = 1
    loss_weight: float = 1.0


def _has_images_directly(folder: Path) -> bool:
    from sdexp.data.scan import IMAGE_EXTENSIONS

    # os.path.isfile, not DirEntry.is_file: a symlink loop is "not a file" here rather than an OSError
    return any(
        not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(e.path)
        for e in os.scandir(folder)
    )


def kohya_subfolders(root: Path) -> list[tuple[int, str, Path]]:
    """``(repeats, prompt, folder)`` for each ``N_prompt`` subfolder, when ``root`` is laid out that way.

    kohya's layout: the images sit only in such subfolders. A folder that has images of its own,
    or a subfolder not named ``N_prompt``, is an ordinary (recursive) image folder: [] here.
    """
    if not root.is_dir() or _has_images_directly(root):
        return []
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    matches = [(KOHYA_FOLDER.match(p.name), p) for p in subdirs]
    if not matches or not all(m for m, _ in matches):
        return []
    return [(int(m["repeats"]), m["prompt"].strip(), p) for m, p in matches]


def _name(folder: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name).strip("_") or "concept"


def resolve_concepts(cfg) -> list[Concept]:
    """The run's concepts from ``cfg.data`` and the method (DreamBooth's prompts and prior)."""
    d, m = cfg.data, cfg.method
    prior = m.name == "dreambooth" and m.prior_preservation
    if d.concepts:
        concepts = []
        for i, c in enumerate(d.concepts):
            if prior and not c.class_prompt:
                raise ConfigError(
                    f"data.concepts[{i}].class_prompt: prior preservation needs each concept's class prompt "
                    "(or set method.prior_preservation=false)"
                )
            folder = Path(c.dir).expanduser()
            concepts.append(
                Concept(
                    name=_name(folder),
                    dir=folder,
                    prompt=c.prompt or d.prompt,
                    class_prompt=c.class_prompt if prior else None,
                    class_dir=Path(c.class_dir).expanduser() if c.class_dir and prior else None,
                    repeats=c.repeats,
                    loss_weight=c.loss_weight,
                )
            )
        return _unique_names(concepts)
    if not d.dir:
        raise ConfigError(
            "data.dir: no data folder given; pass data.dir=DIR (a folder of images) or data.concepts"
        )
    root = Path(d.dir).expanduser()
    prompt = (m.instance_prompt if m.name == "dreambooth" else None) or d.prompt
    class_prompt = m.class_prompt if prior else None
    class_dir = Path(m.class_dir).expanduser() if prior and m.class_dir else None
    kohya = kohya_subfolders(root)
    if kohya:
        return _unique_names(
            [
                Concept(_name(folder), folder, folder_prompt, class_prompt, class_dir, repeats)
                for repeats, folder_prompt, folder in kohya
            ]
        )
    return [Concept(_name(root), root, prompt, class_prompt, class_dir)]


def _unique_names(concepts: list[Concept]) -> list[Concept]:
    seen: dict[str, int] = {}
    out = []
    for c in concepts:
        n = seen.get(c.name, 0)
        seen[c.name] = n + 1
        out.append(c if n == 0 else Concept(**{**c.__dict__, "name": f"{c.name}-{n + 1}"}))
    return out


def instance_token(prompt: str | None, class_prompt: str | None, token: str | None = None) -> str | None:
    """The word that names the subject: ``data.token``, else the instance prompt's words that the
    class prompt lacks ("a photo of sks dog" vs "a photo of dog" → "sks")."""
    if token:
        return token
    if not prompt or not class_prompt:
        return None
    extra = [
        w
        for w in re.findall(r"[\w-]+", prompt.lower())
        if w not in set(re.findall(r"[\w-]+", class_prompt.lower()))
    ]
    return extra[0] if len(extra) == 1 else None


def common_token_warning(token: str | None, tokenizer=None) -> str | None:
    """A warning when ``token`` is a word the text encoder already knows well, with rare ones to use."""
    if not token:
        return None
    word = token.lower()
    common = word in COMMON_WORDS
    if not common and tokenizer is not None and len(getattr(tokenizer, "encoder", {}) or {}) > 10_000:
        # CLIP's BPE numbers merges by frequency: a whole word among the first few thousand is common.
        ids = tokenizer(word, add_special_tokens=False).input_ids
        common = len(ids) == 1 and ids[0] < 12_000 and len(word) > 2
    if not common:
        return None
    suggestions = ", ".join(t for t in RARE_TOKENS if t != word)
    return (
        f"warning: the token {token!r} is a common word; DreamBooth will overwrite what the model knows "
        f"about it. Use a rare token instead, e.g. {suggestions}"
    )
