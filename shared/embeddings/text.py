"""Text normalisation and the content hash that keys the embedding cache."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFC, whitespace runs (any Unicode whitespace) collapsed to one space, then stripped.

    This is also the text sent to the model, so a cached vector and a fresh one agree.
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def text_hash(normalized: str) -> bytes:
    """sha256 of the normalised text's UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(normalized.encode("utf-8")).digest()
