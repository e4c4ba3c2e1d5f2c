"""Cutting long messages for platforms with a length limit (Telegram 4,096; Zalo 2,000)."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def split_text(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` characters, cut at paragraphs, then lines, then
    sentences, then words; a word longer than the limit is cut where it must be."""
    if len(text) <= limit:
        return [text]
    for sep in ("\n\n", "\n"):
        if sep in text:
            return _pack(text.split(sep), sep, limit)
    if _SENTENCE_END.search(text):
        return _pack(_SENTENCE_END.split(text), " ", limit)
    if " " in text:
        return _pack(text.split(" "), " ", limit)
    return [text[i : i + limit] for i in range(0, len(text), limit)]


def _pack(pieces: list[str], sep: str, limit: int) -> list[str]:
    parts: list[str] = []
    current = ""
    for piece in pieces:
        for chunk in split_text(piece, limit) if len(piece) > limit else [piece]:
            candidate = f"{current}{sep}{chunk}" if current else chunk
            if len(candidate) <= limit:
                current = candidate
            else:
                if current:
                    parts.append(current)
                current = chunk
    if current:
        parts.append(current)
    return [p.strip() for p in parts if p.strip()] or [""]
