"""Two bot processes on one database: order per conversation, each message sent once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from bot.app import Service, build_app, build_service
from bot.clock import ManualClock
from bot.config import Settings
from storage.models import InboxEvent, OutboxMessage
from tests.chat import settle, texts
from tests.factories import small_province


class Recorder:
    """Wraps a process's web chat channel and records what it delivers."""

    def __init__(self, inner, log: list[tuple[str, int]], process: str) -> None:  # type: ignore[no-untyped-def]
        self.name = inner.name
        self.inner = inner
        self.log = log
        self.process = process

    async def send(self, message: OutboxMessage) -> str | None:
        await asyncio.sleep(0.001)
        self.log.append((message.recipient, message.id))  # type: ignore[arg-type]
        return await self.inner.send(message)


@pytest.fixture
async def two_processes(settings: Settings, clock: ManualClock):  # type: ignore[no-untyped-def]
    services = [build_service(settings, clock) for _ in range(2)]
    clients = [TestClient(TestServer(build_app(s))) for s in services]
    for c in clients:
        await c.start_server()
    async with services[0].db.transaction() as s:
        await small_province(s, clock.now())
    yield services, clients
    for c in clients:
        await c.close()


async def test_two_processes_keep_each_conversation_in_order_and_send_once(
    two_processes: tuple[list[Service], list[TestClient]],
) -> None:
    services, clients = two_processes
    delivered: list[tuple[str, int]] = []
    for i, s in enumerate(services):
        s.channels["webchat"] = Recorder(s.channels["webchat"], delivered, f"p{i}")
    users = [f"citizen{n:02d}-{uuid.uuid4().hex[:8]}" for n in range(12)]
    script = ["xin chào", "Hướng dẫn", "menu", "Đánh giá hồ sơ", "abc"]

    async def citizen(user: str) -> None:
        for n, text in enumerate(script):
            # Alternate processes, as a load balancer would; same cookie on both.
            client = clients[n % 2]
            r = await client.post(
                "/chat/api/events",
                json={"id": uuid.uuid4().hex, "text": text},
                cookies={"hl_chat": user},
            )
            assert r.status == 202

    await asyncio.gather(*(citizen(u) for u in users))
    for c in clients:
        await settle(c)
    await settle(clients[0])

    async with services[0].db.sessions() as s:
        events = (await s.exec(select(InboxEvent))).all()
        sent = (await s.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all()  # type: ignore[arg-type]
    assert len(events) == len(users) * len(script)
    assert {e.status for e in events} == {"done"}
    assert {m.status for m in sent} == {"sent"}
    # Every message delivered exactly once, and to each citizen in the order written.
    assert sorted(mid for _, mid in delivered) == [m.id for m in sent]
    for user in users:
        mine = [m for m in sent if m.recipient == user]
        assert [mid for rcpt, mid in delivered if rcpt == user] == [m.id for m in mine]
        said = texts([m.body for m in mine])
        assert said.index("Xin chào") < said.index("Hướng dẫn") < said.index("nhập mã hồ sơ")
        assert mine[-1].body["text"].startswith("«abc» chưa đúng dạng mã hồ sơ")
