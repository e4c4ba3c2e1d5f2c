"""The bot with a real Rasa server (trained once per run on nlu/data, fast pipeline).

Texts here are not in the training data; they were written for these tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from bot import backfill
from bot.app import Service
from bot.config import Settings
from bot.nlu import NluClient
from bot.reports import open_report
from storage.models import Citizen, Official, OfficialAccount, OutboxMessage, Report, ReportEvent
from tests.chat import ChatClient, question, texts
from tests.conftest import ROOT, make_settings
from tests.factories import routing, small_province

UNSEEN = {
    "land": [
        "Tôi nộp hồ sơ xin cấp sổ đỏ cho mảnh đất thừa kế của bố mẹ từ tháng 6, đến giờ "
        "văn phòng đăng ký đất đai vẫn hẹn lần hẹn lượt",
        "so do cua nha em bi ghi sai dien tich thua dat, xin dinh chinh 2 thang chua xong",
        "dat nha toi bi thu hoi lam duong ma tien den bu chua tra du",
    ],
    "construction": [
        "Nhà hàng xóm xây lấn sang phần đất chung, làm nứt tường nhà tôi, báo phường mà "
        "chưa thấy xử lý",
        "xin giay phep xay dung nha o 3 tang nop 1 thang roi chua duoc cap",
        "Công trình chung cư bên cạnh thi công cả đêm, đề nghị kiểm tra giấy phép",
    ],
    "judicial_records": [
        "Tôi cần phiếu lý lịch tư pháp số 1 để đi xuất khẩu lao động, nộp ở công an tỉnh "
        "đã quá hẹn 5 ngày",
        "lam phieu lltp online tren vneid ma bao loi mai khong nop duoc",
        "phieu ly lich tu phap ghi sai ngay sinh cua toi, sua o dau",
    ],
    "other": [
        "Làm lại căn cước công dân bị mất mà chờ gần 2 tháng chưa có thẻ",
        "dang ky khai sinh cho con o ubnd xa ma can bo bat nop ban sao giay ket hon",
        "Hồ sơ hưởng chế độ thai sản của tôi nộp bảo hiểm xã hội 2 tháng vẫn chưa được giải quyết",
    ],
}
CONDUCT = "can bo dia chinh xa doi phai boi duong moi lam so do cho"


@pytest.fixture
def settings(db_url: str, rasa_server) -> Settings:  # type: ignore[no-untyped-def]
    """The bot asks the session's real Rasa server."""
    return make_settings(db_url, **rasa_server.settings_env)


@pytest.fixture
async def province(service: Service, clock) -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with service.db.transaction() as s:
        return await routing(s, await small_province(s, clock.now()))


async def reports(service: Service) -> list[Report]:
    async with service.db.sessions() as s:
        return list(await s.exec(select(Report).order_by(Report.id)))  # type: ignore[arg-type]


async def test_unseen_complaints_come_back_with_the_right_field(rasa_server) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings("sqlite://", **rasa_server.settings_env)
    client = NluClient(settings.nlu, token=rasa_server.token)
    try:
        for field, examples in UNSEEN.items():
            for text in examples:
                reading = await client.read(text)
                assert reading is not None
                assert reading.field == field, (text, reading)
        conduct = await client.read(CONDUCT)
        assert conduct is not None and (conduct.field, conduct.category) == ("land", "conduct")
        # Text starting with "/" would be taken by Rasa as an intent given by hand: never sent.
        before = client.metrics.nlu.labels("ok")._value.get()
        assert await client.read("/greet") is None
        assert client.metrics.nlu.labels("ok")._value.get() == before
    finally:
        await client.close()


async def test_a_burst_beyond_rasas_pace_is_turned_away_without_opening_the_breaker(
    rasa_server,
) -> None:  # type: ignore[no-untyped-def]
    """More complaints at once than Rasa can read in time: those that never got a turn are
    answered "busy" (the citizen picks the field), and Rasa, which answered every request it
    was given, is still asked afterwards."""
    settings = make_settings("sqlite://", **rasa_server.settings_env).nlu
    settings = settings.model_copy(update={"timeout_seconds": 0.3})
    client = NluClient(settings, token=rasa_server.token)
    try:
        await client.read(UNSEEN["land"][0])  # warm
        readings = await asyncio.gather(*(client.read(UNSEEN["land"][1]) for _ in range(300)))
        read = sum(r is not None for r in readings)
        busy = client.metrics.nlu.labels("busy")._value.get()
        assert busy > 0 and busy == 300 - read  # every one read, or told busy
        assert client.metrics.nlu.labels("timeout")._value.get() == 0
        assert not client.circuit_open
        after = await client.read(UNSEEN["construction"][0])
        assert after is not None and after.field == "construction"
    finally:
        await client.close()


async def test_a_complaint_typed_at_the_menu_is_read_confirmed_and_routed(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.start()
    text = "so do cua nha em bi ghi sai dien tich thua dat, xin dinh chinh 2 thang chua xong"
    asked = await chat.say(text)
    assert question(asked[-1]) == (
        "Phản ánh của anh/chị thuộc lĩnh vực Đất đai (về quy định, thủ tục) — đúng không?"
    )
    await chat.tap("Đúng")
    await chat.tap("Không có mã hồ sơ")
    done = texts(await chat.say("Phường Việt Trì"))
    [report] = await reports(service)
    assert f"mã số {report.code}, lĩnh vực Đất đai" in done
    assert (report.field, report.category, report.field_source) == ("land", "procedure", "nlu")
    assert report.nlu_field == "land" and report.nlu_confidence and report.nlu_confidence > 0.7
    assert report.agency_id == province["econ"]


async def test_a_correction_is_stored_and_exported_for_training(
    service: Service, province: dict[str, int], chat: ChatClient, rasa_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    await chat.start()
    await chat.tap("Gửi phản ánh, kiến nghị")
    text = "dat nha toi bi thu hoi lam duong ma tien den bu chua tra du, goi 0912345678"
    assert "Đất đai" in question((await chat.say(text))[-1])
    await chat.tap("Chọn lĩnh vực khác")
    await chat.tap("Xây dựng")
    await chat.tap("Không có mã hồ sơ")
    await chat.tap("Bỏ qua")
    [report] = await reports(service)
    assert (report.field, report.nlu_field, report.field_source) == (
        "construction",
        "land",
        "citizen",
    )

    out = tmp_path / "corrections.yml"
    env = {**os.environ, "HAILONG_STORAGE_URL": service.settings.storage.url}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "bot.py", "nlu", "export-corrections", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    exported = out.read_text(encoding="utf-8")
    assert "- intent: construction+procedure\n  examples: |\n" in exported
    assert "tien den bu chua tra du, goi 0900000000" in exported  # the phone is not kept


async def test_the_rasa_call_of_a_typed_complaint_is_made_before_its_batch(
    service: Service, province: dict[str, int], chat: ChatClient, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Foreseen from the conversation's last state: one Rasa call, one batch, no second pass."""
    await chat.start()
    await chat.tap("Gửi phản ánh, kiến nghị")
    real = service.conversations.process
    stopped_for_rasa = []

    async def spy(keys, known=None):  # type: ignore[no-untyped-def]
        done = await real(keys, known)
        stopped_for_rasa.extend(done.external)
        return done

    monkeypatch.setattr(service.conversations, "process", spy)
    asked = service.metrics.nlu.labels("ok")._value.get()
    answer = await chat.say(UNSEEN["construction"][0])
    assert "Xây dựng" in question(answer[-1])
    assert stopped_for_rasa == []
    assert service.metrics.nlu.labels("ok")._value.get() == asked + 1


async def test_conduct_complaints_go_one_level_up(
    service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    await chat.start()
    await chat.tap("Gửi phản ánh, kiến nghị")
    asked = await chat.say(CONDUCT)
    assert "thái độ, hành vi của cán bộ" in question(asked[-1])
    await chat.tap("Đúng")
    await chat.tap("Không có mã hồ sơ")
    done = texts(await chat.say("viet tri"))
    [report] = await reports(service)
    assert report.category == "conduct"
    # land × the ward → its economic office; conduct → the ward's people's committee above.
    assert report.agency_id == province["ward"]
    assert "UBND phường Việt Trì" in done


async def test_a_pending_report_found_to_be_about_conduct_is_routed_one_level_up(
    service: Service, province: dict[str, int], clock
) -> None:  # type: ignore[no-untyped-def]
    async with service.db.transaction() as s:
        ward_head = (
            await s.exec(
                select(Official).where(
                    Official.agency_id == province["ward"], Official.role == "head"
                )
            )
        ).one()
        s.add(
            OfficialAccount(
                official_id=ward_head.id,  # type: ignore[arg-type]
                channel="webchat",
                user_key="ward-head",
                linked_at=clock.now(),
            )
        )
        citizen = Citizen(created_at=clock.now())
        s.add(citizen)
        await s.flush()
        # A dissatisfied rating's comment: its field is the dossier's, nobody read it yet.
        report = Report(
            code="PAKN.20261123.0001",
            citizen_id=citizen.id,  # type: ignore[arg-type]
            channel="webchat",
            text=CONDUCT,
            source="rating",
            field="land",
            nlu_status="pending",
            commune_id=province["ward"],
            agency_id=province["econ"],
            created_at=clock.now(),
        )
        s.add(report)
        await open_report(s, report, service.settings, service.calendar, clock.now())
        due = report.due_at
    before = await sent_to(service, "ward-head")  # the unit has no officers: already told
    assert await backfill.classify_pending(*pending_args(service)) == 1
    [report] = await reports(service)
    assert (report.category, report.agency_id, report.level) == ("conduct", province["ward"], 1)
    assert report.due_at == due  # the citizen's deadline still counts from their day
    async with service.db.sessions() as s:
        trail = list(await s.exec(select(ReportEvent).where(ReportEvent.report_id == report.id)))
    assert [e.action for e in trail] == ["created", "assign", "rerouted"]
    assert trail[-1].note is not None
    assert trail[-1].note.startswith("H42.15.01.01 → H42.15.01 (conduct, once classified")
    [notice] = (await sent_to(service, "ward-head"))[len(before) :]
    assert notice.startswith("Phản ánh mới cần xử lý: PAKN.20261123.0001")
    assert "Cơ quan xử lý: UBND phường Việt Trì" in notice


async def sent_to(service: Service, recipient: str) -> list[str]:
    async with service.db.sessions() as s:
        rows = await s.exec(
            select(OutboxMessage)
            .where(OutboxMessage.recipient == recipient)
            .order_by(OutboxMessage.id)  # type: ignore[arg-type]
        )
        return [m.body["text"] for m in rows]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tôi muốn khiếu nại quyết định thu hồi đất của UBND xã", "Luật Khiếu nại"),
        ("cho hỏi phản ánh hôm trước của tôi giải quyết đến đâu rồi", "chưa gửi phản ánh nào"),
        ("toi muon gui phan anh", "mô tả vấn đề"),
        ("cam on nhieu nha", "Không có gì"),
        ("toi muon danh gia ho so", "nhập mã hồ sơ"),
    ],
)
async def test_free_text_at_the_menu_goes_where_the_citizen_means(
    service: Service, province: dict[str, int], chat: ChatClient, text: str, expected: str
) -> None:
    await chat.start()
    assert expected in texts(await chat.say(text))


async def test_with_rasa_stopped_the_complaint_is_kept_and_classified_when_it_returns(
    service: Service, province: dict[str, int], chat: ChatClient, rasa_server
) -> None:  # type: ignore[no-untyped-def]
    pid = rasa_server.server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # frozen: connections hang, requests time out
    try:
        await chat.start()
        await chat.tap("Gửi phản ánh, kiến nghị")
        asked = await chat.say(UNSEEN["judicial_records"][0])
        assert "chọn lĩnh vực" in question(asked[-1])
        assert [b["title"] for b in chat.buttons()][:3] == [
            "Đất đai",
            "Xây dựng",
            "Lý lịch tư pháp",
        ]
        await chat.tap("Lý lịch tư pháp")
        await chat.tap("Không có mã hồ sơ")
        await chat.tap("Bỏ qua")
        [report] = await reports(service)
        assert report.nlu_status == "pending" and report.agency_id == province["police"]
        # While Rasa is frozen nothing is classified, and nothing waits for long.
        assert await asyncio.wait_for(backfill.classify_pending(*pending_args(service)), 10) == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    service.nlu._open_until = 0  # the breaker's pause is over (tests do not wait 30 s)
    assert await backfill.classify_pending(*pending_args(service)) == 1
    [report] = await reports(service)
    assert report.nlu_status == "done"
    assert (report.nlu_field, report.field, report.field_source) == (
        "judicial_records",
        "judicial_records",
        "citizen",
    )
    assert report.category == "procedure" and report.nlu_confidence


def pending_args(service: Service) -> tuple[Any, ...]:
    return service.db, service.nlu, service.settings, service.calendar, service.clock


def test_nlu_classify_reads_lines_and_writes_json(rasa_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lines = [UNSEEN["land"][1], "", UNSEEN["other"][0], "/" + UNSEEN["construction"][1]]
    env = {**os.environ, **rasa_server.settings_env, "HAILONG_NLU_AUTOSTART": "false"}
    r = subprocess.run(
        [sys.executable, "bot.py", "nlu", "classify"],
        cwd=ROOT,
        env=env,
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["text"] for o in out] == lines
    assert [o["field"] for o in out] == ["land", None, "other", "construction"]
    assert set(out[0]) == {"text", "field", "category", "confidence"}
    assert out[0]["category"] == "procedure" and 0.5 < out[0]["confidence"] <= 1
