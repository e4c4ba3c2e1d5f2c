"""Fake Zalo Bot Platform (beta): `{base}/bot<TOKEN>/<method>`, Telegram-like JSON.

Methods: getMe, setWebhook {url, secret_token}, sendMessage {chat_id, text ≤ 2000}.
Answers `{"ok": true, "result": …}` or `{"ok": false, "error_code", "description"}`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes import LocalServer


@dataclass
class Sent:
    chat_id: str
    text: str
    message_id: str
    time: float


class FakeZaloBot(LocalServer):
    def __init__(self, token: str = "3891026475:ZbQwErTyUiOpAsDfGhJkLzXcVbNm") -> None:
        super().__init__()
        self.token = token
        self.sent: list[Sent] = []
        self.webhook: dict[str, Any] | None = None
        self._seq = 0
        self._failures: list[int] = []
        self.app.router.add_post("/bot{token}/{method}", self._handle)

    @property
    def api_base(self) -> str:
        return self.url

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        self._failures.extend([status] * n)

    def sent_to(self, chat_id: str) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id]

    def text_update(self, user: str, text: str) -> dict[str, Any]:
        """An update as the platform posts it to a webhook."""
        self._seq += 1
        message_id = hashlib.md5(f"{user}:{self._seq}".encode()).hexdigest()
        return {
            "ok": True,
            "result": {
                "event_name": "message.text.received",
                "message": {
                    "message_id": message_id,
                    "from": {"id": user, "display_name": "Lan", "is_bot": False},
                    "chat": {"id": user, "chat_type": "PRIVATE"},
                    "date": int(time.time() * 1000),
                    "text": text,
                },
            },
        }

    async def post_webhook(self, url: str, update: dict[str, Any], secret: str | None) -> int:
        headers = {"X-Bot-Api-Secret-Token": secret} if secret is not None else {}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json=update, headers=headers) as r,
        ):
            return r.status

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}
            )
        if self._failures:
            return web.json_response(
                {"ok": False, "description": "error"}, status=self._failures.pop(0)
            )
        method = request.match_info["method"]
        params = await request.json()
        if method == "getMe":
            return web.json_response(
                {"ok": True, "result": {"id": "3891026475", "account_name": "bot.hailong"}}
            )
        if method == "setWebhook":
            self.webhook = params
            return web.json_response({"ok": True, "result": {"url": params.get("url")}})
        if method == "sendMessage":
            text = str(params.get("text", ""))
            if not 0 < len(text) <= 2000:
                return web.json_response(
                    {"ok": False, "error_code": 400, "description": "text length"}
                )
            self._seq += 1
            sent = Sent(str(params["chat_id"]), text, f"m{self._seq}", time.monotonic())
            self.sent.append(sent)
            return web.json_response(
                {"ok": True, "result": {"message_id": sent.message_id, "date": 0}}
            )
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )
