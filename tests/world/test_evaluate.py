"""The world's judge: prompts grid, held-out prompt sets, and classification by a CLIP."""

from __future__ import annotations

import torch

from sdexp.world.evaluate import ShapesJudge, attribute_grid, heldout_prompts
from sdexp.world.shapes import COLOURS, HELD_OUT, SHAPES


def test_grid_covers_every_one_shape_scene():
    grid = attribute_grid()
    assert len(grid) == len(COLOURS) * len(SHAPES) * (len(COLOURS) - 1)
    assert all(c != b for c, _, b in grid)


def test_heldout_prompts_are_deterministic_and_half_held_out():
    a, b = heldout_prompts(200, seed=3), heldout_prompts(200, seed=3)
    assert a == b and a != heldout_prompts(200, seed=4)
    held = sum((c, s) in HELD_OUT for c, s, _ in a)
    assert 70 <= held <= 130


class _FakeClip:
    """Embeds a text by its grid index and an image by the index stored in its info: a perfect judge."""

    def __init__(self):
        self.index = {}

    def encode_texts(self, texts):
        self.index = {t: i for i, t in enumerate(texts)}
        return torch.eye(len(texts))

    def encode_images(self, images):
        return torch.stack([torch.eye(len(self.index))[img] for img in images])


def test_accuracy_reads_each_attribute_off_the_best_prompt():
    judge = ShapesJudge(_FakeClip())
    grid = judge.grid
    truths = [grid[0], grid[1], grid[2], grid[3]]
    # predictions: right, wrong colour only, wrong background only, all right
    wrong_colour = next(i for i, g in enumerate(grid) if g[1:] == grid[1][1:] and g[0] != grid[1][0])
    wrong_bg = next(i for i, g in enumerate(grid) if g[:2] == grid[2][:2] and g[2] != grid[2][2])
    acc = judge.accuracy([0, wrong_colour, wrong_bg, 3], truths)
    assert acc == {"colour": 0.75, "shape": 1.0, "background": 0.75, "all": 0.5}
