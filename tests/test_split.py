"""Long messages are cut where a reader expects, never losing a character."""

from __future__ import annotations

import pytest

from bot.channels.text import split_text


@pytest.mark.parametrize("limit", [50, 2000, 4096])
def test_every_part_fits_and_nothing_is_lost(limit: int) -> None:
    text = "\n\n".join(
        f"Đoạn {i}. "
        + " ".join(["Hồ sơ trễ hẹn đã lâu, đề nghị trả lời bằng văn bản."] * (i % 7 + 1))
        for i in range(120)
    )
    parts = split_text(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    squeeze = lambda s: "".join(s.split())  # noqa: E731
    assert squeeze("".join(parts)) == squeeze(text)


def test_short_text_is_one_part() -> None:
    assert split_text("Xin chào", 2000) == ["Xin chào"]


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    a, b = "A" * 1500, "B" * 1500
    assert split_text(f"{a}\n\n{b}", 2000) == [a, b]


def test_a_word_longer_than_the_limit_is_cut() -> None:
    assert split_text("x" * 4500, 2000) == ["x" * 2000, "x" * 2000, "x" * 500]
