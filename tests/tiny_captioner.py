"""A tiny random-weight BLIP captioner saved as a local model folder, for testing `sdexp caption` offline.

No real captioning weights exist on these machines, so the tests build BLIP's real architecture
at toy size (32-wide, one layer, 32 px images) with a WordPiece tokenizer learned here from a few
words. Its captions are gibberish; the tests check the plumbing, not the words.
"""

from __future__ import annotations

from pathlib import Path

WORDS = """a an the of on in with at dog cat toy photo picture red green blue yellow square disc
small large background plain sofa table grass sky white black sitting lying""".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def _tokenizer():
    """BERT-style WordPiece over WORDS, as BlipProcessor expects; [DEC] starts every caption (as in BLIP)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=SPECIALS, show_progress=False)
    wordpiece.train_from_iterator([" ".join(WORDS)] * 4, trainer=trainer)
    vocab = wordpiece.get_vocab()
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=32)
    return tokenizer


def build_tiny_blip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a BlipForConditionalGeneration (random weights) and its BlipProcessor into ``out_dir``."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    out_dir = Path(out_dir)
    tokenizer = _tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    image_size = 32
    config = BlipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=16,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=32,
            max_position_embeddings=64,
            pad_token_id=ids["[PAD]"],
            bos_token_id=ids["[DEC]"],
            eos_token_id=ids["[SEP]"],
            sep_token_id=ids["[SEP]"],
        ),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_git(out_dir: str | Path, seed: int = 0) -> Path:
    """The same for GIT (GitForCausalLM, decoder-only): a second family through the same auto classes."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    out_dir = Path(out_dir)
    tokenizer = _tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    config = GitConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=ids["[CLS]"],
        eos_token_id=ids["[SEP]"],
        pad_token_id=ids["[PAD]"],
    )
    torch.manual_seed(seed)
    model = GitForCausalLM(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
