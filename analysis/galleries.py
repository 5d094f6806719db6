"""Image galleries on the report pages: training images beside generated ones, with captions."""

from __future__ import annotations

from html import escape
from pathlib import Path

from analysis.artifacts import copy_training_images
from analysis.page import DASH, figure, note


def pick_entries(entries: list[dict], step) -> list[dict]:
    """The entry logged at the best step (else the last one), plus the base (step 0) before it."""
    if not entries:
        return []
    chosen = next((e for e in entries if e["step"] == step), entries[-1])
    base = next((e for e in entries if e["step"] == 0), None)
    return [base, chosen] if base is not None and base is not chosen else [chosen]


def gallery(shown: list[tuple[str | None, str]]) -> str:
    items = [figure(src, caption) if src else f"<figure>{DASH}<figcaption>{escape(caption)}</figcaption></figure>"
             for src, caption in shown]  # fmt: skip
    return f'<div class="gallery">{"".join(items)}</div>'


def training_images_html(run_dir: Path, prefix: str, images_dir: Path) -> str:
    shown, origin = copy_training_images(run_dir, prefix, images_dir)
    head = "<h3>Training images</h3>"
    if not shown:
        return head + note(f"{DASH} none shown: {origin}")
    return head + note(f"the first {len(shown)} of {origin}") + gallery(shown)
