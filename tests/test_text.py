"""Reading what citizens type: codes pasted loosely, text without diacritics."""

from __future__ import annotations

import pytest

from nlu.text import find_dossier_code, fold, has_letters_or_digits, is_greeting


@pytest.mark.parametrize(
    ("typed", "code"),
    [
        ("H15.50.05.13-261008-0975", "H15.50.05.13-261008-0975"),
        ("  h15.50.05.13-261008-0975 ", "H15.50.05.13-261008-0975"),
        ("h15.50.05.13 - 261008 - 0975", "H15.50.05.13-261008-0975"),
        ("H15.50.05.13–261008–0975", "H15.50.05.13-261008-0975"),
        ("ma ho so cua e la h15.50.05.13-261008-0975 a", "H15.50.05.13-261008-0975"),
        ("000.00.00.H41-261008-0001234", "000.00.00.H41-261008-0001234"),
        ("Mã hồ sơ: G22.27-250101-1234.", "G22.27-250101-1234"),
        ("H15_50_05_13-261008-0975", "H15.50.05.13-261008-0975"),  # Telegram deep link
    ],
)
def test_dossier_codes_are_accepted_loosely_and_normalised(typed: str, code: str) -> None:
    assert find_dossier_code(typed) == code


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "12345",
        "xin chào",
        "H15.50.05.13-261308-0975",  # month 13
        "H15.50.05.13-261008-097",  # 3-digit tail
        "H15.50.05.13-26100-0975",
        "😀😀😀",
        "x" * 10_000,
    ],
)
def test_malformed_dossier_codes_are_refused_without_crashing(typed: str) -> None:
    assert find_dossier_code(typed) is None


def test_folding_drops_diacritics_case_and_punctuation() -> None:
    assert fold("Đánh giá HỒ SƠ!") == "danh gia ho so"
    assert fold("  Rất   hài lòng ") == "rat hai long"
    # Decomposed input (as some keyboards send it) folds the same as composed.
    assert fold("Hài lòng") == fold("Ha\u0300i lo\u0300ng")


@pytest.mark.parametrize("text", ["alo", "Xin chào ạ", "chao ad", "Hi bot", "chào anh chị"])
def test_greetings_are_recognised(text: str) -> None:
    assert is_greeting(text)


@pytest.mark.parametrize("text", ["chào, hồ sơ của tôi bị trễ hẹn", "anh ơi", "", "xin hỏi"])
def test_a_message_with_content_is_not_just_a_greeting(text: str) -> None:
    assert not is_greeting(text)


def test_emoji_and_punctuation_only_text_has_no_content() -> None:
    assert not has_letters_or_digits("👍🙏 !!! ...")
    assert not has_letters_or_digits("   ")
    assert has_letters_or_digits("ok 👍")
