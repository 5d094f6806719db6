"""What a run folder holds, read defensively and copied beside the report page.

A report is read while runs are still going, after folders were cleaned up, and from folders
written by older versions: every reader here returns something empty rather than raising. Images
are copied (or thumbnailed) into the report's images/ folder so the report can be moved on its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sdexp.tracking.run_folder import SAMPLES_DIR, read_metrics, sanitise_key
from sdexp.tracking.run_log import RUN_LOG

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
THUMB_PX = 160
LOG_LINES = 12


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_config(run_dir: Path) -> dict:
    """The run's composed config.yaml as a dict ({} when missing or unreadable)."""
    import yaml

    try:
        value = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def read_index(folder: Path) -> list[dict]:
    """Entries of a samples index.jsonl; unreadable lines are skipped (a torn write)."""
    try:
        lines = (Path(folder) / "index.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("step"), int)]


def safe_metrics(run_dir: Path) -> list[dict]:
    try:
        return read_metrics(run_dir)
    except (OSError, ValueError):
        return []


def eval_image_folders(run_dir: Path) -> list[Path]:
    """samples/<key>/ folders that hold an index.jsonl (eval_subject first, then the others)."""
    root = Path(run_dir) / SAMPLES_DIR
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if (p / "index.jsonl").is_file())
    return sorted(folders, key=lambda p: p.name != "eval_subject")


def copy_entry_images(
    folder: Path, entry: dict, prefix: str, images_dir: Path
) -> list[tuple[str | None, str]]:
    """(path relative to the page or None when the file is gone, caption) for one index entry."""
    captions = entry.get("captions") or []
    shown = []
    for i, name in enumerate(entry.get("files") or []):
        src = Path(folder) / Path(str(name)).name
        caption = captions[i] if i < len(captions) and captions[i] is not None else ""
        if not src.is_file():
            shown.append((None, str(caption)))
            continue
        dest = images_dir / f"{prefix}-{sanitise_key(Path(folder).name)}-{sanitise_key(src.name)}"
        images_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        shown.append((f"{images_dir.name}/{dest.name}", str(caption)))
    return shown


def training_image_paths(run_dir: Path, limit: int) -> tuple[list[Path], str]:
    """A few of the images the run trained on (config.yaml's data.dir), and where they came from."""
    data = read_config(run_dir).get("data") or {}
    folder = data.get("dir")
    if not folder:
        return [], "the run's config.yaml names no data.dir"
    folder = Path(str(folder)).expanduser()
    if not folder.is_dir():
        return [], f"{folder} (data.dir) is not there any more"
    found = sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.lower().endswith(".mask.png") and p.is_file()
    )  # fmt: skip
    return found[:limit], str(folder)


def thumbnail(src: Path, dest: Path) -> bool:
    """A PNG at most THUMB_PX on its long side; False when the image cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(src) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB_PX, THUMB_PX))
            dest.parent.mkdir(parents=True, exist_ok=True)
            image.save(dest, format="PNG")
    except (OSError, UnidentifiedImageError, ValueError):
        return False
    return True


def copy_training_images(
    run_dir: Path, prefix: str, images_dir: Path, limit: int = 6
) -> tuple[list[tuple[str, str]], str]:
    """Thumbnails of a few training images in the report's images/, (src, file name) each, and the folder."""
    paths, origin = training_image_paths(run_dir, limit)
    shown = []
    for i, path in enumerate(paths):
        dest = images_dir / f"{prefix}-train-{i:02d}.png"
        if thumbnail(path, dest):
            shown.append((f"{images_dir.name}/{dest.name}", path.name))
    return shown, origin


def log_tail(run_dir: Path, lines: int = LOG_LINES) -> str | None:
    """The last lines of the run's run.log (its traceback, for a failed run); None without one."""
    try:
        text = (Path(run_dir) / RUN_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.rstrip().splitlines()[-lines:])
