"""Reading what citizens type: Unicode normalisation, diacritic folding, dossier codes.

Citizens write "danh gia", "đánh giá" or "ĐÁNH GIÁ" for the same thing, and paste codes
as "h15.50.05.13 - 261008 - 0975". Everything here is pure and fast.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from datetime import date

_SPACES = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[^\w\s]+")


def nfc(text: str) -> str:
    """Compose Unicode (NFC): the same Vietnamese letter has one encoding."""
    return unicodedata.normalize("NFC", text)


def fold(text: str) -> str:
    """Lower-case, strip diacritics (đ → d), drop punctuation, collapse spaces."""
    # Short texts come back again and again (button titles, commands, aliases): remembered.
    return _fold_short(text) if len(text) <= FOLD_CACHED_UP_TO else _fold(text)


FOLD_CACHED_UP_TO = 100  # characters


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text.lower().replace("đ", "d"))
    bare = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", bare)).strip()


_fold_short = functools.lru_cache(maxsize=4096)(_fold)


def has_letters_or_digits(text: str) -> bool:
    """False for empty, whitespace-only, emoji-only or punctuation-only text."""
    return any(ch.isalnum() for ch in text)


# Words of a bare greeting, folded (no diacritics): "chào ad ạ", "alo em ơi", "hi bot".
_GREETING_WORDS = frozenset(
    "alo chao xin hello hi helo hey good morning ad admin oi a ah e em anh chi ban bot shop "
    "co chu bac minh toi nhe nha buoi sang chieu".split()
)
_GREETING_OPENERS = frozenset({"alo", "chao", "hello", "hi", "helo", "hey", "good"})


def is_greeting(text: str) -> bool:
    """Short hellos: "alo", "chào ad", "xin chào ạ", "hi bot"…"""
    words = fold(text).split()
    return (
        0 < len(words) <= 5
        and (words[0] in _GREETING_OPENERS or words[:2] == ["xin", "chao"])
        and all(w in _GREETING_WORDS for w in words)
    )


# <agency code>-YYMMDD-NNNN; the agency code is dot-separated groups (H15.50.05.13,
# 000.00.00.H41); the tail has 4 digits (provincial systems) to 7 (ministries).
# In a Telegram deep link the dots are written as "_" (H15_50_05_13-261008-0975).
_CODE = re.compile(
    r"(?<![A-Z0-9.])"
    r"(?P<agency>[A-Z0-9]{1,8}(?:\s*[._]\s*[A-Z0-9]{1,8}){0,6})"
    r"\s*[-–—]\s*(?P<date>\d{6})\s*[-–—]\s*(?P<seq>\d{4,7})"
    r"(?![0-9])"
)
DOSSIER_CODE_EXAMPLE = "H15.50.05.13-261008-0975"


def _valid_yymmdd(s: str) -> bool:
    try:
        date(2000 + int(s[:2]), int(s[2:4]), int(s[4:6]))
    except ValueError:
        return False
    return True


def find_dossier_code(text: str) -> str | None:
    """The first well-formed dossier code in `text`, normalised (upper case, no spaces)."""
    for m in _CODE.finditer(nfc(text).upper()):
        if _valid_yymmdd(m["date"]):
            # "_" stands for "." in Telegram deep links, where dots are not allowed.
            agency = re.sub(r"\s+", "", m["agency"]).replace("_", ".")
            return f"{agency}-{m['date']}-{m['seq']}"
    return None


# A feedback receipt code: PAKN.YYYYMMDD.NNNN ("pakn 20261123 0001" is accepted too).
_REPORT_CODE = re.compile(r"(?<![A-Z0-9])PAKN\s*[._-]?\s*(\d{8})\s*[._-]?\s*(\d{4,6})(?![0-9])")
REPORT_CODE_EXAMPLE = "PAKN.20261123.0001"


def find_report_code(text: str) -> str | None:
    """The first feedback receipt code in `text`, normalised to PAKN.YYYYMMDD.NNNN."""
    m = _REPORT_CODE.search(nfc(text).upper())
    return f"PAKN.{m[1]}.{m[2]}" if m else None
