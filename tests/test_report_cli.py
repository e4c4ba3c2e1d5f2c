"""`bot.py report …`: officials not linked yet work on reports from the command line.

The same rules and effects as the buttons (tests/test_official_desk.py): a refusal exits 1
and changes nothing; an accepted action writes its audit row and queues the citizen's
message in the outbox.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select

from bot.config import Settings
from bot.reports import open_report
from bot.workdays import WorkCalendar
from storage.db import Database
from storage.models import (
    Agency,
    Citizen,
    Conversation,
    Official,
    OutboxMessage,
    Report,
    ReportEvent,
)
from tests.factories import routing, small_province

ROOT = Path(__file__).resolve().parent.parent
CITIZEN_KEY = "cli-citizen-0001"


def bot(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HAILONG_STORAGE_URL": db_url,
        "HAILONG_DEMO_AUTOLOAD": "false",
        "HAILONG_NLU_AUTOSTART": "false",
    }
    return subprocess.run(
        [sys.executable, "bot.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _setup(db_url: str, settings: Settings) -> dict[str, Any]:
    """Two reports of one citizen: land (ward office, fresh), judicial records (police, late)."""
    db = Database(db_url)
    now = datetime.now(UTC)
    calendar = WorkCalendar(settings.workdays.extra_days_off, settings.workdays.makeup_working_days)
    try:
        async with db.transaction() as s:
            ids = await routing(s, await small_province(s, now))
            officer = Official(agency_id=ids["econ"], name="Phạm Thị Lan", role="officer")
            s.add(officer)
            citizen = Citizen(created_at=now)
            s.add(citizen)
            await s.flush()
            s.add(
                Conversation(
                    channel="webchat",
                    user_key=CITIZEN_KEY,
                    citizen_id=citizen.id,  # type: ignore[arg-type]
                    vars={},
                    started_at=now,
                    updated_at=now,
                )
            )
            police = (
                await s.exec(select(Official).where(Official.agency_id == ids["police"]))
            ).one()
            made = []
            for code, field, agency, created in (
                ("PAKN.20261001.0007", "judicial_records", ids["police"], now - timedelta(days=60)),
                ("PAKN.20261123.0042", "land", ids["econ"], now),
            ):
                report = Report(
                    code=code,
                    citizen_id=citizen.id,  # type: ignore[arg-type]
                    channel="webchat",
                    text="Hồ sơ của tôi trễ hẹn đã lâu mà chưa ai trả lời",
                    source="chat",
                    field=field,
                    agency_id=agency,
                    created_at=created,
                )
                s.add(report)
                await open_report(s, report, settings, calendar, now)
                made.append(report.code)
        return {**ids, "officer": officer.id, "police_head": police.id, "codes": made}
    finally:
        await db.dispose()


async def _state(db_url: str, code: str) -> tuple[Report, list[ReportEvent], list[OutboxMessage]]:
    db = Database(db_url)
    try:
        async with db.sessions() as s:
            report = (await s.exec(select(Report).where(Report.code == code))).one()
            events = list(
                await s.exec(
                    select(ReportEvent)
                    .where(ReportEvent.report_id == report.id)
                    .order_by(ReportEvent.id)  # type: ignore[arg-type]
                )
            )
            outbox = list(
                await s.exec(
                    select(OutboxMessage)
                    .where(OutboxMessage.recipient == CITIZEN_KEY)
                    .order_by(OutboxMessage.id)  # type: ignore[arg-type]
                )
            )
        return report, events, outbox
    finally:
        await db.dispose()


async def _agency_code(db_url: str, agency_id: int | None) -> str:
    db = Database(db_url)
    try:
        async with db.sessions() as s:
            agency = await s.get(Agency, agency_id)
            return agency.code if agency else ""
    finally:
        await db.dispose()


def test_officials_act_on_reports_from_the_command_line(db_url: str, settings: Settings) -> None:
    ids = asyncio.run(_setup(db_url, settings))
    late, fresh = ids["codes"]
    officer, police = str(ids["officer"]), str(ids["police_head"])

    listed = bot(db_url, "report", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(fresh) and "H42.15.01.01" in lines[0] and "QUÁ HẠN" not in lines[0]
    assert lines[1].startswith(late) and "QUÁ HẠN" in lines[1]
    overdue = bot(db_url, "report", "list", "--overdue").stdout
    assert late in overdue and fresh not in overdue
    only = bot(db_url, "report", "list", "--agency", "H42.15.01.01", "--status", "assigned").stdout
    assert fresh in only and late not in only

    # An official of another agency is refused; nothing changes.
    refused = bot(db_url, "report", "accept", fresh, "--official", police)
    assert refused.returncode == 1
    assert "không có quyền xử lý phản ánh này" in refused.stderr
    report, events, outbox = asyncio.run(_state(db_url, fresh))
    assert report.status == "assigned" and [e.action for e in events] == ["created", "assign"]
    assert not outbox

    # The officer of the office takes it up (typed loosely), answers, resolves it.
    took = bot(db_url, "report", "accept", fresh.lower().replace(".", " "), "--official", officer)
    assert took.returncode == 0, took.stderr
    assert f"Anh/chị đã nhận xử lý phản ánh {fresh}" in took.stdout
    again = bot(db_url, "report", "accept", fresh, "--official", officer)
    assert again.returncode == 1 and "từ trước" in again.stderr
    answer = "Hồ sơ đã được ký, mời ông/bà nhận kết quả tại bộ phận một cửa."
    assert (
        bot(db_url, "report", "reply", fresh, "--official", officer, "--text", answer).returncode
        == 0
    )
    assert bot(db_url, "report", "resolve", fresh, "--official", officer).returncode == 0
    # Too late to send it elsewhere.
    stale = bot(
        db_url, "report", "reassign", fresh, "--official", officer, "--to", "H42.10.01",
        "--reason", "không thuộc thẩm quyền",
    )  # fmt: skip
    assert stale.returncode == 1
    assert "đã được giải quyết, đang chờ người dân xác nhận" in stale.stderr

    report, events, outbox = asyncio.run(_state(db_url, fresh))
    assert report.status == "resolved" and report.official_id == ids["officer"]
    assert [(e.action, e.actor, e.official_id) for e in events] == [
        ("created", "citizen", None),
        ("assign", "system", None),
        ("accept", "official", ids["officer"]),
        ("reply", "official", ids["officer"]),
        ("resolve", "official", ids["officer"]),
    ]
    assert events[3].note == answer
    assert [m.body["text"] for m in outbox] == [
        f"Phản ánh {fresh} của anh/chị đã được Phòng Kinh tế, Hạ tầng và Đô thị phường Việt Trì "
        "tiếp nhận xử lý.",
        f"Trả lời phản ánh {fresh} của Phòng Kinh tế, Hạ tầng và Đô thị phường Việt Trì: "
        f"«{answer}»",
        f"Phản ánh {fresh} đã được xử lý. Vấn đề của anh/chị đã được giải quyết chưa?",
    ]
    assert [b["payload"] for b in outbox[-1].body["buttons"]] == [
        f"rc:yes:{report.id}",
        f"rc:no:{report.id}",
    ]
    assert {(m.channel, m.status) for m in outbox} == {("webchat", "pending")}

    shown = bot(db_url, "report", "show", fresh)
    assert shown.returncode == 0, shown.stderr
    assert "đã được giải quyết, đang chờ người dân xác nhận" in shown.stdout
    assert "Cán bộ xử lý: Phạm Thị Lan" in shown.stdout
    assert "reply      in_progress→answered" in shown.stdout and f"«{answer}»" in shown.stdout
    assert f"official Phạm Thị Lan (#{officer})" in shown.stdout

    # The police head sends the late judicial-records report to the province.
    moved = bot(
        db_url, "report", "reassign", late, "--official", police, "--to", "000.00.00.H42",
        "--reason", "Đề nghị UBND tỉnh chỉ đạo",
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    report, events, _ = asyncio.run(_state(db_url, late))
    assert asyncio.run(_agency_code(db_url, report.agency_id)) == "000.00.00.H42"
    assert (events[-1].action, events[-1].note) == (
        "reassign",
        "→ 000.00.00.H42: Đề nghị UBND tỉnh chỉ đạo",
    )
    # The new agency gets a whole answer period from now, from its first level.
    assert report.level == 0 and report.due_at is not None
    assert report.next_escalation_at == report.due_at

    missing = bot(db_url, "report", "accept", "PAKN.20990101.0001", "--official", officer)
    assert missing.returncode == 1 and "Không tìm thấy phản ánh" in missing.stderr
    nobody = bot(db_url, "report", "resolve", fresh, "--official", "999999")
    assert nobody.returncode == 1 and "999999" in nobody.stderr


def test_an_admin_names_the_accused_official_who_can_then_no_longer_act(
    db_url: str, settings: Settings
) -> None:
    ids = asyncio.run(_setup(db_url, settings))
    late, _fresh = ids["codes"]
    head = str(ids["police_head"])
    named = bot(db_url, "report", "accuse", late, "--official", head, "--note", "hách dịch")
    assert named.returncode == 0, named.stderr
    assert f"Phản ánh {late}: cán bộ bị phản ánh là Trần Quốc Bảo (#{head})." in named.stdout
    # The police head is the only official above the police's report here: nobody is left.
    assert "Nobody is left to answer for it." in named.stdout
    report, events, _ = asyncio.run(_state(db_url, late))
    assert report.accused_official_id == ids["police_head"]
    assert (events[-1].action, events[-1].actor, events[-1].note) == (
        "accused",
        "admin",
        f"về cán bộ Trần Quốc Bảo (#{head}): hách dịch",
    )
    refused = bot(db_url, "report", "accept", late, "--official", head)
    assert refused.returncode == 1 and "không có quyền xử lý" in refused.stderr
    assert asyncio.run(_state(db_url, late))[0].status == "assigned"

    missing = bot(db_url, "report", "accuse", late, "--official", "9999")
    assert missing.returncode == 1 and "No official 9999" in missing.stderr
