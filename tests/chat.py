"""A scripted citizen in the web chat, speaking HTTP to the real app."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import func
from sqlmodel import select

from bot.app import SERVICE
from bot.clock import ManualClock
from storage.models import InboxEvent, OutboxMessage


async def settle(http: TestClient, timeout: float = 10.0, clock: ManualClock | None = None) -> None:
    """Wait until every stored event is handled and every message is sent or parked.

    With a `clock`, messages waiting for a retry are brought due by moving the clock to
    their next attempt (backoff and retry_after pass without waiting for them).
    """
    service = http.server.app[SERVICE]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        await service.dispatcher.idle()
        async with service.db.sessions() as s:
            inbox = await s.scalar(select(func.count()).where(InboxEvent.status == "pending"))
            outbox = await s.scalar(
                select(func.count()).where(OutboxMessage.status.in_(("pending", "sending")))  # type: ignore[attr-defined]
            )
            next_due = None
            if clock is not None:
                next_due = await s.scalar(
                    select(func.min(OutboxMessage.next_attempt_at)).where(
                        OutboxMessage.status == "pending",
                        OutboxMessage.next_attempt_at > clock.now(),
                    )
                )
        if not inbox and not outbox:
            return
        if clock is not None and next_due is not None:
            clock.set(next_due)
            service.sender.wake()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"not settled after {timeout}s: inbox {inbox}, outbox {outbox}")


class ChatClient:
    def __init__(self, http: TestClient) -> None:
        self.http = http
        self.last_id = 0
        self.history: list[dict[str, Any]] = []

    async def open(self, query: str = "") -> str:
        r = await self.http.get("/chat" + query)
        assert r.status == 200, await r.text()
        return await r.text()

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        body.setdefault("id", uuid.uuid4().hex)
        r = await self.http.post("/chat/api/events", json=body)
        data = await r.json()
        assert r.status == 202, (r.status, data)
        return data

    async def replies(self) -> list[dict[str, Any]]:
        """Everything the bot sent since the last call (after the app settled)."""
        await settle(self.http)
        r = await self.http.get(f"/chat/api/messages?after={self.last_id}")
        assert r.status == 200
        messages = (await r.json())["messages"]
        if messages:
            self.last_id = messages[-1]["id"]
        self.history.extend(messages)
        return messages

    async def say(self, text: str, msg_id: str | None = None) -> list[dict[str, Any]]:
        await self.post({"text": text, **({"id": msg_id} if msg_id else {})})
        return await self.replies()

    async def start(self, payload: str = "") -> list[dict[str, Any]]:
        await self.post({"start": payload})
        return await self.replies()

    def buttons(self) -> list[dict[str, Any]]:
        """The buttons of the bot's latest message that has any."""
        for m in reversed(self.history):
            if m.get("buttons"):
                return m["buttons"]
        return []

    def current_turn(self) -> int | None:
        for m in reversed(self.history):
            if m.get("buttons"):
                return m["turn"]
        return None

    async def tap(self, title: str) -> list[dict[str, Any]]:
        """Tap the button with this title (or payload) on the latest message with buttons."""
        for b in self.buttons():
            if title in (b["title"], b["payload"]):
                await self.post(
                    {"payload": b["payload"], "title": b["title"], "turn": self.current_turn()}
                )
                return await self.replies()
        raise AssertionError(f"no button {title!r}; have {[b['title'] for b in self.buttons()]}")


class PlatformCitizen:
    """A person on a messaging platform whose fake records what the bot sent them."""

    def __init__(self, fake: Any, http: TestClient, clock: ManualClock, user: Any) -> None:
        self.fake, self.http, self.clock, self.user = fake, http, clock, user
        self.seen = 0

    async def replies(self) -> list[Any]:
        """What the bot sent this person since the last call (after the app settled)."""
        await settle(self.http, clock=self.clock)
        sent = self.fake.sent_to(self.user)
        new, self.seen = sent[self.seen :], len(sent)
        return new


def question(message: dict[str, Any]) -> str:
    """The last paragraph of a message: the question its buttons answer."""
    return str(message["text"]).split("\n\n")[-1]


def texts(messages: list[dict[str, Any]]) -> str:
    return "\n".join(m["text"] for m in messages)
