"""Sending feedback in the web chat when Rasa cannot be asked, routing, and status.

Rasa is unreachable in these tests (the settings point it at a closed port): the
citizen picks the field with buttons and nothing is lost. With the real Rasa server, see
tests/test_nlu.py.
"""

from __future__ import annotations

import pytest
from sqlmodel import select

from bot.app import Service
from storage.models import Report
from tests.chat import ChatClient, question, texts
from tests.factories import COMPLETED, POLICE_DONE, routing, small_province

FIELD_BUTTONS = ["Đất đai", "Xây dựng", "Lý lịch tư pháp", "Lĩnh vực khác"]
COMPLAINT = (
    "Hồ sơ sang tên sổ đỏ của tôi nộp từ tháng 8 đến nay vẫn chưa có kết quả, "
    "gọi điện lên thì không ai nghe máy"
)


@pytest.fixture
async def province(service: Service, clock) -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with service.db.transaction() as s:
        return await routing(s, await small_province(s, clock.now()))


async def reports(service: Service) -> list[Report]:
    async with service.db.sessions() as s:
        return list(await s.exec(select(Report).order_by(Report.id)))  # type: ignore[arg-type]


async def send_feedback(chat: ChatClient, text: str) -> list[dict]:
    await chat.start()
    asked = await chat.tap("Gửi phản ánh, kiến nghị")
    assert "mô tả vấn đề" in texts(asked)
    return await chat.say(text)


async def test_with_rasa_down_the_citizen_picks_the_field_and_the_report_is_routed(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    replies = await send_feedback(chat, COMPLAINT)
    assert "chọn lĩnh vực" in question(replies[-1])
    assert [b["title"] for b in chat.buttons()] == FIELD_BUTTONS

    asked = await chat.tap("Đất đai")
    assert "mã hồ sơ" in question(asked[-1])
    asked = await chat.tap("Không có mã hồ sơ")
    assert "xã, phường nào" in question(asked[-1])
    done = texts(await chat.say("phuong viet tri"))

    [report] = await reports(service)
    assert report.code.startswith("PAKN.20261123.")
    assert f"mã số {report.code}" in done
    assert "Phòng Kinh tế, Hạ tầng và Đô thị phường Việt Trì" in done
    assert (report.text, report.field, report.field_source) == (COMPLAINT, "land", "citizen")
    assert report.nlu_status == "pending" and report.nlu_field is None
    assert (report.commune_id, report.agency_id) == (province["ward"], province["econ"])


async def test_a_dossier_code_in_the_text_routes_to_the_dossiers_agency(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await send_feedback(chat, f"Ho so {POLICE_DONE} lam phieu lltp tre hen 5 ngay")
    done = texts(await chat.tap("Lý lịch tư pháp"))  # no question about the dossier
    assert "Công an tỉnh Phú Thọ" in done
    [report] = await reports(service)
    assert report.dossier_id is not None and report.agency_id == province["police"]


async def test_typed_dossier_codes_are_checked_and_can_be_typed_again(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await send_feedback(chat, COMPLAINT)
    await chat.tap("Đất đai")
    assert "chưa đúng dạng mã hồ sơ" in texts(await chat.say("so 12345"))
    unknown = texts(await chat.say("H42.15.01-261110-9999"))
    assert "Không tìm thấy hồ sơ mã H42.15.01-261110-9999" in unknown
    done = texts(await chat.say(COMPLETED.lower()))
    assert "UBND phường Việt Trì" in done
    [report] = await reports(service)
    assert report.agency_id == province["ward"]


async def test_an_unknown_commune_is_asked_again_and_skipping_uses_the_default_route(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await send_feedback(chat, COMPLAINT)
    await chat.tap("Đất đai")
    await chat.tap("Không có mã hồ sơ")
    again = texts(await chat.say("xã Hoàn Kiếm"))
    assert "Không tìm thấy xã, phường «xã Hoàn Kiếm»" in again
    done = texts(await chat.tap("Bỏ qua"))
    assert "Văn phòng Đăng ký đất đai tỉnh Phú Thọ" in done
    [report] = await reports(service)
    assert report.commune_id is None and report.agency_id == province["land_office"]


async def test_long_free_text_at_the_menu_is_taken_as_a_complaint_without_rasa(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.start()
    replies = await chat.say("can bo phuong viet tri hach dich, bat toi bo sung giay to 3 lan")
    assert "chọn lĩnh vực" in question(replies[-1])
    await chat.tap("Lĩnh vực khác")
    await chat.tap("Không có mã hồ sơ")
    await chat.say("Việt Trì")
    [report] = await reports(service)
    assert report.field == "other" and report.text.startswith("can bo phuong")


async def test_a_short_unknown_text_at_the_menu_shows_the_menu_again(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.start()
    replies = await chat.say("abc xyz")
    assert "chưa hiểu" in texts(replies)
    assert await reports(service) == []


async def test_a_complaint_that_is_too_long_is_refused_and_nothing_is_stored(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    replies = await send_feedback(chat, "đất " * 2500)
    assert "vượt quá giới hạn 4000 ký tự" in texts(replies)
    assert await reports(service) == []
    # Still at the question: a shorter text goes on.
    assert "chọn lĩnh vực" in question((await chat.say(COMPLAINT))[-1])


async def test_a_citizen_sees_the_status_of_their_own_reports_only(
    service: Service, province: dict[str, int], http, chat: ChatClient
) -> None:  # type: ignore[no-untyped-def]
    await send_feedback(chat, COMPLAINT)
    await chat.tap("Đất đai")
    await chat.tap("Không có mã hồ sơ")
    await chat.tap("Bỏ qua")
    [report] = await reports(service)

    shown = texts(await chat.say(f"/status {report.code.lower()}"))
    assert f"Phản ánh {report.code}, gửi ngày 23/11/2026" in shown
    assert "Đất đai" in shown and "Đã chuyển đến cơ quan có thẩm quyền" in shown
    assert "Văn phòng Đăng ký đất đai" in shown

    await chat.say("menu")
    listed = texts(await chat.tap("Tra cứu phản ánh"))
    assert f"• {report.code} (23/11/2026) Đất đai: Đã chuyển đến cơ quan có thẩm quyền" in listed

    http.session.cookie_jar.clear()  # someone else, in another browser
    other = ChatClient(http)
    await other.open()
    await other.start()
    nobody = texts(await other.say(report.code))
    assert "Không tìm thấy phản ánh mã" in nobody and "Đất đai" not in nobody
    listed = texts(await other.say("/status"))
    assert "chưa gửi phản ánh nào" in listed
    assert "chưa đúng dạng mã phản ánh" in texts(await other.say("PAKN 123"))
