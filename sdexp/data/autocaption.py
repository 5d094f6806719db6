"""Captions a folder of images with a local image-to-text model, writing sidecars and a review page.

Hand-writing twenty captions is tedious and a few hundred is impractical; a captioning model gives
a first draft that the user then reviews (the HTML page) and edits. Everything is local: models
load with ``local_files_only=True`` (a folder, or a hub id already in the HF cache), custom model
code runs only with an explicit ``trust_remote_code``. Only sidecars are added to the data folder;
an existing one is replaced only with ``overwrite``, so re-running resumes an interrupted job.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sdexp.data.captions import caption_path, read_caption, write_caption
from sdexp.data.scan import IMAGE_EXTENSIONS, find_images
from sdexp.data.transforms import load_rgb
from sdexp.errors import UserError

FAMILIES = "BLIP, BLIP-2, GIT, Florence-2"
MODEL_HELP = (
    f"--model is required: pass a local folder of an image-to-text captioning model ({FAMILIES}), e.g. one "
    "saved with save_pretrained, or a hub id already in the local Hugging Face cache (nothing is downloaded)"
)
_PASS_FOLDER = f"pass a local folder of a {FAMILIES} model (model and processor saved with save_pretrained)"
# Models that caption only when told to: their task prompt (overridable with --model-prompt).
DEFAULT_PROMPTS = {"florence2": "<DETAILED_CAPTION>"}
# transformers' auto classes that remote-code captioners register under, in order of preference.
_REMOTE_AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")
MISSING_SHARE = 0.1  # refuse a model when this share of its weights is missing from the checkpoint
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
THUMBNAIL_SIZE = 256


# ---------------------------------------------------------------- the model


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error, not a fallback."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; pass --device cpu or --device auto")
    return device


def check_model_source(model: str | None) -> str:
    """A local folder as a string, or a hub id to look up in the cache; UserError for anything else.

    Cheap (no imports), so the command checks it before scanning images.
    """
    if not model:
        raise UserError(MODEL_HELP)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model: {path} is a file; pass the model's folder (holding config.json)")
        if not (path / "config.json").is_file():
            raise UserError(
                f"--model: {path} has no config.json, so it is not a transformers model folder; {_PASS_FOLDER}"
            )
        return str(path)
    if not _HUB_ID.match(model):
        raise UserError(f"--model: folder {path} does not exist; {_PASS_FOLDER}")
    return model


def _first_sentence(err: Exception) -> str:
    return (
        str(err).strip().splitlines()[0].split(". ")[0].rstrip(".")
        if str(err).strip()
        else type(err).__name__
    )


def _not_found(model: str) -> UserError:
    return UserError(
        f"--model: {model} is not a folder here nor a model in the local Hugging Face cache (nothing is "
        f"downloaded); fetch it where there is network (`hf download {model}`), or {_PASS_FOLDER}"
    )


def _load_config(source: str, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        # trust_remote_code is always passed explicitly: left at None, transformers may prompt on stdin
        return AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(
                f"--model: {source} needs its own Python code to load (trust_remote_code); read that code, "
                "and pass --trust-remote-code if you trust it"
            ) from e
        raise UserError(
            f"--model: {source} is not a transformers model ({_first_sentence(e)}); {_PASS_FOLDER}"
        ) from e
    except OSError as e:
        raise _not_found(source) from e


def _model_class(config, source: str, trust_remote_code: bool):
    """The class that loads ``config`` as an image-to-text generator, or UserError if it is something else."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and auto_map:
        for name in _REMOTE_AUTO_CLASSES:
            if name in auto_map:
                if hasattr(transformers, name):
                    return getattr(transformers, name)
                from transformers.dynamic_module_utils import get_class_from_dynamic_module

                return get_class_from_dynamic_module(auto_map[name], source, local_files_only=True)
    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return transformers.AutoModelForImageTextToText
    raise UserError(
        f"--model: {source} is a {config.model_type!r} model, not an image-to-text captioning model; "
        f"pass a {FAMILIES} model folder"
    )


@dataclass
class Captioner:
    """A loaded model and processor that turn a batch of RGB images into caption strings."""

    model: Any
    processor: Any
    device: str
    name: str
    prompt: str | None = None  # task prompt fed with each image (Florence-2), else None
    max_new_tokens: int = 40
    dtype: Any = None

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image (greedy decoding, so the same image gives the same caption)."""
        import torch

        text = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt")
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
            and k != "token_type_ids"  # BERT tokenizers add it; generate rejects it
        }
        try:
            with torch.inference_mode():
                out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        except torch.cuda.OutOfMemoryError as e:
            raise UserError(
                f"out of GPU memory captioning a batch of {len(images)}; pass a smaller --batch-size"
            ) from e
        decoded = self.processor.batch_decode(out, skip_special_tokens=True)
        echoed = (
            self.processor.batch_decode(inputs["input_ids"], skip_special_tokens=True)
            if "input_ids" in inputs
            else [""] * len(images)
        )
        return [_clean(text, prompt) for text, prompt in zip(decoded, echoed, strict=True)]


def _clean(text: str, prompt: str) -> str:
    """One line of text, without the prompt that decoder-only models echo back."""
    text, prompt = " ".join(text.split()), " ".join(prompt.split())
    if prompt and text.lower().startswith(prompt.lower()):
        text = text[len(prompt) :]
    return text.strip()


def load_captioner(
    model: str | None,
    *,
    device: str = "auto",
    trust_remote_code: bool = False,
    prompt: str | None = None,
    max_new_tokens: int = 40,
    allow_pickle: bool = False,
    warn: Callable[[str], object] = lambda line: print(line, file=sys.stderr),
) -> Captioner:
    """Load a local image-to-text model and its processor; every failure is a one-line UserError.

    Weights load from safetensors only, unless ``allow_pickle`` (pickle files can run code).
    """
    source = check_model_source(model)
    folder = Path(source)
    if not allow_pickle and folder.is_dir() and not any(folder.glob("*.safetensors")):
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
            raise UserError(
                f"--model: {source} holds only pickle weights (.bin/.pt), which can run code when loaded; "
                "convert them to safetensors, or pass --allow-pickle if you trust the file"
            )
    import torch
    from transformers import AutoProcessor

    device = resolve_device(device)
    config = _load_config(source, trust_remote_code)
    cls = _model_class(config, source, trust_remote_code)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    try:
        processor = AutoProcessor.from_pretrained(
            source, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError) as e:
        raise UserError(
            f"--model: cannot load the processor of {source} ({_first_sentence(e)}); save the processor into "
            "the model's folder too (processor.save_pretrained: image processor and tokenizer files)"
        ) from e
    if not hasattr(processor, "image_processor") or not hasattr(processor, "batch_decode"):
        raise UserError(
            f"--model: {source}'s processor ({type(processor).__name__}) does not take images and text; "
            f"pass a {FAMILIES} model folder"
        )
    try:
        loaded, info = cls.from_pretrained(
            source,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            output_loading_info=True,
        )
    except OSError as e:
        raise UserError(f"--model: cannot load the weights in {source} ({_first_sentence(e)})") from e
    missing = sorted(info.get("missing_keys") or [])
    total = max(1, len(loaded.state_dict()))
    if len(missing) >= MISSING_SHARE * total:  # mostly random weights would caption silently and uselessly
        raise UserError(
            f"--model: {source}'s weights do not fit {type(loaded).__name__} ({len(missing)} of {total} "
            f"missing, e.g. {missing[0]}); it may need --trust-remote-code or a transformers-format checkpoint"
        )
    if missing:
        warn(f"warning: {len(missing)} weight(s) of {source} are missing and start random, e.g. {missing[0]}")
    return Captioner(
        model=loaded.to(device).eval(),
        processor=processor,
        device=device,
        name=source,
        prompt=prompt if prompt is not None else DEFAULT_PROMPTS.get(config.model_type),
        max_new_tokens=max_new_tokens,
        dtype=dtype,
    )


# ---------------------------------------------------------------- the review page


@dataclass
class ReviewEntry:
    path: Path
    status: str  # new | replaced | existing | unreadable | empty
    caption: str = ""
    thumbnail: str | None = None  # relative to the review folder
    note: str = ""


class ReviewPage:
    """An HTML page with a thumbnail and the caption of every image, to check captions at a glance.

    Thumbnails are written as they come (the images are never all in memory); ``finish`` writes
    ``index.html``. Every path and caption is HTML-escaped: captions are arbitrary text.
    """

    def __init__(self, out_dir: Path, data_dir: Path, title: str = ""):
        self.out_dir, self.data_dir, self.title = out_dir, data_dir, title
        self.thumbs = out_dir / "thumbs"
        try:
            self.thumbs.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"--review: cannot create {self.thumbs}: {e.strerror or e}; pass --review DIR"
            ) from e
        self.entries: list[ReviewEntry] = []

    def add(
        self, path: Path, image: Image.Image | None, status: str, caption: str = "", note: str = ""
    ) -> None:
        thumbnail = None
        if image is not None:
            thumbnail = f"thumbs/{len(self.entries):05d}.jpg"
            small = image.copy()
            small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            small.save(self.out_dir / thumbnail, quality=85)
        self.entries.append(ReviewEntry(path, status, caption, thumbnail, note))

    def finish(self) -> Path:
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.status] = counts.get(e.status, 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        rows = "\n".join(self._row(e) for e in self.entries)
        esc = html.escape
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Captions: {esc(str(self.data_dir))}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 6px; text-align: left; vertical-align: top; }}
img {{ max-width: {THUMBNAIL_SIZE}px; max-height: {THUMBNAIL_SIZE}px; }}
.existing {{ color: #555; }} .unreadable, .empty {{ color: #b00; }}
</style></head><body>
<h1>Captions for {esc(str(self.data_dir))}</h1>
<p>{esc(self.title)}</p>
<p>{len(self.entries)} image(s): {esc(summary)}. Edit a caption in its sidecar file next to the image.</p>
<table>
<tr><th>image</th><th>file</th><th>status</th><th>caption</th></tr>
{rows}
</table></body></html>
"""
        index = self.out_dir / "index.html"
        index.write_text(page, encoding="utf-8")
        return index

    def _row(self, e: ReviewEntry) -> str:
        esc = html.escape
        try:
            name = str(e.path.relative_to(self.data_dir))
        except ValueError:
            name = str(e.path)
        link = esc(e.path.resolve().as_uri(), quote=True)
        thumb = (
            f'<a href="{link}"><img src="{esc(e.thumbnail, quote=True)}" alt=""></a>' if e.thumbnail else ""
        )
        text = esc(e.caption) if e.caption else f"<em>{esc(e.note)}</em>"
        return (
            f'<tr class="{esc(e.status, quote=True)}"><td>{thumb}</td><td><a href="{link}">{esc(name)}</a></td>'
            f"<td>{esc(e.status)}</td><td>{text}</td></tr>"
        )


# ---------------------------------------------------------------- the job


@dataclass
class CaptionReport:
    """What a captioning job did, for the summary and for tests."""

    written: list[tuple[Path, Path]] = field(default_factory=list)  # (image, sidecar)
    existing: list[Path] = field(default_factory=list)  # images skipped: they already had a sidecar
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    empty: list[Path] = field(default_factory=list)  # the model returned no text
    review: Path | None = None


def check_review_dir(review_dir: Path, data_dir: Path) -> Path:
    """The review folder, refused inside the data folder (its thumbnails would become training images)."""
    review_dir = review_dir.expanduser().resolve()
    data = data_dir.expanduser().resolve()
    if review_dir == data or review_dir.is_relative_to(data):
        raise UserError(
            f"--review: {review_dir} is inside the data folder {data}; its thumbnails would be read as "
            "training images; pass --review DIR outside it (or run from another folder)"
        )
    if review_dir.exists() and not review_dir.is_dir():
        raise UserError(f"--review: {review_dir} is a file; pass a folder")
    return review_dir


def join_prefix(prefix: str, caption: str) -> str:
    """``prefix`` then ``caption``, with a space between unless the prefix ends with one."""
    if not prefix or prefix[-1].isspace():
        return prefix + caption
    return f"{prefix} {caption}"


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _reason(err: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not a readable image (corrupt, empty or unsupported format)"
    return f"{type(err).__name__}: {err}"


def _load(path: Path) -> tuple[Image.Image | None, str]:
    try:
        return load_rgb(path), ""
    except Exception as e:  # any decode failure: report the file and go on with the others
        return None, _reason(e)


def caption_folder(
    data_dir: Path,
    load: Callable[[], Captioner],
    *,
    review_dir: Path,
    prefix: str = "",
    overwrite: bool = False,
    caption_extension: str = ".txt",
    batch_size: int = 8,
    log: Callable[[str], object] = print,
) -> CaptionReport:
    """Caption every image under ``data_dir`` that has no sidecar (all with ``overwrite``).

    ``load`` is called only when a readable image needs a caption, so a folder that is already
    captioned costs no model load. Unreadable images are reported and skipped; the review page lists all.
    """
    data_dir = Path(data_dir).expanduser()
    review_dir = check_review_dir(review_dir, data_dir)
    paths = find_images(data_dir, setting="DATA")
    if not paths:
        raise UserError(
            f"no images found in {data_dir} (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively); "
            "pass the folder that holds your images"
        )
    report = CaptionReport()
    todo = [p for p in paths if overwrite or not caption_path(p, caption_extension).exists()]
    title = f"{len(todo)} to caption" + (f" with prefix {prefix!r}" if prefix else "")
    review = ReviewPage(review_dir, data_dir.resolve(), title)
    pending = set(todo)
    for path in paths:
        if path in pending:
            continue
        report.existing.append(path)
        image, reason = _load(path)
        if image is None:
            report.unreadable.append((path, reason))
        try:
            caption, note = read_caption(path, caption_extension) or "", "blank caption file"
        except UserError as e:  # e.g. not UTF-8: show it on the page, it is not this command's to fix
            caption, note = "", str(e)
        status = "existing" if image is not None else "unreadable"
        review.add(path.resolve(), image, status, caption, reason or note)

    captioner = None  # loaded at the first readable image that needs a caption
    done = 0
    for batch in _batches(todo, batch_size):
        loaded = []
        for path in batch:
            image, reason = _load(path)
            if image is None:
                report.unreadable.append((path, reason))
                review.add(path.resolve(), None, "unreadable", note=reason)
            else:
                loaded.append((path, image))
        if loaded and captioner is None:
            captioner = load()
            review.title = f"{title}; model {captioner.name}"
        captions = captioner.caption([image for _, image in loaded]) if loaded else []
        for (path, image), caption in zip(loaded, captions, strict=True):
            if not caption:
                report.empty.append(path)
                review.add(
                    path.resolve(), image, "empty", note="the model returned no text; no sidecar written"
                )
                continue
            existed = caption_path(path, caption_extension).exists()
            text = join_prefix(prefix, caption)
            sidecar = write_caption(path, text, caption_extension, overwrite=overwrite)
            report.written.append((path, sidecar))
            review.add(path.resolve(), image, "replaced" if existed else "new", text)
        done += len(batch)
        log(f"captioned {done}/{len(todo)} image(s)")
    report.review = review.finish()
    return report
