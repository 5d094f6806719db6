"""Reads the optional per-image caption sidecar (``photo.jpg`` -> ``photo.txt``) so captions live next to images."""

from __future__ import annotations

from pathlib import Path

from sdexp.errors import UserError


def check_caption_extension(caption_extension: str) -> str:
    """Return ``caption_extension`` if it looks like ``.txt``; raise UserError otherwise."""
    if not caption_extension.startswith(".") or len(caption_extension) < 2 or "/" in caption_extension:
        raise UserError(
            f"data.caption_extension must be a file extension starting with '.', got {caption_extension!r}; "
            "use e.g. '.txt'"
        )
    return caption_extension


def caption_path(image_path: Path, caption_extension: str = ".txt") -> Path:
    """The sidecar file that holds ``image_path``'s caption: same folder, same stem."""
    return Path(image_path).with_suffix(check_caption_extension(caption_extension))


def read_caption(image_path: Path, caption_extension: str = ".txt") -> str | None:
    """The stripped sidecar caption, or None when the sidecar is missing or blank."""
    path = caption_path(image_path, caption_extension)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"caption file {path} is not valid UTF-8 ({e.reason}); re-save it as UTF-8") from e
    except OSError as e:
        raise UserError(f"cannot read caption file {path}: {e.strerror or e}; check its permissions") from e
    text = text.strip()
    return text or None
