"""Instruction and query texts to token ids, with the tokenizer exported beside the family's text model.

Export writes the tokenizer the family was trained with as one `tokenizers` file (truncation and
padding to the family's context length included: `focalserve_training.tokenizer_export`), so the
gateway needs neither open_clip nor transformers, and a repository served by Triton brings its
tokenizer along. Texts are cleaned first exactly as open_clip cleans them before tokenizing.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import Tokenizer

from focalserve_family import FamilySpec, RepositoryError
from focalserve_family.config import TOKENIZER_FILE

_WHITESPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """open_clip's cleaning before any of its tokenizers: mojibake and HTML entities fixed, whitespace folded."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()


class TextTokenizer:
    """A family's tokenizer: texts -> int64 ids of shape (len(texts), context length)."""

    def __init__(self, path: Path) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))

    @classmethod
    def of_family(cls, spec: FamilySpec, repository: Path) -> TextTokenizer:
        """The tokenizer export wrote into the repository beside the family's text model."""
        path = repository / spec.models["text"].name / TOKENIZER_FILE
        if not path.is_file():
            raise RepositoryError(
                f"family {spec.name}: {path} is missing; the gateway reads each family's tokenizer from its model "
                f"repository (FOCALSERVE_MODEL_REPOSITORY): export the family again with `focalserve export`"
            )
        return cls(path)

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch([clean_text(text) for text in texts])
        return np.asarray([encoding.ids for encoding in encodings], dtype=np.int64)
