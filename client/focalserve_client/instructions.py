"""How the gateway normalises an instruction, so a client can recognise its condition in a listing.

The server applies the same steps (and its length limits) in `server.conditions`; a unit test
checks that the two agree.
"""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalise_instruction(instruction: str) -> str:
    """NFKC, control characters dropped, whitespace folded, lowercased."""
    text = unicodedata.normalize("NFKC", instruction)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch.isspace())
    return _WHITESPACE.sub(" ", text).strip().lower()
