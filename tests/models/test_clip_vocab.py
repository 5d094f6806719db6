"""CLIP's tokenizer made offline from open_clip's BPE list, and the complete config folders."""

from __future__ import annotations

import json

import pytest

from sdexp.models.clip_vocab import VOCAB_SIZE, tokenizer_files
from sdexp.models.shipped_configs import CONFIG_NAMES, config_dir, shipped_dir, tokenizer_folders


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tokenizer_files(tmp_path_factory.mktemp("tok"), "<|endoftext|>"))


def test_known_ids(clip_tokenizer):
    assert len(clip_tokenizer) == VOCAB_SIZE
    assert clip_tokenizer("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert clip_tokenizer.pad_token_id == clip_tokenizer.eos_token_id == 49407


def test_same_vocabulary_and_encoding_as_open_clip(clip_tokenizer):
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    ours = clip_tokenizer.get_vocab()
    differ = {k for k in reference.encoder if ours.get(k) != reference.encoder[k]}
    assert differ == {"<start_of_text>", "<end_of_text>"}  # open_clip's own names for the two specials
    for text in ("a photo of sks dog", "Hello, World! ünïcode 😀", "a red-white car at 12:30, 2 x 3"):
        assert clip_tokenizer(text).input_ids[1:-1] == reference.encode(text), text


def test_files_are_byte_identical_and_pad_with_the_given_token(tmp_path):
    from transformers import CLIPTokenizer

    a, b = tokenizer_files(tmp_path / "a", "!"), tokenizer_files(tmp_path / "b", "!")
    assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}
    tok = CLIPTokenizer.from_pretrained(a)
    assert tok.pad_token_id == 0
    assert tok("a", padding="max_length", max_length=5).input_ids == [49406, 320, 49407, 0, 0]
    with pytest.raises(ValueError, match="not a single CLIP token"):
        tokenizer_files(tmp_path / "c", "<pad>")


def test_config_dirs_are_complete_and_match_the_shipped_configs():
    from transformers import CLIPTokenizer

    for name in CONFIG_NAMES:
        folder = config_dir(name)
        assert config_dir(name) == folder
        source = shipped_dir(name)
        for path in source.rglob("*.json"):
            assert (folder / path.relative_to(source)).read_bytes() == path.read_bytes(), path
        for tokenizer, pad in tokenizer_folders(source).items():
            assert {"vocab.json", "merges.txt"} <= {p.name for p in (folder / tokenizer).iterdir()}
            tok = CLIPTokenizer.from_pretrained(folder / tokenizer)
            assert tok.pad_token == pad and tok.model_max_length == 77
        index = json.loads((folder / "model_index.json").read_text())
        assert ("text_encoder_2" in index) == (name == "sdxl")
