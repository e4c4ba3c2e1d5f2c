"""The clock: deadlines in working days, the ladder, apologies, batched messages to heads.

Time is a ManualClock moved by hand; `Ticker.tick()` is what the scheduler calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import pytest
from sqlalchemy import String, func
from sqlmodel import col, select

from bot.app import Service
from bot.clock import VIETNAM, ManualClock
from bot.official_desk import may_act
from bot.reports import name_accused, open_report, transition
from bot.scheduler import Ticker
from storage.db import Database
from storage.models import (
    Agency,
    Citizen,
    Conversation,
    Official,
    OfficialAccount,
    OutboxMessage,
    Report,
    ReportEvent,
)
from tests.factories import routing, small_province

# Monday 25 January 2027, 09:00 in Hà Nội; Tết (4–10 February) lies ahead.
START = datetime(2027, 1, 25, 9, 0, tzinfo=VIETNAM)


def local(y: int, m: int, d: int, h: int = 9) -> datetime:
    return datetime(y, m, d, h, 0, tzinfo=VIETNAM)


@pytest.fixture
async def people(service: Service, clock: ManualClock) -> dict[str, int]:
    """The province with officials at every level, each with a linked web chat account."""
    clock.set(START)
    async with service.db.transaction() as s:
        ids = await routing(s, await small_province(s, clock.now()))
        office = Agency(
            code="H42.01",
            name="Văn phòng UBND tỉnh Phú Thọ",
            kind="office",
            parent_id=ids["province"],
            head_title="Chánh Văn phòng",
        )
        s.add(office)
        await s.flush()
        officials = {
            "officer": Official(agency_id=ids["econ"], name="Phạm Văn An", role="officer"),
            "unit_head": Official(agency_id=ids["econ"], name="Đỗ Thị Bình", role="head"),
            "office_head": Official(agency_id=office.id, name="Vũ Văn Chính", role="head"),
        }
        s.add_all(officials.values())
        await s.flush()
        ward_head = await s.scalar(
            select(Official).where(Official.agency_id == ids["ward"], Official.role == "head")
        )
        assert ward_head is not None
        out = {**ids, **{k: o.id for k, o in officials.items()}, "ward_head": ward_head.id}  # type: ignore[dict-item]
        for key in ("officer", "unit_head", "office_head", "ward_head"):
            s.add(
                OfficialAccount(
                    official_id=out[key], channel="webchat", user_key=f"of-{key}", linked_at=START
                )
            )
        return out


async def new_report(
    service: Service, people: dict[str, int], clock: ManualClock, n: int, **extra: object
) -> int:
    async with service.db.transaction() as s:
        citizen = Citizen(created_at=clock.now())
        s.add(citizen)
        await s.flush()
        s.add(
            Conversation(
                channel="webchat",
                user_key=f"citizen-{n}",
                citizen_id=citizen.id,
                lang="vi",
                vars={},
                started_at=clock.now(),
                updated_at=clock.now(),
            )
        )
        values: dict[str, object] = {
            "code": f"PAKN.20270125.{n:04d}",
            "citizen_id": citizen.id,
            "channel": "webchat",
            "text": "Hồ sơ tách thửa nộp từ tháng 12 đến nay chưa có kết quả",
            "source": "chat",
            "field": "land",
            "category": "procedure",
            "agency_id": people["econ"],
            "commune_id": people["ward"],
            "created_at": clock.now(),
        }
        report = Report(**{**values, **extra})  # type: ignore[arg-type]
        s.add(report)
        await open_report(s, report, service.settings, service.calendar, clock.now())
        return report.id  # type: ignore[return-value]


def ticker(service: Service, clock: ManualClock, db: Database | None = None) -> Ticker:
    return Ticker(db or service.db, service.settings, service.calendar, clock)


async def sent_to(service: Service, recipient: str) -> list[str]:
    async with service.db.sessions() as s:
        rows = await s.exec(
            select(OutboxMessage)
            .where(OutboxMessage.recipient == recipient)
            .order_by(col(OutboxMessage.id))
        )
        return [m.body["text"] for m in rows]


async def report(service: Service, report_id: int) -> Report:
    async with service.db.sessions() as s:
        r = await s.get(Report, report_id)
        assert r is not None
        return r


async def test_an_unanswered_report_climbs_the_ladder_on_working_days_across_tet(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    rid = await new_report(service, people, clock, 1)
    r = await report(service, rid)
    # 15 working days from Monday 25/01: Tết (4–10/02) and weekends do not count.
    assert r.due_at == datetime(2027, 2, 22, 23, 59, tzinfo=VIETNAM)
    assert r.level == 0

    clock.set(local(2027, 2, 22, 23))  # the last hour of the deadline: no escalation yet
    result = await ticker(service, clock).tick()
    # (Nobody took it up within 5 working days, by 01/02: its officer and the unit head
    # were pressed; see test_a_report_nobody_takes_up_in_time_presses_…)
    assert (result.escalated, result.untaken) == (0, 1)
    assert await sent_to(service, "citizen-1") == []

    clock.set(local(2027, 2, 23, 0) + timedelta(minutes=5))
    result = await ticker(service, clock).tick()
    assert (result.escalated, result.apologies, result.head_messages) == (1, 1, 1)
    r = await report(service, rid)
    assert r.level == 1 and r.due_at == datetime(2027, 3, 1, 23, 59, tzinfo=VIETNAM)
    [apology] = await sent_to(service, "citizen-1")
    assert "Thành thật xin lỗi" in apology and "hạn 22/02/2027" in apology
    assert "hạn trả lời mới là ngày 01/03/2027" in apology
    [_pressed, to_head] = await sent_to(service, "of-unit_head")
    assert "PAKN.20270125.0001: quá hạn 22/02/2027, hạn mới 01/03/2027" in to_head

    # The same moment again, or a second tick: nothing is produced twice.
    assert (await ticker(service, clock).tick()).escalated == 0
    assert len(await sent_to(service, "citizen-1")) == 1

    clock.set(local(2027, 3, 2))
    assert (await ticker(service, clock).tick()).escalated == 1
    r = await report(service, rid)
    # The head of the competent agency above the unit: the ward's chairman.
    assert r.level == 2 and r.due_at == datetime(2027, 3, 8, 23, 59, tzinfo=VIETNAM)
    assert len(await sent_to(service, "of-ward_head")) == 1

    clock.set(local(2027, 3, 9))
    assert (await ticker(service, clock).tick()).escalated == 1
    r = await report(service, rid)
    assert r.level == 3 and r.due_at == datetime(2027, 3, 15, 23, 59, tzinfo=VIETNAM)
    assert len(await sent_to(service, "of-office_head")) == 1
    to_citizen = await sent_to(service, "citizen-1")
    assert len([m for m in to_citizen if "xin lỗi" in m]) == 3  # one per missed deadline
    # While late, a word on how it stands every 7 days (02/03 and 09/03).
    assert len([m for m in to_citizen if "vẫn đang được xử lý" in m]) == 2
    async with service.db.sessions() as s:
        events = list(
            await s.exec(
                select(ReportEvent.action, ReportEvent.level)
                .where(ReportEvent.report_id == rid)
                .order_by(col(ReportEvent.id))
            )
        )
    assert [e for e in events if e[0] == "escalated"] == [
        ("escalated", 1),
        ("escalated", 2),
        ("escalated", 3),
    ]


async def test_a_report_nobody_takes_up_in_time_presses_its_officials_and_the_head_above(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    taken = await new_report(service, people, clock, 1)
    ignored = await new_report(service, people, clock, 2)
    r = await report(service, ignored)
    assert r.status == "assigned"
    # 5 working days from Monday 25/01: Monday 01/02.
    assert r.forward_due_at == datetime(2027, 2, 1, 23, 59, tzinfo=VIETNAM)
    async with service.db.transaction() as s:
        row = await s.get(Report, taken)
        assert row is not None
        await transition(s, row, "accept", clock.now(), "official", people["officer"])
        assert row.status == "in_progress" and row.forward_due_at is None

    clock.set(local(2027, 2, 1, 23))
    assert (await ticker(service, clock).tick()).untaken == 0
    clock.set(local(2027, 2, 2, 8))
    result = await ticker(service, clock).tick()
    assert (result.untaken, result.escalated, result.head_messages) == (1, 0, 2)
    for who in ("of-officer", "of-unit_head"):
        [pressed] = [m for m in await sent_to(service, who) if "thời hạn tiếp nhận" in m]
        assert pressed.startswith("Có 1 phản ánh, kiến nghị đã quá thời hạn tiếp nhận")
        assert "PAKN.20270125.0002: gửi ngày 25/01/2027, hạn trả lời 22/02/2027" in pressed
        assert "PAKN.20270125.0001" not in pressed
    assert await sent_to(service, "of-ward_head") == []
    assert await sent_to(service, "citizen-2") == []  # the citizen's deadline still runs
    # Once: later ticks do not press again.
    clock.set(local(2027, 2, 3, 8))
    assert (await ticker(service, clock).tick()).untaken == 0
    async with service.db.sessions() as s:
        actions = list(
            await s.exec(
                select(ReportEvent.action)
                .where(ReportEvent.report_id == ignored)
                .order_by(col(ReportEvent.id))
            )
        )
    assert actions == ["created", "assign", "forward_overdue"]


async def test_each_head_gets_one_message_per_tick_listing_all_their_overdue_reports(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    ids = [await new_report(service, people, clock, n) for n in range(1, 8)]
    clock.set(local(2027, 2, 23))
    result = await ticker(service, clock).tick()
    assert (result.escalated, result.head_messages) == (7, 1)
    [message] = await sent_to(service, "of-unit_head")
    assert message.startswith("Có 7 phản ánh, kiến nghị quá hạn")
    assert all(f"PAKN.20270125.{n:04d}" in message for n in range(1, 8))
    async with service.db.sessions() as s:
        row = await s.scalar(select(OutboxMessage).where(OutboxMessage.recipient == "of-unit_head"))
    assert row is not None
    buttons = row.body["buttons"]
    assert len(buttons) == 5  # Zalo's limit
    assert buttons[0] == {"payload": f"of:open:{ids[0]}", "title": "Mở PAKN.20270125.0001"}


async def test_a_head_never_receives_a_complaint_about_themselves(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    rid = await new_report(service, people, clock, 1, accused_official_id=people["unit_head"])
    clock.set(local(2027, 2, 23))
    await ticker(service, clock).tick()
    assert (await report(service, rid)).level == 2
    assert await sent_to(service, "of-unit_head") == []
    assert len(await sent_to(service, "of-ward_head")) == 1


async def test_naming_the_accused_moves_the_report_past_them_and_they_can_no_longer_act(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    rid = await new_report(service, people, clock, 1, category="conduct")
    async with service.db.transaction() as s:
        r = await s.get(Report, rid)
        assert r is not None and r.level == 1  # conduct: the unit head
        await transition(s, r, "accept", clock.now(), "official", people["unit_head"])
    clock.advance(hours=2)
    async with service.db.transaction() as s:
        r = await s.get(Report, rid)
        unit_head = await s.get(Official, people["unit_head"])
        assert r is not None and unit_head is not None
        found = await name_accused(
            s, r, unit_head, service.settings, service.calendar, clock.now(), "hách dịch"
        )
        assert found is not None and [o.id for o in found.officials] == [people["ward_head"]]
        assert not await may_act(s, r, unit_head, service.settings)
    r = await report(service, rid)
    # Back to their agency untaken, one level up: the ward's chairman answers for it now.
    assert (r.status, r.official_id, r.level) == ("assigned", None, 2)
    assert r.accused_official_id == people["unit_head"] and r.forward_due_at is not None
    [told] = await sent_to(service, "of-ward_head")
    assert told.startswith(f"Phản ánh {r.code} liên quan đến cán bộ Đỗ Thị Bình, nay chuyển")
    async with service.db.sessions() as s:
        last = await s.scalar(
            select(ReportEvent)
            .where(ReportEvent.report_id == rid)
            .order_by(col(ReportEvent.id).desc())
        )
    assert last is not None
    assert (last.action, last.actor, last.from_status, last.to_status, last.level) == (
        "accused",
        "admin",
        "in_progress",
        "assigned",
        2,
    )
    assert last.note == f"về cán bộ Đỗ Thị Bình (#{people['unit_head']}): hách dịch"
    # Late, it climbs on to the province office; the accused never hears of it again.
    before = len(await sent_to(service, "of-unit_head"))
    clock.set(local(2027, 2, 23))
    await ticker(service, clock).tick()
    assert (await report(service, rid)).level == 3
    assert len(await sent_to(service, "of-unit_head")) == before
    assert len([m for m in await sent_to(service, "of-office_head") if "quá hạn" in m]) == 1


async def test_conduct_complaints_start_one_level_up(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    rid = await new_report(service, people, clock, 1, category="conduct")
    assert (await report(service, rid)).level == 1
    # The unit head, not the officers of the unit, is told of it.
    assert len(await sent_to(service, "of-unit_head")) == 1
    assert await sent_to(service, "of-officer") == []


async def test_work_missed_while_the_service_was_down_is_done_once_each(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    rid = await new_report(service, people, clock, 1)
    clock.set(local(2027, 3, 20))  # down from before 22/02 until after 15/03
    t = ticker(service, clock)
    totals = [(await t.tick()).escalated for _ in range(5)]
    # Three deadlines passed (22/02, 01/03, 08/03) and the top level's (15/03): four.
    assert totals == [1, 1, 1, 1, 0]
    to_citizen = await sent_to(service, "citizen-1")
    assert len([m for m in to_citizen if "xin lỗi" in m]) == 4
    r = await report(service, rid)
    assert r.level == 3 and r.due_at == datetime(2027, 3, 22, 23, 59, tzinfo=VIETNAM)


async def test_answered_reports_stop_climbing(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    rid = await new_report(service, people, clock, 1)
    async with service.db.transaction() as s:
        r = await s.get(Report, rid)
        assert r is not None
        from bot.reports import transition

        await transition(s, r, "reply", clock.now(), "official", people["officer"], "Đã xử lý")
    clock.set(local(2027, 3, 20))
    assert (await ticker(service, clock).tick()).escalated == 0
    assert await sent_to(service, "citizen-1") == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_two_processes_on_one_postgresql_produce_each_notice_once(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    for n in range(1, 41):
        await new_report(service, people, clock, n)
    other = Database(service.settings.storage.url, service.settings.base_dir, 5)
    try:
        a, b = ticker(service, clock), ticker(service, clock, other)
        a.batch = b.batch = 7  # many small claims, interleaved
        for day in (local(2027, 2, 23), local(2027, 3, 2), local(2027, 3, 9)):
            clock.set(day)
            for _ in range(8):
                await asyncio.gather(a.tick(), b.tick())
    finally:
        await other.dispose()
    async with service.db.sessions() as s:
        per_report = dict(
            (
                await s.exec(
                    select(ReportEvent.report_id, func.count())
                    .where(ReportEvent.action == "escalated")
                    .group_by(col(ReportEvent.report_id))
                )
            ).all()
        )
        apologies = await s.scalar(
            select(func.count()).where(
                col(OutboxMessage.recipient).like("citizen-%"),
                col(OutboxMessage.body).cast(String).like("%xin l%"),
            )
        )
    assert len(per_report) == 40 and set(per_report.values()) == {3}
    assert apologies == 120


async def test_a_citizen_waiting_for_a_dossier_is_invited_to_rate_it_once_and_reminded_once(
    service: Service, http, chat, clock: ManualClock
) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import API_TOKEN
    from tests.factories import IN_PROGRESS

    async with service.db.transaction() as s:
        await small_province(s, clock.now())
    asked = texts_of(await chat.start(IN_PROGRESS))
    assert "chúng tôi sẽ nhắn tin mời anh/chị đánh giá" in asked
    await chat.say("menu")
    t = ticker(service, clock)
    assert (await t.tick()).invitations == 0  # not completed yet

    r = await http.post(
        "/api/v1/dossiers",
        json={
            "code": IN_PROGRESS,
            "procedure_code": "1.004227",
            "agency_code": "H42.15.01",
            "event": "completed",
            "at": clock.now().isoformat(),
        },
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert r.status in (200, 201), await r.text()
    assert (await t.tick()).invitations == 1
    assert (await t.tick()).invitations == 0  # once
    [invitation] = await chat.replies()
    assert f"Hồ sơ {IN_PROGRESS}" in invitation["text"] and "đã có kết quả" in invitation["text"]

    clock.advance(days=3)
    assert (await t.tick()).invitations == 1
    [reminder] = await chat.replies()
    assert reminder["text"].startswith("Nhắc lại")
    clock.advance(days=10)
    assert (await t.tick()).invitations == 0  # only one reminder


def texts_of(messages: list[dict]) -> str:
    return "\n".join(m["text"] for m in messages)


async def test_each_head_gets_one_weekly_digest(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    for n in range(1, 4):
        await new_report(service, people, clock, n)
    async with service.db.transaction() as s:
        from bot.reports import transition

        r = await s.get(Report, 1)
        assert r is not None
        await transition(s, r, "reply", clock.now(), "official", people["officer"], "Đã trả lời")
    clock.set(local(2027, 2, 1, 8) + timedelta(minutes=1))  # Monday 08:01: this week's digest
    t = ticker(service, clock)
    first = await t.tick()
    assert first.digests >= 1
    [digest] = [m for m in await sent_to(service, "of-unit_head") if "Tổng hợp tuần" in m]
    assert digest.startswith("Tổng hợp tuần 2027-W05 — Phòng Kinh tế, Hạ tầng và Đô thị")
    assert "• Phản ánh, kiến nghị nhận: 3\n• Trả lời đúng hạn: 1\n• Đang quá hạn: 0" in digest
    # The ward's chairman answers for the unit below the ward too.
    [ward] = [m for m in await sent_to(service, "of-ward_head") if "Tổng hợp tuần" in m]
    assert "nhận: 3" in ward
    assert (await t.tick()).digests == 0  # once a week
    clock.set(local(2027, 2, 8, 9))
    assert (await t.tick()).digests == 0  # nothing received that week: nothing to say


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_two_bot_processes_escalate_each_report_once(
    service: Service, people: dict[str, int], clock: ManualClock
) -> None:
    """Two real `bot.py run` processes, each ticking every second on the real clock."""
    import os
    import signal
    import sys
    from datetime import UTC

    from tests.conftest import ROOT
    from tests.test_cli import free_port

    clock.set(datetime.now(UTC) - timedelta(days=60))  # deadlines long past, for real
    for n in range(1, 31):
        await new_report(service, people, clock, n)
    procs = []
    for _ in range(2):
        env = {
            **os.environ,
            "HAILONG_STORAGE_URL": service.settings.storage.url,
            "HAILONG_SERVER_PORT": str(free_port()),
            "HAILONG_NLU_AUTOSTART": "false",
            "HAILONG_NLU_URL": "http://127.0.0.1:9",
            "HAILONG_DEMO_AUTOLOAD": "false",
            "HAILONG_LADDER_TICK_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "bot.py",
                "run",
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
    try:
        # 60 days late: every deadline up the ladder has passed; each is produced once.
        for _ in range(120):
            await asyncio.sleep(0.5)
            async with service.db.sessions() as s:
                left = await s.scalar(
                    select(func.count()).where(col(Report.next_escalation_at) <= datetime.now(UTC))
                )
            if left == 0:
                break
        await asyncio.sleep(2)  # a few more ticks in both processes: nothing more
    finally:
        for p in procs:  # one that already exited must not keep the other running
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.wait_for(p.wait(), 30)
    assert [p.returncode for p in procs] == [0, 0]  # both ran until told to stop
    async with service.db.sessions() as s:
        per_report = dict(
            (
                await s.exec(
                    select(ReportEvent.report_id, func.count())
                    .where(ReportEvent.action == "escalated")
                    .group_by(col(ReportEvent.report_id))
                )
            ).all()
        )
        apologies = await s.scalar(
            select(func.count()).where(
                col(OutboxMessage.recipient).like("citizen-%"),
                col(OutboxMessage.body).cast(String).like("%xin l%"),
            )
        )
    assert len(per_report) == 30
    counts = set(per_report.values())
    assert len(counts) == 1 and counts.pop() >= 4  # every missed deadline, the same for all
    assert apologies == sum(per_report.values())
