"""How an instruction is normalised: the server uses this function (adding its length limits in
`focalserve_server.conditions`), so a client recognises its condition in a listing exactly as the server does.
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
