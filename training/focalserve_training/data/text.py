"""Tiny English helpers shared by caption generation and hard-negative editing."""

from __future__ import annotations


def indefinite_article(word: str) -> str:
    """'an' before a vowel letter, else 'a'; spelling-based, which suits our vocabularies
    (no 'hour' or 'unicorn') and keeps negatives from being spotted by a wrong article."""
    return "an" if word[:1].lower() in "aeiou" else "a"
