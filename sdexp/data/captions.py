"""Per-image caption sidecars (``photo.jpg`` -> ``photo.txt``), so captions live next to images.

Reading is what training does. Writing is only for ``sdexp caption``, whose job is to add sidecars
to the user's folder: it is atomic (a crash never leaves a half-written caption) and refuses to
replace an existing sidecar unless asked.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sdexp.errors import UserError


class CaptionExistsError(UserError):
    """A sidecar is already there and replacing it was not asked for."""


def check_caption_extension(caption_extension: str, setting: str = "data.caption_extension") -> str:
    """Return ``caption_extension`` if it looks like ``.txt``; raise UserError (naming ``setting``) otherwise."""
    if not caption_extension.startswith(".") or len(caption_extension) < 2 or "/" in caption_extension:
        raise UserError(
            f"{setting} must be a file extension starting with '.', got {caption_extension!r}; use e.g. '.txt'"
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_caption(
    image_path: Path, text: str, caption_extension: str = ".txt", *, overwrite: bool = False
) -> Path:
    """Write ``text`` as ``image_path``'s sidecar atomically and return its path.

    The text goes to a hidden temporary file in the same folder, which then takes the sidecar's name
    in one step: ``os.replace`` when ``overwrite``, else a hard link that fails if the name exists,
    so a sidecar that appeared meanwhile is never clobbered. Raises CaptionExistsError then.
    """
    path = caption_path(image_path, caption_extension)
    if not overwrite and path.exists():
        raise CaptionExistsError(f"caption file {path} already exists; pass --overwrite to replace it")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text.strip() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise CaptionExistsError(
                    f"caption file {path} already exists; pass --overwrite to replace it"
                ) from None
            except OSError:  # file systems without hard links: check-then-rename (a small race)
                if path.exists():
                    raise CaptionExistsError(
                        f"caption file {path} already exists; pass --overwrite to replace it"
                    ) from None
                os.replace(tmp, path)
    except OSError as e:
        raise UserError(
            f"cannot write caption file {path}: {e.strerror or e}; check the folder's permissions"
        ) from e
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return path
