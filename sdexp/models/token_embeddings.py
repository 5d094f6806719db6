"""New tokens whose vectors sit beside a text encoder's own embedding table (textual inversion).

The encoder's table is left as it is (same tensor, dtype and size); a small wrapper put in its place
looks up the original rows for known ids and the new vectors for the added ids. So every original
weight stays byte-identical by construction (no row restoring, no weight-decay guard), and the
vectors are fp32 whatever dtype the frozen encoder is held in. Tokenizers get the tokens as
diffusers names them for a multi-vector embedding (``tok``, ``tok_1`` … ``tok_{n-1}``), so the
pipelines' own prompt expansion (``maybe_convert_prompt``) finds them; training expands captions
the same way with ``expand_prompt``. Training, evaluation and ``sdexp generate`` all attach
embeddings through ``attach_vectors``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from sdexp.errors import UserError


def vector_tokens(token: str, n: int) -> list[str]:
    """The tokenizer entries of an ``n``-vector embedding, named as diffusers names them."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def expand_prompt(prompt: str, token: str, n: int) -> str:
    """``prompt`` with each ``token`` (any case, as the CLIP tokenizer lowercases) replaced by its
    ``n`` vector tokens: what diffusers' ``maybe_convert_prompt`` does at generation time."""
    if n == 1:
        return prompt
    expanded = " ".join(vector_tokens(token, n))
    return re.sub(rf"(?i){re.escape(token)}(?!_\d)", lambda _: expanded, prompt)


class TokenEmbeddings(nn.Module):
    """A token-embedding table extended by ``vectors`` for ids ``first_id`` … ``first_id + n - 1``."""

    def __init__(self, original: nn.Module, first_id: int, vectors: torch.Tensor, trainable: bool):
        super().__init__()
        self.original = original  # registered first: the encoder's ``dtype`` stays the frozen one
        self.first_id = first_id
        device = next(original.parameters()).device
        self.vectors = nn.Parameter(vectors.detach().to(device, torch.float32).clone(), trainable)

    @property
    def num_embeddings(self) -> int:
        return self.first_id + self.vectors.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.vectors.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        known = self.original(ids.clamp(max=self.original.num_embeddings - 1))
        rows = (ids - self.first_id).clamp(0, self.vectors.shape[0] - 1)
        new = self.vectors[rows].to(known.dtype)
        return torch.where((ids >= self.first_id).unsqueeze(-1), new, known)


def token_problem(tokenizer, token: str) -> str | None:
    """Why ``token`` cannot name new vectors in ``tokenizer`` (already known), or None."""
    if token in tokenizer.get_vocab():
        return f"{token!r} is already in the tokenizer's vocabulary"
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) == 1:
        word = tokenizer.convert_ids_to_tokens(ids)[0]
        return f"{token!r} is already a token of the vocabulary ({word!r}, id {ids[0]})"
    return None


def word_embedding(tokenizer, encoder, word: str) -> torch.Tensor | None:
    """The embedding row of ``word`` when it is exactly one token, else None."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        return None
    table = encoder.get_input_embeddings()
    return table(torch.tensor(ids, device=next(table.parameters()).device))[0].detach().float()


def attach_vectors(
    tokenizers: Sequence, text_encoders: Sequence, token: str, vectors: Sequence[torch.Tensor], *,
    trainable: bool = False, key: str = "--embedding",
) -> list[TokenEmbeddings]:  # fmt: skip
    """Add ``token`` (its ``n`` vector tokens) to every tokenizer and its vectors [n, dim] to the
    matching encoder; returns the wrappers (their ``vectors`` train when ``trainable``)."""
    n = vectors[0].shape[0]
    names = vector_tokens(token, n)
    wrappers = []
    for i, (tokenizer, encoder, rows) in enumerate(zip(tokenizers, text_encoders, vectors, strict=True)):
        for name in names:
            problem = token_problem(tokenizer, name)
            if problem:
                raise UserError(
                    f"{key}: {problem} (text encoder {i + 1}); choose a new word, e.g. <{token.strip('<>')}-1>"
                )
        original = encoder.get_input_embeddings()
        if tuple(rows.shape) != (n, original.embedding_dim):
            raise UserError(
                f"{key}: the vectors for {token!r} are {list(rows.shape)}, but text encoder {i + 1} of "
                f"the model takes [{n}, {original.embedding_dim}]; the embedding was made for another model"
            )
        first = len(tokenizer)
        tokenizer.add_tokens(names)
        if tokenizer.convert_tokens_to_ids(names) != list(range(first, first + n)):
            raise RuntimeError(f"tokenizer gave {token!r} non-consecutive ids")
        wrapper = TokenEmbeddings(original, first, rows, trainable)
        encoder.set_input_embeddings(wrapper)
        wrappers.append(wrapper)
    return wrappers


@contextmanager
def embeddings_attached(pipe, family, embeddings: Sequence[tuple[str, Sequence[torch.Tensor]]]) -> Iterator:
    """``pipe`` with these (token, vectors per encoder) attached to copies of its tokenizers; the
    tokenizers and embedding tables are put back afterwards (evaluation scores checkpoints in turn)."""
    if not embeddings:
        yield pipe
        return
    encoders, tokenizers = family.pipeline_text_encoders(pipe)
    originals = [e.get_input_embeddings() for e in encoders]
    copies = [copy.deepcopy(t) for t in tokenizers]
    for name, tokenizer in zip(family.tokenizer_attributes, copies, strict=True):
        setattr(pipe, name, tokenizer)
    try:
        for token, vectors in embeddings:
            attach_vectors(copies, encoders, token, vectors)
        yield pipe
    finally:
        for encoder, table in zip(encoders, originals, strict=True):
            encoder.set_input_embeddings(table)
        for name, tokenizer in zip(family.tokenizer_attributes, tokenizers, strict=True):
            setattr(pipe, name, tokenizer)
