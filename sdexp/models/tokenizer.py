"""A BPE tokenizer in CLIP's vocab.json/merges.txt layout, learned offline and checked with `tokenizers`.

No real CLIP tokenizer can be downloaded here, so the built-in tiny model carries its own. It
uses CLIP's conventions (lower-case, `</w>` end-of-word suffix, <|startoftext|>/<|endoftext|>)
so that transformers' CLIPTokenizer and every diffusers pipeline load it unchanged.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Words a fine-tuning prompt is likely to hold; BPE merges are learned from them, and every
# printable character is present alone so any text tokenizes without unknown tokens.
_CORPUS_WORDS = """
a an the of on in with at by and photo picture painting drawing render image style portrait
dog cat toy person man woman car house tree flower sky sea mountain city street room table
red green blue yellow purple orange white black pink brown grey gray gold silver
circle square triangle star ring cross shape background small large big tiny left right top
bottom center sks ohwx zwx token style art detailed high quality sharp blurry light dark
""".split()


def _corpus(texts: list[str] | None = None) -> list[str]:
    """The default fine-tuning words, or ``texts``; plus every printable character alone."""
    chars = [c for c in string.printable if c.strip()]
    words = list(_CORPUS_WORDS) * 20 if texts is None else []
    words += [c.lower() for c in chars] + [c.lower() * 2 for c in chars]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return lines + list(texts or [])


def learn_bpe(words: list[str], vocab_size: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Greedy BPE over ``words`` with ties broken by the pair itself, so it is reproducible.

    ``tokenizers``' BpeTrainer breaks frequency ties in hash-map order, which gives a different
    merges.txt on every build; the built-in model must be byte-identical on every build.
    """
    counts = Counter(words)
    splits = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in counts}
    alphabet = sorted({s for symbols in splits.values() for s in symbols})
    merges: list[tuple[str, str]] = []
    while len(alphabet) + len(merges) + 2 < vocab_size:
        pairs: Counter = Counter()
        for w, symbols in splits.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if best[1] < 2:
            break
        a, b = best[0]
        merges.append((a, b))
        for w, symbols in splits.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            splits[w] = tuple(out)
    return alphabet, merges


def train_clip_tokenizer(
    out_dir: str | Path, vocab_size: int = 1000, texts: list[str] | None = None, pad_token: str = EOS
) -> Path:
    """Learn the BPE (on ``texts``, e.g. a dataset's captions, or built-in words) and write
    vocab.json, merges.txt and the tokenizer configs. ``pad_token``: SD 1.x pads with
    <|endoftext|>; SD 2.x and SDXL's second tokenizer (OpenCLIP) pad with ``!``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = [w for line in _corpus(texts) for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", line.lower())]
    alphabet, merges = learn_bpe(words, vocab_size)
    tokens = alphabet + [a + b for a, b in merges]
    vocab_json = {}
    for token in tokens:
        vocab_json.setdefault(token, len(vocab_json))
    merges = [f"{a} {b}" for a, b in merges]
    vocab_json[BOS] = len(vocab_json)
    vocab_json[EOS] = len(vocab_json)
    (out_dir / "vocab.json").write_text(json.dumps(vocab_json, ensure_ascii=False, indent=None))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True))
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True))
    return out_dir
