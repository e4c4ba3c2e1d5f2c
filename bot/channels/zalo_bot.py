"""Zalo Bot Platform (beta, Telegram-like): a cheap second Zalo channel for small communes.

Ingress: `POST /webhooks/zalo-bot` with `X-Bot-Api-Secret-Token` (constant-time check);
an update carries `event_name` (message.text.received, message.image.received, …) and a
`message` with `message_id`, `from.id`, `chat.id`, `text`. Egress: `sendMessage` with
`chat_id` and text ≤ 2,000 characters. The platform documents no buttons, so choices are
written as a numbered list and the citizen answers with the number.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import aiohttp
from aiohttp import web

from bot.channels.base import Inbound, Message, TemporaryFailure, Undeliverable
from bot.channels.text import split_text
from bot.config import ZaloBotSettings

log = logging.getLogger(__name__)

NAME = "zalo_bot"
MAX_TEXT = 2000
SECRET_HEADER = "X-Bot-Api-Secret-Token"
CHOOSE = {"vi": "(Trả lời bằng số thứ tự)", "en": "(Reply with the number)"}


def with_choices(text: str, buttons: list[dict[str, str]]) -> str:
    """The message with its buttons written out as a numbered list."""
    if not buttons:
        return text
    lines = [f"{i}. {b['title']}" for i, b in enumerate(buttons, 1)]
    return f"{text}\n\n" + "\n".join(lines) + f"\n{CHOOSE['vi']}"


class ZaloBot:
    name = NAME

    def __init__(self, settings: ZaloBotSettings) -> None:
        self.settings = settings
        self.ingress: Any = None
        self.metrics: Any = None  # bot.metrics.Metrics, set when the service is built
        self.http: aiohttp.ClientSession | None = None

    def _url(self, method: str) -> str:
        return f"{self.settings.api_base}/bot{self.settings.token}/{method}"

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        assert self.http is not None, "ZaloBot.start() was not called"
        try:
            async with self.http.post(self._url(method), json=params) as r:
                if r.status == 429:
                    raise TemporaryFailure(
                        "zalo bot: 429", retry_after=float(r.headers.get("Retry-After", 5))
                    )
                if r.status >= 500:
                    raise TemporaryFailure(f"zalo bot: HTTP {r.status}")
                data = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TemporaryFailure(f"zalo bot: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict) or not data.get("ok"):
            raise Undeliverable(f"zalo bot {method}: {data}")
        return data.get("result")

    async def set_webhook(self) -> Any:
        await self.start()
        try:
            return await self.call(
                "setWebhook",
                {"url": self.settings.webhook_url, "secret_token": self.settings.secret_token},
            )
        finally:
            await self.stop()

    # ---- ingress

    def _rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(NAME, reason).inc()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/webhooks/zalo-bot", self.webhook)]

    async def webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.settings.secret_token.encode()):
            log.warning("zalo bot webhook: wrong or missing secret token from %s", request.remote)
            self._rejected("secret")
            return web.json_response({"error": "forbidden"}, status=403)
        try:
            update = await request.json()
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        if isinstance(update, dict) and isinstance(update.get("result"), dict):
            update = update["result"]
        inbound = self.to_inbound(update) if isinstance(update, dict) else None
        if inbound is not None:
            await self.ingress.accept(inbound)
        return web.json_response({"ok": True})

    def to_inbound(self, update: dict[str, Any]) -> Inbound | None:
        message = update.get("message") or {}
        if not isinstance(message, dict):
            return None
        chat = message.get("chat") or {}
        if str(chat.get("chat_type", "PRIVATE")).upper() != "PRIVATE":
            return None
        user = str(chat.get("id") or (message.get("from") or {}).get("id") or "")
        msg_id = str(message.get("message_id") or "")
        if not user or not msg_id:
            return None
        event = str(update.get("event_name", ""))
        if event == "message.text.received" or (not event and "text" in message):
            text = str(message.get("text", ""))
            if text == "/start" or text.startswith("/start "):
                return Inbound(NAME, msg_id, user, kind="start", payload=text[6:].strip() or None)
            return Inbound(NAME, msg_id, user, kind="text", text=text)
        kind = event.removeprefix("message.").removesuffix(".received") or "attachment"
        return Inbound(NAME, msg_id, user, kind="unsupported", text=kind)

    # ---- egress

    async def send(self, message: Message) -> str | None:
        body = message.body
        text = with_choices(body["text"], body.get("buttons") or [])
        result: Any = None
        for part in split_text(text, MAX_TEXT):
            result = await self.call("sendMessage", {"chat_id": message.recipient, "text": part})
        return str((result or {}).get("message_id") or "") or None
