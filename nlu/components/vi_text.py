"""Vietnamese text folding, independent of Rasa (usable by the bot and by tests).

``fold_vi("Sổ đỏ nhà tôi trễ hẹn")`` -> ``"so do nha toi tre hen"``: NFC-normalise,
lower-case, drop the combining marks (tones and vowel hats), map đ -> d, and optionally
rewrite common chat abbreviations one token for one token ("ko" -> "khong").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# One token -> one token only (Rasa sequence features need one row per token).
# Keys are already folded. Ambiguous short forms ("a" = anh / the particle "à") are left
# out; "sd" is taken as "sổ đỏ" (the usual meaning in complaints; "sử dụng đất" is
# written "qsdd").
ABBREVIATIONS: dict[str, str] = {
    "ko": "khong",
    "k": "khong",
    "kh": "khong",
    "khg": "khong",
    "hok": "khong",
    "hong": "khong",  # southern "hông"; "hong" (pink/broken) is rare in complaints
    "dc": "duoc",
    "dk": "duoc",
    "j": "gi",
    "mk": "minh",
    "e": "em",
    "vs": "voi",
    "bt": "biet",
    "r": "roi",
    "ng": "nguoi",
    "cb": "canbo",
    "cbcc": "canbo",
    "lltp": "lylichtuphap",
    "gpxd": "giayphepxaydung",
    "xd": "xaydung",
    "gcn": "giaychungnhan",
    "qsdd": "quyensudungdat",
    "sđ": "sodo",
    "sd": "sodo",
    "bhxh": "baohiemxahoi",
    "bhyt": "baohiemyte",
    "gplx": "giaypheplaixe",
    "cccd": "cancuoc",
    "dvc": "dichvucong",
    "xkld": "xuatkhaulaodong",
    "sdt": "sodienthoai",
}

_MARKS = re.compile(r"[\u0300-\u036f]")


def strip_diacritics(text: str) -> str:
    """Remove Vietnamese diacritics, keep case: "Đất Đai" -> "Dat Dai"."""
    text = unicodedata.normalize("NFD", text)
    text = _MARKS.sub("", text)
    text = text.replace("đ", "d").replace("Đ", "D")
    return unicodedata.normalize("NFC", text)


def has_diacritics(text: str) -> bool:
    """True if the text carries any Vietnamese diacritic (or đ)."""
    return strip_diacritics(text) != unicodedata.normalize("NFC", text)


def fold_token(token: str, abbreviations: bool = True) -> str:
    low = unicodedata.normalize("NFC", token).lower()
    if abbreviations and low in ("sđ",):
        return ABBREVIATIONS[low]
    folded = strip_diacritics(low)
    if abbreviations:
        folded = ABBREVIATIONS.get(folded, folded)
    return folded


def fold_tokens(tokens: Iterable[str], abbreviations: bool = True) -> list[str]:
    return [fold_token(t, abbreviations) for t in tokens]


def fold_vi(text: str, abbreviations: bool = False) -> str:
    """Fold a whole text (whitespace tokens); abbreviation rewriting is opt-in here."""
    return " ".join(fold_tokens(text.split(), abbreviations))
