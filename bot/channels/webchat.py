"""The built-in web chat at /chat: the default channel, on the same path as the others.

The browser keeps an anonymous id in a cookie. It POSTs each message with an id of its
own making (a repeat of the same id is dropped by the inbox) and long-polls for the
bot's messages, which the outbox sender "delivers" by marking them sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections import defaultdict
from typing import Any

from aiohttp import web
from aiohttp_jinja2 import render_template
from sqlmodel import select

from bot.channels.base import Inbound, Message
from bot.config import Settings
from bot.ingress import Ingress
from bot.web import json_error
from storage.db import Database
from storage.models import InboxEvent, OutboxMessage

NAME = "webchat"
COOKIE = "hl_chat"
_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_BODY = 64 * 1024
LONG_POLL_MAX = 25.0
# How often a waiting poll looks at the table anyway (another process may have sent).
RECHECK = 2.0


class WebChat:
    """Channel adapter and HTTP views of the web chat."""

    name = NAME

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.ingress: Ingress | None = None
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    # ---- egress

    async def send(self, message: Message) -> str | None:
        """Nothing to push: the browser fetches its sent messages itself."""
        return None

    def on_sent(self, message: Message) -> None:
        """The message is marked sent: wake the polls waiting for it."""
        for waiter in self._waiters.get(message.recipient, ()):
            waiter.set()

    # ---- HTTP

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/chat", self.page),
            web.post("/chat/api/events", self.post_event),
            web.get("/chat/api/messages", self.get_messages),
        ]

    def _user(self, request: web.Request) -> str | None:
        value = request.cookies.get(COOKIE, "")
        return value if _ID.match(value) else None

    async def page(self, request: web.Request) -> web.Response:
        """The chat page; `?start=<dossier code>` opens straight on that dossier's rating."""
        lang = request.query.get("lang", self.settings.chat.default_language)
        response = render_template(
            "chat.html",
            request,
            {
                "lang": lang if lang in ("vi", "en") else "vi",
                "start": request.query.get("start", "")[:64],
            },
        )
        if self._user(request) is None:
            response.set_cookie(
                COOKIE,
                secrets.token_urlsafe(24),
                max_age=30 * 24 * 3600,
                httponly=True,
                samesite="Lax",
                path="/chat",
            )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def post_event(self, request: web.Request) -> web.Response:
        """One message from the browser: {id, text} or {id, payload, title, turn} or {id, start}."""
        user = self._user(request)
        if user is None:
            return json_error(401, "no chat session: open /chat first")
        if request.content_type != "application/json":
            return json_error(415, "send JSON (Content-Type: application/json)")
        if (request.content_length or 0) > MAX_BODY:
            return json_error(413, f"message too large (at most {MAX_BODY} bytes)")
        try:
            data = await request.json()
        except ValueError:
            return json_error(400, "body is not valid JSON")
        if not isinstance(data, dict):
            return json_error(400, "body must be a JSON object")
        msg_id = data.get("id")
        if not isinstance(msg_id, str) or not _ID.match(msg_id):
            return json_error(400, "id must be 8–64 letters, digits, - or _", "id")
        lang = data.get("lang") if data.get("lang") in ("vi", "en") else None
        event = self._to_inbound(user, msg_id, data, lang)
        if isinstance(event, web.Response):
            return event
        assert self.ingress is not None
        new = await self.ingress.accept(event)
        return web.json_response({"accepted": True, "duplicate": not new}, status=202)

    def _to_inbound(
        self, user: str, msg_id: str, data: dict[str, Any], lang: str | None
    ) -> Inbound | web.Response:
        base = dict(channel=NAME, platform_id=msg_id, user_key=user, lang=lang)
        if "start" in data:
            start = data["start"]
            if not isinstance(start, str) or len(start) > 64:
                return json_error(400, "start must be text of at most 64 characters", "start")
            return Inbound(kind="start", payload=start or None, **base)
        if "payload" in data:
            payload, title, turn = data["payload"], data.get("title", ""), data.get("turn")
            if not isinstance(payload, str) or not 0 < len(payload.encode()) <= 64:
                return json_error(400, "payload must be 1–64 bytes of text", "payload")
            if not isinstance(title, str) or len(title) > 200:
                return json_error(400, "title must be text of at most 200 characters", "title")
            if turn is not None and (not isinstance(turn, int) or isinstance(turn, bool)):
                return json_error(400, "turn must be an integer", "turn")
            return Inbound(kind="button", payload=payload, text=title or payload, turn=turn, **base)
        text = data.get("text")
        if not isinstance(text, str):
            return json_error(400, "text must be a string", "text")
        return Inbound(kind="text", text=text, **base)

    async def get_messages(self, request: web.Request) -> web.Response:
        """The bot's messages after `after` (and the citizen's own, for the history).

        Waits up to `wait` seconds (at most 25) for a new bot message before answering.
        """
        user = self._user(request)
        if user is None:
            return json_error(401, "no chat session: open /chat first")
        try:
            after = int(request.query.get("after", "0"))
            wait = min(float(request.query.get("wait", "0")), LONG_POLL_MAX)
        except ValueError:
            return json_error(400, "after must be an integer and wait a number of seconds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        waiter = asyncio.Event()
        self._waiters[user].add(waiter)
        try:
            while True:
                waiter.clear()
                messages = await self._bot_messages(user, after)
                remaining = deadline - loop.time()
                if messages or remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), min(remaining, RECHECK))
        finally:
            self._waiters[user].discard(waiter)
            if not self._waiters[user]:
                del self._waiters[user]
        history = after == 0 and request.query.get("history") == "1"
        mine = await self._citizen_messages(user) if history else []
        return web.json_response({"messages": messages, "mine": mine})

    async def _bot_messages(self, user: str, after: int) -> list[dict[str, Any]]:
        async with self.db.sessions() as s:
            rows = await s.exec(
                select(OutboxMessage)
                .where(
                    OutboxMessage.channel == NAME,
                    OutboxMessage.recipient == user,
                    OutboxMessage.status == "sent",
                    OutboxMessage.id > after,  # type: ignore[operator]
                )
                .order_by(OutboxMessage.id)  # type: ignore[arg-type]
                .limit(100)
            )
            return [{"id": m.id, "at": m.created_at.isoformat(), **m.body} for m in rows]

    async def _citizen_messages(self, user: str) -> list[dict[str, Any]]:
        async with self.db.sessions() as s:
            rows = await s.exec(
                select(InboxEvent)
                .where(InboxEvent.channel == NAME, InboxEvent.user_key == user)
                .order_by(InboxEvent.id.desc())  # type: ignore[union-attr]
                .limit(100)
            )
            return [
                {"at": e.received_at.isoformat(), "text": e.text}
                for e in reversed(list(rows))
                if e.kind in ("text", "button") and e.text
            ]
