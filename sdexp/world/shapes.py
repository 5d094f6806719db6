"""The shapes world: captioned images of coloured shapes on plain backgrounds.

Why: a text-to-image model trained from scratch needs data whose captions are exactly true, that is
cheap in any amount, and that holds back known (colour, shape) pairs so composition can be tested.
DreamBooth-style tests need a "concept" the base world never shows: a patterned fill, where every
base fill is solid. Each image is a pure function of (seed, split, index), so a folder can be
regenerated bit for bit and written by any number of processes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from sdexp.errors import UserError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
# Never drawn in the training split; each colour and each shape still appears there with other partners.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("green", "circle"),
        ("blue", "triangle"),
        ("yellow", "cross"),
        ("purple", "ring"),
        ("orange", "square"),
    }
)
SPLITS: tuple[str, ...] = ("train", "heldout", "any")
SIZES: tuple[str, ...] = ("small", "large")

# Radii as fractions of the image side. Two-shape scenes use PAIR_R so each shape fits its half.
LARGE_R = (0.30, 0.36)
SMALL_R = (0.18, 0.22)
PAIR_R = (0.17, 0.21)
JITTER = 0.12  # how far a single shape's centre may move from the middle
SUPERSAMPLE = 4  # draw at 4x and box-filter down: PIL's own drawing is not anti-aliased
MANIFEST_VERSION = 1
# multiprocessing start method for workers > 1; None is the platform default (tests try "spawn").
START_METHOD: str | None = None

_TRAIN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT)
_ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
_HELD_PAIRS = tuple(sorted(HELD_OUT))


@dataclass(frozen=True)
class ShapeSpec:
    """One shape; ``r`` (radius, fraction of the side) defaults to the middle of its size's range."""

    kind: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float | None = None

    def __post_init__(self):
        if self.kind not in SHAPES or self.colour not in COLOURS or self.size not in SIZES:
            raise ValueError(f"not a shape of this world: {self.kind!r} {self.colour!r} {self.size!r}")

    @property
    def radius(self) -> float:
        if self.r is not None:
            return self.r
        lo, hi = LARGE_R if self.size == "large" else SMALL_R
        return (lo + hi) / 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scene:
    """A background colour and its shapes, left to right."""

    background: str
    shapes: tuple[ShapeSpec, ...]

    def __post_init__(self):
        if self.background not in COLOURS:
            raise ValueError(f"unknown background colour {self.background!r}")

    def to_dict(self) -> dict:
        return {"background": self.background, "shapes": [s.to_dict() for s in self.shapes]}


def scene_from_dict(d: dict) -> Scene:
    """The inverse of ``Scene.to_dict`` (a manifest entry's ``scene``); UserError for anything else."""
    try:
        return Scene(d["background"], tuple(ShapeSpec(**s) for s in d["shapes"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"not a shapes-world scene: {d!r} ({err}); write the world again") from err


# ---------------------------------------------------------------- sampling


def _centre(rng: random.Random, r: float) -> float:
    """The middle, jittered, but keeping the whole shape (radius r) inside the image."""
    return round(min(max(0.5 + rng.uniform(-JITTER, JITTER), r), 1 - r), 4)


def _single(rng: random.Random, kind: str, colour: str) -> ShapeSpec:
    size = rng.choice(SIZES)
    r = round(rng.uniform(*(LARGE_R if size == "large" else SMALL_R)), 4)
    return ShapeSpec(kind, colour, size, _centre(rng, r), _centre(rng, r), r)


def _pair(rng: random.Random, left: tuple[str, str], right: tuple[str, str]) -> tuple[ShapeSpec, ...]:
    """Two small shapes, each wholly inside its half (with a small gap), so they never overlap."""
    shapes = []
    for (colour, kind), (lo, hi) in zip((left, right), ((0.0, 0.49), (0.51, 1.0))):
        r = round(rng.uniform(*PAIR_R), 4)
        cx = round(rng.uniform(lo + r, hi - r), 4)
        shapes.append(ShapeSpec(kind, colour, "small", cx, _centre(rng, r), r))
    return tuple(shapes)


def sample_scene(rng: random.Random, split: str = "train", p_two: float = 0.3) -> Scene:
    """A random scene of ``split``: "train" never uses a HELD_OUT pair; "heldout" is one-shape scenes,
    half of them a HELD_OUT pair (the other half seen pairs, for comparison); "any" is unrestricted."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if split == "heldout":
        colour, kind = rng.choice(_HELD_PAIRS if rng.random() < 0.5 else _TRAIN_PAIRS)
        shapes: tuple[ShapeSpec, ...] = (_single(rng, kind, colour),)
    else:
        pairs = _TRAIN_PAIRS if split == "train" else _ALL_PAIRS
        first = rng.choice(pairs)
        if rng.random() < p_two:
            second = rng.choice([p for p in pairs if p[0] != first[0]])
            shapes = _pair(rng, first, second)
        else:
            shapes = (_single(rng, first[1], first[0]),)
    used = {s.colour for s in shapes}
    return Scene(rng.choice([c for c in COLOURS if c not in used]), shapes)


# ---------------------------------------------------------------- drawing


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, fill, hole) -> None:
    """Draw ``kind`` centred at (x, y) inside the r-box around it; ``hole`` fills the ring's middle."""
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif kind == "square":
        h = 0.8 * r
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x + r, y + 0.7 * r), (x - r, y + 0.7 * r)], fill=fill)
    elif kind == "star":
        points = []
        for k in range(10):
            rad, angle = (r if k % 2 == 0 else 0.45 * r), k * math.pi / 5
            points.append((x + rad * math.sin(angle), y - rad * math.cos(angle)))
        draw.polygon(points, fill=fill)
    elif kind == "ring":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        h = 0.55 * r
        draw.ellipse([x - h, y - h, x + h, y + h], fill=hole)
    elif kind == "cross":
        t = 0.225 * r  # half of the bar thickness 0.45 r
        draw.rectangle([x - r, y - t, x + r, y + t], fill=fill)
        draw.rectangle([x - t, y - r, x + t, y + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}; use one of {', '.join(SHAPES)}")


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as an RGB image, anti-aliased by drawing at SUPERSAMPLE x and box-filtering down."""
    big = size * SUPERSAMPLE
    background = COLOURS[scene.background]
    img = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        _draw_shape(draw, s.kind, s.cx * big, s.cy * big, s.radius * big, COLOURS[s.colour], background)
    return img.resize((size, size), Image.Resampling.BOX)


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """What the image shows, left to right; a single shape gets its size word half the time (given rng)."""
    if len(scene.shapes) == 1:
        s = scene.shapes[0]
        words = f"{s.size} {s.colour}" if rng is not None and rng.random() < 0.5 else s.colour
        return f"a {words} {s.kind} on a {scene.background} background"
    parts = [f"a {s.colour} {s.kind}" for s in sorted(scene.shapes, key=lambda s: s.cx)]
    return f"{' and '.join(parts)} on a {scene.background} background"


def prompt(colour: str, shape: str, background: str) -> str:
    """The canonical single-shape prompt: a caption without the size word."""
    return f"a {colour} {shape} on a {background} background"


# ---------------------------------------------------------------- concepts


@dataclass(frozen=True)
class Concept:
    """A two-colour patterned shape; ``kind`` is its outline and its DreamBooth class word."""

    kind: str
    colours: tuple[str, str]
    pattern: str  # "stripes" (horizontal bands) or "checker"

    @property
    def class_word(self) -> str:
        return self.kind


CONCEPTS: dict[str, Concept] = {
    "striped_star": Concept("star", ("red", "white"), "stripes"),
    "checker_square": Concept("square", ("blue", "yellow"), "checker"),
    # A second star: two concepts of one class, told apart only by their tokens (tests of several concepts)
    "checker_star": Concept("star", ("blue", "yellow"), "checker"),
}
STRIPES = 7  # bands across the shape's height (2 r): the same look at every size
CHECKER = 4  # cells along the square's side (1.6 r)


def _concept(name: str) -> Concept:
    if name not in CONCEPTS:
        raise UserError(f"unknown concept {name!r}; use one of {', '.join(CONCEPTS)}")
    return CONCEPTS[name]


def _pattern(c: Concept, big: int, x: float, y: float, r: float) -> Image.Image:
    """The concept's fill over the whole canvas, anchored to the shape so it scales and moves with it."""
    first, second = (COLOURS[name] for name in c.colours)
    img = Image.new("RGB", (big, big), first)
    draw = ImageDraw.Draw(img)
    if c.pattern == "stripes":
        band = 2 * r / STRIPES
        for k in range(1, STRIPES, 2):
            draw.rectangle([0, y - r + k * band, big, y - r + (k + 1) * band], fill=second)
    else:
        cell, x0, y0 = 1.6 * r / CHECKER, x - 0.8 * r, y - 0.8 * r
        for i in range(CHECKER):
            for j in range(CHECKER):
                if (i + j) % 2:
                    box = [x0 + i * cell, y0 + j * cell, x0 + (i + 1) * cell, y0 + (j + 1) * cell]
                    draw.rectangle(box, fill=second)
    return img


def render_concept(
    concept: str, background: str, cx: float, cy: float, r: float, size: int = 64
) -> Image.Image:
    """The concept centred at (cx, cy) with radius r (fractions of the side) on a plain background."""
    c, big = _concept(concept), size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLOURS[background])
    mask = Image.new("L", (big, big), 0)
    x, y, rad = cx * big, cy * big, r * big
    _draw_shape(ImageDraw.Draw(mask), c.kind, x, y, rad, 255, 0)
    img.paste(_pattern(c, big, x, y, rad), (0, 0), mask)
    return img.resize((size, size), Image.Resampling.BOX)


# ---------------------------------------------------------------- writing folders


def _rng(seed: int, split: str, i: int) -> random.Random:
    """Image i's own generator: its content depends on nothing else (workers, order, n)."""
    return random.Random(f"{seed}:{split}:{i}")


def _save(folder: Path, i: int, img: Image.Image, text: str) -> str:
    name = f"{i:06d}"
    img.save(folder / f"{name}.png", format="PNG", optimize=False)  # no time-dependent metadata
    (folder / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    return f"{name}.png"


def _world_chunk(task: tuple) -> list[dict]:
    """Write images start..stop of a world (top-level so spawn-started workers can run it)."""
    folder, seed, split, size, start, stop = task
    entries = []
    for i in range(start, stop):
        rng = _rng(seed, split, i)
        scene = sample_scene(rng, split)
        text = caption(scene, rng)
        file = _save(Path(folder), i, render(scene, size), text)
        entries.append({"file": file, "caption": text, "scene": scene.to_dict()})
    return entries


def _concept_chunk(task: tuple) -> list[dict]:
    folder, seed, name, token, size, start, stop = task
    c = CONCEPTS[name]
    entries = []
    for i in range(start, stop):
        rng = _rng(seed, f"concept:{name}", i)
        background = rng.choice([col for col in COLOURS if col not in c.colours])
        spec = _single(rng, c.kind, c.colours[0])  # position and size as for a base-world shape
        text = f"a {token} {c.class_word} on a {background} background"
        img = render_concept(name, background, spec.cx, spec.cy, spec.radius, size)
        file = _save(Path(folder), i, img, text)
        place = {"size": spec.size, "cx": spec.cx, "cy": spec.cy, "r": spec.r}
        entries.append({"file": file, "caption": text, "background": background, **place})
    return entries


def _check_args(out, n: int, size: int, workers: int = 1) -> Path:
    """Refuse bad arguments before any work; an existing, non-empty ``out`` is left untouched."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} is a file; choose a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"output {out} exists and is not empty; choose a new folder or delete it")
    if n < 1:
        raise UserError(f"n={n}: ask for at least one image")
    if size < 16:
        raise UserError(f"size={size}: images must be at least 16 pixels (64 is the default)")
    if workers < 1:
        raise UserError(f"workers={workers}: use 1 (one process) or more")
    return out


def _dump_manifest(path: Path, header: dict, entries: list[dict]) -> None:
    """JSON with one line per header key and per image: readable, greppable, small."""
    head = "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items())
    body = ",\n".join("    " + json.dumps(e) for e in entries)
    path.write_text(f'{{\n{head}  "images": [\n{body}\n  ]\n}}\n', encoding="utf-8")


def _write_set(out: Path, manifest: str, header: dict, fn, tasks: list[tuple], workers: int) -> Path:
    """Run ``fn`` over ``tasks`` into a hidden staging folder beside ``out``, then rename it to ``out``:
    a crash or an error leaves no half-written folder behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    stage.mkdir()  # unlike mkdtemp, honours the umask
    try:
        jobs = [(str(stage), *task) for task in tasks]
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context(START_METHOD).Pool(min(workers, len(jobs))) as pool:
                chunks = pool.map(fn, jobs, chunksize=1)
        else:
            chunks = [fn(job) for job in jobs]
        _dump_manifest(stage / manifest, header, [e for chunk in chunks for e in chunk])
        try:
            os.replace(stage, out)  # replaces an empty folder; fails if one appeared meanwhile
        except OSError as err:
            raise UserError(f"cannot move the result to {out} ({err}); choose a new folder") from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def write_world(out, n: int, seed: int, size: int = 64, split: str = "train", workers: int = 1) -> Path:
    """Write ``n`` images ``{i:06d}.png`` with captions ``{i:06d}.txt`` and a ``world.json`` manifest
    to the new folder ``out``; the same arguments give the same bytes, whatever ``workers`` is."""
    out = _check_args(out, n, size, workers)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    header = dict(kind="shapes", version=MANIFEST_VERSION, seed=seed, n=n, size=size, split=split)
    header.update(held_out=[list(p) for p in sorted(HELD_OUT)], colours=list(COLOURS), shapes=list(SHAPES))
    step = n if workers == 1 else max(16, -(-n // (4 * workers)))  # ~4 chunks a worker: they balance out
    tasks = [(seed, split, size, a, min(a + step, n)) for a in range(0, n, step)]
    return _write_set(out, "world.json", header, _world_chunk, tasks, workers)


def write_concept(
    out, n: int, seed: int, concept: str = "striped_star", token: str = "sks", size: int = 64
) -> Path:
    """Write ``n`` instance images of ``concept`` (captioned "a {token} {class_word} on a ... background")
    and a ``concept.json`` manifest, with the same determinism and atomicity as ``write_world``."""
    out = _check_args(out, n, size)
    c = _concept(concept)
    if not token or any(ch.isspace() for ch in token):
        raise UserError(f"token {token!r}: use one word, such as sks")
    word = c.class_word
    header = dict(kind="concept", version=MANIFEST_VERSION, concept=concept, token=token, class_word=word)
    header.update(instance_prompt=f"a {token} {word}", class_prompt=f"a {word}", colours=list(c.colours))
    header.update(seed=seed, n=n, size=size)
    return _write_set(out, "concept.json", header, _concept_chunk, [(seed, concept, token, size, 0, n)], 1)


def _load_manifest(path, name: str, kind: str) -> dict:
    path = Path(path).expanduser()
    file = path / name if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file} does not exist; point at a folder written by `sdexp world`")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({err}); write the folder again") from err
    if not isinstance(data, dict) or data.get("kind") != kind or not isinstance(data.get("images"), list):
        raise UserError(f"{file} is not a {kind} manifest; point at a folder written by `sdexp world`")
    if data.get("version") != MANIFEST_VERSION:
        raise UserError(f"{file} has version {data.get('version')!r}, not {MANIFEST_VERSION}; write it again")
    return data


def load_world(path) -> dict:
    """The manifest of a world folder (or its world.json)."""
    return _load_manifest(path, "world.json", "shapes")


def load_concept(path) -> dict:
    """The manifest of a concept folder (or its concept.json)."""
    return _load_manifest(path, "concept.json", "concept")
