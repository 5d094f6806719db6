"""AUTOMATIC1111-style ``parameters`` text in PNGs, so images carry how they were made (and A1111 reads it).

The format: the prompt (any number of lines), then ``Negative prompt: …``, then one line of
``Key: value`` pairs separated by ", "; a value with ``,``, ``:`` or a newline is JSON-quoted.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from sdexp.atomic import atomic_write_bytes

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(value: object) -> str:
    """A1111's quoting: plain unless the value holds a comma, colon or newline."""
    text = str(value)
    if not any(c in text for c in ",:\n"):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def format_parameters(
    prompt: str,
    negative: str = "",
    *,
    steps: int,
    sampler: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str | None = None,
    lora_hashes: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """The ``parameters`` text A1111 writes for one image."""
    params: dict[str, object] = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": f"{cfg_scale:g}",
        "Seed": seed,
        "Size": f"{width}x{height}",
    }
    if model:
        params["Model"] = model
    if lora_hashes:
        params["Lora hashes"] = ", ".join(f"{name}: {h}" for name, h in lora_hashes.items())
    params.update(extra or {})
    lines = [prompt]
    if negative:
        lines.append(f"{NEGATIVE_PREFIX} {negative}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict:
    """``parameters`` text → {"prompt", "negative_prompt", "params": {key: str}} (A1111's parser's rules)."""
    lines = text.strip("\n").split("\n")
    params: dict[str, str] = {}
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        params = {k.strip(): unquote(v) for k, v in _PARAM.findall(lines.pop())}
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].lstrip(" ")
        (negative_lines if in_negative else prompt_lines).append(line)
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines), "params": params}


def parse_lora_hashes(value: str) -> dict[str, str]:
    """``"a: 1234, b: 5678"`` → {"a": "1234", "b": "5678"}."""
    pairs = (item.rsplit(":", 1) for item in value.split(",") if ":" in item)
    return {name.strip(): h.strip() for name, h in pairs}


def write_png(image, path: str | Path, parameters: str) -> Path:
    """Save a PIL image as PNG with a ``parameters`` text chunk, atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)  # tEXt when latin-1 encodable, else iTXt
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return atomic_write_bytes(path, buffer.getvalue())


def read_parameters(path: str | Path) -> str | None:
    """The ``parameters`` text of a PNG, or None when it has none."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.info.get(PARAMETERS_KEY)
