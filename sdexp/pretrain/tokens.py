"""Every caption of a dataset tokenized once: distinct captions as groups, their ids on the device."""

from __future__ import annotations

import torch


class CaptionTokens:
    """``group[i]``: the distinct-caption number of image i; ``ids[g]``: padded token ids of group g."""

    def __init__(self, tokenizer, captions: list[str]):
        self.tokenizer = tokenizer
        distinct = sorted(set(captions)) + [""]  # "" last: the unconditional caption
        number = {c: i for i, c in enumerate(distinct)}
        self.group = torch.tensor([number[c] for c in captions], dtype=torch.long)
        self.empty_group = number[""]
        self.ids = tokenizer(
            distinct,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def to(self, device) -> CaptionTokens:
        self.group, self.ids = self.group.to(device), self.ids.to(device)
        return self

    def ids_of_groups(self, groups: torch.Tensor) -> torch.Tensor:
        return self.ids[groups]
