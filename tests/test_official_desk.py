"""Officials handle reports from Telegram; the citizen follows in the web chat.

End to end through the real app: the citizen files a report in the web chat (Rasa
unreachable: the field is picked with buttons), officials linked on Telegram (the fake
Bot API, the real PTB client) get the notice and tap its buttons, and the citizen sees
each step and answers "is it solved?".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import select

from bot.app import Service
from bot.clock import ManualClock, local_date
from bot.officials import issue_link_code
from storage.models import Agency, OutboxMessage, Report, ReportEvent
from tests.chat import ChatClient, question, texts
from tests.factories import routing
from tests.fakes import FakeTelegram
from tests.telegram_users import TelegramCitizen

COMPLAINT = (
    "Hồ sơ sang tên sổ đỏ của tôi nộp từ tháng 8 đến nay vẫn chưa có kết quả, "
    "gọi điện lên thì không ai nghe máy"
)
ECON = "Phòng Kinh tế, Hạ tầng và Đô thị phường Việt Trì"
LAND_OFFICE = "Văn phòng Đăng ký đất đai tỉnh Phú Thọ"
NOTICE_BUTTONS = ["Nhận xử lý", "Trả lời", "Đã giải quyết", "Chuyển đơn vị khác"]
OFFICER_CHAT, HEAD_CHAT, POLICE_CHAT, LAND_CHAT = (
    7_100_000_001,
    7_100_000_002,
    7_100_000_003,
    7_100_000_004,
)


class Official(TelegramCitizen):
    """An official on Telegram, linked to their record with a one-time code."""

    async def tap_data(self, data: str) -> list[Any]:
        """A tap whose callback data is `data`, whatever the keyboards say (forged or old)."""
        assert await self.deliver(self.fake.callback_update(self.user, data)) == 200
        return await self.replies()


@dataclass
class Desk:
    service: Service
    http: TestClient
    clock: ManualClock
    ids: dict[str, int]
    officer: Official  # officer of the ward's economic office (level 0)
    head: Official  # head of that office (level 1)
    police: Official  # head of the provincial police: another agency
    land: Official  # head of the land registration office (a reassignment target)


async def _link(service: Service, fake: FakeTelegram, http: TestClient, clock, official_id, chat):  # type: ignore[no-untyped-def]
    async with service.db.transaction() as s:
        code = await issue_link_code(s, official_id, clock.now())
    official = Official(fake, http, clock, user=chat)
    assert "Đã liên kết tài khoản này" in (await official.say(code))[0].text
    return official


@pytest.fixture
async def desk(
    telegram_bot: tuple[Service, TestClient], fake_telegram: FakeTelegram, clock: ManualClock
) -> Desk:
    from storage.models import Official as OfficialRow

    service, http = telegram_bot
    async with service.db.transaction() as s:
        by_code = {a.code: a.id for a in await s.exec(select(Agency))}
        ids = await routing(
            s,
            {
                "province": by_code["000.00.00.H42"],
                "ward": by_code["H42.15.01"],
                "police": by_code["000.00.10.H42"],
            },
        )
        people = {
            "officer": OfficialRow(agency_id=ids["econ"], name="Phạm Thị Lan", role="officer"),
            "head": OfficialRow(
                agency_id=ids["econ"], name="Đỗ Minh Tuấn", title="Trưởng phòng", role="head"
            ),
            "land": OfficialRow(
                agency_id=ids["land_office"], name="Hoàng Văn Nam", title="Giám đốc", role="head"
            ),
        }
        s.add_all(people.values())
        await s.flush()
        police_head = (
            await s.exec(select(OfficialRow).where(OfficialRow.agency_id == ids["police"]))
        ).one()
        for key, row in people.items():
            ids[f"{key}_official"] = row.id  # type: ignore[assignment]
        ids["police_official"] = police_head.id  # type: ignore[assignment]

    def link(key: str, chat: int):  # type: ignore[no-untyped-def]
        return _link(service, fake_telegram, http, clock, ids[f"{key}_official"], chat)

    return Desk(
        service,
        http,
        clock,
        ids,
        officer=await link("officer", OFFICER_CHAT),
        head=await link("head", HEAD_CHAT),
        police=await link("police", POLICE_CHAT),
        land=await link("land", LAND_CHAT),
    )


async def file_report(desk: Desk) -> tuple[ChatClient, Report]:
    """A citizen sends land feedback in the web chat for phường Việt Trì → the econ office."""
    chat = ChatClient(desk.http)
    await chat.open()
    await chat.start()
    await chat.tap("Gửi phản ánh, kiến nghị")
    await chat.say(COMPLAINT)
    await chat.tap("Đất đai")
    await chat.tap("Không có mã hồ sơ")
    done = texts(await chat.say("phuong viet tri"))
    report = (await reports(desk.service))[-1]
    assert f"mã số {report.code}" in done and report.agency_id == desk.ids["econ"]
    return chat, report


async def reports(service: Service) -> list[Report]:
    async with service.db.sessions() as s:
        return list(await s.exec(select(Report).order_by(Report.id)))  # type: ignore[arg-type]


async def report_now(service: Service, report_id: int | None) -> Report:
    async with service.db.sessions() as s:
        report = await s.get(Report, report_id)
    assert report is not None
    return report


async def trail(service: Service, report_id: int | None) -> list[ReportEvent]:
    async with service.db.sessions() as s:
        return list(
            await s.exec(
                select(ReportEvent)
                .where(ReportEvent.report_id == report_id)
                .order_by(ReportEvent.id)  # type: ignore[arg-type]
            )
        )


def titles(sent: Any) -> list[str]:
    return [b["text"] for b in sent.buttons]


async def test_an_official_takes_up_answers_and_resolves_and_the_citizen_reopens_then_closes(
    desk: Desk,
) -> None:
    service, clock = desk.service, desk.clock
    chat, report = await file_report(desk)
    code, rid = report.code, report.id

    # The officer of the competent office gets the notice with four buttons; nobody else.
    [notice] = await desk.officer.replies()
    assert notice.text.startswith(f"Phản ánh mới cần xử lý: {code}")
    assert "Lĩnh vực: Đất đai" in notice.text and f"Cơ quan xử lý: {ECON}" in notice.text
    assert report.due_at is not None and "Loại: chưa phân loại" in notice.text
    assert f"Hạn trả lời: {local_date(report.due_at)}" in notice.text  # 15 working days
    assert f"Nội dung: «{COMPLAINT}»" in notice.text
    assert titles(notice) == NOTICE_BUTTONS
    assert notice.callback_data == [
        f"of:accept:{rid}",
        f"of:reply:{rid}",
        f"of:resolve:{rid}",
        f"of:reassign:{rid}",
    ]
    assert all(len(d.encode()) <= 64 for d in notice.callback_data)
    for other in (desk.head, desk.police, desk.land):
        assert await other.replies() == []

    # Nhận xử lý → the citizen is told; the officer gets the next buttons.
    clock.advance(minutes=30)
    [ok] = await desk.officer.tap("Nhận xử lý")
    assert f"Anh/chị đã nhận xử lý phản ánh {code}" in ok.text
    assert titles(ok) == ["Trả lời", "Đã giải quyết", "Chuyển đơn vị khác"]
    told = texts(await chat.replies())
    assert told == f"Phản ánh {code} của anh/chị đã được {ECON} tiếp nhận xử lý."

    # Trả lời → the next message goes to the citizen as written.
    clock.advance(hours=2)
    [asked] = await desk.officer.tap("Trả lời")
    assert "nhập nội dung trả lời phản ánh" in asked.text and titles(asked) == ["Hủy"]
    answer = "Hồ sơ của ông/bà đã được ký, mời ông/bà nhận kết quả tại bộ phận một cửa."
    [sent] = await desk.officer.say(answer)
    assert f"Đã gửi trả lời phản ánh {code} tới người dân" in sent.text
    assert texts(await chat.replies()) == f"Trả lời phản ánh {code} của {ECON}: «{answer}»"

    # Đã giải quyết → the citizen is asked.
    clock.advance(hours=1)
    [resolved] = await desk.officer.tap("Đã giải quyết")
    assert f"Đã ghi nhận phản ánh {code} được giải quyết" in resolved.text
    asked_citizen = await chat.replies()
    assert question(asked_citizen[-1]) == (
        f"Phản ánh {code} đã được xử lý. Vấn đề của anh/chị đã được giải quyết chưa?"
    )
    assert [b["title"] for b in chat.buttons()] == ["Đã giải quyết", "Chưa"]
    assert [b["payload"] for b in chat.buttons()] == [f"rc:yes:{rid}", f"rc:no:{rid}"]

    # The old "Nhận xử lý" of the first notice is stale now: a clear answer, no change.
    before = len(await trail(service, rid))
    [stale] = await desk.officer.tap_data(f"of:accept:{rid}")
    assert stale.text == (
        f"Phản ánh {code} hiện đã được giải quyết, đang chờ người dân xác nhận, nên không thể "
        "nhận xử lý nữa. Không có thay đổi nào được thực hiện."
    )
    assert len(await trail(service, rid)) == before
    assert (await report_now(service, rid)).status == "resolved"

    # "Chưa" → reopened one level up; the head of the office is told.
    clock.advance(days=1)
    reopened = texts(await chat.tap("Chưa"))
    assert f"Phản ánh {code} đã được mở lại và chuyển lên cấp trên" in reopened
    row = await report_now(service, rid)
    assert (row.status, row.level) == ("reopened", 1) and row.due_at is not None
    assert f"Hạn trả lời mới: {local_date(row.due_at)}" in reopened
    assert clock.now() + timedelta(days=5) <= row.due_at <= clock.now() + timedelta(days=9)
    [up] = await desk.head.replies()
    assert up.text.startswith(f"Phản ánh {code} được mở lại: người dân cho biết")
    assert titles(up) == NOTICE_BUTTONS

    # The head takes it up and resolves it; the citizen confirms: closed.
    clock.advance(hours=3)
    await desk.head.tap("Nhận xử lý")
    assert "tiếp nhận xử lý" in texts(await chat.replies())
    clock.advance(hours=1)
    await desk.head.tap("Đã giải quyết")
    await chat.replies()
    clock.advance(minutes=10)
    closed = texts(await chat.tap("Đã giải quyết"))
    assert closed == f"Cảm ơn anh/chị đã xác nhận. Phản ánh {code} đã kết thúc."
    row = await report_now(service, rid)
    assert row.status == "closed" and row.closed_at == clock.now()

    # The audit trail: every step, who and when.
    t0 = report.created_at
    officer, head = desk.ids["officer_official"], desk.ids["head_official"]
    steps = [
        (e.action, e.actor, e.official_id, e.from_status, e.to_status, e.level, e.at - t0)
        for e in await trail(service, rid)
    ]
    assert steps == [
        ("created", "citizen", None, None, "new", 0, timedelta(0)),
        ("assign", "system", None, "new", "assigned", 0, timedelta(0)),
        ("accept", "official", officer, "assigned", "in_progress", 0, timedelta(minutes=30)),
        (
            "reply",
            "official",
            officer,
            "in_progress",
            "answered",
            0,
            timedelta(hours=2, minutes=30),
        ),
        ("resolve", "official", officer, "answered", "resolved", 0, timedelta(hours=3, minutes=30)),
        (
            "reopen",
            "citizen",
            None,
            "resolved",
            "reopened",
            0,
            timedelta(days=1, hours=3, minutes=30),
        ),
        (
            "accept",
            "official",
            head,
            "reopened",
            "in_progress",
            1,
            timedelta(days=1, hours=6, minutes=30),
        ),
        (
            "resolve",
            "official",
            head,
            "in_progress",
            "resolved",
            1,
            timedelta(days=1, hours=7, minutes=30),
        ),
        (
            "confirm",
            "citizen",
            None,
            "resolved",
            "closed",
            1,
            timedelta(days=1, hours=7, minutes=40),
        ),
    ]
    assert (await trail(service, rid))[3].note == answer


async def test_forged_unknown_and_garbage_payloads_change_nothing(desk: Desk) -> None:
    service = desk.service
    chat, report = await file_report(desk)
    code, rid = report.code, report.id
    await desk.officer.replies()
    before = [(e.id, e.action) for e in await trail(service, rid)]

    # An official of another agency forges "accept" and "open" for this report.
    [no] = await desk.police.tap_data(f"of:accept:{rid}")
    assert no.text.startswith("Anh/chị không có quyền xử lý phản ánh này")
    assert "Không có thay đổi nào được thực hiện" in no.text and code not in no.text
    for forged in (f"of:open:{rid}", f"of:resolve:{rid}", f"of:reply:{rid}"):
        [no] = await desk.police.tap_data(forged)
        assert no.text.startswith("Anh/chị không có quyền") and COMPLAINT[:30] not in no.text
    # …and as typed text (how a tap arrives from Zalo OA).
    [no] = await desk.police.say(f"of:to:{rid}:{desk.ids['police']}")
    assert no.text.startswith("Anh/chị không có quyền")

    # Unknown report, garbage.
    [unknown] = await desk.officer.tap_data("of:accept:999999")
    assert unknown.text.startswith("Không tìm thấy phản ánh này")
    for garbage in ("of:accept:abc", "of:explode:1", f"of:to:{rid}", "of:accept:-1", "rc:maybe:1"):
        [bad] = await desk.officer.tap_data(garbage)
        assert bad.text.startswith("Nút bấm này không hợp lệ"), garbage

    # A citizen (not linked) types a desk payload; another citizen answers for this report.
    assert "chỉ dành cho cán bộ đã liên kết tài khoản" in texts(await chat.say(f"of:accept:{rid}"))
    # The owner's own "Chưa" before anything was resolved: told the current state.
    await chat.post({"payload": f"rc:no:{rid}", "title": "Chưa"})
    assert texts(await chat.replies()) == (
        f"Phản ánh {code} hiện ở trạng thái: Đã chuyển đến cơ quan có thẩm quyền, chờ cán bộ "
        "nhận xử lý."
    )
    # Someone else, in another browser, answers for this report.
    desk.http.session.cookie_jar.clear()
    stranger = ChatClient(desk.http)
    await stranger.open()
    await stranger.start()
    await stranger.post({"payload": f"rc:yes:{rid}", "title": "Đã giải quyết"})
    assert texts(await stranger.replies()) == "Không tìm thấy phản ánh này."

    row = await report_now(service, rid)
    assert (row.status, row.level, row.official_id, row.agency_id) == (
        "assigned",
        0,
        None,
        desk.ids["econ"],
    )
    assert [(e.id, e.action) for e in await trail(service, rid)] == before
    assert await desk.officer.replies() == []  # nobody was notified of anything

    # The linked officer may open it (also as typed text): the whole report, its buttons.
    [view] = await desk.officer.say(f"of:open:{rid}")
    assert view.text.startswith(f"Phản ánh {code} — mới, chưa có cán bộ nhận xử lý")
    assert COMPLAINT in view.text and titles(view) == NOTICE_BUTTONS


async def test_a_repeated_accept_and_a_cancelled_reply(desk: Desk) -> None:
    service = desk.service
    chat, report = await file_report(desk)
    code, rid = report.code, report.id
    await desk.officer.replies()
    await desk.officer.tap("Nhận xử lý")
    await chat.replies()

    [again] = await desk.officer.tap_data(f"of:accept:{rid}")
    assert again.text == f"Anh/chị đã nhận xử lý phản ánh {code} từ trước."
    # The head of the office (same agency) finds it taken by the officer.
    [taken] = await desk.head.tap_data(f"of:accept:{rid}")
    assert taken.text.startswith(
        f"Phản ánh {code} hiện đã có cán bộ nhận xử lý (Phạm Thị Lan), nên không thể nhận xử lý"
    )

    await desk.officer.tap_data(f"of:reply:{rid}")
    [cancelled] = await desk.officer.say("hủy")
    assert cancelled.text == "Đã hủy. Chưa có gì được gửi cho người dân."
    # What follows goes to the conversation as usual, not to the citizen.
    await desk.officer.say("menu")
    assert await chat.replies() == []
    assert [e.action for e in await trail(service, rid)] == ["created", "assign", "accept"]


async def test_an_official_sends_a_report_to_another_agency_with_a_reason(desk: Desk) -> None:
    service = desk.service
    chat, report = await file_report(desk)
    code, rid = report.code, report.id
    await desk.officer.replies()

    [pick] = await desk.officer.tap("Chuyển đơn vị khác")
    assert pick.text == f"Chuyển phản ánh {code} tới đơn vị nào?"
    assert titles(pick) == [LAND_OFFICE, "UBND tỉnh Phú Thọ", "Hủy"]
    # A target that was not offered (the police, for a land report) is refused.
    [no] = await desk.officer.tap_data(f"of:to:{rid}:{desk.ids['police']}")
    assert no.text.startswith(f"Không thể chuyển phản ánh {code} tới đơn vị này")

    [asked] = await desk.officer.tap_data(f"of:to:{rid}:{desk.ids['land_office']}")
    assert f"nêu lý do chuyển phản ánh {code} tới {LAND_OFFICE}" in asked.text
    reason = "Thửa đất thuộc thẩm quyền đăng ký của Văn phòng Đăng ký đất đai tỉnh"
    [done] = await desk.officer.say(reason)
    assert done.text.startswith(f"Đã chuyển phản ánh {code} tới {LAND_OFFICE}")

    row = await report_now(service, rid)
    assert (row.agency_id, row.status, row.official_id) == (
        desk.ids["land_office"],
        "assigned",
        None,
    )
    last = (await trail(service, rid))[-1]
    assert (last.action, last.official_id, last.note) == (
        "reassign",
        desk.ids["officer_official"],
        f"→ H42.10.01: {reason}",  # where it went, and why
    )
    [notice] = await desk.land.replies()
    assert notice.text.startswith(f"Phản ánh {code} được chuyển đến {LAND_OFFICE} từ {ECON}.")
    assert f"Lý do: {reason}" in notice.text and titles(notice) == NOTICE_BUTTONS
    assert texts(await chat.replies()) == (
        f"Phản ánh {code} của anh/chị đã được chuyển tới {LAND_OFFICE} để xử lý theo đúng "
        "thẩm quyền."
    )
    # The old office no longer has a say; the new one takes it up.
    [no] = await desk.officer.tap_data(f"of:accept:{rid}")
    assert no.text.startswith("Anh/chị không có quyền")
    await desk.land.tap("Nhận xử lý")
    assert f"đã được {LAND_OFFICE} tiếp nhận xử lý" in texts(await chat.replies())


async def test_nobody_linked_means_no_notice_and_the_outbox_stays_empty(
    service: Service, http: TestClient, clock: ManualClock
) -> None:
    from tests.factories import small_province

    async with service.db.transaction() as s:
        await routing(s, await small_province(s, clock.now()))
    chat = ChatClient(http)
    await chat.open()
    await chat.start()
    await chat.tap("Gửi phản ánh, kiến nghị")
    await chat.say(COMPLAINT)
    await chat.tap("Đất đai")
    await chat.tap("Không có mã hồ sơ")
    await chat.say("phuong viet tri")
    async with service.db.sessions() as s:
        outbox = list(await s.exec(select(OutboxMessage)))
    assert {m.channel for m in outbox} == {"webchat"}
