"""The dossier API the one-stop system calls: tokens, validation, idempotency."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from bot.app import Service, build_app, build_service
from storage.models import Dossier, DossierEvent
from tests.chat import ChatClient, question
from tests.conftest import API_TOKEN, make_settings
from tests.factories import small_province

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NEW_CODE = "H42.15.01-261120-0042"


@pytest.fixture
async def province(service: Service, clock) -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with service.db.transaction() as s:
        return await small_province(s, clock.now())


def event(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "code": NEW_CODE,
        "procedure_code": "1.004227",
        "agency_code": "H42.15.01",
        "event": kind,
        "at": "2026-11-20T08:15:00+07:00",
        **extra,
    }


async def test_received_then_completed_dossier_can_be_rated(
    http: TestClient, service: Service, province: dict[str, int], chat: ChatClient
) -> None:
    r = await http.post(
        "/api/v1/dossiers",
        json=event("received", citizen={"name": "Phạm Văn Long", "phone": "+84 912 345 678"}),
        headers=AUTH,
    )
    assert r.status == 201
    body = await r.json()
    assert body["result"] == "applied"
    assert body["dossier"]["status"] == "received"
    # 10 working days after Friday 20/11/2026, with Tuesday 24/11 a public holiday (Ngày Văn
    # hóa Việt Nam, from 2026): Monday 7/12/2026, end of the day in Vietnam.
    assert body["dossier"]["due_at"] == "2026-12-07T16:59:00+00:00"
    assert body["dossier"]["links"]["chat"].endswith(f"/chat?start={NEW_CODE}")

    r = await http.post(
        "/api/v1/dossiers", json=event("completed", at="2026-11-23T09:00:00"), headers=AUTH
    )
    assert r.status == 201
    async with service.db.sessions() as s:
        d = (await s.exec(select(Dossier).where(Dossier.code == NEW_CODE))).one()
    assert d.status == "completed" and d.citizen_phone == "0912345678"
    assert d.completed_at is not None and d.completed_at.isoformat() == "2026-11-23T02:00:00+00:00"

    intro = await chat.say(NEW_CODE)
    assert question(intro[-1]).startswith("(1/5)")


async def test_the_same_event_twice_is_applied_once(
    http: TestClient, service: Service, province: dict[str, int]
) -> None:
    first = await http.post("/api/v1/dossiers", json=event("received"), headers=AUTH)
    again = await http.post(
        "/api/v1/dossiers", json=event("received", at="2026-11-21T08:00:00+07:00"), headers=AUTH
    )
    assert (first.status, again.status) == (201, 200)
    assert (await again.json())["result"] == "duplicate"
    async with service.db.sessions() as s:
        events = (await s.exec(select(DossierEvent))).all()
        d = (await s.exec(select(Dossier).where(Dossier.code == NEW_CODE))).one()
    assert len(events) == 1
    assert d.received_at.isoformat() == "2026-11-20T01:15:00+00:00"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "wrong or missing bearer token"),
        ({"Authorization": "Bearer wrong-token-0123456789"}, "wrong or missing bearer token"),
        ({"Authorization": API_TOKEN}, "wrong or missing bearer token"),
    ],
)
async def test_a_wrong_token_gets_401_and_changes_nothing(
    http: TestClient,
    service: Service,
    province: dict[str, int],
    headers: dict[str, str],
    message: str,
) -> None:
    r = await http.post("/api/v1/dossiers", json=event("received"), headers=headers)
    assert r.status == 401
    assert (await r.json())["error"] == message
    async with service.db.sessions() as s:
        assert not (await s.exec(select(DossierEvent))).all()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("not json at all", 400, "body"),
        ("[1, 2]", 400, "body"),
        ('{"code": 5}', 400, "code"),
        ({"code": "garbage"}, 400, "code"),
        (event("exploded"), 400, "event"),
        (event("received", at="yesterday"), 400, "at"),
        (event("received", at=None), 400, "at"),
        (event("received", due_at="31/12/2026"), 400, "due_at"),
        (event("received", citizen={"phone": "call me"}), 400, "citizen.phone"),
        (event("received", citizen="Nguyễn Văn A"), 400, "citizen"),
        (event("received", procedure_code="9.999999"), 422, "procedure_code"),
        (event("received", agency_code="X99"), 422, "agency_code"),
        ({**event("received"), "code": "H42.15.01-261120-0042; DROP TABLE dossier"}, 400, "code"),
    ],
)
async def test_a_malformed_body_gets_a_json_error_naming_the_field(
    http: TestClient, service: Service, province: dict[str, int], body: Any, status: int, field: str
) -> None:
    if isinstance(body, str):
        r = await http.post(
            "/api/v1/dossiers", data=body, headers={**AUTH, "Content-Type": "application/json"}
        )
    else:
        r = await http.post("/api/v1/dossiers", json=body, headers=AUTH)
    assert r.status == status, await r.text()
    data = await r.json()
    assert data["field"] == field and data["error"]
    async with service.db.sessions() as s:
        assert not (await s.exec(select(DossierEvent))).all()


async def test_api_is_closed_when_no_token_is_configured(db_url: str, clock) -> None:  # type: ignore[no-untyped-def]
    service = build_service(make_settings(db_url, HAILONG_API_TOKEN=""), clock)
    client = TestClient(TestServer(build_app(service)))
    await client.start_server()
    try:
        r = await client.post(
            "/api/v1/dossiers", json=event("received"), headers={"Authorization": "Bearer "}
        )
        assert r.status == 401
        assert "api.token is not configured" in (await r.json())["error"]
    finally:
        await client.close()


async def test_health_reports_database_and_queues(http: TestClient) -> None:
    r = await http.get("/healthz")
    assert r.status == 200
    assert await r.json() == {
        "status": "ok",
        "database": "ok",
        "nlu": "external",  # Rasa not started by this process; nothing failed yet
        "inbox_pending": 0,
        "outbox_pending": 0,
        "outbox_failed": 0,
    }
