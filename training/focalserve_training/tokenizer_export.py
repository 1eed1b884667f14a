"""A family's tokenizer as one file in Hugging Face `tokenizers`' format, for the gateway.

Training tokenizes through open_clip (`focalserve_family.text_towers.create_tokenizer`); the
gateway reads this file instead, so serving needs neither open_clip nor transformers. The file
carries truncation and padding to the family's context length, so it is the whole contract: a
Hugging Face tower's fast tokenizer is written as it is, and open_clip's own CLIP BPE is
rebuilt from its vocabulary, merges and split pattern. Both sides clean texts alike first
(`focalserve_server.text_tokens.clean_text`); `tests/unit/training/test_tokenizer_export.py`
compares their ids.
"""

from __future__ import annotations

from pathlib import Path

from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from focalserve_family.config import TOKENIZER_FILE
from focalserve_family.text_towers import create_tokenizer

CLIP_PAD_ID = 0  # open_clip pads its BPE ids with zeros


def serving_tokenizer(name: str, context_length: int) -> Tokenizer:
    """The tokenizer `name` (a family's metadata value) as the gateway runs it: every text's ids cut
    or padded to `context_length`, start and end tokens included."""
    source = create_tokenizer(name, context_length)
    if isinstance(source, HFTokenizer):
        tokenizer = Tokenizer.from_str(source.tokenizer.backend_tokenizer.to_str())
        pad_id, pad_token = source.tokenizer.pad_token_id, source.tokenizer.pad_token
    elif isinstance(source, SimpleTokenizer):
        tokenizer, pad_id, pad_token = _converted_clip_bpe(source), CLIP_PAD_ID, "!"
    else:
        raise ValueError(f"tokenizer {name!r} ({type(source).__name__}) has no `tokenizers` form")
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def write_tokenizer(directory: Path, name: str, context_length: int) -> Path:
    path = directory / TOKENIZER_FILE
    path.write_text(serving_tokenizer(name, context_length).to_str())
    return path


def _converted_clip_bpe(source: SimpleTokenizer) -> Tokenizer:
    """open_clip's CLIP BPE as a `tokenizers` one: its vocabulary, merges, split pattern and byte map,
    with the start and end tokens around every text."""
    start, end = source.decoder[source.sot_token_id], source.decoder[source.eot_token_id]
    merges = [pair for pair, _ in sorted(source.bpe_ranks.items(), key=lambda item: item[1])]
    tokenizer = Tokenizer(models.BPE(vocab=source.encoder, merges=merges, end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(source.pat.pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", special_tokens=[(start, source.sot_token_id), (end, source.eot_token_id)]
    )
    tokenizer.add_special_tokens([start, end])
    return tokenizer
