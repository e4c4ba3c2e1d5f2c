"""Telegram in tests: the fake Bot API wired to a real bot, and a scripted Telegram user.

The fixtures `fake_telegram`, `telegram_bot` (webhook mode) are in conftest.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bot.app import Service, build_app, build_service
from bot.clock import ManualClock
from tests.chat import PlatformCitizen
from tests.conftest import make_settings
from tests.factories import small_province
from tests.fakes import FakeTelegram

SECRET = "tg-secret-0123456789abcdef"
CITIZEN = 5_234_567_890
WEBHOOK_URL = "https://hailong.example.vn/webhooks/telegram"


def telegram_env(fake: FakeTelegram, webhook: bool = True, pace: float = 50) -> dict[str, str]:
    """Settings for a bot talking to `fake`; `pace` is the per-chat rate (real: 1/s)."""
    return {
        "HAILONG_TELEGRAM_RATE_PER_CHAT_PER_SECOND": str(pace),
        "HAILONG_TELEGRAM_TOKEN": fake.token,
        "HAILONG_TELEGRAM_API_BASE": fake.base_url.removesuffix("/bot"),
        "HAILONG_TELEGRAM_SECRET_TOKEN": SECRET,
        "HAILONG_TELEGRAM_WEBHOOK_URL": WEBHOOK_URL if webhook else "",
    }


async def start(db_url: str, clock: ManualClock, env: dict[str, str]) -> tuple[Service, TestClient]:
    service = build_service(make_settings(db_url, **env), clock)
    http = TestClient(TestServer(build_app(service)))
    await http.start_server()
    async with service.db.transaction() as s:
        await small_province(s, clock.now())
    return service, http


class TelegramCitizen(PlatformCitizen):
    """A Telegram user whose updates are delivered to our webhook like Telegram does."""

    def __init__(
        self, fake: FakeTelegram, http: TestClient, clock: ManualClock, user: int = CITIZEN
    ) -> None:
        super().__init__(fake, http, clock, user)
        self.url = str(http.make_url("/webhooks/telegram"))

    async def deliver(self, update: dict[str, Any], secret: str | None = SECRET) -> int:
        return await self.fake.post_webhook(self.url, update, secret_token=secret)

    async def say(self, text: str) -> list[Any]:
        assert await self.deliver(self.fake.text_update(self.user, text)) == 200
        return await self.replies()

    async def tap(self, title: str) -> list[Any]:
        last = next(s for s in reversed(self.fake.sent_to(self.user)) if s.buttons)
        button = next(b for b in last.buttons if b["text"] == title)
        update = self.fake.callback_update(self.user, button["callback_data"], last.message_id)
        assert await self.deliver(update) == 200
        return await self.replies()
