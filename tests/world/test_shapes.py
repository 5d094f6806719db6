"""The shapes world: deterministic, atomic folders whose pixels and manifests say what the captions say."""

from __future__ import annotations

import json
import random
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdexp.errors import UserError
from sdexp.world import shapes
from sdexp.world.shapes import (
    COLOURS,
    CONCEPTS,
    HELD_OUT,
    SHAPES,
    Scene,
    ShapeSpec,
    caption,
    load_concept,
    load_world,
    prompt,
    render,
    render_concept,
    sample_scene,
    scene_from_dict,
    write_concept,
    write_world,
)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=int)


def near(pixel, colour: str, tol: int = 4) -> bool:
    return int(np.abs(np.asarray(pixel) - COLOURS[colour]).max()) <= tol


def scenes(split: str, n: int) -> list[Scene]:
    return [sample_scene(random.Random(f"t:{split}:{i}"), split) for i in range(n)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("w") / "world", n=150, seed=7)


# ---------------------------------------------------------------- determinism and atomicity


def test_same_arguments_give_the_same_bytes_whatever_the_workers(tmp_path, world, monkeypatch):
    again = write_world(tmp_path / "again", n=150, seed=7)
    assert folder_bytes(again) == folder_bytes(world)
    monkeypatch.setattr(shapes, "START_METHOD", "spawn")  # workers must be importable top-level functions
    parallel = write_world(tmp_path / "parallel", n=150, seed=7, workers=2)
    assert folder_bytes(parallel) == folder_bytes(world)
    other = folder_bytes(write_world(tmp_path / "other", n=150, seed=8))
    differing = [name for name, data in other.items() if data != folder_bytes(world)[name]]
    assert len(differing) > 140  # nearly every image and the manifest


def test_files_and_manifest(world):
    names = sorted(p.name for p in world.iterdir())
    assert names == sorted([f"{i:06d}.png" for i in range(150)] + [f"{i:06d}.txt" for i in range(150)]) + [
        "world.json"
    ]
    assert not [p for p in world.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    manifest = load_world(world)
    assert manifest == json.loads((world / "world.json").read_text())
    assert (manifest["kind"], manifest["version"], manifest["n"], manifest["seed"]) == ("shapes", 1, 150, 7)
    assert manifest["held_out"] == sorted([list(p) for p in HELD_OUT])
    assert manifest["colours"] == list(COLOURS) and manifest["shapes"] == list(SHAPES)
    assert [e["file"] for e in manifest["images"]] == [f"{i:06d}.png" for i in range(150)]
    with Image.open(world / "000000.png") as img:
        assert (img.mode, img.size) == ("RGB", (64, 64))


def test_refuses_bad_arguments_and_leaves_a_non_empty_folder_untouched(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_world(taken, n=3, seed=0)
    assert folder_bytes(taken) == {"keep.txt": b"mine"}
    with pytest.raises(UserError, match="not empty"):
        write_concept(taken, n=3, seed=0)
    for kwargs, message in [
        ({"n": 0}, "at least one"),
        ({"size": 8}, "at least 16"),
        ({"split": "test"}, "unknown split"),
        ({"workers": 0}, "workers"),
    ]:
        with pytest.raises(UserError, match=message):
            write_world(tmp_path / "new", **{"n": 3, "seed": 0, **kwargs})
    with pytest.raises(UserError, match="unknown concept"):
        write_concept(tmp_path / "new", n=3, seed=0, concept="polka_dot")
    with pytest.raises(UserError, match="one word"):
        write_concept(tmp_path / "new", n=3, seed=0, token="two words")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(load_world(write_world(empty, n=2, seed=0))["images"]) == 2  # an empty folder is fine


def test_a_failure_halfway_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_render(scene, size=64):
        calls.append(scene)
        if len(calls) == 5:
            raise RuntimeError("disk full")
        return Image.new("RGB", (size, size))

    monkeypatch.setattr(shapes, "render", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        write_world(tmp_path / "world", n=10, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_load_world_explains_a_missing_or_broken_manifest(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_world(tmp_path)
    (tmp_path / "world.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_world(tmp_path)
    (tmp_path / "world.json").write_text('{"kind": "concept", "images": []}')
    with pytest.raises(UserError, match="not a shapes manifest"):
        load_world(tmp_path / "world.json")


# ---------------------------------------------------------------- sampling


def test_train_split_never_shows_a_held_out_pair_but_every_colour_and_shape(world):
    sampled = scenes("train", 3000)
    pairs = Counter((s.colour, s.kind) for scene in sampled for s in scene.shapes)
    assert not set(pairs) & HELD_OUT
    assert {c for c, _ in pairs} == set(COLOURS) and {k for _, k in pairs} == set(SHAPES)
    assert set(pairs) == {(c, k) for c in COLOURS for k in SHAPES} - HELD_OUT
    two = sum(len(scene.shapes) == 2 for scene in sampled) / len(sampled)
    assert 0.25 < two < 0.35
    written = [scene_from_dict(e["scene"]) for e in load_world(world)["images"]]
    assert not {(s.colour, s.kind) for scene in written for s in scene.shapes} & HELD_OUT


def test_heldout_split_is_half_held_out_pairs_and_any_is_unrestricted():
    sampled = scenes("heldout", 1000)
    assert all(len(scene.shapes) == 1 for scene in sampled)
    held = [(s.colour, s.kind) for scene in sampled for s in scene.shapes if (s.colour, s.kind) in HELD_OUT]
    assert 0.4 < len(held) / len(sampled) < 0.6
    assert set(held) == HELD_OUT
    anything = {(s.colour, s.kind) for scene in scenes("any", 1000) for s in scene.shapes}
    assert HELD_OUT <= anything
    with pytest.raises(UserError, match="unknown split"):
        sample_scene(random.Random(0), "validation")


def test_scene_geometry_and_colours():
    for scene in scenes("any", 2000):
        colours = [s.colour for s in scene.shapes]
        assert scene.background not in colours and len(set(colours)) == len(colours)
        for s in scene.shapes:
            assert s.r <= s.cx <= 1 - s.r and s.r <= s.cy <= 1 - s.r  # wholly inside the image
            assert abs(s.cy - 0.5) <= 0.12 + 1e-9
        if len(scene.shapes) == 1:
            s = scene.shapes[0]
            assert 0.30 <= s.r <= 0.36 if s.size == "large" else 0.18 <= s.r <= 0.22
            assert abs(s.cx - 0.5) <= 0.12 + 1e-9
        else:
            left, right = scene.shapes
            assert all(0.17 <= s.r <= 0.21 for s in scene.shapes)
            assert left.cx + left.r < 0.5 < right.cx - right.r  # one per half: they cannot overlap


# ---------------------------------------------------------------- captions


def test_captions_agree_with_the_manifest_scene(world):
    with_size = 0
    for entry in load_world(world)["images"]:
        scene = scene_from_dict(entry["scene"])
        assert scene.to_dict() == entry["scene"]
        text = (world / entry["file"]).with_suffix(".txt").read_text()
        assert text == entry["caption"] + "\n"
        if entry["caption"] != caption(scene):
            (s,) = scene.shapes  # only single shapes get a size word
            assert entry["caption"] == f"a {s.size} {s.colour} {s.kind} on a {scene.background} background"
            with_size += 1
    assert 30 < with_size < 110


def test_caption_forms():
    circle = ShapeSpec("circle", "red", "large", 0.5, 0.5)
    assert caption(Scene("blue", (circle,))) == "a red circle on a blue background"
    assert prompt("red", "circle", "blue") == caption(Scene("blue", (circle,)))
    sized = {caption(Scene("blue", (circle,)), random.Random(i)) for i in range(20)}
    assert sized == {"a red circle on a blue background", "a large red circle on a blue background"}
    right = ShapeSpec("star", "white", "small", 0.75, 0.5, 0.2)
    left = ShapeSpec("ring", "green", "small", 0.25, 0.5, 0.2)
    assert caption(Scene("black", (right, left))) == "a green ring and a white star on a black background"


# ---------------------------------------------------------------- pixels


def test_pixels_show_what_the_caption_says(world):
    for entry in load_world(world)["images"]:
        scene = scene_from_dict(entry["scene"])
        with Image.open(world / entry["file"]) as img:
            px = pixels(img)
        assert np.array_equal(px, pixels(render(scene)))  # the manifest alone reproduces the image
        for corner in (px[0, 0], px[0, -1], px[-1, 0], px[-1, -1]):
            assert near(corner, scene.background, tol=2)
        for s in scene.shapes:
            centre = px[int(s.cy * 64), int(s.cx * 64)]
            assert near(centre, scene.background if s.kind == "ring" else s.colour), (entry, centre)


def test_the_six_shapes_look_clearly_different():
    for r in (0.17, 0.33):
        masks = {
            kind: pixels(render(Scene("black", (ShapeSpec(kind, "white", "small", 0.5, 0.5, r),))))[..., 0]
            > 127
            for kind in SHAPES
        }
        for a, b in combinations(SHAPES, 2):
            differing = (masks[a] ^ masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert differing > 0.15, (a, b, r, differing)


def test_render_size_and_anti_aliasing():
    scene = Scene("black", (ShapeSpec("circle", "white", "large", 0.5, 0.5),))
    assert render(scene, size=32).size == (32, 32)
    grey = pixels(render(scene))[..., 0]
    assert ((grey > 40) & (grey < 220)).sum() > 20  # soft edges, not a hard 1-bit outline


# ---------------------------------------------------------------- concepts


@pytest.mark.parametrize("name", ["striped_star", "checker_square"])
def test_concept_is_two_coloured_inside_its_shape(name):
    concept = CONCEPTS[name]
    for r in (0.18, 0.33):
        px = pixels(render_concept(name, "black", 0.5, 0.5, r)).reshape(-1, 3)
        for colour in concept.colours:
            assert sum(near(p, colour, tol=10) for p in px) > 20 * r / 0.18, (name, colour, r)
        assert near(px[0], "black", tol=2)


def test_concept_folder(tmp_path):
    out = write_concept(tmp_path / "c", n=24, seed=3, concept="checker_square", token="zwx")
    assert folder_bytes(out) == folder_bytes(
        write_concept(tmp_path / "c2", n=24, seed=3, concept="checker_square", token="zwx")
    )
    assert folder_bytes(out) != folder_bytes(
        write_concept(tmp_path / "c3", n=24, seed=4, concept="checker_square", token="zwx")
    )
    manifest = load_concept(out)
    assert {k: manifest[k] for k in ("kind", "concept", "token", "class_word", "n", "seed")} == {
        "kind": "concept",
        "concept": "checker_square",
        "token": "zwx",
        "class_word": "square",
        "n": 24,
        "seed": 3,
    }
    assert (manifest["instance_prompt"], manifest["class_prompt"]) == ("a zwx square", "a square")
    backgrounds = set()
    for entry in manifest["images"]:
        bg = entry["background"]
        assert bg not in CONCEPTS["checker_square"].colours
        assert entry["caption"] == f"a zwx square on a {bg} background"
        assert (out / entry["file"]).with_suffix(".txt").read_text() == entry["caption"] + "\n"
        with Image.open(out / entry["file"]) as img:
            px = pixels(img)
        assert np.array_equal(
            px, pixels(render_concept("checker_square", bg, entry["cx"], entry["cy"], entry["r"]))
        )
        backgrounds.add(bg)
    assert len(backgrounds) >= 4
    assert {e["size"] for e in manifest["images"]} == {"small", "large"}
