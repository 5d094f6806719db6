"""Turns a stored caption into the text the model sees at one step: template, {token}, tag shuffling, dropout.

Captions are often comma-separated tags ("sks dog, sofa, living room, warm light"). Shuffling
the tags and dropping some (or, rarely, the whole caption) each step stops the model from tying
the subject to one fixed word order or to every incidental tag, and caption dropout teaches the
unconditional prediction that classifier-free guidance uses. The first ``keep_tokens`` tags keep
their place and are never dropped (kohya's ``keep_tokens``): put the trigger word there.

A policy that changes the text between steps (``is_static`` is False) means the text-encoder
outputs differ per step. They could only be cached as several pre-rendered variants per image;
sdexp does not do that: with such a policy the text encoder stays live and encodes every batch's
text, so ``data.cache.text`` saves nothing for those captions.

Pure Python (no torch), so config validation can import it.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable

from sdexp.data.options import CaptionOptions
from sdexp.errors import ConfigError, UserError

CAPTION_FIELD = "{caption}"
TOKEN_FIELD = "{token}"
_FIELD = re.compile(r"\{(\w*)\}")


def validate_caption_options(options: CaptionOptions, token: str | None, prefix: str = "data") -> None:
    """Raise ConfigError naming the first bad ``data.captions.*`` key (or ``data.token``)."""
    key = f"{prefix}.captions"
    unknown = sorted(
        {f"{{{name}}}" for name in _FIELD.findall(options.template)} - {CAPTION_FIELD, TOKEN_FIELD}
    )
    if unknown:
        raise ConfigError(
            f"{key}.template: unknown field {', '.join(unknown)} in {options.template!r}; "
            f"only {CAPTION_FIELD} and {TOKEN_FIELD} are substituted"
        )
    if TOKEN_FIELD in options.template and not _token(token):
        raise ConfigError(
            f"{prefix}.token: {key}.template {options.template!r} uses {TOKEN_FIELD} but {prefix}.token is not set; "
            f"set {prefix}.token to your subject's identifier, e.g. {prefix}.token=sks"
        )
    if (
        isinstance(options.keep_tokens, bool)
        or not isinstance(options.keep_tokens, int)
        or options.keep_tokens < 0
    ):
        raise ConfigError(f"{key}.keep_tokens: must be an integer >= 0 (got {options.keep_tokens!r})")
    for name in ("tag_dropout", "dropout"):
        value = getattr(options, name)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}.{name}: must be in [0, 1) (got {value})")
    if not options.separator:
        raise ConfigError(
            f"{key}.separator: must be a non-empty string such as ',' (got {options.separator!r})"
        )


def _token(token: str | None) -> str | None:
    return token.strip() if token and token.strip() else None


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """The caption's tags: split on ``separator``, stripped, empty ones dropped."""
    return [tag.strip() for tag in caption.split(separator) if tag.strip()]


class CaptionPolicy:
    """Renders a caption per step from ``data.captions`` and ``data.token``; deterministic given the rng.

    Order: ``{token}`` in the caption is substituted; whole-caption ``dropout`` (-> ""); the caption's
    tags after the first ``keep_tokens`` are dropped with ``tag_dropout`` and shuffled; the result
    fills ``{caption}`` in ``template`` (whose own text is never shuffled or dropped). The rng is
    consumed only by enabled features, so turning one off does not change the draws of another.
    """

    def __init__(self, options: CaptionOptions, token: str | None = None):
        validate_caption_options(options, token)
        self.options = options
        self.token = _token(token)
        sep = options.separator
        self._joiner = sep if sep.isspace() else f"{sep} "

    @property
    def is_static(self) -> bool:
        """True when ``render`` always returns the same text for a caption, so its encoding can be cached.

        Shuffling or any dropout makes the text vary per step; then the text encoder must stay live
        (sdexp's choice) or several encoded variants per caption would have to be cached.
        """
        o = self.options
        return not o.shuffle_tags and o.tag_dropout == 0 and o.dropout == 0

    def check(self, caption: str, where: str = "a caption") -> None:
        """Raise UserError if ``caption`` uses ``{token}`` while ``data.token`` is unset (call it up front)."""
        if TOKEN_FIELD in caption and self.token is None:
            raise UserError(
                f"{where} uses {TOKEN_FIELD} ({caption!r}) but data.token is not set; "
                "set data.token to your subject's identifier, e.g. data.token=sks"
            )

    def substitute(self, text: str) -> str:
        """``text`` with ``{token}`` replaced by ``data.token`` (prompts use this too)."""
        self.check(text)
        return text.replace(TOKEN_FIELD, self.token) if self.token else text

    def render(self, caption: str, rng: random.Random) -> str:
        """The text for one step; pass an rng seeded from (run seed, epoch, item) for reproducibility."""
        o = self.options
        caption = self.substitute(caption)
        if o.dropout and rng.random() < o.dropout:
            return ""
        if o.shuffle_tags or o.tag_dropout:
            tags = split_tags(caption, o.separator)
            kept, rest = tags[: o.keep_tokens], tags[o.keep_tokens :]
            if o.tag_dropout:
                rest = [tag for tag in rest if rng.random() >= o.tag_dropout]
            if o.shuffle_tags:
                rng.shuffle(rest)
            caption = self._joiner.join(kept + rest)
        text = o.template.replace(CAPTION_FIELD, caption)
        if self.token:
            text = text.replace(TOKEN_FIELD, self.token)
        return text.strip()


def tag_frequencies(captions: Iterable[str], separator: str = ",") -> Counter:
    """How many captions contain each tag (a tag repeated within one caption counts once)."""
    counts: Counter = Counter()
    for caption in captions:
        counts.update(set(split_tags(caption, separator)))
    return counts
